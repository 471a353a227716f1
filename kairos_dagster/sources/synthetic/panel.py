"""Generation core of the synthetic SHARADAR market: static ticker attributes and the price panel.

Everything is a deterministic function of (seed, n_tickers) and a fixed session grid from EPOCH to
HORIZON. Random shocks are drawn per calendar year from `np.random.default_rng([seed, stream, year])`,
so a panel generated through year Y holds exactly the same numbers for years <= Y as a panel generated
through any later year: asking for more history never changes what was already handed out.

Arrays are (sessions x tickers) float64; session index 0 is EPOCH. Tickers that are not listed on a
session still carry a latent path there; the table builders mask them out with `first_idx`/`last_idx`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import numpy as np

from kairos_dagster.calendar import sessions_array
from kairos_dagster.sources.schemas import SECTORS

EPOCH = dt.date(2005, 1, 3)
HORIZON = dt.date(2040, 12, 31)

# Random streams: one integer per kind of draw, so adding a stream never shifts another one.
_S_STATIC, _S_RETURNS, _S_REGIME, _S_OHLCV, _S_FUND, _S_SF2, _S_SF3, _S_CORR, _S_RENAME = range(9)

MOM_SKIP, MOM_LOOKBACK = 21, 252  # 12-1 momentum: closeadj 21 sessions ago over 252 sessions ago
VALUE_LAG = 21  # value uses the market cap of the skip month (Fama-French style lagged ME)
INSIDER_WINDOW = 63  # insider purchases filed over the last 63 sessions (~3 months)
# Chunk of the sequential price recursion. The signal at t uses prices up to t-21 only, so 21 sessions
# can be cumulated at once, vectorized over tickers and sessions.
_CHUNK = 21

# Planted signal: weights of the cross-sectional z-scores and the IC scale per regime.
SIGNAL_WEIGHTS = {"mom_12_1": 0.45, "quality_roe": 0.35, "value_bp": 0.35, "insider_buys_63d": 0.30}
# (trend, vol) -> scale c: alpha_5d = c * sigma_idio * sqrt(5) * score  (score has unit cross-sectional sd)
SIGNAL_SCALE = {(0, 0): 0.05, (0, 1): 0.03, (1, 0): 0.035, (1, 1): 0.02}
MARKET_MU = (0.00055, -0.0009)  # daily log drift: bull, bear
MARKET_SIGMA = (0.0085, 0.021)  # daily vol: normal, high
IDIO_VOL_MULT = (1.0, 1.4)  # idiosyncratic vol multiplier: normal, high


@lru_cache(maxsize=1)
def all_sessions() -> np.ndarray:
    """XNYS sessions EPOCH..HORIZON (datetime64[D]); the fixed grid every panel indexes into."""
    return sessions_array(EPOCH, HORIZON)


@lru_cache(maxsize=1)
def session_years() -> np.ndarray:
    return all_sessions().astype("datetime64[Y]").astype(np.int64) + 1970


def year_slice(year: int) -> slice:
    years = session_years()
    return slice(int(np.searchsorted(years, year, "left")), int(np.searchsorted(years, year, "right")))


@lru_cache(maxsize=1)
def quarter_ends() -> np.ndarray:
    """Calendar quarter ends 2004-12-31 .. HORIZON (datetime64[D])."""
    months = np.arange(np.datetime64("2005-01"), np.datetime64("2041-01"), 3)  # quarter starts
    return (months.astype("datetime64[D]") - 1).astype("datetime64[D]")


def _rng(seed: int, stream: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, *extra])


def _letters(codes: np.ndarray, width: int = 4) -> list[str]:
    chars = np.empty((len(codes), width), dtype="<U1")
    c = codes.copy()
    for j in range(width - 1, -1, -1):  # loop over 4 letter positions, vectorized over tickers
        chars[:, j] = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))[c % 26]
        c //= 26
    return ["".join(row) for row in chars]


@dataclass(frozen=True)
class Static:
    """Per-ticker attributes, drawn from the seed alone (no dependence on any requested range)."""

    n: int
    ticker: np.ndarray  # str
    category: np.ndarray  # str
    exchange: np.ndarray
    sector_idx: np.ndarray  # int
    industry_idx: np.ndarray
    first_idx: np.ndarray  # first session index (into all_sessions)
    last_idx: np.ndarray
    delisted: np.ndarray  # bool
    p0: np.ndarray  # first close, USD
    shares0: np.ndarray  # shares outstanding at listing
    beta: np.ndarray
    sector_load: np.ndarray
    sigma: np.ndarray  # daily idiosyncratic vol
    turnover: np.ndarray  # daily dollar volume / market cap
    div_q: np.ndarray  # quarterly dividend yield (0 for non-payers)
    div_offset: np.ndarray  # ex-dividend day within the quarter
    split_hi: np.ndarray  # raw price that triggers a forward split
    split_delay: np.ndarray  # sessions between the split decision and its ex-date
    bp0: np.ndarray  # book / market at listing
    leverage: np.ndarray  # assets / equity
    eq_turn: np.ndarray  # annual revenue / equity
    gm_base: np.ndarray
    roe_base: np.ndarray
    insider_rate: np.ndarray  # Form 4 transactions per year
    has_fundamentals: np.ndarray  # bool: ETFs file no SF1

    @property
    def mcap0(self) -> np.ndarray:
        return self.p0 * self.shares0


@lru_cache(maxsize=8)
def static(seed: int, n: int) -> Static:
    rng = _rng(seed, _S_STATIC, n)
    n_sess = len(all_sessions())
    # Sorted, so ticker index order is alphabetical order and tables come out in key order unsorted.
    codes = np.sort(rng.choice(26**4, size=n, replace=False))
    category = rng.choice(
        np.array(["Domestic Common Stock", "ADR Common Stock", "ETF", "Canadian Common Stock"]),
        size=n, p=[0.88, 0.06, 0.04, 0.02],
    )
    exchange = rng.choice(np.array(["NYSE", "NASDAQ", "NYSEMKT"]), size=n, p=[0.4, 0.5, 0.1])
    sector_idx = rng.choice(len(SECTORS), size=n, p=np.array([5, 7, 11, 6, 5, 14, 14, 13, 5, 15, 5]) / 100)
    industry_idx = rng.integers(0, 3, size=n)
    # 60% trade at the epoch; the rest list uniformly through the horizon. Lifetimes ~ exponential(20y).
    first_idx = np.where(rng.random(n) < 0.6, 0, rng.integers(0, n_sess - 60, size=n))
    life = (rng.exponential(20.0, size=n) * 252).astype(np.int64) + 60
    last_idx = first_idx + life
    delisted = last_idx < n_sess - 1
    last_idx = np.minimum(last_idx, n_sess - 1)
    p0 = np.clip(np.exp(rng.normal(np.log(25.0), 0.8, n)), 2.0, 400.0)
    mcap0 = np.clip(np.exp(rng.normal(np.log(1.5e9), 1.5, n)), 3e7, 8e11)
    size_z = (np.log(mcap0) - np.log(1.5e9)) / 1.5
    sigma = np.clip(0.019 * np.exp(0.3 * rng.standard_normal(n) - 0.18 * size_z), 0.007, 0.06)
    payer = rng.random(n) < 0.45
    return Static(
        n=n,
        ticker=np.array(_letters(codes)),
        category=category,
        exchange=exchange,
        sector_idx=sector_idx,
        industry_idx=industry_idx,
        first_idx=first_idx.astype(np.int64),
        last_idx=last_idx.astype(np.int64),
        delisted=delisted,
        p0=p0,
        shares0=mcap0 / p0,
        beta=np.clip(rng.normal(1.0, 0.3, n), 0.3, 2.0),
        sector_load=rng.uniform(0.6, 1.3, n),
        sigma=sigma,
        turnover=np.exp(rng.normal(np.log(0.005), 0.5, n)),
        div_q=np.where(payer, rng.uniform(0.01, 0.05, n) / 4, 0.0),
        div_offset=rng.integers(5, 80, size=n),
        split_hi=rng.uniform(150.0, 600.0, n),
        split_delay=rng.integers(0, 15, size=n),
        bp0=np.exp(rng.normal(np.log(0.45), 0.6, n)),
        leverage=rng.uniform(1.3, 4.0, n),
        eq_turn=np.exp(rng.normal(np.log(1.2), 0.5, n)),
        gm_base=rng.uniform(0.2, 0.6, n),
        roe_base=rng.normal(0.10, 0.06, n),
        insider_rate=np.exp(rng.normal(np.log(4.0), 0.7, n)),
        has_fundamentals=category != "ETF",
    )


@lru_cache(maxsize=8)
def regimes(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(trend, vol) per session over the whole grid: trend 0 bull / 1 bear, vol 0 normal / 1 high.

    Alternating segments with exponential durations, drawn from the seed alone (so fixed over any range).
    """
    rng = _rng(seed, _S_REGIME)
    n_sess = len(all_sessions())

    def alternate(mean_a: float, mean_b: float) -> np.ndarray:
        d = np.empty(400, dtype=np.int64)
        d[0::2] = rng.exponential(mean_a, 200).astype(np.int64) + 20
        d[1::2] = rng.exponential(mean_b, 200).astype(np.int64) + 10
        return np.repeat(np.arange(400) % 2, d)[:n_sess].astype(np.int8)

    return alternate(550.0, 160.0), alternate(300.0, 70.0)


