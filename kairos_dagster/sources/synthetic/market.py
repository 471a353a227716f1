"""The synthetic SHARADAR market: the embedded default source (no API key, no network).

`SyntheticMarket(seed, n_tickers).table(name, start, end, as_of=day)` serves TICKERS, SEP, DAILY, SF1,
SF2, SF3 and ACTIONS with the exact columns of `schemas.TABLES` as the feed serves them on the evening of
`day` (default `end`), deterministically in (seed, day): any range gives the same rows whether asked week
by week or all at once (see synthetic.panel for how). `updated(name, since, day)` answers
`lastupdated.gte=since`. `oracle(start, end)` exposes the planted truth; SIGNAL_DOC describes it.

As the live feed (see `_as_served`): SEP's open/high/low/close/volume are split-adjusted as of the serving
day and closeadj is the total-return index equal to closeunadj on that day; every split and dividend
rewrites the ticker's earlier rows and moves their `lastupdated`; a few bars are bad prints, corrected a
few sessions later. A row no event touched is bit-identical whatever the serving day.

Conventions that differ from the live feed, on purpose:
- TICKERS describes the whole synthetic history up to the fixed horizon (2040-12-31), just as the live
  TICKERS describes history up to today: isdelisted, lastpricedate and scalemarketcap are not
  point-in-time. Decide universes per date from SEP/DAILY.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import polars as pl

from kairos_dagster.sources.schemas import SECTORS, TABLES, conform, schema
from kairos_dagster.sources.synthetic import panel as sp

SOURCE = "synthetic"

SIGNAL_DOC = f"""Planted signal of the synthetic market (seeded, known, noisy).

Each session d, for every listed ticker, four characteristics observable from the tables on d:
  mom_12_1         log(closeadj[d-21] / closeadj[d-252])                (SEP, past prices only)
  quality_roe      roe of the latest ART row of SF1 with datekey <= d  (trailing netinc / equity)
  value_bp         log(equity of the latest ARQ row with datekey <= d / marketcap 21 sessions before d)
                   (marketcap as DAILY.marketcap * 1e6; the skip month keeps the recursion causal)
  insider_buys_63d number of SF2 rows with transactioncode 'P' and filingdate in the last 63 sessions
are z-scored cross-sectionally per date (winsorized at +-3; missing -> 0), and combined as
  score = sum(w_k * z_k) / sqrt(sum w_k^2),  weights {sp.SIGNAL_WEIGHTS}.
The planted expected idiosyncratic 5-session log return is
  alpha_5d = signal * c(regime) * sigma_i * sqrt(5) * score,
