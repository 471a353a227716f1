"""The execution assets through the real Dagster executor with the real alpaca-py against the local fake
Alpaca: no approval no live order, a crash mid-submission then a re-run sends each order exactly once,
and the secret key never reaches a log line, event, metadata or file."""

import logging
from pathlib import Path

import pytest
from dagster import DagsterInstance

from kairos_dagster.broker.alpaca import AlpacaBroker
from kairos_dagster.definitions import build_definitions
from kairos_dagster.instance.runner import run_selection
from kairos_dagster.resources.broker import BrokerResource
from kairos_dagster.settings import load_settings
from kairos_dagster_tests.fixtures.alpaca_server import FakeAlpaca
from kairos_dagster_tests.fixtures.execution_setup import PRICES, SHARES, WEEK, write_picks

SECRET = "zz-SECRET-never-log-4c1d9e"
ALPACA_VARS = ["APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "APCA_API_BASE_URL", "ALPACA_API_KEY", "ALPACA_SECRET_KEY",
               "ALPACA_BASE_URL", "APCA_API_DATA_URL", "ALPACA_DATA_URL"]


class LiveAlpacaBroker(AlpacaBroker):
    """Talks to the fake but behaves as live (in production only the live URL makes it live)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.is_live = True


class LiveFakeResource(BrokerResource):
    def make_alpaca(self, creds):
        return LiveAlpacaBroker(creds, timeout_s=2.0, retry_wait_seconds=0.01)


class CrashingBroker(AlpacaBroker):
    """The process dies right after the broker accepted the second order (before it is recorded)."""

    def submit(self, order):
        state = super().submit(order)
        self.sent = getattr(self, "sent", 0) + 1
        if self.sent == 2:
            raise KeyboardInterrupt("simulated crash after the broker accepted the order")
        return state


class CrashingResource(BrokerResource):
    def make_alpaca(self, creds):
        return CrashingBroker(creds, timeout_s=2.0, retry_wait_seconds=0.01)


@pytest.fixture
def fake():
    with FakeAlpaca(prices=dict(PRICES), secret_key=SECRET) as f:
        yield f


@pytest.fixture
def env(tmp_path, monkeypatch, fake):
    for v in ALPACA_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("APCA_API_KEY_ID", fake.api_key)
    monkeypatch.setenv("APCA_API_SECRET_KEY", SECRET)
    monkeypatch.setenv("APCA_API_BASE_URL", fake.base_url)
    monkeypatch.setenv("APCA_API_DATA_URL", fake.base_url)
    settings = load_settings({"KAIROS_DUCKDB_PATH": str(tmp_path / "k.duckdb"),
                              "KAIROS_OUTPUT_DIR": str(tmp_path / "outputs")})
    picks = write_picks(tmp_path / "outputs", db=tmp_path / "k.duckdb")
    return settings, picks, tmp_path


def _defs(settings, resource_cls=None):
    defs = build_definitions(settings)
    if resource_cls is None:
        return defs
    from dagster import Definitions

    base = defs.resources["broker"]
    broker = resource_cls(kind="alpaca", warehouse_path=str(settings.duckdb_path), api_key=base.api_key,
                          secret_key=base.secret_key, base_url=base.base_url, data_url=base.data_url)
    return Definitions(assets=list(defs.assets), resources={**defs.resources, "broker": broker}, executor=defs.executor)


def _run(defs, instance, selection, cfg):
    return run_selection(defs, selection, partition_key=WEEK, run_config={"ops": {selection[0] if selection[0] ==
                         "rebalance_approval" else "execution": {"config": cfg}}}, instance=instance, raise_on_error=False)


def _failure_text(result) -> str:
    from kairos_dagster.instance.runner import failure_messages as _failure_messages

    return "\n".join(_failure_messages(result))


def test_live_needs_approval_then_sends_each_order_once(env, fake):
    settings, picks, _ = env
    defs = _defs(settings, LiveFakeResource)
    with DagsterInstance.ephemeral() as inst:
        # Live OPG after 09:28 is refused; intraday overrides. Without an approval: no order at all.
        r = _run(defs, inst, ["execution"], {"mode": "execute", "intraday": True})
        assert not r.success and "live trading needs an approval" in _failure_text(r)
        assert fake.calls[("POST", "/v2/orders")] == 0
        r = _run(defs, inst, ["execution"], {"mode": "execute"})
        assert not r.success and "OPG" in _failure_text(r) and fake.calls[("POST", "/v2/orders")] == 0

        assert _run(defs, inst, ["rebalance_approval"], {"by": "carol"}).success
        for _ in range(2):  # a second run reconciles, never resubmits
            r = _run(defs, inst, ["execution"], {"mode": "execute", "intraday": True})
            assert r.success, _failure_text(r)
        assert sorted((o["symbol"], o["_qty"]) for o in fake.orders) == sorted((t, float(q)) for t, q in SHARES.items())
        assert all(len(fake.orders_for(o["client_order_id"])) == 1 for o in fake.orders)
        assert fake.calls[("POST", "/v2/orders")] == 4

        # Verification: all filled at the fake's price -> checks pass, fill rate 1.
        r = _run(defs, inst, ["execution_report"], {"mode": "verify"})
        assert r.success, _failure_text(r)
        checks = {c.check_name: c.passed for c in r.get_asset_check_evaluations()}
        assert checks == {"no_rejections": True, "no_unfilled": True, "no_partial_fills": True, "all_orders_final": True}


def test_partial_and_rejected_orders_fail_their_checks(env, fake):
    settings, picks, _ = env
    fake.fill_mode.update({"AAA": "partial", "BBB": "reject"})
    defs = _defs(settings)
    with DagsterInstance.ephemeral() as inst:
        r = _run(defs, inst, ["execution"], {"mode": "execute"})
        assert not r.success and "KAIROS_AUTO_PAPER=1" in _failure_text(r)  # paper, no approval, auto-paper off
        assert _run(defs, inst, ["rebalance_approval"], {"by": "dave"}).success
        assert _run(defs, inst, ["execution"], {"mode": "execute"}).success
        r = _run(defs, inst, ["execution_report"], {"mode": "verify"})
        assert r.success
        ev = {c.check_name: c for c in r.get_asset_check_evaluations()}
        assert not ev["no_rejections"].passed and ev["no_rejections"].severity.value == "ERROR"  # HIGH
        assert not ev["no_partial_fills"].passed and ev["no_partial_fills"].severity.value == "WARN"  # MEDIUM
        assert ev["no_unfilled"].passed


def test_crash_mid_submission_then_rerun_sends_each_order_exactly_once(env, fake):
    settings, picks, _ = env
    with DagsterInstance.ephemeral() as inst:
        assert _run(_defs(settings), inst, ["rebalance_approval"], {"by": "erin"}).success
        crashed = _run(_defs(settings, CrashingResource), inst, ["execution"], {"mode": "execute"})
        assert not crashed.success and len(fake.orders) == 2
        r = _run(_defs(settings), inst, ["execution"], {"mode": "execute"})
        assert r.success, _failure_text(r)
    assert len(fake.orders) == 4 and all(len(fake.orders_for(o["client_order_id"])) == 1 for o in fake.orders)
    assert all(n == 1 for n in fake.post_attempts.values())  # the re-run found the crashed order by lookup


def test_secret_never_in_logs_events_metadata_or_files(env, fake, tmp_path, caplog, capsys):
    settings, picks, _ = env
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "dagster_home"
    home.mkdir()
    defs = build_definitions(settings)
    assert defs.resources["broker"].kind == "alpaca" and SECRET not in repr(defs.resources["broker"])
    with DagsterInstance.local_temp(str(home)) as inst:
        assert _run(defs, inst, ["rebalance_approval"], {"by": "frank"}).success
        ids = []
        for cfg in ({"mode": "preview"}, {"mode": "execute"}):
            r = _run(defs, inst, ["execution"], cfg)
            assert r.success, _failure_text(r)
            ids.append(r.run_id)
        r = _run(defs, inst, ["execution_report"], {"mode": "verify"})
        ids.append(r.run_id)
        assert fake.calls[("POST", "/v2/orders")] == 4  # it really talked to the (authenticated) fake
        events = [str(e) for rid in ids for e in inst.all_logs(rid)]
        assert events and not [e for e in events if SECRET in e]
        for rid in ids:
            run = inst.get_run_by_id(rid)
            assert SECRET not in str(run.run_config) and SECRET not in str(run.tags)
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and SECRET not in caplog.text
    scanned = 0
    for f in Path(tmp_path).rglob("*"):
        if f.is_file():
            scanned += 1
            assert SECRET.encode() not in f.read_bytes(), f
    assert scanned >= 5  # the DuckDB file, the instance's storage, picks, preview and order files