@dataclass(frozen=True)
class Fundamentals:
    """Quarterly latent fundamentals for every quarter end on the grid (quarters x tickers)."""

    reportperiod: np.ndarray  # datetime64[D], quarter ends
    datekey: np.ndarray  # datetime64[D] (quarters x tickers): as-reported filing date
    dk_idx: np.ndarray  # session index of datekey
    revenue: np.ndarray
    gm: np.ndarray
    netinc: np.ndarray
    equity: np.ndarray
    restate_rev: np.ndarray  # MRQ/ARQ factor (1.0 when never restated)
    restate_ni: np.ndarray


@lru_cache(maxsize=8)
def fundamentals(seed: int, n: int) -> Fundamentals:
    st = static(seed, n)
    qe = quarter_ends()
    nq = len(qe)
    years = qe.astype("datetime64[Y]").astype(np.int64) + 1970
    # Per-year blocks (4 quarters x tickers x 6 draws), so quarter k only depends on its own year.
    draws = np.empty((nq, n, 6))
    for y in np.unique(years):  # one block per calendar year (36), vectorized over tickers
        rows = np.flatnonzero(years == y)
        block = _rng(seed, _S_FUND, int(y)).standard_normal((4, n, 6))
        draws[rows] = block[4 - len(rows):] if len(rows) < 4 else block
    q = np.empty((nq, n))  # quality latent, AR(1) over quarters
    q[0] = draws[0, :, 0]
    for k in range(1, nq):
        q[k] = 0.85 * q[k - 1] + np.sqrt(1 - 0.85**2) * draws[k, :, 0]
    roe_ann = st.roe_base + 0.08 * q + 0.03 * draws[:, :, 1]
    gm = np.clip(st.gm_base + 0.06 * q + 0.02 * draws[:, :, 2], 0.03, 0.95)
    payout = np.where(st.div_q > 0, 0.4, 0.0)
    growth = np.cumprod(1 + roe_ann / 4 * (1 - payout), axis=0)
    # Anchor book equity at listing: equity(quarter before listing) = bp0 * mcap0.
    k_list = np.clip(np.searchsorted(qe, all_sessions()[st.first_idx], "left") - 1, 0, nq - 1)
    equity = st.bp0 * st.mcap0 * growth / growth[k_list, np.arange(n)]
    prev_eq = np.vstack([equity[:1] / (1 + roe_ann[:1] / 4), equity[:-1]])
    revenue = prev_eq * st.eq_turn / 4 * np.exp(0.05 * draws[:, :, 3])
    netinc = roe_ann / 4 * prev_eq
    # Filing lag 20..70 calendar days, rolled to the next session: datekey - reportperiod in [20, 75].
    lag = 20 + (np.abs(draws[:, :, 4]) * 18).astype(np.int64) % 51
    sess = all_sessions()
    raw_dk = qe[:, None] + lag.astype("timedelta64[D]")
    dk_idx = np.searchsorted(sess, raw_dk, "left")
    datekey = np.where(dk_idx < len(sess), sess[np.minimum(dk_idx, len(sess) - 1)], raw_dk)
    restated = np.abs(draws[:, :, 5]) > 2.05  # ~4% of quarters are later restated (MR rows only)
    return Fundamentals(
        reportperiod=qe, datekey=datekey, dk_idx=dk_idx,
        revenue=revenue, gm=gm, netinc=netinc, equity=equity,
        restate_rev=np.where(restated, 1 + 0.04 * draws[:, :, 3], 1.0),
        restate_ni=np.where(restated, 1 - 0.15 * np.sign(draws[:, :, 5]), 1.0),
    )


