"""The pictures: PNGs drawn from frames, nothing drawn from nothing, and Markdown the UI renders."""

import base64
import datetime as dt

import polars as pl

from kairos_dagster.warehouse import plots

PNG = b"\x89PNG\r\n\x1a\n"
DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(60)]


def _size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_each_chart_is_a_png_of_its_data_and_none_without_data():
    ic = pl.DataFrame({"factor": ["a"] * 30 + ["b"] * 30, "date": DAYS[:30] * 2,
                       "ic": [0.01 * ((i % 7) - 3) for i in range(60)]})
    regimes = pl.DataFrame({"date": DAYS, "regime": ["bull"] * 20 + ["bear"] * 25 + ["bull"] * 15})
    market = pl.DataFrame({"date": DAYS, "mkt_ret": [0.001 * ((i % 5) - 2) for i in range(60)]})
    charts = {
        "sectors": plots.sector_weights_png(pl.DataFrame({"sector": ["Energy", "Utilities"], "weight": [0.1, 0.05],
                                                          "cap": [0.2, None]})),
        "weights": plots.weight_distribution_png(pl.Series([0.01, 0.02, 0.03, 0.03]), cap=0.03),
        "ic": plots.ic_series_png(ic, ["a"]),
        "bars": plots.bars_png(pl.DataFrame({"f": ["x", "y"], "v": [0.2, -0.1]}), "f", "v", "t", horizontal=True),
        "regimes": plots.regime_timeline_png(regimes, market),
        "rows": plots.rows_per_week_png(pl.DataFrame({"week": DAYS[::7], "rows": list(range(9))}), "rows"),
    }
    for name, png in charts.items():
        assert png is not None and png.startswith(PNG), name
        w, h = _size(png)
        assert w > 300 and h > 150, (name, w, h)
    assert plots.sector_weights_png(pl.DataFrame(schema={"sector": pl.String, "weight": pl.Float64})) is None
    assert plots.ic_series_png(ic.with_columns(ic=None)) is None
    assert plots.regime_timeline_png(regimes, market.clear()) is None
    assert plots.bars_png(pl.DataFrame({"f": ["x"], "v": [None]}, schema={"f": pl.String, "v": pl.Float64}),
                          "f", "v", "t") is None
    md = plots.markdown_image(charts["rows"], "rows")
    assert md.startswith("![rows](data:image/png;base64,")
    assert base64.b64decode(md.split(",", 1)[1].rstrip(")")) == charts["rows"]
