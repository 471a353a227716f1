"""Constants every floor shares: the exchange's timezone and the key of every per-stock table."""

from __future__ import annotations

from zoneinfo import ZoneInfo

EXCHANGE_TIMEZONE = "America/New_York"  # XNYS: sessions, schedules and "today" are New York dates
NEW_YORK = ZoneInfo(EXCHANGE_TIMEZONE)
# The key of every per-stock, per-session table (sep_base, the feat_* tables, the ML predictions, ...).
KEY = ("ticker", "date")