def sf1_valid(fu: Fundamentals, st: Static) -> np.ndarray:
    """(quarters x tickers): quarters that have SF1 rows: ended and filed while listed, not an ETF."""
    rp_idx = np.searchsorted(all_sessions(), fu.reportperiod, "right") - 1
    return ((rp_idx[:, None] >= st.first_idx) & (fu.dk_idx <= st.last_idx) & st.has_fundamentals
            & (fu.dk_idx < len(all_sessions())))


def ttm(x: np.ndarray) -> np.ndarray:
    """Trailing four-quarter sum along axis 0 (the first three quarters sum what exists, scaled to 4)."""
    c = np.cumsum(x, axis=0)
    out = c.copy()
    out[4:] = c[4:] - c[:-4]
    out[:4] = c[:4] * 4 / np.arange(1, 5)[:, None]
    return out


@dataclass(frozen=True)
class InsiderEvents:
    """Form 4 transactions: one entry per transaction (all years of the panel)."""

    ticker_idx: np.ndarray
    tx_idx: np.ndarray  # session index of the transaction
    filing_idx: np.ndarray  # session index of the filing (may lie beyond the panel)
    code: np.ndarray  # 'P', 'S', 'A'
    owner: np.ndarray  # 0..5: which insider of the company
    shares: np.ndarray  # unsigned size
    holding: np.ndarray  # shares owned before


