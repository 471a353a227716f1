"""The execution engine with the real alpaca-py against the local fake Alpaca server."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest

from kairos_dagster.broker.alpaca import (
    LIVE_URL,
    PAPER_URL,
    AlpacaBroker,
    AlpacaCredentials,
    TokenBucket,
    alpaca_credentials_from_env,
)
from kairos_dagster.broker.approval import make_approval, picks_content_hash
from kairos_dagster.broker.base import BrokerError
from kairos_dagster.broker.engine import (
    ExecutionConfig,
    emergency_cancel_all,
    emergency_liquidate,
    execute,
    preview,
    verify,
)
from kairos_dagster.broker.orders import ExecutionRefusedError, RiskLimits
from kairos_dagster_tests.fixtures.alpaca_server import FakeAlpaca

NY = ZoneInfo("America/New_York")
SECRET = "s3cr3t-DO-NOT-LEAK-9f8e7d"
REB = dt.date(2026, 1, 16)
PRICES = {"AAPL": 100.0, "MSFT": 200.0, "NVDA": 50.0, "META": 400.0}
# 100k account: each buy ~3-4% of equity, under the 5% single-order limit
PICKS = pl.DataFrame({"ticker": ["AAPL", "MSFT", "NVDA"], "weight": [0.03, 0.03, 0.03],
                      "shares": [30, 15, 60], "price": [100.0, 200.0, 50.0]})
FAST = ExecutionConfig(auto_paper=True)


class LiveBroker(AlpacaBroker):
    """An AlpacaBroker talking to the fake but behaving as live (the URL decides in production)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.is_live = True


def make_broker(fake: FakeAlpaca, cls: type[AlpacaBroker] = AlpacaBroker, **kw) -> AlpacaBroker:
    creds = AlpacaCredentials(fake.api_key, fake.secret_key, fake.base_url, fake.base_url)
    sleeps: list[float] = []
    b = cls(creds, retry_wait_seconds=0.01, timeout_s=1.0, sleep=sleeps.append, **kw)
    b.sleeps = sleeps  # type: ignore[attr-defined]
    return b


@pytest.fixture
def fake():
    with FakeAlpaca(prices=dict(PRICES), positions={"META": 5}, secret_key=SECRET) as f:
        yield f


@pytest.fixture
def con():
    c = duckdb.connect(":memory:")
    yield c
    c.close()


def created(fake: FakeAlpaca) -> dict[str, int]:
    return {o["client_order_id"]: len(fake.orders_for(o["client_order_id"])) for o in fake.orders}


def test_credentials_from_env_and_repr_hides_secret():
    env = {"APCA_API_KEY_ID": "PKABCDEF", "APCA_API_SECRET_KEY": SECRET}
    c = alpaca_credentials_from_env(env)
    assert c is not None and c.base_url == PAPER_URL and not c.is_live  # unset base: paper, never live
    assert SECRET not in repr(c) and SECRET not in str(c)
    live = alpaca_credentials_from_env({"ALPACA_API_KEY": "K", "ALPACA_SECRET_KEY": SECRET,
                                        "ALPACA_BASE_URL": LIVE_URL + "/"})
    assert live is not None and live.is_live
    assert not alpaca_credentials_from_env({"ALPACA_API_KEY": "K", "ALPACA_SECRET_KEY": "x",
                                            "ALPACA_BASE_URL": PAPER_URL}).is_live
    assert alpaca_credentials_from_env({}) is None
    with pytest.raises(ValueError, match="APCA_API_SECRET_KEY is not set"):
        alpaca_credentials_from_env({"APCA_API_KEY_ID": "K"})


def test_token_bucket_limits_to_200_a_minute():
    t = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        t[0] += s

    b = TokenBucket(200, clock=lambda: t[0], sleep=sleep)
    for _ in range(400):
        b.acquire()
    # 200 burst + 200 more at 200/min: one minute of waiting, never faster
    assert t[0] == pytest.approx(60.0, rel=1e-6)


def test_preview_submits_nothing(fake):
    plan = preview(make_broker(fake), PICKS, REB, config=FAST)
    assert fake.calls[("POST", "/v2/orders")] == 0
    assert plan.orders["side"].to_list() == ["sell", "buy", "buy", "buy"]  # META exit first
    assert plan.orders.filter(pl.col("ticker") == "META")["reason"].item() == "exit_position"
    assert plan.can_execute and set(plan.orders["time_in_force"]) == {"day"}  # paper: intraday


