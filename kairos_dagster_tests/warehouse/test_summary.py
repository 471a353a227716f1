"""Numbers in metadata as an operator reads them: counts as integers, ratios to 4 significant digits."""

import math

import polars as pl
import pytest

from kairos_dagster.warehouse.summary import markdown_table, readable, significant


@pytest.mark.parametrize("value, text", [
    (10510.0, "10,510"), (123401, "123,401"), (0.052130000000000004, "0.05213"), (123.456, "123.5"),
    (-0.0035, "-0.003500"), (1e-6, "1.000e-06"), (0.0, "0"), (math.nan, "nan"), (1999.96, "2,000"),
])
def test_readable(value, text):
    assert readable(value) == text


def test_significant_rounds_to_four_digits():
    assert significant(0.052130000000000004) == 0.05213
    assert significant(1234.567) == 1235.0 and significant(-0.00351234) == -0.003512
    assert significant(0.0) == 0.0 and math.isnan(significant(math.nan))


def test_markdown_table_formats_numbers_and_escapes_pipes():
    md = markdown_table(pl.DataFrame({"name": ["a|b"], "rows": [123401], "ratio": [0.052130000000000004],
                                      "flag": [True], "value": [10510.0]}))
    assert md.splitlines()[2] == "| a\\|b | 123,401 | 0.05213 | True | 10,510 |"