def insider_events(seed: int, n: int, last_year: int) -> InsiderEvents:
    st = static(seed, n)
    n_sess = len(all_sessions())
    parts = []
    for y in range(EPOCH.year, last_year + 1):  # one block per year, vectorized over tickers
        sl = year_slice(y)
        rng = _rng(seed, _S_SF2, y)
        counts = rng.poisson(st.insider_rate)
        tot = int(counts.sum())
        ti = np.repeat(np.arange(n), counts)
        tx = rng.integers(sl.start, sl.stop, size=tot)
        filing = np.minimum(tx + rng.integers(0, 3, size=tot), n_sess - 1)
        code = rng.choice(np.array(["P", "S", "A"]), size=tot, p=[0.25, 0.45, 0.30])
        owner = rng.integers(0, 6, size=tot)
        shares = np.round(np.exp(rng.normal(np.log(5000), 1.2, tot)))
        holding = np.round(np.exp(rng.normal(np.log(80000), 1.0, tot)))
        keep = (tx >= st.first_idx[ti]) & (filing <= st.last_idx[ti])
        parts.append((ti[keep], tx[keep], filing[keep], code[keep], owner[keep], shares[keep], holding[keep]))
    cols = [np.concatenate([p[j] for p in parts]) for j in range(7)]
    return InsiderEvents(*cols)


@dataclass(frozen=True)
class Panel:
    seed: int
    n: int
    last_year: int
    T: int  # sessions in the panel: all_sessions()[:T]
    cum: np.ndarray  # cumulative total log return since EPOCH (T x n)
    divcum: np.ndarray  # cumulative log(1 - dividend yield) on ex-dates since listing (T x n)
    logsf: np.ndarray  # cumulative log split ratio since listing (T x n)
    ret_noalpha_mkt: np.ndarray  # market factor log return (T,)
    alpha_5d: np.ndarray  # planted expected 5-session idiosyncratic log return at t (T x n)
    mom_12_1: np.ndarray
    value_bp: np.ndarray
    quality_roe: np.ndarray
    insider_buys_63d: np.ndarray
    k_latest: np.ndarray  # index of the latest filed quarter at t (-1: none) (T x n, int32)
    ex_idx: np.ndarray  # ex-dividend events: session index
    ex_tick: np.ndarray
    split_idx: np.ndarray  # split events: session index, ticker, ratio (new shares per old share)
    split_tick: np.ndarray
    split_ratio: np.ndarray
    insiders: InsiderEvents

    def alive(self, rows: np.ndarray, st: Static) -> np.ndarray:
        r = rows[:, None]
        return (r >= st.first_idx[None, :]) & (r <= st.last_idx[None, :])


