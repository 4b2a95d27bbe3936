"""The exact worst margin of a small sequential network over an L∞ ball ∩ box, by mixed-integer programming.

Each ReLU whose interval straddles 0 gets one binary, each max-pool window one
binary per entry that can be the largest (the standard big-M encodings, with
interval bounds as the big-Ms, which only need to be valid). Affine layers
(``Linear``, ``Conv2d``, ``AvgPool2d``, ``BatchNorm2d`` in eval mode) enter
as the dense matrices they apply. scipy's HiGHS solves it; the small test
networks take well under a second per margin.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix
from torch import nn

AFFINE = (nn.Linear, nn.Conv2d, nn.AvgPool2d, nn.BatchNorm2d)


class _Program:
    """Variables with bounds and integrality, and rows ``lb ≤ Σ coef·var ≤ ub``."""

    def __init__(self) -> None:
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.binary: list[int] = []
        self.rows: list[tuple[dict[int, float], float, float]] = []

    def var(self, lo: float, hi: float, binary: bool = False) -> int:
        self.lo.append(lo)
        self.hi.append(hi)
        self.binary.append(int(binary))
        return len(self.lo) - 1

    def row(self, coefs: dict[int, float], lb: float, ub: float) -> None:
        self.rows.append((coefs, lb, ub))

    def minimize(self, cost: dict[int, float]) -> tuple[float, np.ndarray]:
        r, c, v = [], [], []
        for i, (coefs, _, _) in enumerate(self.rows):
            r += [i] * len(coefs)
            c += list(coefs)
            v += list(coefs.values())
        a = coo_matrix((v, (r, c)), shape=(len(self.rows), len(self.lo))).tocsr()
        lb = np.array([lb for _, lb, _ in self.rows])
        ub = np.array([ub for _, _, ub in self.rows])
        obj = np.zeros(len(self.lo))
        for i, w in cost.items():
            obj[i] = w
        res = milp(obj, constraints=LinearConstraint(a, lb, ub), integrality=np.array(self.binary),
                   bounds=Bounds(np.array(self.lo), np.array(self.hi)),
                   options={"time_limit": 120, "mip_rel_gap": 1e-9})
        if res.status != 0:
            raise RuntimeError(f"MILP not solved: {res.message}")
        return float(res.fun), res.x


def _dense(layer: nn.Module, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``(W, b, out_shape)`` with ``layer(x) = W x + b`` on flattened inputs, in float64."""
    layer = layer.double()
    n = int(np.prod(shape))
    with torch.no_grad():
        b = layer(torch.zeros(1, *shape, dtype=torch.float64))
        w = layer(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, -1) - b.reshape(1, -1)
    return w.T.numpy(), b.reshape(-1).numpy(), tuple(b.shape[1:])


def worst_margin(net: nn.Sequential, x0: torch.Tensor, eps: float, y: int, j: int,
                 box: tuple[float, float] = (0.0, 1.0)) -> tuple[float, torch.Tensor]:
    """``min f_y − f_j`` over ``‖x − x0‖∞ ≤ eps`` within ``box``, and a point attaining it (``x0``'s shape)."""
    net = copy.deepcopy(net).double().eval()
    shape = tuple(x0.shape)
    flat = x0.reshape(-1).double().numpy()
    lo, hi = np.clip(flat - eps, *box), np.clip(flat + eps, *box)
    p = _Program()
    cur = [p.var(a, b) for a, b in zip(lo, hi)]
    for layer in net:
        if isinstance(layer, nn.Flatten):
            shape = (int(np.prod(shape)),)
        elif isinstance(layer, AFFINE):
            w, b, shape = _dense(layer, shape)
            pos, neg = w.clip(min=0), w.clip(max=0)
            nlo, nhi = pos @ lo + neg @ hi + b, pos @ hi + neg @ lo + b
            out = [p.var(a, c) for a, c in zip(nlo, nhi)]
            for r, k in enumerate(out):
                coefs = {cur[c]: float(w[r, c]) for c in np.flatnonzero(w[r])}
                coefs[k] = -1.0
                p.row(coefs, -b[r], -b[r])
            cur, lo, hi = out, nlo, nhi
        elif isinstance(layer, nn.ReLU):
            cur = [_relu(p, z, lz, hz) for z, lz, hz in zip(cur, lo, hi)]
            lo, hi = lo.clip(min=0), hi.clip(min=0)
        elif isinstance(layer, nn.MaxPool2d):
            cur, lo, hi, shape = _maxpool(p, layer, cur, lo, hi, shape)
        else:
            raise TypeError(f"no MILP encoding for {type(layer).__name__}")
    value, sol = p.minimize({cur[y]: 1.0, cur[j]: -1.0})
    return value, torch.tensor(sol[: x0.numel()]).reshape(x0.shape)


def _relu(p: _Program, z: int, lo: float, hi: float) -> int:
    if lo >= 0:
        return z
    if hi <= 0:
        return p.var(0.0, 0.0)
    a, d = p.var(0.0, hi), p.var(0.0, 1.0, binary=True)
    p.row({a: 1.0, z: -1.0}, 0.0, np.inf)                    # a ≥ z
    p.row({a: 1.0, z: -1.0, d: -lo}, -np.inf, -lo)           # a ≤ z − lo (1 − d)
    p.row({a: 1.0, d: -hi}, -np.inf, 0.0)                    # a ≤ hi d
    return a


def _maxpool(p: _Program, layer: nn.MaxPool2d, cur: list[int], lo: np.ndarray, hi: np.ndarray,
             shape: tuple[int, ...]) -> tuple[list[int], np.ndarray, np.ndarray, tuple[int, ...]]:
    c, h, w = shape
    index = torch.arange(c * h * w, dtype=torch.float64).reshape(1, c, h, w)
    k, s, pad = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
    padded = torch.nn.functional.pad(index, (pad, pad, pad, pad), value=-1)
    windows = torch.nn.functional.unfold(padded, k, stride=s).reshape(c, k * k, -1)
    out, olo, ohi = [], [], []
    for ch in range(c):
        for col in range(windows.shape[-1]):
            entries = [int(e) for e in windows[ch, :, col] if e >= 0]
            low, top = max(lo[e] for e in entries), max(hi[e] for e in entries)
            o = p.var(low, top)
            picks = []
            for e in entries:
                p.row({o: 1.0, cur[e]: -1.0}, 0.0, np.inf)            # o ≥ z_e
                if hi[e] >= low:                                     # z_e can be the largest
                    d = p.var(0.0, 1.0, binary=True)
                    big = top - lo[e]
                    p.row({o: 1.0, cur[e]: -1.0, d: big}, -np.inf, big)   # o ≤ z_e where d = 1
                    picks.append(d)
            p.row(dict.fromkeys(picks, 1.0), 1.0, 1.0)
            out.append(o)
            olo.append(low)
            ohi.append(top)
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    return out, np.array(olo), np.array(ohi), (c, ho, wo)
