"""Streaming calibration: one pass over the data, bounded memory, every range method afterwards.

ONNX Runtime runs the model with the wanted intermediate tensors added as graph outputs (feeds of the
same shape are batched). Each tensor keeps a running min/max, a count of exact zeros and a
fixed-size histogram whose bins are merged (never resampled) when the range grows: the new bin width
is a power-of-two multiple of the old one and the new origin is a whole number of old bins away, so
every old bin falls entirely into one new bin. Memory is O(tensors x bins), independent of the number
of samples (ONNX Runtime's own calibrator stores every intermediate output of every sample).

Range methods, all from the same statistics:
  minmax      the observed [min, max]
  percentile  the p / 100-p percentiles (p = 99.99 by default)
  entropy     KL-divergence minimisation (TensorRT's method) over clipping thresholds, with the
              real number of levels of the target dtype (Migacz, "8-bit inference with TensorRT", 2017)
  mse         the clipping range with the least expected squared quantization error (clipping error of
              the tails plus step^2/12 inside; exact zeros cost nothing since zero is representable)
  mean_minmax the MEAN over calibration samples of each sample's own min and max (NNCF's default range
              for activations, "mean_min_max"): one outlier image cannot stretch the range, yet every
              sample's typical extremes are kept, so it generalises to images calibration never saw
  auto        per tensor, whichever of minmax / percentile / mse gives the best expected SQNR
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from edgec import model_io, runtime

Feed = dict[str, np.ndarray]
BINS = 2048
SUBSAMPLE = 1 << 18
OUTPUT_BUDGET = 256 << 20  # bytes of intermediate outputs alive per ORT run
METHODS = ("minmax", "percentile", "entropy", "mse", "mean_minmax", "auto")


@dataclasses.dataclass
class TensorStats:
    """Running statistics of one tensor: min, max, exact-zero count and a mergeable histogram."""

    bins: int = BINS
    count: int = 0
    zeros: int = 0
    min: float = math.inf
    max: float = -math.inf
    lo: float = 0.0  # histogram origin
    width: float = 0.0  # bin width (0 until the first non-degenerate update)
    hist: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    chan_sum: np.ndarray | None = None  # per axis-1 channel sums (inputs of weighted ops: bias correction)
    chan_count: int = 0
    histogram: bool = True  # False: min/max only (all ``minmax`` needs; 3x cheaper per update)
    samples: int = 0  # calibration samples seen (for mean_minmax)
    sample_min_sum: float = 0.0
    sample_max_sum: float = 0.0

    def update_samples(self, x: np.ndarray, n: int) -> None:
        """Per-sample min and max, summed (mean_minmax). A tensor whose axis 0 is not the batch of ``n``
        feeds (a reshape folded it) counts as one sample."""
        x = np.asarray(x)
        if x.size == 0:
            return
        rows = x.reshape(n, -1) if n > 1 and x.ndim > 0 and x.shape[0] == n else x.reshape(1, -1)
        mins, maxs = rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)
        ok = np.isfinite(mins) & np.isfinite(maxs)
        self.samples += int(ok.sum())
        self.sample_min_sum += float(mins[ok].sum())
        self.sample_max_sum += float(maxs[ok].sum())

    def update_channels(self, x: np.ndarray) -> None:
        """Running per-channel (axis 1) sums, for the mean input each weight row sees."""
        if x.ndim < 2:
            return
        # Contiguous float32 row sums (pairwise summation), then float64 across the batch: 2x faster than
        # one float64 reduction over the strided axes (0, 2, 3, ...).
        sums = np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1).sum(axis=2, dtype=np.float32)
        sums = sums.sum(axis=0, dtype=np.float64)
        if self.chan_sum is None or self.chan_sum.shape != sums.shape:
            if self.chan_sum is not None:
                return  # channel count changed between feeds: not a channel axis, give up quietly
            self.chan_sum = np.zeros_like(sums)
        self.chan_sum += sums
        self.chan_count += x.size // x.shape[1]

    def channel_mean(self) -> np.ndarray | None:
        return None if self.chan_sum is None or self.chan_count == 0 else self.chan_sum / self.chan_count

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0:
            return
        xmin, xmax = float(x.min()), float(x.max())
        if not (math.isfinite(xmin) and math.isfinite(xmax)):
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            xmin, xmax = float(x.min()), float(x.max())
        earlier, prev = self.count, self.min  # before any spread, every earlier value equals self.min
        self.count += x.size
        if not self.histogram:
            self.min, self.max = min(self.min, xmin), max(self.max, xmax)
            return
        # min/max are exact; the histogram takes an odd-strided subsample of big tensors (at least
        # SUBSAMPLE values per update, so tails down to 1e-5 are still seen over a calibration set),
        # weighted by the stride so counts stay in elements.
        step = max(1, x.size // SUBSAMPLE)
        step += (step > 1 and step % 2 == 0)
        if step > 1:
            x = np.ascontiguousarray(x[::step])  # one strided pass; the zero count and binning read it twice
        zeros = int(np.count_nonzero(x == 0)) * step
        self.zeros += zeros
        self.min, self.max = min(self.min, xmin), max(self.max, xmax)
        if self.width == 0.0:
            if self.max <= self.min:
                return  # constant so far: the histogram starts once there is a spread
            self.lo, self.width = self.min, (self.max - self.min) * (1 + 1e-6) / self.bins
            self.hist = np.zeros(self.bins, dtype=np.float64)
            if earlier:
                self.hist[self._index(np.array([prev], np.float32))[0]] += earlier
        else:
            self._grow(xmin, xmax)
        self.hist += step * np.bincount(self._index(x), minlength=self.bins)[: self.bins]

    def _index(self, x: np.ndarray) -> np.ndarray:
        # float32 arithmetic (the data's own precision) is 3x faster than float64 on big tensors.
        idx = np.subtract(x, np.float32(self.lo), dtype=np.float32)
        idx *= np.float32(1.0 / self.width)
        np.clip(idx, 0, self.bins - 1, out=idx)
        return idx.astype(np.int32)

    def _grow(self, xmin: float, xmax: float) -> None:
        hi = self.lo + self.bins * self.width
        if xmin >= self.lo and xmax < hi:
            return
        need_lo, need_hi = min(xmin, self.lo), max(xmax, hi)
        k = 1
        while True:
            k *= 2
            span = self.bins * k * self.width
            if span <= need_hi - need_lo:
                continue
            # Put half the slack on each side (growth is rarely one-sided for long), then align the
            # shift to whole new bins so old bin i maps to new bin (i + shift) // k exactly.
            slack = span - (need_hi - need_lo)
            shift = math.ceil(((self.lo - need_lo) + slack / 2) / self.width / k) * k
            shift = max(shift, math.ceil((self.lo - need_lo) / self.width / k) * k)
            new_lo = self.lo - shift * self.width
            if new_lo <= need_lo and new_lo + span > need_hi and shift <= self.bins * (k - 1):
                break
        new_index = (np.arange(self.bins) + shift) // k
        self.hist = np.bincount(new_index, weights=self.hist, minlength=self.bins)[: self.bins]
        self.lo, self.width = new_lo, self.width * k

    # -- derived ----------------------------------------------------------------------------------
    def centers(self) -> np.ndarray:
        return self.lo + (np.arange(self.bins) + 0.5) * self.width

    def merged(self, other: TensorStats) -> TensorStats:
        """Statistics of the union of two tensors' values (for tensors that must share one scale)."""
        out = dataclasses.replace(self, hist=self.hist.copy())
        if other.count == 0:
            return out
        if out.count == 0:
            return dataclasses.replace(other, hist=other.hist.copy())
        out.count += other.count
        out.zeros += other.zeros
        out.min, out.max = min(out.min, other.min), max(out.max, other.max)
        if out.samples and other.samples:
            # A shared range must hold both tensors' typical extremes: the wider of the two means.
            (a_lo, a_hi), (b_lo, b_hi) = range_mean_minmax(self, UINT8), range_mean_minmax(other, UINT8)
            out.sample_min_sum, out.sample_max_sum = min(a_lo, b_lo) * out.samples, max(a_hi, b_hi) * out.samples
        if other.width == 0.0 or out.width == 0.0:
            base = other if out.width == 0.0 else out
            out.lo, out.width, out.hist = base.lo, base.width, base.hist.copy()
            return out
        out._grow(other.min, other.max)
        # Re-bin ``other`` into ``out``'s grid by its bin centres (values within a bin move < one bin).
        idx = out._index(other.centers())
        out.hist = out.hist + np.bincount(idx, weights=other.hist, minlength=out.bins)[: out.bins]
        return out


