"""Attack cost on a LeNet5-sized model: one pass, PGD-K and AN-PGD, and their overhead.

    python benchmarks/attacks.py [--batch 50] [--steps 10 40] [--device cpu] [--out benchmarks/attacks.json]

Overhead of PGD-K = time / (K × one forward+backward w.r.t. the input); AN-PGD is
compared with its floor: PGD-K + (1 + search_steps) forward-only passes.
"""
from __future__ import annotations

import argparse

import torch
from _timing import device_info, timeit, write_json

from maxmargin.attacks import anpgd, pgd
from maxmargin.attacks.graphs import cuda_graphs
from maxmargin.losses import cross_entropy, soft_logit_margin
from maxmargin.models import LeNet5


def confident_labels(model: torch.nn.Module, x: torch.Tensor, share: float = 0.95) -> torch.Tensor:
    """Label by the model's own prediction and scale its last layer until ``share`` of
    the batch has SLM < 0, so AN-PGD attacks (nearly) every example, as in MMA training."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        y = model(x).argmax(1)
        while float((soft_logit_margin(model(x), y) < 0).float().mean()) < share:
            last.weight.mul_(2.0)
            last.bias.mul_(2.0)
    return y


def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--search-steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/attacks.json")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay the PGD loops as CUDA graphs")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = LeNet5().to(dev).eval()
    x = torch.rand(args.batch, 1, 28, 28, device=dev)
    y = confident_labels(model, x)

    def fwd_bwd():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(cross_entropy(model(xr), y).sum(), xr)

    def fwd():
        with torch.no_grad():
            model(x)

    # amortized over 10 back-to-back passes, as the attacks run them
    t_pass = timeit(lambda: [fwd_bwd() for _ in range(10)], args.repeats) / 10
    t_fwd = timeit(lambda: [fwd() for _ in range(10)], args.repeats) / 10
    rows = []
    print(f"{'what':<28}{'time ms':>10}{'floor ms':>10}{'ratio':>8}")
    print(f"{'forward+backward (input)':<28}{t_pass * 1e3:>10.2f}")
    print(f"{'forward only':<28}{t_fwd * 1e3:>10.2f}{'':>10}{t_fwd / t_pass:>8.2f}  (of a fwd+bwd)")
    for k in args.steps:
        with cuda_graphs(args.cuda_graphs):
            t = timeit(lambda k=k: pgd(model, x, y, norm="linf", eps=0.3, steps=k), args.repeats)
        floor = k * t_pass
        rows.append({"attack": f"pgd-{k}", "seconds": t, "floor_seconds": floor, "ratio": t / floor})
        with cuda_graphs(args.cuda_graphs):
            t_an = timeit(lambda k=k: anpgd(model, x, y, norm="linf",
                                            eps_init=torch.full((args.batch,), 0.1, device=dev),
                                            eps_max=0.4725, steps=k, search_steps=args.search_steps),
                          args.repeats)
        floor_an = k * t_pass + (1 + args.search_steps) * t_fwd
        rows.append({"attack": f"anpgd-{k}+{args.search_steps}", "seconds": t_an, "floor_seconds": floor_an,
                     "ratio": t_an / floor_an, "ratio_to_pgd": t_an / t})
        for r in rows[-2:]:
            print(f"{r['attack']:<28}{r['seconds'] * 1e3:>10.2f}{r['floor_seconds'] * 1e3:>10.2f}{r['ratio']:>8.3f}")
    payload = {"benchmark": "attacks", "model": "LeNet5", "batch": args.batch, **device_info(dev),
               "cuda_graphs": args.cuda_graphs,
               "pass_seconds": t_pass, "forward_seconds": t_fwd, "results": rows}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    run()
