"""SHARADAR table schemas: the columns, types and keys every source must produce.

The synthetic market, the Nasdaq Data Link client, the fake server in the tests and the sync
validation all read this one module, so a column is named and typed in exactly one place.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

F = pl.Float64
D = pl.Date
S = pl.String
I = pl.Int64  # noqa: E741

SF1_VALUE_COLUMNS: tuple[str, ...] = (
    "revenue", "cor", "gp", "opex", "sgna", "rnd", "opinc", "ebit", "ebitda", "ebt", "netinc",
    "netinccmn", "eps", "epsdil", "shareswa", "sharesbas", "assets", "assetsc", "liabilities", "equity",
    "debt", "debtc", "debtnc", "cashneq", "capex", "ncfo", "fcf", "fcfps", "roe", "roa", "roic", "ros",
    "grossmargin", "netmargin", "ebitdamargin", "currentratio", "de", "pb", "pe", "ps", "marketcap", "ev",
    "evebit", "evebitda", "price", "bvps", "sps", "dps", "divyield", "payoutratio", "workingcapital",
    "invcap", "sharefactor",
)


@dataclass(frozen=True)
class TableSchema:
    """One SHARADAR table: its columns in order, its key, and the column that dates a row in time."""

    name: str  # SHARADAR name, e.g. "SEP"
    warehouse_table: str  # DuckDB table / asset name, e.g. "sep_base"
    columns: dict[str, pl.DataType]
    key: tuple[str, ...]
    # The date at which a row becomes knowable; the sync partitions and filters on it.
    pit_column: str | None

    @property
    def polars_schema(self) -> pl.Schema:
        return pl.Schema(self.columns)

    def empty(self) -> pl.DataFrame:
        return pl.DataFrame(schema=self.polars_schema)


SEP = TableSchema(
    name="SEP",
    warehouse_table="sep_base",
    columns={
        "ticker": S, "date": D, "open": F, "high": F, "low": F, "close": F, "volume": F,
        "closeadj": F, "closeunadj": F, "lastupdated": D,
    },
    key=("ticker", "date"),
    pit_column="date",
)

DAILY = TableSchema(
    name="DAILY",
    warehouse_table="daily",
    columns={
        "ticker": S, "date": D, "lastupdated": D, "ev": F, "evebit": F, "evebitda": F,
        "marketcap": F, "pb": F, "pe": F, "ps": F,
    },
    key=("ticker", "date"),
    pit_column="date",
)

SF1 = TableSchema(
    name="SF1",
    warehouse_table="sf1",
    columns={
        "ticker": S, "dimension": S, "calendardate": D, "datekey": D, "reportperiod": D,
        "fiscalperiod": S, "lastupdated": D, **{c: F for c in SF1_VALUE_COLUMNS},
    },
    key=("ticker", "dimension", "datekey", "reportperiod"),
    pit_column="datekey",
)

SF2 = TableSchema(
    name="SF2",
    warehouse_table="sf2",
    columns={
        "ticker": S, "filingdate": D, "formtype": S, "issuername": S, "ownername": S,
        "officertitle": S, "isdirector": S, "isofficer": S, "istenpercentowner": S,
        "transactiondate": D, "securityadcode": S, "transactioncode": S,
        "sharesownedbeforetransaction": F, "transactionshares": F,
        "sharesownedfollowingtransaction": F, "transactionpricepershare": F, "transactionvalue": F,
        "securitytitle": S, "directorindirect": S, "natureofownership": S, "dateexercisable": D,
        "priceexercisable": F, "expirationdate": D, "rownum": I,
    },
    key=("ticker", "filingdate", "ownername", "rownum"),
    pit_column="filingdate",
)

SF3 = TableSchema(
    name="SF3",
    warehouse_table="sf3",
    columns={
        "ticker": S, "investorname": S, "securitytype": S, "calendardate": D, "value": F,
        "units": F, "price": F,
    },
    key=("ticker", "investorname", "securitytype", "calendardate"),
    # 13F holdings are filed up to 45 days after the quarter; the sync derives `datekey` from it.
    pit_column="calendardate",
)

TICKERS = TableSchema(
    name="TICKERS",
    warehouse_table="tickers",
    columns={
        "table": S, "permaticker": I, "ticker": S, "name": S, "exchange": S, "isdelisted": S,
        "category": S, "cusips": S, "siccode": I, "sicsector": S, "sicindustry": S,
        "famasector": S, "famaindustry": S, "sector": S, "industry": S, "scalemarketcap": S,
        "scalerevenue": S, "relatedtickers": S, "currency": S, "location": S, "lastupdated": D,
        "firstadded": D, "firstpricedate": D, "lastpricedate": D, "firstquarter": D,
        "lastquarter": D, "secfilings": S, "companysite": S,
    },
    key=("table", "ticker"),
    pit_column=None,
)

ACTIONS = TableSchema(
    name="ACTIONS",
    warehouse_table="actions",
    columns={
        "date": D, "action": S, "ticker": S, "name": S, "value": F, "contraticker": S,
        "contraname": S,
    },
    key=("date", "action", "ticker"),
    pit_column="date",
)

TABLES: dict[str, TableSchema] = {t.name: t for t in (SEP, DAILY, SF1, SF2, SF3, TICKERS, ACTIONS)}

SECTORS: tuple[str, ...] = (
    "Basic Materials", "Communication Services", "Consumer Cyclical", "Consumer Defensive", "Energy",
    "Financial Services", "Healthcare", "Industrials", "Real Estate", "Technology", "Utilities",
)

# 13F filing deadline: holdings for a quarter become public up to 45 calendar days after it ends.
SF3_KNOWN_LAG_DAYS = 45


def schema(name: str) -> TableSchema:
    """The schema of a SHARADAR table by its SHARADAR name (case-insensitive)."""
    try:
        return TABLES[name.upper()]
    except KeyError:
        raise KeyError(f"unknown SHARADAR table {name!r}; known: {', '.join(TABLES)}") from None


def conform(df: pl.DataFrame, table: TableSchema, *, source: str) -> pl.DataFrame:
    """Select and cast `df` to the table's columns in order; a missing column is a clear error."""
    missing = [c for c in table.columns if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: table {table.name} is missing columns {missing}")
    try:
        return df.select(pl.col(c).cast(t, strict=True) for c, t in table.columns.items())
    except pl.exceptions.InvalidOperationError as exc:  # a value that cannot be cast
        raise ValueError(f"{source}: table {table.name} has a column of the wrong type: {exc}") from exc