@dataclasses.dataclass(frozen=True)
class Levels:
    """The integer grid of the activation dtype: qmin..qmax, symmetric (zero point fixed) or not."""

    qmin: int
    qmax: int
    symmetric: bool

    @property
    def n(self) -> int:
        return self.qmax - self.qmin + 1


UINT8 = Levels(0, 255, False)
INT8 = Levels(-128, 127, False)
INT8_SYM = Levels(-127, 127, True)


def levels(dtype: str, symmetric: bool) -> Levels:
    if symmetric:
        return INT8_SYM if dtype == "int8" else Levels(0, 254, True)
    return UINT8 if dtype == "uint8" else INT8


def scale_zero_point(lo: float, hi: float, lv: Levels) -> tuple[float, int]:
    """Scale and zero point of range [lo, hi] on grid ``lv``; the range is widened to contain 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if lv.symmetric:
        a = max(-lo, hi)
        scale = a / ((lv.qmax - lv.qmin) / 2) if a > 0 else 1.0
        return max(scale, 1e-10), (lv.qmax + lv.qmin + 1) // 2
    if hi - lo <= 0:
        return 1.0, lv.qmin
    scale = max((hi - lo) / (lv.qmax - lv.qmin), 1e-10)
    zp = int(np.clip(round(lv.qmin - lo / scale), lv.qmin, lv.qmax))
    return float(scale), zp


def expected_sqnr(st: TensorStats, lo: float, hi: float, lv: Levels) -> float:
    """Expected SQNR (dB) of fake-quantizing the tensor's distribution with range [lo, hi]."""
    if st.count == 0:
        return math.inf
    if st.width == 0.0:
        return math.inf if lo <= st.min <= hi else 0.0
    err = _mse_grid(st, np.array([lo]), np.array([hi]), lv)[0, 0]
    c = st.centers()
    signal = float((st.hist * c * c).sum())
    return 10 * math.log10(signal / err) if err > 0 and signal > 0 else math.inf