with `signal` the market's signal strength (KAIROS_SYNTHETIC_SIGNAL; 1, the default, is this market;
0 plants nothing; reduced-scale tests raise it to get the statistical power of more tickers),
with sigma_i the ticker's daily idiosyncratic vol and c by (trend, vol) regime
{sp.SIGNAL_SCALE} ((0,0)=bull/normal vol, (1,1)=bear/high vol). Each of the 5 sessions after d carries
alpha_5d(d)/5 of drift on top of beta * market + sector loading * sector factor + Student-t(4) noise.
oracle().expected_ret_5d = alpha_5d + 5 * beta * mu_market(trend on d): the expected forward 5-session
log return of closeadj given the characteristics and regime on d (to first order: characteristics move
slowly). The realized cross-sectional rank IC against forward 5-session closeadj returns is about
0.02-0.05, higher in bull/normal-vol regimes.
"""

_IDENTITY = re.compile(rf"{SOURCE} seed=(?P<seed>\d+) tickers=(?P<tickers>\d+) signal=(?P<signal>[0-9.eE+-]+)")

ORACLE_COLUMNS = ("ticker", "permaticker", "date", "expected_ret_5d", "alpha_5d", "mom_12_1", "quality_roe", "value_bp",
                  "insider_buys_63d", "beta", "sigma_idio", "regime_trend", "regime_vol")

PERMATICKER_BASE = 100_000  # ticker index k has permaticker 100,000 + k, whatever its symbol
SF1_MAX_FILING_LAG_DAYS = 100  # panel.fundamentals files 20-75 calendar days after the quarter, plus slack
_INDUSTRIES = ("Products", "Services", "Equipment")
_SCALES = ((50e6, "1 - Nano"), (300e6, "2 - Micro"), (2e9, "3 - Small"), (10e9, "4 - Mid"),
           (200e9, "5 - Large"), (np.inf, "6 - Mega"))
_OFFICERS = np.array(["Chief Executive Officer", "Chief Financial Officer", "Chief Operating Officer",
                      "General Counsel", "Director", "Director"])
_INVESTORS = np.array([f"SYNTHETIC CAPITAL {k:02d} LLC" for k in range(30)])


def _check_date(name: str, value: object) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise TypeError(f"{SOURCE}: {name} must be a datetime.date or None, got {value!r}")
    return value


def _d(x: np.ndarray) -> pl.Series:
    return pl.Series(x.astype("datetime64[D]")).cast(pl.Date)


def _tick(symbols: pl.Series, i: np.ndarray) -> pl.Series:
    """Ticker column for index array `i` (a polars gather: far cheaper than numpy unicode arrays)."""
    return symbols.gather(i)


def _nan_to_null(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col(pl.Float64).fill_nan(None))


class SyntheticMarket:
    """A deterministic SHARADAR-shaped market generated from `seed` (see module and SIGNAL_DOC)."""

    SIGNAL_DOC = SIGNAL_DOC
    EPOCH = sp.EPOCH
    HORIZON = sp.HORIZON

    def __init__(self, seed: int = 7, n_tickers: int = 500, signal: float = 1.0, *,
                 cache_dir: Path | None = None) -> None:
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{SOURCE}: seed must be a non-negative int, got {seed!r}")
        if not isinstance(n_tickers, int) or not 1 <= n_tickers <= 20_000:
            raise ValueError(f"{SOURCE}: n_tickers must be an int in 1..20000, got {n_tickers!r}")
        if not isinstance(signal, int | float) or not 0.0 <= float(signal) <= 20.0:
            raise ValueError(f"{SOURCE}: signal must be a number in 0..20, got {signal!r}")
        self.seed = seed
        self.n_tickers = n_tickers
        self.signal = float(signal)
        self.cache_dir = cache_dir  # where large panels are kept between processes (None: memory only)

    @property
    def identity(self) -> str:
        """What a warehouse records as its data source (kairos_meta.data_source): which market it holds."""
        return f"{SOURCE} seed={self.seed} tickers={self.n_tickers} signal={self.signal:g}"

    @classmethod
    def from_identity(cls, identity: str | None, *, cache_dir: Path | None = None) -> SyntheticMarket | None:
        """The market a recorded `identity` names, or None when it names another source (or nothing)."""
        m = _IDENTITY.fullmatch((identity or "").strip())
        if m is None:
            return None
        return cls(int(m["seed"]), int(m["tickers"]), float(m["signal"]), cache_dir=cache_dir)

    # ------------------------------------------------------------------ range helpers
    def _range(self, start: dt.date | None, end: dt.date | None) -> tuple[dt.date, dt.date] | None:
        start = _check_date("start", start)
        end = _check_date("end", end)
        if end is not None and end > sp.HORIZON:
            raise ValueError(f"{SOURCE}: end {end} is past the synthetic market's horizon {sp.HORIZON}")
        lo = max(start or sp.EPOCH, sp.EPOCH)
        hi = end or sp.HORIZON
        return None if lo > hi else (lo, hi)

    def _panel_for(self, end: dt.date) -> sp.Panel:
        return sp.panel(self.seed, self.n_tickers, end.year, self.signal, cache_dir=self.cache_dir)

    @staticmethod
    def _idx(lo: dt.date, hi: dt.date) -> tuple[int, int]:
        sess = sp.all_sessions()
        return (int(np.searchsorted(sess, np.datetime64(lo, "D"), "left")),
                int(np.searchsorted(sess, np.datetime64(hi, "D"), "right")))

    def _asof_session(self, day: dt.date | None) -> int:
        """The session index the feed is served as of: the last session on or before `day` (None: the horizon)."""
        return self._idx(sp.EPOCH, day or sp.HORIZON)[1] - 1

    def _symbols(self, a: int) -> pl.Series:
        """Every ticker's symbol as served on session `a`: history is keyed by the current symbol."""
        return pl.Series("ticker", sp.symbols_as_of(self.seed, self.n_tickers, a).tolist(), dtype=pl.String)

    def _symbol_order(self, a: int) -> np.ndarray:
        """Ticker indexes in the alphabetical order of their symbols on session `a` (key order of tables)."""
        return np.argsort(sp.symbols_as_of(self.seed, self.n_tickers, a).astype(str), kind="stable")

    # ------------------------------------------------------------------ public API
    def table(self, name: str, start: dt.date | None = None, end: dt.date | None = None, *,
              as_of: dt.date | None = None) -> pl.DataFrame:
        """SHARADAR table `name` with rows whose point-in-time column lies in [start, end] (inclusive), as
        the feed serves them on the evening of `as_of` (default: `end`): SEP split-adjusted as of that day,
        and only rows known by then (`lastupdated` <= as_of)."""
        spec = schema(name)
        as_of = _check_date("as_of", as_of)
        if spec.name == "TICKERS":
            return conform(self._tickers(self._asof_session(as_of)), spec, source=SOURCE)
        rng = self._range(start, min(end, as_of) if end is not None and as_of is not None else end or as_of)
        if rng is None:
            return spec.empty()
        if spec.name == "SEP":
            df = self._sep(*rng, as_of)
        else:
            builder = {"DAILY": self._daily, "SF1": self._sf1, "SF2": self._sf2, "SF3": self._sf3,
                       "ACTIONS": self._actions}[spec.name]
            df = builder(*rng, self._asof_session(as_of or rng[1]))
            if as_of is not None and "lastupdated" in df.columns:
                df = df.filter(pl.col("lastupdated") <= as_of)
        out = conform(df, spec, source=SOURCE)
        # SEP and DAILY are built in key order already; sorting 10M+ string keys would dominate.
        return out if spec.name in {"SEP", "DAILY"} else out.sort(list(spec.key))

    def oracle(self, start: dt.date, end: dt.date, *, as_of: dt.date | None = None) -> pl.DataFrame:
        """Planted truth per (ticker, session) in [start, end]: expected_ret_5d and its drivers, keyed by
        the symbols as served on `as_of` (default `end`) and by permaticker."""
        if start is None or end is None:
            raise ValueError(f"{SOURCE}: oracle needs both start and end dates")
        rng = self._range(start, end)
        if rng is None:
            return pl.DataFrame(schema={c: (pl.String if c == "ticker" else pl.Date if c == "date" else
                                            pl.Int64 if c == "permaticker" else
                                            pl.Int8 if c.startswith("regime") else pl.Float64)
                                        for c in ORACLE_COLUMNS})
        p = self._panel_for(rng[1])
        st = sp.static(self.seed, self.n_tickers)
        s, e = self._idx(*rng)
        a = self._asof_session(as_of or rng[1])
        t, i = self._cells(s, e, st, order=self._symbol_order(a))
        trend, vol = (r[t] for r in sp.regimes(self.seed))
        alpha = p.alpha_5d[t, i]
        return _nan_to_null(pl.DataFrame({
            "ticker": _tick(self._symbols(a), i),
            "permaticker": PERMATICKER_BASE + i.astype(np.int64),
            "date": _d(sp.all_sessions()[t]),
            "expected_ret_5d": alpha + 5 * st.beta[i] * np.asarray(sp.MARKET_MU)[trend],
            "alpha_5d": alpha,
            "mom_12_1": p.mom_12_1[t, i],
            "quality_roe": p.quality_roe[t, i],
            "value_bp": p.value_bp[t, i],
            "insider_buys_63d": p.insider_buys_63d[t, i],
            "beta": st.beta[i],
            "sigma_idio": st.sigma[i],
            "regime_trend": trend.astype(np.int8),
            "regime_vol": vol.astype(np.int8),
        }))

    # ------------------------------------------------------------------ builders
    @staticmethod
    def _cells(s: int, e: int, st: sp.Static, only: np.ndarray | None = None, *,
               order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(session, ticker) index pairs of listed tickers for sessions s..e-1, ticker-major in `order`
        (ticker indexes in their symbols' alphabetical order); `only` (ticker indexes) restricts the
        tickers. The cells come out in (symbol, date) order: no sort of string keys needed."""
        rows = np.arange(s, e)
        tick = order if only is None else order[np.isin(order, only)]
        alive = (rows[None, :] >= st.first_idx[tick, None]) & (rows[None, :] <= st.last_idx[tick, None])
        ii, tt = np.nonzero(alive)
        return rows[tt], tick[ii]

    def _prices(self, p: sp.Panel, st: sp.Static, t: np.ndarray, i: np.ndarray) -> dict[str, np.ndarray]:
        """close (split-adjusted), closeadj, closeunadj and market cap (USD) at cells (t, i)."""
        first = st.first_idx[i]
        dcum = p.cum[t, i] - p.cum[first, i]
        close = st.p0[i] * np.exp(dcum + p.divcum[t, i] - p.divcum[first, i])
        return {
            "close": close,
            "closeadj": st.p0[i] * np.exp(dcum),
            "closeunadj": close * np.exp(-(p.logsf[t, i] - p.logsf[first, i])),
            "mcap": st.shares0[i] * close,
        }

    def _sep(self, lo: dt.date, hi: dt.date, as_of: dt.date | None = None,
             only: np.ndarray | None = None) -> pl.DataFrame:
        """SEP rows dated lo..hi as served on the evening of `as_of` (default `hi`): see `_as_served`."""
        a = self._asof_session(max(as_of or hi, hi))
        p = self._panel_for(sp.all_sessions()[a].item())
        st = sp.static(self.seed, self.n_tickers)
        s, e = self._idx(lo, hi)
        t, i = self._cells(s, e, st, only, order=self._symbol_order(a))
        px = self._prices(p, st, t, i)
        prev = np.maximum(t - 1, 0)
        prev_close = self._prices(p, st, prev, i)["close"]
        r = np.where(t > st.first_idx[i], np.log(px["close"] / prev_close), 0.0)
        # Intraday noise: one block per calendar year of the whole (session x ticker) grid.
        noise = np.empty((len(t), 4))
        years = sp.session_years()[t]
        for y in np.unique(years):  # a handful of years per call, vectorized inside
            sl = sp.year_slice(int(y))
            block = sp._rng(self.seed, sp._S_OHLCV, int(y)).standard_normal((sl.stop - sl.start, st.n, 4))
            m = years == y
            noise[m] = block[t[m] - sl.start, i[m]]
        _, vol = sp.regimes(self.seed)
        sig = st.sigma[i] * np.asarray(sp.IDIO_VOL_MULT)[vol[t]]
        close = px["close"]
        intraday = 0.6 * r + 0.4 * sig * noise[:, 0]
        open_ = close * np.exp(-intraday)
        high = np.maximum(open_, close) * np.exp(0.5 * sig * np.abs(noise[:, 1]))
        low = np.minimum(open_, close) * np.exp(-0.5 * sig * np.abs(noise[:, 2]))
        dollar_vol = (st.turnover[i] * px["mcap"] * np.exp(0.35 * noise[:, 3] - 0.06)
                      * (1.0 + 0.5 * np.minimum(np.abs(r) / sig, 6.0)) * (1.0 + 0.3 * vol[t]))
        bar = {"open": open_, "high": high, "low": low, "close": close}
        return self._as_served(p, st, t, i, a, bar, px, np.round(dollar_vol / px["closeunadj"]))

    def _as_served(self, p: sp.Panel, st: sp.Static, t: np.ndarray, i: np.ndarray, a: int,
                   bar: dict[str, np.ndarray], px: dict[str, np.ndarray], raw_volume: np.ndarray) -> pl.DataFrame:
        """SEP cells as the feed serves them on the evening of session `a`, the way SHARADAR does:
        - rows are keyed by the ticker's symbol on `a` (a ticker change re-keys the whole history);
        - open/high/low/close are split-adjusted as of `a` (as of the delisting for a delisted ticker):
          close == closeunadj on that day; volume is the raw share count times the later splits' ratios;
        - closeadj is the total-return index equal to closeunadj on that day;
        - `lastupdated` is the row's date, moved to the day of each later split, dividend or ticker change that rewrote
          it (<= a) and to the day a bad print was corrected;
        - a bad print (panel.bad_prints) is served at its wrong price level until its correction day.
        The adjustment factors change only on events, so a row no event touched is bit-identical
        whatever the as-of day."""
        first = st.first_idx[i]
        ai = np.minimum(a, st.last_idx[i])  # the ticker's as-of session
        split_since = p.logsf[t, i] - p.logsf[first, i]  # splits from listing through t
        to_asof = p.logsf[ai, i] - p.logsf[first, i]  # splits from listing through the as-of day
        k = np.exp(-to_asof)  # bar (adjusted to the first day) -> adjusted as of the as-of day
        k_adj = np.exp(p.divcum[ai, i] - p.divcum[first, i] - to_asof)
        factor, corrected_at = self._bad_prints(t, i, a)
        lu = np.maximum(t, corrected_at)
        last_event = self._last_events(p, st, a)[i]
        lu = np.where(last_event > t, np.maximum(lu, last_event), lu)
        sess = sp.all_sessions()
        return pl.DataFrame({
            "ticker": _tick(self._symbols(a), i), "date": _d(sess[t]),
            **{c: v * k * factor for c, v in bar.items()},
            "volume": raw_volume * np.exp(to_asof - split_since),
            "closeadj": st.p0[i] * np.exp(p.cum[t, i] - p.cum[first, i]) * k_adj * factor,
            "closeunadj": px["closeunadj"] * factor, "lastupdated": _d(sess[lu]),
        })

    def _bad_prints(self, t: np.ndarray, i: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Per cell: the factor its served prices are off by as of session `a` (1: a good print), and the
        session its correction was published (-1: none by `a`)."""
        years = sp.session_years()
        bp = sp.bad_prints_between(self.seed, self.n_tickers, int(years[t.min()]) if len(t) else 0,
                                   int(years[t.max()]) if len(t) else -1)
        factor, corrected_at = np.ones(len(t)), np.full(len(t), -1, np.int64)
        if not len(bp.key):
            return factor, corrected_at
        key = t * self.n_tickers + i
        pos = np.minimum(np.searchsorted(bp.key, key), len(bp.key) - 1)
        hit = bp.key[pos] == key
        fixed = bp.t[pos] + bp.lag[pos]
        factor = np.where(hit & (fixed > a), bp.factor[pos], 1.0)
        corrected_at = np.where(hit & (fixed <= a), fixed, -1)
        return factor, corrected_at

    def _last_events(self, p: sp.Panel, st: sp.Static, a: int) -> np.ndarray:
        """Per ticker, the session of its latest split, ex-dividend or ticker change on or before its as-of
        session (-1: none): the day the feed last rewrote its earlier rows."""
        ai = np.minimum(a, st.last_idx)
        rn = sp.renames(self.seed, self.n_tickers)
        idx = np.concatenate([p.split_idx, p.ex_idx, rn.t]).astype(np.int64)
        tick = np.concatenate([p.split_tick, p.ex_tick, rn.i]).astype(np.int64)
        m = idx <= ai[tick]
        idx, tick = idx[m], tick[m]
        last = np.full(st.n, -1, np.int64)
        if len(idx):  # the latest event per ticker: sort by (ticker, session), keep each ticker's last
            order = np.lexsort((idx, tick))
            t_sorted, i_sorted = tick[order], idx[order]
            ends = np.r_[t_sorted[1:] != t_sorted[:-1], True]
            last[t_sorted[ends]] = i_sorted[ends]
        return last

    def updated(self, name: str, since: dt.date, as_of: dt.date, *, not_before: dt.date | None = None) -> pl.DataFrame:
        """Rows of SHARADAR `name` as served on the evening of `as_of` whose `lastupdated` is on or after
        `since` (what `lastupdated.gte=` asks the live feed): new rows, and older rows the feed rewrote
        (dated `not_before` or later, when given)."""
        spec = schema(name)
        if "lastupdated" not in spec.columns:
            raise ValueError(f"{SOURCE}: {spec.name} has no lastupdated column")
        since, as_of = _check_date("since", since), _check_date("as_of", as_of)
        if since > as_of:
            return spec.empty()
        if spec.name == "SF1":  # MR rows are dated by their report period, known at the filing (<= 75 days on)
            lo = max(not_before or sp.EPOCH, since - dt.timedelta(days=SF1_MAX_FILING_LAG_DAYS))
            return self.table("SF1", lo, as_of, as_of=as_of).filter(pl.col("lastupdated") >= since)
        recent = self.table(spec.name, since, as_of, as_of=as_of)
        if spec.name != "SEP":  # DAILY rows are never rewritten in this market: lastupdated is the date
            return recent.filter(pl.col("lastupdated") >= since)
        st = sp.static(self.seed, self.n_tickers)
        a = self._idx(sp.EPOCH, as_of)[1] - 1
        s = self._idx(since, since)[0]  # the first session on or after `since`
        p = self._panel_for(as_of)
        events = self._last_events(p, st, a)
        years = sp.session_years()
        bp = sp.bad_prints_between(self.seed, self.n_tickers, int(years[max(s - sp.CORRECTION_MAX_LAG, 0)]),
                                   int(years[a]))
        fixed = bp.t + bp.lag
        listed = (bp.t >= st.first_idx[bp.i]) & (bp.t <= st.last_idx[bp.i])  # a print of a listed ticker
        touched = np.union1d(np.nonzero(events >= s)[0], bp.i[listed & (fixed >= s) & (fixed <= a)])
        if not len(touched) or since <= sp.EPOCH:
            return recent.filter(pl.col("lastupdated") >= since)
        lo = max(sp.EPOCH, not_before or sp.EPOCH)
        if lo >= since:
            return recent.filter(pl.col("lastupdated") >= since)
        older = conform(self._sep(lo, since - dt.timedelta(days=1), as_of, touched), spec, source=SOURCE)
        return pl.concat([older.filter(pl.col("lastupdated") >= since), recent.filter(pl.col("lastupdated") >= since)]
                         ).sort(list(spec.key))

    def _quarterly(self) -> dict[str, np.ndarray]:
        """Derived quarterly statement lines (quarters x tickers), as reported."""
        fu = sp.fundamentals(self.seed, self.n_tickers)
        st = sp.static(self.seed, self.n_tickers)
        rev, ni, eq = fu.revenue, fu.netinc, fu.equity
        gp = rev * fu.gm
        da = 0.05 * rev
        debt = 0.5 * (st.leverage - 1) * eq
        interest = 0.05 / 4 * debt
        ebt = np.where(ni > 0, ni / 0.79, ni)
        ebit = ebt + interest
        assets = st.leverage * eq
        ncfo = ni + da
        capex = -0.06 * rev
        return {"revenue": rev, "cor": rev - gp, "gp": gp, "opinc": ebit, "opex": gp - ebit,
                "sgna": 0.7 * (gp - ebit), "rnd": 0.3 * (gp - ebit), "ebit": ebit, "ebitda": ebit + da,
                "ebt": ebt, "netinc": ni, "netinccmn": ni, "assets": assets, "assetsc": 0.35 * assets,
                "liabilities": assets - eq, "equity": eq, "debt": debt, "debtc": 0.2 * debt,
                "debtnc": 0.8 * debt, "cashneq": 0.1 * assets, "capex": capex, "ncfo": ncfo,
                "fcf": ncfo + capex, "divs": np.where(st.div_q > 0, 0.4 * np.maximum(ni, 0), 0.0)}

    def _daily(self, lo: dt.date, hi: dt.date, a: int) -> pl.DataFrame:
        p = self._panel_for(hi)
        st = sp.static(self.seed, self.n_tickers)
        s, e = self._idx(lo, hi)
        t, i = self._cells(s, e, st, order=self._symbol_order(a))
        mcap = self._prices(p, st, t, i)["mcap"]
        q = self._quarterly()
        k = p.k_latest[t, i]
        has = k >= 0
        kk = np.maximum(k, 0)

        def ttm_at(col: str) -> np.ndarray:
            return np.where(has, sp.ttm(q[col])[kk, i], np.nan)

        def bs_at(col: str) -> np.ndarray:
            return np.where(has, q[col][kk, i], np.nan)

        ev = mcap + bs_at("debt") - bs_at("cashneq")
        ev = np.where(has, ev, mcap)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = pl.DataFrame({
                "ticker": _tick(self._symbols(a), i), "date": _d(sp.all_sessions()[t]), "ev": ev / 1e6,
                "evebit": ev / ttm_at("ebit"), "evebitda": ev / ttm_at("ebitda"), "marketcap": mcap / 1e6,
                "pb": mcap / bs_at("equity"), "pe": mcap / ttm_at("netinc"), "ps": mcap / ttm_at("revenue"),
            })
        return _nan_to_null(out.with_columns(pl.col("date").alias("lastupdated")))

    def _sf1(self, lo: dt.date, hi: dt.date, a: int) -> pl.DataFrame:
        p = self._panel_for(hi)
        st = sp.static(self.seed, self.n_tickers)
        fu = sp.fundamentals(self.seed, self.n_tickers)
        q = self._quarterly()
        sess = sp.all_sessions()
        lo64, hi64 = np.datetime64(lo, "D"), np.datetime64(hi, "D")
        valid = sp.sf1_valid(fu, st)
        rp = fu.reportperiod[:, None]
        frames = []
        for dim in ("ARQ", "ART", "MRQ"):  # three dimensions, each vectorized over quarters x tickers
            datekey = np.broadcast_to(rp, fu.datekey.shape) if dim == "MRQ" else fu.datekey
            sel = valid & (datekey >= lo64) & (datekey <= hi64)
            kq, ii = np.nonzero(sel)
            vals = {c: (sp.ttm(v) if dim == "ART" and c not in _BALANCE else v)[kq, ii] for c, v in q.items()}
            if dim == "MRQ":
                vals["revenue"] = vals["revenue"] * fu.restate_rev[kq, ii]
                vals["netinc"] = vals["netinc"] * fu.restate_ni[kq, ii]
                vals["netinccmn"] = vals["netinc"]
            # Prices on the row's datekey (the session on or before it for MR rows dated a quarter end).
            t_px = np.searchsorted(sess, datekey[kq, ii], "right") - 1
            px = self._prices(p, st, t_px, ii)
            # As-reported share count: shares at the report period (split basis of that time).
            t_rp = np.clip(np.searchsorted(sess, fu.reportperiod[kq], "right") - 1, st.first_idx[ii], None)
            shares = st.shares0[ii] * np.exp(p.logsf[t_rp, ii] - p.logsf[st.first_idx[ii], ii])
            ttm_ni = sp.ttm(q["netinc"])[kq, ii]
            ttm_rev = sp.ttm(q["revenue"])[kq, ii]
            ttm_ebit, ttm_ebitda = sp.ttm(q["ebit"])[kq, ii], sp.ttm(q["ebitda"])[kq, ii]
            mcap, price = px["mcap"], px["closeunadj"]
            ev = mcap + vals["debt"] - vals["cashneq"]
            eq = vals["equity"]
            rev, ni = vals["revenue"], vals["netinc"]
            dps = vals.pop("divs") / shares
            rpd = fu.reportperiod[kq]
            year = rpd.astype("datetime64[Y]").astype(np.int64) + 1970
            qtr = (rpd.astype("datetime64[M]").astype(np.int64) % 12) // 3 + 1
            with np.errstate(divide="ignore", invalid="ignore"):
                vals.update({
                    "eps": ni / shares, "epsdil": ni / (shares * 1.01), "shareswa": shares, "sharesbas": shares,
                    "fcfps": vals["fcf"] / shares, "roe": ni / eq, "roa": ni / vals["assets"],
                    "roic": vals["ebit"] * 0.79 / (vals["debt"] + eq), "ros": vals["ebit"] / rev,
                    "grossmargin": vals["gp"] / rev, "netmargin": ni / rev, "ebitdamargin": vals["ebitda"] / rev,
                    "currentratio": vals["assetsc"] / (0.4 * vals["liabilities"]), "de": vals["liabilities"] / eq,
                    "pb": mcap / eq, "pe": mcap / ttm_ni, "ps": mcap / ttm_rev, "marketcap": mcap, "ev": ev,
                    "evebit": ev / ttm_ebit, "evebitda": ev / ttm_ebitda, "price": price, "bvps": eq / shares,
                    "sps": rev / shares, "dps": dps, "divyield": dps * (4 if dim != "ART" else 1) / price,
                    "payoutratio": np.where(ni > 0, dps * shares / ni, 0.0),
                    "workingcapital": vals["assetsc"] - 0.4 * vals["liabilities"],
                    "invcap": vals["debt"] + eq, "sharefactor": np.ones(len(kq)),
                })
            ar_dk = fu.datekey[kq, ii]
            frames.append(pl.DataFrame({
                "ticker": _tick(self._symbols(a), ii), "dimension": np.full(len(kq), dim),
                "calendardate": _d(rpd), "datekey": _d(datekey[kq, ii]), "reportperiod": _d(rpd),
                "fiscalperiod": pl.Series([f"{y}-Q{qq}" for y, qq in zip(year.tolist(), qtr.tolist(), strict=True)],
                                          dtype=pl.String),
                "lastupdated": _d(ar_dk), **vals,
            }))
        return _nan_to_null(pl.concat(frames, how="diagonal"))

    def _sf2(self, lo: dt.date, hi: dt.date, a: int) -> pl.DataFrame:
        p = self._panel_for(hi)
        st = sp.static(self.seed, self.n_tickers)
        ev = p.insiders
        s, e = self._idx(lo, hi)
        m = (ev.filing_idx >= s) & (ev.filing_idx < e)
        i, code, owner = ev.ticker_idx[m], ev.code[m], ev.owner[m]
        t_tx = ev.tx_idx[m]
        price = self._prices(p, st, t_tx, i)["closeunadj"]
        sign = np.where(code == "S", -1.0, 1.0)
        shares = sign * ev.shares[m]
        px = np.where(code == "A", 0.0, np.round(price, 2))
        before = ev.holding[m]
        sess = sp.all_sessions()
        is_dir = owner >= 4
        df = pl.DataFrame({
            "ticker": _tick(self._symbols(a), i), "filingdate": _d(sess[ev.filing_idx[m]]),
            "formtype": np.full(len(i), "4"),
            "issuername": np.char.add(st.ticker[i].astype(str), " Corp"),
            "ownername": np.char.add(np.char.add(st.ticker[i].astype(str), " Insider "), owner.astype(str)),
            "officertitle": _OFFICERS[owner], "isdirector": np.where(is_dir, "Y", "N"),
            "isofficer": np.where(is_dir, "N", "Y"), "istenpercentowner": np.full(len(i), "N"),
            "transactiondate": _d(sess[t_tx]), "securityadcode": np.full(len(i), "ND"),
            "transactioncode": code, "sharesownedbeforetransaction": before, "transactionshares": shares,
            "sharesownedfollowingtransaction": np.maximum(before + shares, 0.0),
            "transactionpricepershare": px, "transactionvalue": shares * px,
            "securitytitle": np.full(len(i), "Common Stock"), "directorindirect": np.full(len(i), "D"),
        }).with_columns(
            pl.lit(None, pl.String).alias("natureofownership"), pl.lit(None, pl.Date).alias("dateexercisable"),
            pl.lit(None, pl.Float64).alias("priceexercisable"), pl.lit(None, pl.Date).alias("expirationdate"),
        )
        # rownum numbers the transactions of one owner's filing, in transaction order.
        return df.sort("ticker", "filingdate", "ownername", "transactiondate", "transactioncode",
                       "transactionshares").with_columns(
            (pl.int_range(pl.len()).over("ticker", "filingdate", "ownername") + 1).cast(pl.Int64).alias("rownum"))

    def _sf3(self, lo: dt.date, hi: dt.date, a: int) -> pl.DataFrame:
        p = self._panel_for(hi)
        st = sp.static(self.seed, self.n_tickers)
        sess = sp.all_sessions()
        qe = sp.quarter_ends()
        ks = np.flatnonzero((qe >= np.datetime64(lo, "D")) & (qe <= np.datetime64(hi, "D")))
        frames = []
        for k in ks:  # one quarter at a time (a handful per call), vectorized over tickers x investors
            t = int(np.searchsorted(sess, qe[k], "right")) - 1
            if t < 0:
                continue
            year = int(qe[k].astype("datetime64[Y]").astype(np.int64)) + 1970
            rng = sp._rng(self.seed, sp._S_SF3, year, int(k))
            n_inv = len(_INVESTORS)
            size_rank = np.argsort(np.argsort(st.mcap0)) / max(st.n - 1, 1)
            holds = rng.random((st.n, n_inv)) < (0.15 + 0.5 * size_rank)[:, None]
            frac = np.exp(rng.normal(np.log(0.004), 0.8, (st.n, n_inv)))
            listed = (st.first_idx <= t) & (st.last_idx >= t)
            ii, jj = np.nonzero(holds & listed[:, None])
            tt = np.full(len(ii), t)
            px = self._prices(p, st, tt, ii)
            shares_out = px["mcap"] / px["closeunadj"]
            units = np.round(frac[ii, jj] * shares_out)
            frames.append(pl.DataFrame({
                "ticker": _tick(self._symbols(a), ii), "investorname": _INVESTORS[jj],
                "securitytype": np.full(len(ii), "SHR"),
                "calendardate": _d(np.full(len(ii), qe[k])), "value": units * px["closeunadj"],
                "units": units, "price": px["closeunadj"],
            }))
        if not frames:
            return TABLES["SF3"].empty()
        return pl.concat(frames)

    def _actions(self, lo: dt.date, hi: dt.date, a: int) -> pl.DataFrame:
        p = self._panel_for(hi)
        st = sp.static(self.seed, self.n_tickers)
        s, e = self._idx(lo, hi)
        sess = sp.all_sessions()
        symbols = self._symbols(a)
        parts = []
        m = (p.ex_idx >= s) & (p.ex_idx < e)
        t, i = p.ex_idx[m], p.ex_tick[m]
        prev_raw = self._prices(p, st, t - 1, i)["closeunadj"]
        parts.append(("dividend", t, i, np.round(st.div_q[i] * prev_raw, 4)))
        m = (p.split_idx >= s) & (p.split_idx < e)
        parts.append(("split", p.split_idx[m], p.split_tick[m], p.split_ratio[m]))
        f = st.first_idx
        m = (f >= s) & (f < e)
        parts.append(("listed", f[m], np.flatnonzero(m), np.full(int(m.sum()), np.nan)))
        m = st.delisted & (st.last_idx >= s) & (st.last_idx < e)
        parts.append(("delisted", st.last_idx[m], np.flatnonzero(m), np.full(int(m.sum()), np.nan)))
        names = _names(st)
        schema_ = {"date": pl.Date, "action": pl.String, "ticker": pl.String, "name": pl.String,
                   "value": pl.Float64, "contraticker": pl.String}
        frames = [pl.DataFrame({
            "date": _d(sess[t]), "action": np.full(len(t), act, dtype=object).astype(str), "ticker": _tick(symbols, i),
            "name": names[i], "value": v, "contraticker": [None] * len(t)}, schema=schema_)
            for act, t, i, v in parts]
        # A ticker change: `tickerchangefrom` under the new symbol, `tickerchangeto` under the old one.
        rn = sp.renames(self.seed, self.n_tickers)
        before = np.where(np.r_[False, rn.i[1:] == rn.i[:-1]], np.r_[rn.symbol[:1], rn.symbol[:-1]],
                          st.ticker[rn.i].astype(object))
        m = (rn.t >= s) & (rn.t < e) & (rn.t <= a)
        for act, sym, contra in (("tickerchangefrom", rn.symbol[m], before[m]),
                                 ("tickerchangeto", before[m], rn.symbol[m])):
            frames.append(pl.DataFrame({
                "date": _d(sess[rn.t[m]]), "action": [act] * int(m.sum()), "ticker": sym.tolist(),
                "name": names[rn.i[m]], "value": np.full(int(m.sum()), np.nan), "contraticker": contra.tolist()},
                schema=schema_))
        return _nan_to_null(pl.concat(frames)).with_columns(
            pl.when(pl.col("contraticker").is_not_null()).then(pl.col("name")).alias("contraname"))

    def _tickers(self, a: int) -> pl.DataFrame:
        """One row per (table, ticker) keyed by the symbols of session `a`; `relatedtickers` lists a
        changed ticker's earlier symbols (space-separated, oldest first); permaticker never changes."""
        st = sp.static(self.seed, self.n_tickers)
        fu = sp.fundamentals(self.seed, self.n_tickers)
        sess = sp.all_sessions()
        etf = ~st.has_fundamentals
        sector = np.array(SECTORS)[st.sector_idx]
        sector_s = np.where(etf, None, sector)
        industry = np.where(etf, None, np.char.add(np.char.add(sector.astype(str), " "),
                                                    np.array(_INDUSTRIES)[st.industry_idx]))
        # scalemarketcap from the listing size (the live feed uses the max observed cap: not point-in-time).
        scale = np.array([lab for _, lab in _SCALES])[np.searchsorted([b for b, _ in _SCALES], st.mcap0)]
        valid = sp.sf1_valid(fu, st)
        any_q = valid.any(axis=0)
        first_q = fu.reportperiod[np.argmax(valid, axis=0)]
        last_q = fu.reportperiod[len(fu.reportperiod) - 1 - np.argmax(valid[::-1], axis=0)]
        base = pl.DataFrame({
            "permaticker": PERMATICKER_BASE + np.arange(st.n), "ticker": self._symbols(a), "name": _names(st),
            "exchange": st.exchange, "isdelisted": np.where(st.delisted, "Y", "N"), "category": st.category,
            "cusips": [f"{x:09d}" for x in (12_345_000 + np.arange(st.n) * 7).tolist()],
            "siccode": 1000 + st.sector_idx * 700 + st.industry_idx * 10,
            "sicsector": sector_s, "sicindustry": industry, "famasector": sector_s, "famaindustry": industry,
            "sector": sector_s, "industry": industry, "scalemarketcap": scale, "scalerevenue": scale,
            "relatedtickers": self._earlier_symbols(a), "currency": np.full(st.n, "USD"),
            "location": np.where(st.category == "ADR Common Stock", "United Kingdom",
                                 np.where(st.category == "Canadian Common Stock", "Canada", "U.S.A")),
            "lastupdated": _d(np.full(st.n, np.datetime64(sp.HORIZON, "D"))),
            "firstadded": _d(sess[st.first_idx]), "firstpricedate": _d(sess[st.first_idx]),
            "lastpricedate": _d(sess[st.last_idx]),
            "firstquarter": _d(first_q), "lastquarter": _d(last_q),
            "secfilings": [f"https://www.sec.gov/cgi-bin/browse-edgar?action=getcompany&CIK={100_000 + k}"
                           for k in range(st.n)],
            "companysite": [f"https://www.{t.lower()}.example.com" for t in st.ticker.tolist()],  # as listed
        }).with_columns(pl.Series("_any_q", any_q))
        sep = base.with_columns(pl.lit("SEP").alias("table"))
        sf1 = base.filter(pl.Series(st.has_fundamentals) & pl.col("_any_q")).with_columns(pl.lit("SF1").alias("table"))
        out = pl.concat([sep, sf1]).with_columns(
            pl.when(pl.col("_any_q")).then(pl.col("firstquarter")).alias("firstquarter"),
            pl.when(pl.col("_any_q")).then(pl.col("lastquarter")).alias("lastquarter"),
        )
        return out.sort("table", "ticker")

    def _earlier_symbols(self, a: int) -> pl.Series:
        st, rn = sp.static(self.seed, self.n_tickers), sp.renames(self.seed, self.n_tickers)
        m = rn.t <= a
        changed = (pl.DataFrame({"i": rn.i[m], "sym": rn.symbol[m].tolist()}, schema={"i": pl.Int64, "sym": pl.String})
                   .group_by("i").agg(pl.col("sym").head(pl.len() - 1)))  # sorted by session within a ticker
        out = pl.DataFrame({"i": np.arange(st.n), "first": st.ticker.tolist()}).join(changed, on="i", how="left")
        return out.sort("i").select(
            pl.when(pl.col("sym").is_not_null()).then(pl.concat_list("first", "sym").list.join(" "))
        ).to_series().alias("relatedtickers")


_BALANCE = {"assets", "assetsc", "liabilities", "equity", "debt", "debtc", "debtnc", "cashneq"}


def _names(st: sp.Static) -> np.ndarray:
    suffix = np.where(st.category == "ETF", " Synthetic ETF", " Holdings Inc")
    return np.char.add(st.ticker.astype(str), suffix).astype(object)