def test_execute_exactly_once_with_504_retry_and_duplicate(fake, con, tmp_path):
    fake.inject("POST", "/v2/orders", "504_after_accept")  # accepted, then 504; the SDK re-POSTs -> 422
    broker = make_broker(fake)
    res = execute(broker, PICKS, REB, con=con, output_dir=tmp_path, config=FAST,
                  now=dt.datetime(2026, 1, 16, 15, 0, tzinfo=dt.UTC))
    assert created(fake) and all(n == 1 for n in created(fake).values())
    assert len(fake.orders) == 4
    assert max(fake.post_attempts.values()) == 2  # the SDK did retry the POST once
    db = con.execute("SELECT ticker, status, filled_qty FROM execution_orders ORDER BY ticker").fetchall()
    assert db == [("AAPL", "filled", 30.0), ("META", "filled", 5.0), ("MSFT", "filled", 15.0), ("NVDA", "filled", 60.0)]
    assert res.csv_path == tmp_path / "rebalance" / "2026-01-16" / "alpaca_orders_20260116T150000.csv"
    assert pl.read_csv(res.csv_path).height == 4
    # a second run (e.g. the operator clicks again) creates nothing new
    execute(broker, PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    assert len(fake.orders) == 4


def test_crash_mid_submission_then_rerun_never_duplicates(fake, con, tmp_path):
    fake.default_fill = "none"  # orders stay open so the re-run plans the same orders again
    broker = make_broker(fake)
    real_submit = broker.submit
    n = [0]

    def crashing_submit(order):
        n[0] += 1
        state = real_submit(order)
        if n[0] == 2:
            raise SystemExit("process killed after the broker accepted order 2")
        return state

    broker.submit = crashing_submit  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        execute(broker, PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    assert len(fake.orders) == 2
    execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    assert len(fake.orders) == 4 and all(v == 1 for v in created(fake).values())
    assert con.execute("SELECT count(*) FROM execution_orders WHERE status = 'new'").fetchone()[0] == 4


def test_timeout_after_accept_is_reconciled(fake, con, tmp_path):
    fake.inject("POST", "/v2/orders", "timeout_after_accept", delay=1.5)
    execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    assert len(fake.orders) == 4 and all(v == 1 for v in created(fake).values())


def test_429_recovered_with_backoff(fake):
    fake.inject("GET", "/v2/account", "429", times=5)  # SDK retries 3, then our layer backs off
    b = make_broker(fake)
    assert b.account().cash == 100_000.0
    assert fake.calls[("GET", "/v2/account")] == 6
    assert b.sleeps and all(s > 0 for s in b.sleeps)


def test_rejection_and_partial_fill_reported_with_severity(fake, con, tmp_path):
    fake.fill_mode.update({"NVDA": "reject", "MSFT": "partial"})
    fake.fill_slippage = 0.001
    execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    rep = verify(make_broker(fake), REB, con=con)
    sev = dict(zip(rep.orders["ticker"], rep.orders["severity"], strict=True))
    assert sev == {"NVDA": "HIGH", "MSFT": "MEDIUM", "AAPL": None, "META": None}
    aapl = rep.orders.filter(pl.col("ticker") == "AAPL").row(0, named=True)
    assert aapl["slippage_bps"] == pytest.approx(10.0)  # bought 0.1% above the picks price
    assert rep.summary["rejected"] == 1 and rep.summary["partial"] == 1
    assert rep.summary["fill_rate"] == pytest.approx((30 + 7 + 5) / (30 + 15 + 60 + 5))


def test_buying_power_check_blocks_before_any_post(fake, con, tmp_path):
    fake.cash = 1_000.0  # buys of 9,000 > 1,000 cash + 2,000 planned META sells
    cfg = ExecutionConfig(auto_paper=True, limits=RiskLimits(max_order_pct=1.0, max_turnover=100.0))
    fake.positions.clear()
    with pytest.raises(ExecutionRefusedError, match="buying_power"):
        execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, config=cfg)
    assert fake.calls[("POST", "/v2/orders")] == 0


def test_live_refuses_without_approval_and_after_picks_change(fake, con, tmp_path):
    fake.now = dt.datetime(2026, 1, 16, 8, 0, tzinfo=NY)  # before 09:28: OPG allowed
    live = make_broker(fake, LiveBroker)
    with pytest.raises(ExecutionRefusedError, match="live trading needs an approval"):
        execute(live, PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    appr = make_approval(picks_content_hash(PICKS), "ops@kairos", approved_at=dt.datetime(2026, 1, 16, 7, 0))
    changed = PICKS.with_columns(pl.when(pl.col("ticker") == "AAPL").then(31).otherwise(pl.col("shares"))
                                 .alias("shares"))
    with pytest.raises(ExecutionRefusedError, match="picks changed after approval"):
        execute(live, changed, REB, con=con, output_dir=tmp_path, approval=appr, config=FAST)
    assert fake.calls[("POST", "/v2/orders")] == 0
    res = execute(live, PICKS, REB, con=con, output_dir=tmp_path, approval=appr, config=FAST)
    assert set(res.orders["time_in_force"]) == {"opg"} and len(fake.orders) == 4


def test_paper_without_approval_needs_auto_paper(fake, con, tmp_path):
    with pytest.raises(ExecutionRefusedError, match="KAIROS_AUTO_PAPER"):
        execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path)


def test_opg_refused_after_0928_on_live(fake, con, tmp_path):
    fake.now = dt.datetime(2026, 1, 16, 9, 29, tzinfo=NY)
    appr = make_approval(picks_content_hash(PICKS), "ops", approved_at=dt.datetime(2026, 1, 16, 7, 0))
    plan = preview(make_broker(fake, LiveBroker), PICKS, REB, approval=appr, config=FAST)
    assert any("09:28" in r for r in plan.refusals)
    with pytest.raises(ExecutionRefusedError, match="OPG"):
        execute(make_broker(fake, LiveBroker), PICKS, REB, con=con, output_dir=tmp_path, approval=appr)
    assert fake.calls[("POST", "/v2/orders")] == 0


def test_max_gap_and_non_tradable_skipped_with_reason(fake, con, tmp_path):
    fake.set_price("AAPL", 107.0)  # +7% vs picks
    fake.non_tradable.add("NVDA")
    res = execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path,
                  config=ExecutionConfig(auto_paper=True, max_gap=0.05))
    reasons = dict(zip(res.orders["ticker"], res.orders["reason"], strict=True))
    assert reasons["AAPL"].startswith("max_gap") and reasons["NVDA"].startswith("not_tradable")
    assert {o["symbol"] for o in fake.orders} == {"MSFT", "META"}
    st = dict(con.execute("SELECT ticker, status FROM execution_orders").fetchall())
    assert st["AAPL"] == "skipped" and st["MSFT"] == "filled"


