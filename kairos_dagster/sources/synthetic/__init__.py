"""The synthetic SHARADAR market, the embedded default source: `market` serves the tables
(`SyntheticMarket`, `SIGNAL_DOC`), `panel` generates the deterministic price and fundamentals panel."""

from kairos_dagster.sources.synthetic.market import ORACLE_COLUMNS, SIGNAL_DOC, SOURCE, SyntheticMarket

__all__ = ["ORACLE_COLUMNS", "SIGNAL_DOC", "SOURCE", "SyntheticMarket"]
