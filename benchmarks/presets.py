"""Steps per second of paper presets, and the projected time of a full paper run.

    python benchmarks/presets.py [--presets mnist-linf-mma-0.45 cifar10-linf-mma-32] [--steps 20]
                                 [--device cuda] [--amp bf16] [--channels-last] [--compile] [--cuda-graphs]

Inputs are random images of the preset's shape, labelled by the model itself
after its last layer is sharpened, so every example counts as correctly
classified and MMA attacks all of them: the cost of a step late in training,
the expensive case.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import device_info, write_json
from attacks import confident_labels

from maxmargin.attacks.graphs import set_cuda_graphs
from maxmargin.config import apply_overrides, load_preset
from maxmargin.methods import build_method
from maxmargin.models import build_model
from maxmargin.models.fast_paths import apply_fast_paths
from maxmargin.train import make_optimizer

SHAPES = {"mnist": (1, 28), "cifar10": (3, 32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["mnist-linf-mma-0.45", "cifar10-linf-mma-32"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="off", choices=["off", "bf16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a preset key, as in maxmargin train (e.g. search=bisect)")
    ap.add_argument("--out", default="benchmarks/presets.json")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    set_cuda_graphs(args.cuda_graphs and dev.type == "cuda")
    for name in args.presets:
        cfg = load_preset(name)
        cfg = apply_overrides(cfg, args.set)
        c, side = SHAPES[cfg.dataset]
        torch.manual_seed(0)
        core = build_model(cfg.model, c, 10, side).to(dev)
        x = torch.rand(cfg.batch_size, c, side, side, device=dev)
        y = confident_labels(core, x)
        model = apply_fast_paths(core, args.amp, args.channels_last, args.compile, dev, cuda_graphs=args.cuda_graphs)
        opt = make_optimizer(cfg, core)
        method = build_method(cfg, cfg.batch_size, dev)
        idx = torch.arange(cfg.batch_size, device=dev)
        model.train()

        def step(i: int, method=method, model=model, x=x, y=y, idx=idx, opt=opt) -> None:
            method.step = i
            loss, _ = method.loss(model, x, y, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for i in range(args.warmup):
            step(i)
        sync()
        t = time.perf_counter()
        for i in range(args.steps):
            step(args.warmup + i)
        sync()
        sec = (time.perf_counter() - t) / args.steps
        row = {"preset": name, "batch": cfg.batch_size, "seconds_per_step": sec, "steps_per_second": 1 / sec,
               "paper_steps": cfg.steps, "projected_hours": cfg.steps * sec / 3600, "amp": args.amp,
               "channels_last": args.channels_last, "compile": args.compile,
               "cuda_graphs": args.cuda_graphs, "search": getattr(cfg, "search", None)}
        if dev.type == "cuda":
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        rows.append(row)
        print(f"{name} ({' '.join(args.set) or 'as preset'}): {1 / sec:.2f} steps/s, "
              f"full run of {cfg.steps} steps ≈ {row['projected_hours']:.2f} h")
    write_json(args.out, {"benchmark": "presets", **device_info(dev), "results": rows})


if __name__ == "__main__":
    main()