def test_risk_checks_block(fake, con, tmp_path):
    big = PICKS.with_columns(pl.when(pl.col("ticker") == "AAPL").then(80).otherwise(pl.col("shares")).alias("shares"))
    plan = preview(make_broker(fake), big, REB, failed_gates=["data_fresh"], config=FAST)
    failed = set(plan.checks.filter(~pl.col("passed"))["check"])
    assert failed == {"max_order_notional", "rebalance_gates"}
    fake.trading_blocked = True
    with pytest.raises(ExecutionRefusedError, match="account_status"):
        execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    fake.trading_blocked = False
    tight = ExecutionConfig(auto_paper=True, limits=RiskLimits(max_turnover=0.05))  # plan turns over 5.4%
    with pytest.raises(ExecutionRefusedError, match="turnover 5.4% vs limit 5%; record `kairos override --gate turnover`"):
        execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, config=tight)
    # An approval note is not an override: only a typed override record (its who) lets the turnover through.
    noted = make_approval(picks_content_hash(PICKS), "ops", approved_at=dt.datetime(2026, 1, 16, 7, 0),
                          note="big week: sector rotation reviewed")
    with pytest.raises(ExecutionRefusedError, match="turnover 5.4% vs limit 5%"):
        execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, approval=noted, config=tight)
    assert fake.calls[("POST", "/v2/orders")] == 0
    result = execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, approval=noted, config=tight,
                     overrides={"turnover": "ops"})
    assert len(fake.orders) == 4
    assert "turnover 5.4% vs limit 5% (overridden by ops)" in result.plan.checks.filter(
        pl.col("check") == "turnover")["detail"][0]


