"""Rank-r depthwise + pointwise fits of one conv: plain SVD, whitened SVD, least-squares refit, ALS.

Helpers of ``passes/depthwise.py``. The conv is y = W x + b over K-patches x (Cin*K values); a pair of rank
r is W ~= P F with F block-diagonal (channel i's r depthwise filters F_i, r x K) and P the pointwise weights
(Cout x Cin*r). Candidates, all measured on held-out patches, the best one wins:
  svd             F_i, P_i from the SVD of M_i = W[:, i] (the weights alone; Jaderberg et al. 2014).
  whitened        the SVD of M_i L_i, C_i = L_i L_i^T channel i's input covariance (Zhang et al. 2015).
  +refit          P by least squares on the real depthwise outputs (all channels jointly).
  als             alternating least squares on the real input covariance: minimise
                  E||(W - P F)(x - mean)||^2 over P (closed form) and F (block-diagonal: preconditioned
                  conjugate gradients) in turn, from the whitened start, then fold the error's mean into
                  the bias. Unlike whitening per channel, it sees the correlation between channels, so
                  one channel's truncation error can be cancelled through another's filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .depthwise_layers import Layer


@dataclass
class Fit:
    sqnr_db: float  # held-out (or, without data, on the weights)
    sqnr_svd_db: float  # plain SVD at the same rank, for the report
    method: str
    dw: np.ndarray  # [Cin*r, 1, kh, kw]
    pw: np.ndarray  # [Cout, Cin*r, 1, 1]
    bias: np.ndarray | None  # a corrected bias, or None to keep the conv's


class Fitter:
    """Errors and weights of rank-r pairs for one layer; see the module docstring for the candidates."""

    def __init__(self, layer: Layer, refit: bool, whiten: bool, als_rounds: int = 2) -> None:
        w = layer.weight.astype(np.float64)
        self.layer = layer
        self.cout, self.cin = w.shape[:2]
        self.k = w.shape[2] * w.shape[3]
        self.w = w.reshape(self.cout, -1)
        mats = w.reshape(self.cout, self.cin, -1).transpose(1, 0, 2)  # [Cin, Cout, K]: M_i
        u, s, vt = np.linalg.svd(mats, full_matrices=False)
        self.full = vt.shape[1]
        self.s2 = s**2
        # basis name -> (depthwise filters [Cin, R, K], pointwise weights [Cout, Cin, R])
        self.bases: dict[str, tuple[np.ndarray, np.ndarray]] = {"svd": (vt, (u * s[:, None, :]).transpose(1, 0, 2))}
        self.data = layer.fit is not None and layer.test is not None and len(layer.test) > 0 and len(layer.fit) > 0
        self.refit = refit and self.data
        self.als_rounds = als_rounds if self.data else 0
        self.error_on = "held-out layer outputs" if self.data else "weights"
        if not self.data:
            return
        fit, test = layer.fit, layer.test
        assert fit is not None and test is not None
        self.b = layer.bias.astype(np.float64).reshape(-1) if layer.bias is not None else np.zeros(self.cout)
        wmat = w.reshape(self.cout, -1).T.astype(np.float32)
        self.y_test = test.reshape(len(test), -1) @ wmat
        self.signal = float(np.sum((self.y_test.astype(np.float64) + self.b) ** 2))
        self.y_fit = fit.reshape(len(fit), -1) @ wmat
        self._gram: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if whiten or self.als_rounds:
            self._add_whitened(mats, fit)
        if self.als_rounds:
            x = fit.reshape(len(fit), -1).astype(np.float64)
            self.mean = x.mean(axis=0)
            xc = x - self.mean
            self.cov = xc.T @ xc / len(x)  # [Cin*K, Cin*K], centred: the mean error goes into the bias
        self.z_test = {n: _depthwise_outputs(test, f) for n, (f, _) in self.bases.items()}
        self.z_fit = {n: _depthwise_outputs(fit, f) for n, (f, _) in self.bases.items()}
        self.whiten = whiten

    def _add_whitened(self, mats: np.ndarray, fit: np.ndarray) -> None:
        k = mats.shape[2]
        cov = np.matmul(fit.transpose(1, 2, 0), fit.transpose(1, 0, 2)).astype(np.float64) / len(fit)
        # Dead channels (all-zero patches) have a singular covariance; the jitter keeps Cholesky defined.
        jitter = 1e-6 * np.trace(cov, axis1=1, axis2=2)[:, None, None] / k + 1e-12
        chol = np.linalg.cholesky(cov + jitter * np.eye(k))
        uw, sw, vtw = np.linalg.svd(mats @ chol, full_matrices=False)
        filters = np.linalg.solve(chol.transpose(0, 2, 1), vtw.transpose(0, 2, 1)).transpose(0, 2, 1)
        self.bases["whitened"] = (filters, (uw * sw[:, None, :]).transpose(1, 0, 2))

    # ------------------------------------------------------------------------------------------ candidates
    def at(self, r: int) -> Fit:
        filters, pw = self.bases["svd"][0][:, :r], self.bases["svd"][1][:, :, :r]
        if r >= self.full:  # exact: nothing to refit
            return self._fit(math.inf, math.inf, "svd", filters, pw, None)
        if not self.data:
            discarded = float(self.s2[:, r:].sum())
            sqnr = math.inf if discarded == 0 else 10 * math.log10(float(self.s2.sum()) / discarded)
            return self._fit(sqnr, sqnr, "svd", filters, pw, None)
        sqnr_svd = self._sqnr_test(self.z_test["svd"][:, :, :r], pw)
        best: tuple[float, str, np.ndarray, np.ndarray, np.ndarray | None] = (sqnr_svd, "svd", filters, pw, None)
        for basis, (f, p) in self.bases.items():
            if basis == "whitened" and not self.whiten:
                continue
            candidates = [("", p[:, :, :r])] if basis != "svd" else []
            if self.refit:
                candidates.append(("+refit", self._refit(basis, r)))
            for suffix, weights in candidates:
                sqnr = self._sqnr_test(self.z_test[basis][:, :, :r], weights)
                if sqnr > best[0]:
                    best = (sqnr, basis + suffix, f[:, :r], weights, None)
        if self.als_rounds:
            f, p = self._als(r)
            bias = self.b + (self.w - _assemble(f, p)) @ self.mean
            sqnr = self._sqnr_test(_depthwise_outputs(self.layer.test, f), p, bias)  # type: ignore[arg-type]
            if sqnr > best[0]:
                best = (sqnr, "als", f, p, bias)
        return self._fit(best[0], sqnr_svd, best[1], best[2], best[3], best[4])

    def _sqnr_test(self, z: np.ndarray, pw: np.ndarray, bias: np.ndarray | None = None) -> float:
        approx = z.reshape(len(self.y_test), -1) @ pw.reshape(self.cout, -1).T.astype(np.float32)
        err = approx.astype(np.float64) - self.y_test
        if bias is not None:
            err += bias - self.b
        noise = float(np.sum(err**2))
        return math.inf if noise == 0 else 10 * math.log10(self.signal / noise)

    def _refit(self, basis: str, r: int) -> np.ndarray:
        """Pointwise weights [Cout, Cin, r] minimising ||z W^T - y||^2 on the fit patches."""
        if basis not in self._gram:
            # One Gram over all R components per basis; rank r is its (i, j < r) sub-block.
            z = self.z_fit[basis].reshape(len(self.y_fit), -1)
            self._gram[basis] = ((z.T @ z).astype(np.float64), (z.T @ self.y_fit).astype(np.float64))
        gram, rhs = self._gram[basis]
        idx = (np.arange(self.cin)[:, None] * self.full + np.arange(r)[None, :]).reshape(-1)
        g = gram[np.ix_(idx, idx)]
        # A small ridge keeps the normal equations solvable when channels are dead (all-zero inputs).
        g[np.diag_indices_from(g)] += 1e-5 * np.trace(g) / len(g) + 1e-12
        return np.linalg.solve(g, rhs[idx]).T.reshape(self.cout, self.cin, r)

    # ------------------------------------------------------------------------------------------ ALS
    def _als(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        f = self.bases["whitened"][0][:, :r].copy()
        p = self._p_step(f)
        for _ in range(self.als_rounds):
            f = self._f_step(f, p)
            p = self._p_step(f)
        return f, p

    def _p_step(self, f: np.ndarray) -> np.ndarray:
        """P = W S F^T (F S F^T)^-1 with S the centred input covariance: [Cout, Cin, r]."""
        cin, r, k = f.shape
        fs = np.matmul(f, self.cov.reshape(cin, k, -1)).reshape(cin * r, -1)  # F S
        g = np.matmul(fs.reshape(cin * r, cin, k).transpose(1, 0, 2), f.transpose(0, 2, 1))  # [Cin, Cin*r, r]
        g = g.transpose(1, 0, 2).reshape(cin * r, cin * r)
        g[np.diag_indices_from(g)] += 1e-7 * np.trace(g) / len(g) + 1e-12
        return np.linalg.solve(g, fs @ self.w.T).T.reshape(self.cout, cin, r)

    def _f_step(self, f: np.ndarray, p: np.ndarray, iters: int = 12) -> np.ndarray:
        """Block-diagonal F minimising tr((W - P F) S (W - P F)^T) for fixed P: the normal equations
        blockdiag(P^T P F S) = blockdiag(P^T W S) by conjugate gradients, preconditioned by the diagonal
        blocks (P_i^T P_i) (x) S_ii, warm-started from the current F."""
        cin, r, k = f.shape
        cov3 = self.cov.reshape(cin, k, -1)
        pt = p.transpose(1, 2, 0)  # [Cin, r, Cout]
        pflat = p.reshape(self.cout, -1)

        def normal(x: np.ndarray) -> np.ndarray:
            m = pflat @ np.matmul(x, cov3).reshape(cin * r, -1)  # P F S: [Cout, Cin*K]
            return np.matmul(pt, m.reshape(self.cout, cin, k).transpose(1, 0, 2))

        rhs = np.matmul(pt, (self.w @ self.cov).reshape(self.cout, cin, k).transpose(1, 0, 2))
        ptp = np.matmul(pt, pt.transpose(0, 2, 1))
        ptp_inv = np.linalg.inv(ptp + (1e-7 * np.trace(ptp, axis1=1, axis2=2)[:, None, None] / r + 1e-12) * np.eye(r))
        idx = np.arange(cin)
        sii = self.cov.reshape(cin, k, cin, k)[idx, :, idx, :]  # the diagonal blocks S_ii: [Cin, K, K]
        sii_inv = np.linalg.inv(sii + (1e-6 * np.trace(sii, axis1=1, axis2=2)[:, None, None] / k + 1e-12) * np.eye(k))

        def precond(res: np.ndarray) -> np.ndarray:
            return ptp_inv @ res @ sii_inv

        x = f.copy()
        res = rhs - normal(x)
        z = precond(res)
        d = z.copy()
        rz = float(np.sum(res * z))
        for _ in range(iters):
            if rz <= 1e-30:
                break
            q = normal(d)
            alpha = rz / float(np.sum(d * q))
            x += alpha * d
            res -= alpha * q
            z = precond(res)
            rz, rz_old = float(np.sum(res * z)), rz
            d = z + (rz / rz_old) * d
        return x

    def _fit(self, sqnr: float, sqnr_svd: float, method: str, filters: np.ndarray, pw: np.ndarray,
             bias: np.ndarray | None) -> Fit:
        dtype = self.layer.weight.dtype
        kh, kw = self.layer.kernel
        r = filters.shape[1]
        dw = np.ascontiguousarray(filters).reshape(self.cin * r, 1, kh, kw).astype(dtype)
        pw_w = np.ascontiguousarray(pw).reshape(self.cout, self.cin * r, 1, 1).astype(dtype)
        return Fit(sqnr, sqnr_svd, method, dw, pw_w, None if bias is None else bias.astype(dtype))


def _assemble(f: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P F as a dense [Cout, Cin*K] matrix."""
    return np.matmul(p.transpose(1, 0, 2), f).transpose(1, 0, 2).reshape(p.shape[0], -1)


def _depthwise_outputs(patches: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """z[p, i, j] = filters[i, j] . patches[p, i]: [P, Cin, R] (a batched matmul; einsum is 4x slower)."""
    z = np.matmul(patches.transpose(1, 0, 2), filters.astype(np.float32).transpose(0, 2, 1))
    return np.ascontiguousarray(z.transpose(1, 0, 2))