def _mse_grid(st: TensorStats, los: np.ndarray, his: np.ndarray, lv: Levels) -> np.ndarray:
    """Expected total squared error for every (lo, hi) candidate pair, via prefix sums: O(1) each."""
    c = st.centers()
    h = st.hist
    c0 = np.concatenate([[0.0], np.cumsum(h)])
    c1 = np.concatenate([[0.0], np.cumsum(h * c)])
    c2 = np.concatenate([[0.0], np.cumsum(h * c * c)])
    total = c0[-1]
    lo_g, hi_g = np.minimum(los, 0.0)[:, None], np.maximum(his, 0.0)[None, :]
    if lv.symmetric:
        a = np.maximum(-lo_g, hi_g)
        lo_g, hi_g = -a, a
    # bins strictly below lo / above hi are clipped to the edge
    i_lo = np.clip(np.searchsorted(c, lo_g, side="left"), 0, st.bins)
    i_hi = np.clip(np.searchsorted(c, hi_g, side="right"), 0, st.bins)
    below = c2[i_lo] - 2 * lo_g * c1[i_lo] + lo_g * lo_g * c0[i_lo]
    above = (c2[-1] - c2[i_hi]) - 2 * hi_g * (c1[-1] - c1[i_hi]) + hi_g * hi_g * (total - c0[i_hi])
    step = (hi_g - lo_g) / (lv.qmax - lv.qmin)
    # Values within half a step of zero round to exactly zero (zero is on the grid): their error is
    # their own square, not the uniform step^2/12 of the rest of the range.
    j_lo = np.clip(np.searchsorted(c, np.maximum(-step / 2, lo_g), side="left"), i_lo, i_hi)
    j_hi = np.clip(np.searchsorted(c, np.minimum(step / 2, hi_g), side="right"), j_lo, i_hi)
    near_zero = c2[j_hi] - c2[j_lo]
    inside = np.maximum((c0[i_hi] - c0[i_lo]) - (c0[j_hi] - c0[j_lo]), 0.0)
    return np.maximum(below, 0) + np.maximum(above, 0) + near_zero + inside * step * step / 12.0