def test_emergency_cancel_and_liquidate(fake):
    fake.default_fill = "none"
    b = make_broker(fake)
    from kairos_dagster.broker.base import OrderRequest
    b.submit(OrderRequest("AAPL", 1, "buy", "day", "manual-1"))
    with pytest.raises(ExecutionRefusedError, match="confirm=True"):
        emergency_liquidate(b, confirm=False)
    assert len(emergency_cancel_all(b)) == 1
    assert fake.orders_for("manual-1")[0]["status"] == "canceled"
    fake.default_fill = "fill"
    assert emergency_liquidate(b, confirm=True) == ["META"]
    assert fake.positions == {}


def test_secrets_never_in_logs_or_files(fake, con, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    db_path = tmp_path / "w.duckdb"
    c = duckdb.connect(str(db_path))
    fake.fill_mode["NVDA"] = "reject"
    fake.inject("POST", "/v2/orders", "500")
    b = make_broker(fake)
    res = execute(b, PICKS, REB, con=c, output_dir=tmp_path, config=FAST)
    verify(b, REB, con=c)
    bad = AlpacaBroker(AlpacaCredentials("wrong", SECRET, fake.base_url, fake.base_url), retry_wait_seconds=0.01)
    with pytest.raises(Exception) as ei:
        bad.account()
    c.close()
    assert SECRET not in str(ei.value) and SECRET not in repr(b) and SECRET not in repr(b.credentials)
    assert SECRET not in caplog.text and "401" in str(ei.value)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert res.csv_path in files and db_path in files
    for p in files:
        assert SECRET.encode() not in Path(p).read_bytes(), p


def test_a_split_between_signal_and_fill_re_expresses_the_targets_and_a_delisted_holding_is_left_out(fake, con,
                                                                                                     tmp_path):
    """AAPL splits 2:1 with ex-date the fill day: the account already holds post-split shares (40 = 20 held
    before), the picks (30 shares at $100, signal-day basis) become 60 at $50, so the order buys 20, not 10
    or a sale. META is held and delisted: reported, not sold."""
    fake.splits.append(("AAPL", REB, 1.0, 2.0))
    fake.set_price("AAPL", 50.0)
    fake.positions["AAPL"] = {"qty": 40.0, "avg_entry_price": 50.0}
    fake.positions["META"] = {"qty": 5.0, "avg_entry_price": 400.0}
    fake.inactive.add("META")
    plan = preview(make_broker(fake), PICKS, REB, config=FAST)
    orders = {r["ticker"]: r for r in plan.orders.iter_rows(named=True)}
    assert (orders["AAPL"]["side"], orders["AAPL"]["qty"], orders["AAPL"]["target_shares"]) == ("buy", 20, 60)
    assert orders["AAPL"]["price"] == pytest.approx(50.0)
    assert orders["META"]["skip_reason"].startswith("delisted")
    splits = plan.checks.filter(pl.col("check") == "splits_since_signal")
    assert splits.height == 1 and "AAPL x2" in splits["detail"][0] and not splits["blocking"][0]
    assert plan.picks_hash == picks_content_hash(PICKS)  # the approval binds the picks as built
    res = execute(make_broker(fake), PICKS, REB, con=con, output_dir=tmp_path, config=FAST)
    sent = {o["symbol"]: o for o in fake.orders}
    assert set(sent) == {"AAPL", "MSFT", "NVDA"} and sent["AAPL"]["_qty"] == 20
    assert dict(zip(res.orders["ticker"], res.orders["status"], strict=True))["META"] == "skipped"
    # without an announced split the same picks would sell AAPL down to 30
    fake.splits.clear()
    assert {r["ticker"]: r["side"] for r in preview(make_broker(fake), PICKS, REB, config=FAST).orders.iter_rows(
        named=True)}["AAPL"] == "sell"


def test_an_unreadable_split_announcement_stops_the_plan(fake):
    fake.splits.append(("AAPL", REB, None, 2.0))  # old_rate missing
    with pytest.raises(BrokerError, match="unreadable forward_split"):
        preview(make_broker(fake), PICKS, REB, config=FAST)
