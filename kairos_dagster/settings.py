"""Typed settings read from the environment.

Every variable is documented in the README. A bad value fails at load with a message that names
the variable, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LAKE_PREFIX = "ducklake:"


@dataclass(frozen=True)
class Lake:
    """A DuckLake warehouse: `catalog` is the part after `ducklake:` (e.g. `postgres:host=... dbname=...`),
    `data_path` the folder or S3 URL of its Parquet files (kept in the catalog once it is created)."""

    catalog: str
    data_path: str | None = None

    def __str__(self) -> str:
        return f"{LAKE_PREFIX}{self.catalog}"



def parse_warehouse(spec: str | Path | Lake, data_path: str | None = None) -> Path | Lake:
    """The warehouse a setting names: `ducklake:postgres:<libpq params>` or a DuckDB file path.

    A password never goes in the spec (it would show in run config and logs): PostgreSQL's own
    PGPASSWORD or ~/.pgpass carry it."""
    if isinstance(spec, Lake):
        return spec
    raw = str(spec).strip()
    if not raw.startswith(LAKE_PREFIX):
        return Path(raw)
    catalog = raw[len(LAKE_PREFIX):].strip()
    if not catalog.startswith("postgres:"):
        raise SettingsError(f"KAIROS_WAREHOUSE: only a PostgreSQL catalog is supported (ducklake:postgres:...), "
                             f"got ducklake:{catalog.split(':')[0]}:...")
    if re.search(r"(^|[\s:])password\s*=", catalog, re.IGNORECASE):
        raise SettingsError("KAIROS_WAREHOUSE must not hold a password: set PGPASSWORD (or ~/.pgpass) instead")
    return Lake(catalog=catalog, data_path=(data_path or "").strip() or None)


def is_lake(where: str | Path | Lake) -> bool:
    return isinstance(where, Lake) or str(where).strip().startswith(LAKE_PREFIX)


PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The Dagster instance's settings, copied into DAGSTER_HOME (not at the root: `dagster dev` warns about one there)
INSTANCE_YAML = PROJECT_ROOT / "deploy" / "dagster.yaml"
DEFAULT_NASDAQ_BASE_URL = "https://data.nasdaq.com/api/v3"


class SettingsError(ValueError):
    """An environment variable with a value Kairos cannot use."""


def _path(env: Mapping[str, str], name: str, default: str) -> Path:
    raw = env.get(name, "").strip() or default
    p = Path(raw).expanduser()
    return p if p.is_absolute() else (Path.cwd() / p)


def _number(env: Mapping[str, str], name: str, default, cast, kind: str, minimum, maximum=None):
    """`name` parsed by `cast` (`kind` names it in errors), within [minimum, maximum]; `default` if unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
    if not minimum <= value or (maximum is not None and not value <= maximum):  # also rejects nan
        bound = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
        raise SettingsError(f"{name} must be {bound}, got {raw}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    return _number(env, name, default, int, "a whole number", minimum, maximum)


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    return _number(env, name, default, float, "a number", minimum, maximum)


def _monday(env: Mapping[str, str], name: str, default: str) -> dt.date:
    raw = env.get(name, "").strip() or default
    try:
        value = dt.date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an ISO date (YYYY-MM-DD), got {raw!r}") from None
    if value.weekday() != 0:
        raise SettingsError(f"{name} must be a Monday (weekly partitions start on Mondays), got {raw} "
                            f"({value.strftime('%A')})")
    if value < dt.date(1998, 1, 5):
        raise SettingsError(f"{name} must be on or after 1998-01-05 (start of SHARADAR history), got {raw}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be 1/0 (or true/false), got {raw!r}")


@dataclass(frozen=True)
class Settings:
    duckdb_path: Path
    data_source: str  # "synthetic" | "nasdaq"
    start_date: dt.date
    synthetic_tickers: int
    synthetic_seed: int
    synthetic_signal: float
    output_dir: Path
    models_dir: Path
    ml_retrain_weeks: int
    ml_retune_weeks: int
    xgb_device: str  # "cpu" | "cuda"
    auto_paper: bool
    ml_trials: int = 6  # Optuna trials per tune point (small default for the demo)
    optuna_storage: Path | str | None = None  # directory of Optuna journal files, or a database URL
    ml_anchor: dt.date | None = None  # walk-forward grid anchor; None: derived from start_date (assets/ml.py)
    as_of: dt.date | None = None  # KAIROS_AS_OF: replay the synthetic market as if this day were today
    nasdaq_base_url: str = DEFAULT_NASDAQ_BASE_URL  # KAIROS_NASDAQ_BASE_URL (a proxy, a local server)
    pool_wait_s: float = 600.0  # KAIROS_POOL_WAIT_S: how long a command waits for the warehouse slot
    # kill switches (the seed's ops.kill_switch): KAIROS_KILL_SWITCHES, KAIROS_MAX_DAILY_LOSS_PCT,
    # KAIROS_MIN_LIVE_SHARPE, KAIROS_LIVE_SHARPE_WEEKS, KAIROS_MAX_BACKTEST_GAP
    kill_switches: bool = True
    max_daily_loss_pct: float = 0.03
    min_live_sharpe: float = 0.5
    live_sharpe_weeks: int = 26
    max_backtest_gap: float = 0.05
    demo_traded_weeks: int = 8  # KAIROS_DEMO_TRADED_WEEKS: completed rebalances the demo paper-trades
    # KAIROS_SYNTHETIC_CACHE_DIR: where the synthetic market keeps generated panels of 1,000+ tickers for
    # later processes ("off": regenerate in every process)
    synthetic_cache_dir: Path | None = None
    # KAIROS_WAREHOUSE=ducklake:postgres:<libpq params> and KAIROS_LAKE_DATA_PATH: the warehouse on DuckLake;
    # unset: the DuckDB file at duckdb_path
    lake: Lake | None = None
    # KAIROS_PROCESSES: steps of one run executed at once, each in its own process (DuckLake only);
    # KAIROS_EXECUTOR: how (in_process, multiprocess, or k8s_job: each step a Kubernetes Job)
    processes: int = 1
    executor: str = "in_process"

    @property
    def warehouse(self) -> Path | Lake:
        """Where every table lives: the DuckLake, or the DuckDB file."""
        return self.lake if self.lake is not None else self.duckdb_path

    @property
    def nasdaq_key_present(self) -> bool:
        return bool(os.environ.get("NASDAQ_DATA_LINK_API_KEY", "").strip())


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    has_key = bool(env.get("NASDAQ_DATA_LINK_API_KEY", "").strip())
    source = env.get("KAIROS_DATA_SOURCE", "").strip().lower() or ("nasdaq" if has_key else "synthetic")
    if source not in {"synthetic", "nasdaq"}:
        raise SettingsError(f"KAIROS_DATA_SOURCE must be 'synthetic' or 'nasdaq', got {source!r}")
    if source == "nasdaq" and not has_key:
        raise SettingsError("KAIROS_DATA_SOURCE=nasdaq needs NASDAQ_DATA_LINK_API_KEY to be set")
    device = env.get("KAIROS_XGB_DEVICE", "").strip().lower() or "cpu"
    if device not in {"cpu", "cuda"}:
        raise SettingsError(f"KAIROS_XGB_DEVICE must be 'cpu' or 'cuda', got {device!r}")
    duckdb_path = _path(env, "KAIROS_DUCKDB_PATH", "data/kairos.duckdb")
    spec = env.get("KAIROS_WAREHOUSE", "").strip()
    if spec and not is_lake(spec):  # KAIROS_WAREHOUSE may name the DuckDB file too
        if env.get("KAIROS_DUCKDB_PATH", "").strip() and _path(env, "KAIROS_WAREHOUSE", spec) != duckdb_path:
            raise SettingsError(f"KAIROS_WAREHOUSE ({spec}) and KAIROS_DUCKDB_PATH ({duckdb_path}) name two "
                                "different warehouses: set one of them")
        duckdb_path = _path(env, "KAIROS_WAREHOUSE", spec)
    lake = _lake(env)
    as_of = _as_of(env, source)
    start_date = _monday(env, "KAIROS_START_DATE", "2016-01-04")
    if as_of is not None and as_of < start_date:
        raise SettingsError(f"KAIROS_AS_OF {as_of} is before KAIROS_START_DATE {start_date}")
    return Settings(
        duckdb_path=duckdb_path,
        data_source=source,
        start_date=start_date,
        synthetic_tickers=_int(env, "KAIROS_SYNTHETIC_TICKERS", 500, minimum=20, maximum=20_000),
        synthetic_seed=_int(env, "KAIROS_SYNTHETIC_SEED", 7, minimum=0),
        synthetic_signal=_float(env, "KAIROS_SYNTHETIC_SIGNAL", 1.0, minimum=0.0, maximum=20.0),
        output_dir=_path(env, "KAIROS_OUTPUT_DIR", "outputs"),
        models_dir=_path(env, "KAIROS_MODELS_DIR", str(duckdb_path.parent / "models")),
        synthetic_cache_dir=(None if env.get("KAIROS_SYNTHETIC_CACHE_DIR", "").strip().lower() == "off" else
                             _path(env, "KAIROS_SYNTHETIC_CACHE_DIR", str(duckdb_path.parent / "synthetic_cache"))),
        ml_retrain_weeks=_int(env, "KAIROS_ML_RETRAIN_WEEKS", 13, minimum=1, maximum=520),
        ml_retune_weeks=_int(env, "KAIROS_ML_RETUNE_WEEKS", 52, minimum=1, maximum=1040),
        xgb_device=device,
        auto_paper=_bool(env, "KAIROS_AUTO_PAPER", False),
        ml_trials=_int(env, "KAIROS_ML_TRIALS", 6, minimum=1, maximum=10_000),
        optuna_storage=_optuna_storage(env, duckdb_path),
        ml_anchor=_monday(env, "KAIROS_ML_ANCHOR", "") if env.get("KAIROS_ML_ANCHOR", "").strip() else None,
        as_of=as_of,
        nasdaq_base_url=_url(env, "KAIROS_NASDAQ_BASE_URL", DEFAULT_NASDAQ_BASE_URL),
        pool_wait_s=_float(env, "KAIROS_POOL_WAIT_S", 600.0, minimum=0.0, maximum=86_400.0),
        kill_switches=_bool(env, "KAIROS_KILL_SWITCHES", True),
        max_daily_loss_pct=_float(env, "KAIROS_MAX_DAILY_LOSS_PCT", 0.03, minimum=0.0001, maximum=0.99),
        min_live_sharpe=_float(env, "KAIROS_MIN_LIVE_SHARPE", 0.5, minimum=-10.0, maximum=10.0),
        live_sharpe_weeks=_int(env, "KAIROS_LIVE_SHARPE_WEEKS", 26, minimum=2, maximum=520),
        max_backtest_gap=_float(env, "KAIROS_MAX_BACKTEST_GAP", 0.05, minimum=0.0001, maximum=5.0),
        demo_traded_weeks=_int(env, "KAIROS_DEMO_TRADED_WEEKS", 8, minimum=1, maximum=52),
        lake=lake,
        processes=_int(env, "KAIROS_PROCESSES", 1, minimum=1, maximum=64),
        executor=_executor(env, lake),
    )


EXECUTORS = ("in_process", "multiprocess", "k8s_job")


def _executor(env: Mapping[str, str], lake: Lake | None) -> str:
    """KAIROS_EXECUTOR, by default in_process for one process and multiprocess for several. Anything but
    in_process writes from several processes at once: DuckLake only."""
    processes = _int(env, "KAIROS_PROCESSES", 1, minimum=1, maximum=64)
    raw = env.get("KAIROS_EXECUTOR", "").strip().lower()
    if raw and raw not in EXECUTORS:
        raise SettingsError(f"KAIROS_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {raw!r}")
    executor = raw or ("multiprocess" if processes > 1 else "in_process")
    if executor == "in_process" and processes > 1:
        raise SettingsError(f"KAIROS_PROCESSES={processes} with KAIROS_EXECUTOR=in_process: one process runs "
                            "one step at a time; unset KAIROS_EXECUTOR or choose multiprocess or k8s_job")
    if executor != "in_process" and lake is None:
        what = f"KAIROS_PROCESSES={processes}" if not raw else f"KAIROS_EXECUTOR={executor}"
        raise SettingsError(f"{what} needs the warehouse on DuckLake (KAIROS_WAREHOUSE=ducklake:postgres:...): "
                            "a DuckDB file takes one writing process")
    return executor


def _lake(env: Mapping[str, str]) -> Lake | None:
    raw = env.get("KAIROS_WAREHOUSE", "").strip()
    data_path = env.get("KAIROS_LAKE_DATA_PATH", "").strip()
    if not raw:
        if data_path:
            raise SettingsError("KAIROS_LAKE_DATA_PATH is set but KAIROS_WAREHOUSE is not a DuckLake "
                                "(ducklake:postgres:<libpq params>)")
        return None
    if not is_lake(raw):
        if data_path:
            raise SettingsError(f"KAIROS_LAKE_DATA_PATH is set but KAIROS_WAREHOUSE ({raw}) is a DuckDB file, "
                                "not a DuckLake (ducklake:postgres:<libpq params>)")
        return None
    lake = parse_warehouse(raw, data_path)
    if not data_path:
        raise SettingsError("KAIROS_WAREHOUSE is a DuckLake: set KAIROS_LAKE_DATA_PATH to the folder or S3 URL "
                            "of its data files")
    return lake


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not re.match(r"^https?://[^/\s]+", raw):
        raise SettingsError(f"{name} must be an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _as_of(env: Mapping[str, str], source: str) -> dt.date | None:
    """KAIROS_AS_OF: the day treated as today, on the morning before the open (data through the session
    before it). Synthetic only: the live feed serves what it has today, never a chosen day's view."""
    raw = env.get("KAIROS_AS_OF", "").strip()
    if not raw:
        return None
    try:
        value = dt.date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(f"KAIROS_AS_OF must be an ISO date (YYYY-MM-DD), got {raw!r}") from None
    if source != "synthetic":
        raise SettingsError(f"KAIROS_AS_OF replays the synthetic market as of a day; the {source} source "
                            "serves today's data: unset KAIROS_AS_OF")
    if not dt.date(1999, 1, 4) <= value <= dt.date(2040, 12, 1):
        raise SettingsError(f"KAIROS_AS_OF must be between 1999-01-04 and 2040-12-01, got {raw}")
    return value


def _optuna_storage(env: Mapping[str, str], duckdb_path: Path) -> Path | str:
    """A directory of Optuna journal files (default data/optuna), or a database URL such as
    postgresql://... or sqlite:///...: one database for every study, shared by parallel workers."""
    raw = env.get("KAIROS_OPTUNA_STORAGE", "").strip()
    if "://" in raw:
        if not re.match(r"^[a-z][a-z0-9+]*://", raw):
            raise SettingsError(f"KAIROS_OPTUNA_STORAGE is not a valid database URL: {raw.split('://')[0]!r}://...")
        return raw
    return _path(env, "KAIROS_OPTUNA_STORAGE", str(duckdb_path.parent / "optuna"))
