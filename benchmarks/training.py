"""Time per training step of Standard, PGD-AT and MMA, against each step's floor.

    python benchmarks/training.py [--batch 50 128] [--steps 10 40] [--device cpu] [--repeats 9]
                                  [--channels-last] [--cuda-graphs] [--out benchmarks/training.json]

The floor of a step is the passes it needs, counted with a forward hook
(examples per pass; training fwd+bwd, attack fwd+bwd w.r.t. the input, or
forward-only), times single-pass times measured at those batch sizes. The
model is LeNet5 trained briefly on the bundled digits so that, as in real MMA
training, most examples are classified correctly. Methods are timed in interleaved
rounds (each method once per round), so a burst of load on a shared machine
slows one round of every method rather than one method's whole series; the
MMA/PGD-AT ratios are printed both as fastest/fastest and as the median over
rounds of the ratio within a round.
"""
from __future__ import annotations

import argparse
from collections import Counter

import torch
import torch.nn.functional as F
from _timing import device_info, timeit, write_json

from maxmargin.attacks.graphs import cuda_graphs
from maxmargin.data import load_dataset
from maxmargin.methods import MMA, PGDAT, Standard
from maxmargin.models import LeNet5


class PassCounter:
    """Records (kind, batch size) of every forward pass of ``model``."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.passes: Counter = Counter()
        self.on = False
        model.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        if not self.on:
            return
        n = inputs[0].shape[0]
        if not torch.is_grad_enabled():
            kind = "forward"
        elif module.training:
            kind = "train"
        else:
            kind = "attack"
        self.passes[(kind, n)] += 1


def pretrain(model, ds, device, steps: int = 300) -> None:
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(ds.train), (50,), generator=g).to(device)
        loss = F.cross_entropy(model(ds.train.images(idx)), ds.train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[50, 128])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--repeats", type=int, default=9,
                    help="interleaved rounds; each method's fastest is reported")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/training.json")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="replay the PGD loops as CUDA graphs (passes are counted on an eager step)")
    ap.add_argument("--channels-last", action="store_true",
                    help="LeNet5's weights in channels_last layout (fast max-pooling on a CPU)")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    ds = load_dataset("digits", device=dev)
    model = LeNet5().to(dev)
    pretrain(model, ds, dev)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    counter = PassCounter(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)   # lr 0: every repeat sees the same model
    cache: dict = {}

    def pass_time(kind: str, n: int) -> float:
        if (kind, n) not in cache:
            x, y = ds.train.images(slice(0, n)), ds.train.y[:n]
            if kind == "train":
                def f():
                    model.train()
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
            elif kind == "attack":
                def f():
                    model.eval()
                    xr = x.clone().requires_grad_(True)
                    torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
            else:
                def f():
                    model.eval()
                    with torch.no_grad():
                        model(x)
            # amortized over 5 back-to-back passes, as a training step runs them
            cache[(kind, n)] = timeit(lambda: [f() for _ in range(5)], args.repeats) / 5
        return cache[(kind, n)]

    rows = []
    print(f"{'method':<22}{'batch':>6}{'ms/step':>10}{'floor ms':>10}{'ratio':>8}   passes")
    for b in args.batch:
        x, y = ds.train.images(slice(0, b)), ds.train.y[:b]
        idx = torch.arange(b, device=dev)
        with torch.no_grad():
            acc = float((model.eval()(x).argmax(1) == y).float().mean())
        methods = {"standard": Standard()}
        for k in args.steps:
            methods[f"pgd-at K={k}"] = PGDAT("linf", 0.3, steps=k)
            for search in ("bisect", "secant"):
                mma = MMA("linf", 0.45, 0.1, steps=k, num_examples=len(ds.train), search=search, device=dev)
                mma.eps[idx] = 0.2                                # a warm memory, as mid-training
                methods[f"mma K={k} {search}"] = mma
        steps, passes = {}, {}
        for name, method in methods.items():
            state = method.state_dict()

            def step(method=method, state=state, x=x, y=y, idx=idx):
                if state:
                    method.load_state_dict(state)
                model.train()
                loss, _ = method.loss(model, x, y, idx)
                opt.zero_grad()
                loss.backward()
                opt.step()

            torch.manual_seed(1)
            counter.passes.clear()
            counter.on = True
            step()
            counter.on = False
            steps[name], passes[name] = step, dict(counter.passes)
        # Interleaved: round r times every method once, so a burst of load on the shared
        # machine slows all methods of that round instead of one method's whole series.
        times = {name: [] for name in methods}
        with cuda_graphs(args.cuda_graphs):
            for name in methods:
                steps[name]()                                 # warm-up (and graph capture)
            for _ in range(args.repeats):
                for name in methods:
                    times[name].append(timeit(steps[name], 1, warmup=0))
        by_name = {}
        for name in methods:
            t = min(times[name])
            floor = sum(c * pass_time(kind, n) for (kind, n), c in passes[name].items())
            summary = " ".join(f"{kind}:{n}×{c}" for (kind, n), c in sorted(passes[name].items()))
            print(f"{name:<22}{b:>6}{t * 1e3:>10.1f}{floor * 1e3:>10.1f}{t / floor:>8.3f}   {summary}")
            row = {"method": name, "batch": b, "clean_acc": acc, "seconds": t, "floor_seconds": floor,
                   "ratio_to_floor": t / floor, "passes": {f"{k}:{n}": c for (k, n), c in passes[name].items()}}
            rows.append(row)
            by_name[name] = row
        for k in args.steps:
            for search in ("bisect", "secant"):
                mma, base = times[f"mma K={k} {search}"], times[f"pgd-at K={k}"]
                r = min(mma) / min(base)
                # the same ratio within each round (the two steps ran seconds apart), median over rounds
                within = sorted(a / p for a, p in zip(mma, base))[len(mma) // 2]
                print(f"  batch {b}: MMA ({search}) / PGD-AT at K={k}: {r:.2f}× (fastest of each; "
                      f"median within a round {within:.2f}×)")
                rows.append({"comparison": f"mma-{search}/pgd-at", "K": k, "batch": b, "ratio": r,
                             "median_round_ratio": within})
    payload = {"benchmark": "training", "model": "LeNet5", **device_info(dev), "cuda_graphs": args.cuda_graphs,
               "channels_last": args.channels_last,
               "results": rows}
    write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    run()
