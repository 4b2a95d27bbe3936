"""Per-example certified radii: maxmargin's ``certified_margin`` against the same search on auto_LiRPA's bounds.

    PYTHONPATH=/path/to/auto_LiRPA:src python benchmarks/lirpa_radii.py RUN N [--method crown] [--eps-max 0.5]
        [--batch 50] [--out FILE.json]

L∞ only (auto_LiRPA takes a per-example L∞ ball as a box; its L2 ball has one
radius per call). Set-up of auto_LiRPA as in ``benchmarks/lirpa_crosscheck.py``.

Ours is the library's answer, ``certified_margin(model, x, y, "linf", method,
eps_max)``. auto_LiRPA's radius comes from the very search ``certified_margin``
runs (:func:`maxmargin.linesearch.largest_proven`: CROWN-IBP's search with 12
bound evaluations, then the method's own with 6 between that radius and twice
it), with auto_LiRPA's CROWN-IBP and the method's bound in place of ours, so
the radii differ only by the bounds (and by ours reusing layer bounds across
the search, which auto_LiRPA has no entry for). Both are checked against the
attack's upper bound (``margin_search``): a radius above it would be unsound.
Rows: the means, the share of digits where ours ≥ 0.99 × theirs (the issue's
goal: ≥ 99 %), the lowest ratio, and the wall times, both libraries on the same
``--batch`` digits per call.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from _timing import device_info, write_json
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

from maxmargin import load_data, load_model
from maxmargin.certify import _GROWTH, certified_margin
from maxmargin.linesearch import largest_proven
from maxmargin.margin import margin_search

PAIRS = {"crown-ibp": "CROWN-IBP", "crown": "CROWN", "ibp": "IBP"}


def their_radii(bounded: BoundedModule, x, y, method: str, cap: float, steps: int, batch: int):
    """auto_LiRPA's radii through ``certified_margin``'s staged search."""
    b = x.shape[0]
    with torch.no_grad():
        logits = bounded(x)
    c = logits.shape[1]
    others = torch.arange(c).expand(b, -1)
    others = others[others != y[:, None]].reshape(b, c - 1)
    spec = torch.zeros(b, c - 1, c)
    spec.scatter_(2, y[:, None, None].expand(-1, c - 1, 1), 1.0)
    spec.scatter_(2, others[:, :, None], -1.0)

    def bound_with(how: str):
        def bound(r):
            parts = []
            for k in range(0, b, batch):
                s = slice(k, k + batch)
                rr = r[s].view(-1, *([1] * (x.dim() - 1)))
                ptb = PerturbationLpNorm(norm=float("inf"), eps=float(r[s].max()), x_L=(x[s] - rr).clamp(0, 1),
                                         x_U=(x[s] + rr).clamp(0, 1))
                low = bounded.compute_bounds(x=(BoundedTensor(x[s], ptb),), C=spec[s], method=how,
                                             bound_upper=False)[0]
                parts.append(low.detach())
            return torch.cat(parts)
        return bound

    clean = (logits[:, None, :] * spec).sum(2)
    capt = torch.full((b,), cap)
    if method == "ibp" or method == "crown-ibp":
        return largest_proven(bound_with(PAIRS[method]), clean, capt, steps)
    start = largest_proven(bound_with("CROWN-IBP"), clean, capt, steps)
    top = torch.minimum(capt, torch.where(start > 0, _GROWTH * start, capt / _GROWTH ** 2))
    return largest_proven(bound_with(PAIRS[method]), bound_with("CROWN-IBP")(start), top, max(1, steps // 2),
                          start=torch.minimum(start, top))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("n", type=int)
    p.add_argument("--method", choices=tuple(PAIRS), default="crown")
    p.add_argument("--eps-max", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--out")
    args = p.parse_args()
    torch.manual_seed(0)
    model, cfg, _ = load_model(args.run)
    model.eval()
    x, y = load_data(cfg, "test", n=args.n)
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    t = time.perf_counter()
    ours = certified_margin(model, x, y, "linf", args.method, args.eps_max, batch_size=args.batch)
    t_ours = time.perf_counter() - t
    bounded = BoundedModule(model, torch.zeros(1, *x.shape[1:]))
    t = time.perf_counter()
    theirs = their_radii(bounded, x, y, args.method, args.eps_max, 12, args.batch)
    t_theirs = time.perf_counter() - t
    upper = margin_search(model, x, y, "linf", args.eps_max)
    ratio = ours / theirs.clamp_min(1e-12)
    both = (theirs > 0)
    row = {"run": args.run, "digits": int(x.shape[0]), "method": args.method, "eps_max": args.eps_max,
           "ours_mean": float(ours.mean()), "theirs_mean": float(theirs.mean()), "upper_mean": float(upper.mean()),
           "ours_ge_0.99_theirs": float(((ours >= 0.99 * theirs) | (theirs == 0)).float().mean()),
           "lowest_ratio": float(ratio[both].min()) if bool(both.any()) else None,
           "median_ratio": float(ratio[both].median()) if bool(both.any()) else None,
           "ours_above_upper": int((ours > upper).sum()), "theirs_above_upper": int((theirs > upper).sum()),
           "seconds_ours": round(t_ours, 1), "seconds_theirs": round(t_theirs, 1),
           "threads": torch.get_num_threads()}
    print(json.dumps(row), flush=True)
    if args.out:
        write_json(args.out, {"row": row, "ours": ours.tolist(), "theirs": theirs.tolist(), "upper": upper.tolist(),
                              **device_info(torch.device("cpu"))})


if __name__ == "__main__":
    main()
