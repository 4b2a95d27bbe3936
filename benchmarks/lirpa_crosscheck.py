"""Margin lower bounds of maxmargin's bound methods against auto_LiRPA's, on one run's test digits (benchmark only).

    python benchmarks/lirpa_crosscheck.py RUN N EPS [--norm linf|l2] [--methods ibp,crown-ibp,...] [--batch 50]

auto_LiRPA is not a dependency. It ran here from its newest public source (the
"May 2026 release", commit a050a3d) on torch 2.13 CPU without patches, put on
PYTHONPATH (its setup.py failed under `pip install -e --no-deps`) in a venv
with `appdirs` and `graphviz` (pure Python) added:

    python -m venv --system-site-packages /tmp/lirpa_env
    /tmp/lirpa_env/bin/pip install appdirs graphviz
    PYTHONPATH=/path/to/auto_LiRPA:src /tmp/lirpa_env/bin/python benchmarks/lirpa_crosscheck.py RUN 20 0.02

Each row: our mean worst-margin lower bound vs theirs over the correctly
classified digits (the ball ∩ [0, 1] box, same specification matrix), the
largest difference, the share of digits where ours is ≥ 0.99× theirs on every
margin ("≥ 0.99×" of a negative bound reads as at most 1 % further below
zero), and the times. auto_LiRPA's α-CROWN is its "CROWN-Optimized" with 20
Adam steps at learning rate 0.1, as ours. For L2 auto_LiRPA bounds the ball
alone; ours intersects it with the box, so ours may be tighter there.
"""
import argparse
import time

import torch
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm

from maxmargin import load_data, load_model
from maxmargin.bounds import Region, margin_lower_bounds, trace
from maxmargin.norms import get_norm

PAIRS = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN", "alpha-crown": "CROWN-Optimized"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("n", type=int)
    p.add_argument("eps", type=float)
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--methods", default=",".join(PAIRS))
    p.add_argument("--batch", type=int, default=50,
                   help="digits per call, both libraries alike (auto_LiRPA's CROWN on 189 SmallCNN digits at once "
                        "was killed at 24 GB)")
    args = p.parse_args()
    torch.manual_seed(0)
    model, cfg, _ = load_model(args.run)
    x, y = load_data(cfg, "test", n=args.n)
    eps = args.eps
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    b = x.shape[0]
    nodes = trace(model, x[:1])
    region = Region(x, torch.full((b,), eps), get_norm(args.norm), 0.0, 1.0)
    # the specification f_y - f_j for every j != y, as both libraries take it
    others = torch.arange(10).expand(b, -1)
    others = others[others != y[:, None]].reshape(b, 9)
    spec = torch.zeros(b, 9, 10)
    spec.scatter_(2, y[:, None, None].expand(-1, 9, 1), 1.0)
    spec.scatter_(2, others[:, :, None], -1.0)
    bounded = BoundedModule(model, torch.zeros(1, *x.shape[1:]),
                            bound_opts={"optimize_bound_args": {"iteration": 20, "lr_alpha": 0.1}})
    def ball(k: slice) -> PerturbationLpNorm:
        if args.norm == "linf":
            return PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x[k] - eps).clamp(0, 1),
                                      x_U=(x[k] + eps).clamp(0, 1))
        return PerturbationLpNorm(norm=2.0, eps=eps)
    for ours in args.methods.split(","):
        theirs = PAIRS[ours]
        parts = [slice(k, k + args.batch) for k in range(0, b, args.batch)]
        t = time.perf_counter()
        with torch.no_grad():
            a = torch.cat([margin_lower_bounds(nodes, Region(x[k], region.r[k], region.norm, 0.0, 1.0), y[k], ours)
                           for k in parts])
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        lower = torch.cat([bounded.compute_bounds(x=(BoundedTensor(x[k], ball(k)),), C=spec[k], method=theirs,
                                                  bound_upper=False)[0].detach() for k in parts])
        t_theirs = time.perf_counter() - t
        close = (a >= lower - 1e-5 - 0.01 * lower.abs()).all(1).float().mean()
        print(f"{ours:11s} {args.norm} n={b} eps={eps}: ours mean {float(a.min(1).values.mean()):.4f} vs auto_LiRPA "
              f"{float(lower.min(1).values.mean()):.4f}; max |diff| {float((a - lower).abs().max()):.2e}; "
              f"ours >= 0.99x theirs on {float(close):.3f}; time {t_ours:.1f}s vs {t_theirs:.1f}s", flush=True)


if __name__ == "__main__":
    main()