def _xs_z(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Cross-sectional z-score per row over `valid` cells, winsorized at 3; invalid cells -> 0."""
    xv = np.where(valid, x, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = valid.sum(axis=1, keepdims=True)
        mu = np.nansum(xv, axis=1, keepdims=True) / np.maximum(cnt, 1)
        sd = np.sqrt(np.nansum((xv - mu) ** 2, axis=1, keepdims=True) / np.maximum(cnt - 1, 1))
        z = np.where(valid & (sd > 0), (xv - mu) / np.where(sd > 0, sd, 1.0), 0.0)
    return np.clip(np.nan_to_num(z), -3.0, 3.0)


def _build(seed: int, n: int, last_year: int, signal: float = 1.0) -> Panel:
    st = static(seed, n)
    fu = fundamentals(seed, n)
    T = year_slice(last_year).stop
    rows = np.arange(T)
    alive = (rows[:, None] >= st.first_idx) & (rows[:, None] <= st.last_idx)
    trend, vol = (a[:T] for a in regimes(seed))

    # Factor and idiosyncratic shocks, one block per calendar year.
    mkt = np.empty(T)
    sec = np.empty((T, len(SECTORS)))
    eps = np.empty((T, n))
    for y in range(EPOCH.year, last_year + 1):  # 36 blocks at most, vectorized inside
        sl = year_slice(y)
        rng = _rng(seed, _S_RETURNS, y)
        m = sl.stop - sl.start
        mkt[sl] = rng.standard_t(5, m) / np.sqrt(5 / 3)
        sec[sl] = rng.standard_normal((m, len(SECTORS)))
        eps[sl] = rng.standard_t(4, (m, n)) / np.sqrt(2.0)
    mkt = np.asarray(MARKET_MU)[trend] + np.asarray(MARKET_SIGMA)[vol] * mkt
    sec *= (0.006 * np.where(vol == 1, 1.5, 1.0))[:, None]
    vmult = np.asarray(IDIO_VOL_MULT)[vol]
    base = st.beta * mkt[:, None] + st.sector_load * sec[:, st.sector_idx] + st.sigma * vmult[:, None] * eps
    del eps, sec

    # Dividends: one ex-date per quarter at a ticker-specific offset, strictly after listing.
    qe = quarter_ends()
    sess = all_sessions()
    ex_raw = (qe[:, None] + 1 + st.div_offset[None, :].astype("timedelta64[D]"))
    ex_all = np.searchsorted(sess, ex_raw, "left")
    ok = (ex_all < T) & (ex_all > st.first_idx) & (ex_all <= st.last_idx) & (st.div_q > 0)
    ex_idx, ex_tick = ex_all[ok], np.nonzero(ok)[1]
    divlog = np.zeros((T, n))
    divlog[ex_idx, ex_tick] = np.log1p(-st.div_q[ex_tick])
    divcum = np.cumsum(divlog, axis=0)
    del divlog

    # Fundamentals known at t: latest quarter whose datekey <= t and that was filed while listed.
    filed = np.zeros((T + 1, n), dtype=np.int32)
    qk, qi = np.nonzero(fu.dk_idx < T)
    np.add.at(filed, (fu.dk_idx[qk, qi], qi), 1)
    k_latest = np.cumsum(filed[:T], axis=0, dtype=np.int32) - 1
    del filed
    kk = np.maximum(k_latest, 0)
    cols = np.arange(n)[None, :]
    has_f = (k_latest >= 0) & sf1_valid(fu, st)[kk, cols] & alive
    k_latest = np.where(has_f, k_latest, -1).astype(np.int32)
    roe_ttm = ttm(fu.netinc) / fu.equity
    quality = np.where(has_f, roe_ttm[kk, cols], np.nan)
    log_equity = np.where(has_f, np.log(np.maximum(fu.equity[kk, cols], 1.0)), np.nan)
    del kk

    # Insider purchases (code P) filed in the last 63 sessions.
    ins = insider_events(seed, n, last_year)
    buys = np.zeros((T + INSIDER_WINDOW, n))
    pm = (ins.code == "P") & (ins.filing_idx < T)
    np.add.at(buys, (ins.filing_idx[pm], ins.ticker_idx[pm]), 1.0)
    cb = np.cumsum(buys[:T], axis=0)
    insider = cb.copy()
    insider[INSIDER_WINDOW:] -= cb[:-INSIDER_WINDOW]
    del buys, cb
    insider = np.where(alive, insider, np.nan)

    # Sequential price recursion in chunks: drift at t+1 = alpha_5d(t) / 5, alpha from data <= t.
    scale = signal * np.asarray([[SIGNAL_SCALE[(0, 0)], SIGNAL_SCALE[(0, 1)]],
                                 [SIGNAL_SCALE[(1, 0)], SIGNAL_SCALE[(1, 1)]]])[trend, vol]
    wsum = np.sqrt(sum(w * w for w in SIGNAL_WEIGHTS.values()))
    z_ins = _xs_z(np.log1p(np.nan_to_num(insider)), alive)
    z_q = _xs_z(quality, ~np.isnan(quality))
    log_size0 = np.log(st.mcap0)
    cum = np.empty((T, n))
    mom = np.full((T, n), np.nan)
    value = np.full((T, n), np.nan)
    alpha = np.zeros((T, n))
    cum[0] = base[0]
    first = st.first_idx
    d_first = divcum[np.minimum(first, T - 1), np.arange(n)]
    for a in range(1, T + 1, _CHUNK):  # ~12 chunks a year; each is vectorized over tickers and sessions
        b = min(a + _CHUNK, T + 1)
        t = np.arange(a - 1, b - 1)  # alpha dates: they drive sessions a..b-1
        tm = t[:, None]
        ok_m = (tm - MOM_LOOKBACK >= first) & alive[t]
        mom[t] = np.where(ok_m, cum[np.maximum(t - MOM_SKIP, 0)] - cum[np.maximum(t - MOM_LOOKBACK, 0)], np.nan)
        lag = np.maximum(t - VALUE_LAG, 0)
        ok_v = (tm - VALUE_LAG >= first) & has_f[t]
        c_first = cum[np.minimum(first, a - 1), cols[0]]  # only used where listing is > 21 sessions back
        log_mcap = log_size0 + cum[lag] - c_first + divcum[lag] - d_first
        value[t] = np.where(ok_v, log_equity[t] - log_mcap, np.nan)
        score = (SIGNAL_WEIGHTS["mom_12_1"] * _xs_z(mom[t], ok_m)
                 + SIGNAL_WEIGHTS["quality_roe"] * z_q[t]
                 + SIGNAL_WEIGHTS["value_bp"] * _xs_z(value[t], ok_v)
                 + SIGNAL_WEIGHTS["insider_buys_63d"] * z_ins[t]) / wsum
        alpha[t] = np.where(alive[t], scale[t, None] * st.sigma * np.sqrt(5.0) * score, 0.0)
        hi = min(b, T)
        if hi > a:
            cum[a:hi] = cum[a - 1] + np.cumsum(base[a:hi] + alpha[a - 1:hi - 1] / 5.0, axis=0)
    del base, z_ins, z_q

    split_idx, split_tick, split_ratio = _splits(st, cum, divcum, T)
    logsf = np.zeros((T, n))
    np.add.at(logsf, (split_idx, split_tick), np.log(split_ratio))
    logsf = np.cumsum(logsf, axis=0)
    return Panel(
        seed=seed, n=n, last_year=last_year, T=T, cum=cum, divcum=divcum, logsf=logsf,
        ret_noalpha_mkt=mkt, alpha_5d=alpha, mom_12_1=mom, value_bp=value, quality_roe=quality,
        insider_buys_63d=insider, k_latest=k_latest, ex_idx=ex_idx, ex_tick=ex_tick,
        split_idx=split_idx, split_tick=split_tick, split_ratio=split_ratio, insiders=ins,
    )


# Bad prints: a (ticker, session) bar first published at a wrong price level, corrected by the vendor a
# few sessions later (SEP rows whose values and `lastupdated` change after the fact).
CORRECTION_RATE = 1e-4  # share of (ticker, session) bars first published wrong (~5 a week at 5,000 tickers)
CORRECTION_MAX_LAG = 7  # the correction arrives 1..7 sessions after the bad print


@dataclass(frozen=True)
class BadPrints:
    """Bad prints of one calendar year: session index, ticker index, sessions to the correction, and the
    factor the bad bar's prices were off by (sorted by key = session * n + ticker)."""

    key: np.ndarray
    t: np.ndarray
    i: np.ndarray
    lag: np.ndarray
    factor: np.ndarray


@lru_cache(maxsize=64)
def bad_prints(seed: int, n: int, year: int) -> BadPrints:
    """Deterministic in (seed, n, year): one uniform draw per (session, ticker) of the year decides
    whether the bar is a bad print, after how many sessions it is corrected and by how much it was off."""
    sl = year_slice(year)
    u = _rng(seed, _S_CORR, year).random((sl.stop - sl.start, n))
    tt, ii = np.nonzero(u < CORRECTION_RATE)
    v = u[tt, ii] / CORRECTION_RATE  # uniform on [0, 1) given a bad print
    lag = 1 + np.floor(v * CORRECTION_MAX_LAG).astype(np.int64)
    frac = v * CORRECTION_MAX_LAG - (lag - 1)  # uniform on [0, 1) again
    sign = np.where(lag % 2 == 0, 1.0, -1.0)
    factor = 1.0 + sign * (0.02 + 0.13 * frac)  # off by 2%..15%, either way
    t = tt.astype(np.int64) + sl.start
    key = t * n + ii
    order = np.argsort(key, kind="stable")
    return BadPrints(key[order], t[order], ii[order].astype(np.int64), lag[order], factor[order])


def bad_prints_between(seed: int, n: int, first_year: int, last_year: int) -> BadPrints:
    parts = [bad_prints(seed, n, y) for y in range(max(first_year, EPOCH.year), last_year + 1)]
    if not parts:
        z = np.zeros(0, np.int64)
        return BadPrints(z, z, z, z, np.zeros(0))
    return BadPrints(*(np.concatenate([getattr(b, f) for b in parts]) for f in ("key", "t", "i", "lag", "factor")))


# Ticker changes: a company keeps its permaticker and takes a new symbol; the feed re-keys its whole
# history to the new symbol (the live feed: a few hundred changes a year among ~6,000 listed names).
RENAME_RATE = 0.02  # ticker changes per listed ticker-year
RENAME_MIN_AGE = 60  # sessions after listing before a change can happen


@dataclass(frozen=True)
class Renames:
    """Ticker changes, sorted by (ticker index, session): from session `t` on, ticker `i` trades as
    `symbol` (five letters, so never an original four-letter symbol nor another change's)."""

    t: np.ndarray
    i: np.ndarray
    symbol: np.ndarray


@lru_cache(maxsize=8)
def renames(seed: int, n: int) -> Renames:
    """Deterministic in (seed, n) alone: a Poisson number of changes over each ticker's listed life, on
    sessions drawn uniformly in it."""
    st = static(seed, n)
    rng = _rng(seed, _S_RENAME, n)
    lo = st.first_idx + RENAME_MIN_AGE
    span = np.maximum(st.last_idx - lo, 0)
    count = rng.poisson(RENAME_RATE * span / 252.0)
    i = np.repeat(np.arange(n), count)
    t = lo[i] + np.floor(rng.random(len(i)) * span[i]).astype(np.int64)
    codes = rng.choice(26**5, size=len(i), replace=False)
    order = np.lexsort((t, i))
    i, t, codes = i[order], t[order], codes[order]
    keep = np.r_[True, (i[1:] != i[:-1]) | (t[1:] != t[:-1])]  # one change per (ticker, session)
    return Renames(t[keep].astype(np.int64), i[keep].astype(np.int64),
                   np.array(_letters(codes[keep], width=5), dtype=object))


def symbols_as_of(seed: int, n: int, a: int) -> np.ndarray:
    """Each ticker's symbol on session `a`: its latest change on or before `a`, else its listing symbol."""
    st, rn = static(seed, n), renames(seed, n)
    out = st.ticker.astype(object)
    m = rn.t <= a
    i, sym = rn.i[m], rn.symbol[m]
    if len(i):  # sorted by (ticker, session): each ticker's last change wins
        last = np.r_[i[1:] != i[:-1], True]
        out[i[last]] = sym[last]
    return out


_SPLIT_RATIOS = np.array([2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 20.0, 50.0])


def _splits(st: Static, cum: np.ndarray, divcum: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward splits when the raw price passes a ticker's threshold, 1-for-10 reverse splits below $1.

    Decided on a fixed grid of sessions (every 21) from raw prices known then; the ex-date follows a
    ticker-specific delay. Splits never change returns or market caps, only raw prices and share counts.
    """
    n = st.n
    cols = np.arange(n)
    first = st.first_idx
    c_first = cum[np.minimum(first, T - 1), cols]
    d_first = divcum[np.minimum(first, T - 1), cols]
    log_sf = np.zeros(n)
    out_i, out_t, out_r = [], [], []
    for g in range(_CHUNK, T, _CHUNK):  # decision grid, vectorized over tickers
        eff = g + 1 + st.split_delay
        ok = (g > first) & (eff <= st.last_idx) & (eff < T)
        raw = st.p0 * np.exp(cum[g] - c_first + divcum[g] - d_first - log_sf)
        fwd = ok & (raw > st.split_hi)
        rev = ok & (raw < 1.0)
        ratio = np.ones(n)
        need = raw / (0.45 * st.split_hi)
        ratio[fwd] = _SPLIT_RATIOS[np.minimum(np.searchsorted(_SPLIT_RATIOS, need[fwd]), len(_SPLIT_RATIOS) - 1)]
        ratio[rev] = 0.1
        hit = fwd | rev
        if hit.any():
            out_i.append(eff[hit])
            out_t.append(cols[hit])
            out_r.append(ratio[hit])
            log_sf[hit] += np.log(ratio[hit])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return np.concatenate(out_i), np.concatenate(out_t), np.concatenate(out_r)


_CACHE: dict[tuple[int, int, float], Panel] = {}
_LOG = logging.getLogger(__name__)
_LOCK = threading.Lock()

# Panels of at least this many tickers are also kept on disk (when the caller names a folder): building
# one at 5,000 tickers takes ~16 s, mapping it back a few milliseconds, so a Friday run in a new process
# does not regenerate twenty years of prices to serve one week. Smaller panels build in about a second.
DISK_CACHE_MIN_TICKERS = 1000
_PANEL_ARRAYS = [f.name for f in fields(Panel) if f.name not in ("seed", "n", "last_year", "T", "insiders")]
_INSIDER_ARRAYS = [f.name for f in fields(InsiderEvents)]


@lru_cache(maxsize=1)
def _generator_version() -> str:
    """What a stored panel's numbers depend on besides (seed, n, signal, last_year): this module's code,
    numpy (the random streams) and the session grid. Any change makes earlier files unused."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(np.__version__.encode())
    h.update(all_sessions().tobytes())
    h.update("|".join(SECTORS).encode())  # the one input defined outside this module
    return h.hexdigest()[:16]


def _disk_prefix(seed: int, n: int, signal: float) -> str:
    return f"panel-seed{seed}-n{n}-signal{signal:g}-"


def _disk_name(seed: int, n: int, signal: float, last_year: int) -> str:
    return f"{_disk_prefix(seed, n, signal)}{_generator_version()}-through{last_year}"


def _load_from_disk(folder: Path, seed: int, n: int, signal: float, last_year: int) -> Panel | None:
    """A stored panel through `last_year` or later (the shortest such), memory-mapped read-only, or None."""
    head = f"{_disk_prefix(seed, n, signal)}{_generator_version()}-through"
    years = sorted(int(d.name[len(head):]) for d in folder.glob(head + "*")
                   if d.name[len(head):].isdigit() and int(d.name[len(head):]) >= last_year) if folder.is_dir() else []
    for year in years:
        d = folder / f"{head}{year}"
        try:
            meta = json.loads((d / "meta.json").read_text())
            arrays = {k: np.load(d / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in _PANEL_ARRAYS}
            ins = InsiderEvents(*(np.load(d / f"insiders.{k}.npy", mmap_mode="r", allow_pickle=False)
                                  for k in _INSIDER_ARRAYS))
            if (meta["seed"], meta["n"], meta["last_year"]) == (seed, n, year) and arrays["cum"].shape == (meta["T"], n):
                return Panel(seed=seed, n=n, last_year=year, T=int(meta["T"]), insiders=ins, **arrays)
        except (OSError, ValueError, KeyError):
            pass
        # Folders appear whole (renamed into place), so this one was damaged afterwards: drop it.
        _LOG.warning("synthetic market: stored panel %s is unreadable or inconsistent; removed, regenerated", d)
        shutil.rmtree(d, ignore_errors=True)
    return None


def _store_on_disk(folder: Path, p: Panel, signal: float) -> None:
    """Write the panel to a private folder, then rename it into place (another process may race: the
    first rename wins, both hold the same numbers). Earlier versions and shorter panels of this market
    are removed: the new one serves them, and so are private folders a killed writer left an hour ago."""
    final = folder / _disk_name(p.seed, p.n, signal, p.last_year)
    if final.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for torn in folder.glob(".panel-*"):
        with suppress(OSError):
            if time.time() - torn.stat().st_mtime > 3600:
                shutil.rmtree(torn, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=folder))
    try:
        for k in _PANEL_ARRAYS:
            np.save(tmp / f"{k}.npy", np.ascontiguousarray(getattr(p, k)), allow_pickle=False)
        for k in _INSIDER_ARRAYS:
            np.save(tmp / f"insiders.{k}.npy", getattr(p.insiders, k), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps({"seed": p.seed, "n": p.n, "signal": signal,
                                                   "last_year": p.last_year, "T": p.T}))
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise
        return
    for old in folder.glob(_disk_prefix(p.seed, p.n, signal) + "*"):
        stale_version = not old.name.startswith(f"{_disk_prefix(p.seed, p.n, signal)}{_generator_version()}-")
        shorter = old.name.rsplit("-through", 1)[-1].isdigit() and int(old.name.rsplit("-through", 1)[-1]) < p.last_year
        if old != final and (stale_version or shorter):
            shutil.rmtree(old, ignore_errors=True)


def panel(seed: int, n: int, last_year: int, signal: float = 1.0, *, cache_dir: Path | None = None) -> Panel:
    """The panel through `last_year`, reusing a cached longer panel (its first years are identical).
    `signal` multiplies the planted alpha (1: the documented market; 0: no signal). With `cache_dir`, a
    panel of DISK_CACHE_MIN_TICKERS or more is also read from and kept in that folder."""
    last_year = max(last_year, EPOCH.year)
    key = (seed, n, float(signal))
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached.last_year >= last_year:
            return cached
        on_disk = cache_dir is not None and n >= DISK_CACHE_MIN_TICKERS
        built = _load_from_disk(Path(cache_dir), seed, n, float(signal), last_year) if on_disk else None
        if built is None:
            built = _build(seed, n, last_year, float(signal))
            if on_disk:
                try:
                    _store_on_disk(Path(cache_dir), built, float(signal))
                except OSError as exc:  # the cache is an optimization: the run goes on, and says so
                    _LOG.warning("synthetic market: panel not kept in %s (%s); later processes regenerate it",
                                 cache_dir, exc)
        _CACHE[key] = built
        # Bound memory (a 5,000-ticker panel is ~2 GB): keep the two most recent markets.
        while len(_CACHE) > 2:
            _CACHE.pop(next(iter(_CACHE)))
        return built