def _quantile(st: TensorStats, q: float) -> float:
    cdf = np.cumsum(st.hist) / max(st.hist.sum(), 1.0)
    i = int(np.searchsorted(cdf, q))
    return float(st.lo + (min(i, st.bins - 1) + 1) * st.width) if q >= 0.5 else float(st.lo + i * st.width)


def range_minmax(st: TensorStats, lv: Levels) -> tuple[float, float]:
    return st.min, st.max


def range_mean_minmax(st: TensorStats, lv: Levels) -> tuple[float, float]:
    if st.samples == 0:
        return st.min, st.max
    return st.sample_min_sum / st.samples, st.sample_max_sum / st.samples


def range_percentile(st: TensorStats, lv: Levels, p: float = 99.99) -> tuple[float, float]:
    if st.width == 0.0:
        return st.min, st.max
    lo = max(st.min, _quantile(st, 1 - p / 100)) if st.min < 0 else st.min
    hi = min(st.max, _quantile(st, p / 100)) if st.max > 0 else st.max
    return lo, hi


def _candidates(st: TensorStats, n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Clipping candidates from the 99th percentile (or 0) out to the observed extreme, per side."""
    his = np.array([st.max]) if st.max <= 0 else np.unique(np.concatenate([
        np.linspace(max(0.0, _quantile(st, 0.99)), st.max, n), np.geomspace(max(st.max * 1e-2, 1e-12), st.max, 24)]))
    los = np.array([st.min]) if st.min >= 0 else np.unique(np.concatenate([
        np.linspace(min(0.0, _quantile(st, 0.01)), st.min, n), -np.geomspace(max(-st.min * 1e-2, 1e-12), -st.min, 24)]))
    return los, his


def range_mse(st: TensorStats, lv: Levels) -> tuple[float, float]:
    if st.width == 0.0:
        return st.min, st.max
    los, his = _candidates(st)
    err = _mse_grid(st, los, his, lv)
    i, j = np.unravel_index(int(np.argmin(err)), err.shape)
    return float(min(los[i], 0.0) if st.min < 0 else st.min), float(his[j] if st.max > 0 else st.max)


def range_entropy(st: TensorStats, lv: Levels) -> tuple[float, float]:
    """KL-optimal clipping. Two-sided tensors are searched on |x| with half the levels (TensorRT's
    symmetric scheme); one-signed tensors (ReLU outputs) on their own side with all the levels."""
    if st.width == 0.0:
        return st.min, st.max
    c, h = st.centers(), st.hist.copy()
    if st.zeros and st.lo <= 0 <= st.lo + st.bins * st.width:
        # Exact zeros (ReLU's spike) are represented exactly whatever the range; left in, their mass
        # dominates P and KL clips the living part of the distribution to a third of its range.
        h[st._index(np.zeros(1, np.float32))[0]] -= min(st.zeros, h[st._index(np.zeros(1, np.float32))[0]])
    if st.min >= 0 or st.max <= 0:
        mag, nlev = np.abs(c), lv.n
    else:
        mag, nlev = np.abs(c), lv.n // 2
    top = float(np.abs([st.min, st.max]).max())
    nb = st.bins
    folded = np.bincount(np.minimum((mag / top * nb).astype(np.int64), nb - 1), weights=h, minlength=nb)
    t = _kl_threshold(folded, nlev) * top / nb
    return max(st.min, -t), min(st.max, t)


def _kl_threshold(hist: np.ndarray, nlev: int) -> int:
    """TensorRT's entropy calibration on a one-sided histogram: the bin count i (>= nlev) minimising
    KL(P_i || Q_i), P_i = the first i bins with the tail folded into the last, Q_i = P_i squeezed into
    nlev levels and expanded back over its non-empty bins, both smoothed as in the reference
    (Migacz 2017; MXNet/ONNX Runtime ``_get_optimal_threshold``)."""
    nb = hist.size
    if nb <= nlev:
        return nb
    best_i, best_kl = nb, math.inf
    cands = np.unique(np.linspace(nlev, nb, 128).astype(np.int64))
    for i in cands:
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        groups = np.minimum((np.arange(i) * nlev) // i, nlev - 1)
        # Q is built from the clipped bins WITHOUT the folded tail (as in TensorRT's reference): the
        # tail mass then costs KL, otherwise the smallest threshold would always win.
        mass = np.bincount(groups, weights=hist[:i], minlength=nlev)
        cnt = np.bincount(groups, weights=nz.astype(np.float64), minlength=nlev)
        q = np.where(nz, mass[groups] / np.maximum(cnt[groups], 1), 0.0)
        pn, qn = _smooth(p), _smooth(q)
        if pn is None or qn is None:
            continue
        m = pn > 0
        kl = float(np.sum(pn[m] * np.log(pn[m] / qn[m])))
        if kl < best_kl:
            best_kl, best_i = kl, int(i)
    return best_i


def _smooth(d: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """The reference's smoothing, on raw counts: eps onto each empty bin, taken evenly from the others
    (KL stays finite where Q lost a bin P still has), then normalised to a distribution."""
    zero = d == 0
    n_zero, n_nonzero = int(zero.sum()), int(d.size - zero.sum())
    if n_nonzero == 0:
        return None
    d = np.where(zero, eps, d - eps * n_zero / n_nonzero)
    if (d <= 0).any():
        return None
    return d / d.sum()


def choose_range(st: TensorStats, method: str, lv: Levels, percentile: float = 99.99) -> tuple[tuple[float, float], str]:
    """(lo, hi) for ``method``; ``auto`` returns the best-SQNR one and names which it was."""
    table: dict[str, Callable[[], tuple[float, float]]] = {
        "minmax": lambda: range_minmax(st, lv),
        "percentile": lambda: range_percentile(st, lv, percentile),
        "entropy": lambda: range_entropy(st, lv),
        "mse": lambda: range_mse(st, lv),
        "mean_minmax": lambda: range_mean_minmax(st, lv),
    }
    if method != "auto":
        return table[method](), method
    # Entropy never beats the SQNR search on SQNR (it optimises KL), so auto skips its cost.
    scored = [(expected_sqnr(st, *r, lv), name, r) for name, r in ((n, f()) for n, f in table.items()
                                                                    if n in ("minmax", "percentile", "mse"))]
    best = max(scored, key=lambda s: s[0])
    return best[2], best[1]


# ------------------------------------------------------------------------------------------- collection
def with_outputs(model: ir.Model | onnx.ModelProto, names: Sequence[str],
                  types: dict[str, int] | None = None) -> bytes:
    """The model with ``names`` added as graph outputs (float unless ``types`` says otherwise)."""
    proto = model_io.to_proto(model) if isinstance(model, ir.Model) else model
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    have = {o.name for o in proto.graph.output}
    for name in names:
        if name not in have:
            elem = (types or {}).get(name, onnx.TensorProto.FLOAT)
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return proto.SerializeToString()


def batches(feeds: Iterable[Feed], batch: int, batchable: bool) -> Iterable[tuple[Feed, int]]:
    """Concatenate consecutive feeds of equal shapes along axis 0 (when the model takes any batch)."""
    pending: list[Feed] = []

    def flush() -> tuple[Feed, int]:
        merged = {k: np.concatenate([f[k] for f in pending], axis=0) for k in pending[0]}
        n = len(pending)
        pending.clear()
        return merged, n

    for feed in feeds:
        if not batchable:
            yield feed, 1
            continue
        if pending and any(pending[0][k].shape != feed[k].shape for k in feed):
            yield flush()
        pending.append(feed)
        if len(pending) >= batch:
            yield flush()
    if pending:
        yield flush()


def collect(model: ir.Model, names: Sequence[str], feeds: Iterable[Feed], *, batch: int = 8,
            progress: Callable[[int, int], Any] | None = None, total: int | None = None,
            bins: int = BINS, channels: Iterable[str] = (), histogram: bool = True) -> dict[str, TensorStats]:
    """One streaming pass: statistics of every tensor in ``names`` over all ``feeds`` (and per-channel
    means of those in ``channels``). ``histogram=False`` keeps min/max only (enough for ``minmax``)."""
    names = list(dict.fromkeys(names))
    chan = set(channels)
    sess = runtime.session(with_outputs(model, names), optimization="basic")
    stats = {n: TensorStats(bins=bins, histogram=histogram) for n in names}
    batchable = all(v.shape is not None and len(v.shape) > 0 and not isinstance(v.shape[0], int)
                    for v in model.graph.inputs)
    done = 0
    if batchable and batch > 1:
        # All requested intermediates of a batch are alive at once: size the batch so they stay
        # within OUTPUT_BUDGET (a 736x736 detector has ~1 GB of activations per image).
        it = iter(feeds)
        first = next(it, None)
        if first is None:
            return stats
        outs = sess.run(names, runtime.input_feed(sess, first))
        per_sample = sum(o.nbytes for o in outs) / max(1, next(iter(first.values())).shape[0])
        _record(stats, names, outs, chan, 1)
        del outs
        done = 1
        if progress:
            progress(done, total or 0)
        batch = int(max(1, min(batch, OUTPUT_BUDGET // max(per_sample, 1))))
        feeds = it
    for feed, n in batches(feeds, batch, batchable):
        try:
            outs = sess.run(names, runtime.input_feed(sess, feed))
        except Exception:
            if n == 1:
                raise
            outs_list = [sess.run(names, runtime.input_feed(sess, {k: v[i:i + 1] for k, v in feed.items()}))
                         for i in range(n)]
            for per in outs_list:
                _record(stats, names, per, chan, 1)
            done += n
            if progress:
                progress(done, total or 0)
            continue
        _record(stats, names, outs, chan, n)
        del outs
        done += n
        if progress:
            progress(done, total or 0)
    return stats


def _record(stats: dict[str, TensorStats], names: Sequence[str], outs: Sequence[np.ndarray], chan: set[str],
            n: int) -> None:
    for name, arr in zip(names, outs):
        stats[name].update(arr)
        stats[name].update_samples(arr, n)
        if name in chan:
            stats[name].update_channels(arr)


def rich_progress(description: str = "calibrating") -> tuple[Callable[[int, int], Any], Callable[[], None]]:
    """A terminal progress bar over samples (rich), as (update(done, total), close())."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), transient=True)
    task = bar.add_task(description, total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None)

    def close() -> None:
        bar.stop()

    return update, close
