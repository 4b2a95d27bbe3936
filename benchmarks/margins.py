"""Margin estimates against adv-lib's minimal-norm attacks, and certified margins' cost.

    python benchmarks/margins.py [--n 200] [--steps 160] [--out benchmarks/margins.json]
    python benchmarks/margins.py --run RUN [--n 100] [--norms l2]   # a trained run directory instead of LeNet5
    python benchmarks/margins.py --certify [--n 500]        # IBP and CROWN: time and peak memory

Upper side: LeNet5 (Madry) trained briefly with Adam on the bundled digits;
the first ``n`` correctly classified test digits. Our ``estimate_margin``
(defaults) and ``margin_search`` (the evaluation's setting) against adv-lib
0.2.8's FMN, FAB (L∞, L2), DDN and ALMA (L2); every adversarial point is
checked (misclassified, inside the box) before its norm counts. Per example,
"within 2 %" compares ours with the best adv-lib value. In L2, "before" rows
run ours without the ALMA and FAB stages (``alma_steps=0, fab_steps=0``).

``--run RUN``: the model of a trained run directory (``maxmargin train ...
--out RUN``) and the first ``n`` test digits it classifies correctly, the
same rows; torch runs on one thread unless ``--threads`` says otherwise.

Lower side (``--certify``): ``certified_margin`` with IBP and with CROWN on
the first ``n`` test digits at one radius search (12 bound evaluations), each
method in its own process so that its peak memory (max RSS) is its own.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import _advlib
import torch
from _timing import device_info, write_json
from training import pretrain

from maxmargin import load_data, load_model
from maxmargin.certify import certified_margin
from maxmargin.data import load_dataset
from maxmargin.margin import estimate_margin, margin_search
from maxmargin.models import LeNet5

CAPS = {"linf": 0.5, "l2": 8.0}


def trained_lenet(steps: int, device: torch.device):
    torch.manual_seed(0)
    ds = load_dataset("digits", None, 1000, device)
    model = LeNet5().to(device)
    pretrain(model, ds, device, steps)
    return model.eval(), ds


def correct_digits(model, x, y, n: int):
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def ours(norm: str) -> list[tuple[str, Callable]]:
    """Our rows for one norm: the defaults and the evaluation's setting, and in L2 both without ALMA and FAB."""
    cap = CAPS[norm]
    rows: list[tuple[str, Callable]] = [
        ("ours (defaults)", lambda m, x, y: estimate_margin(m, x, y, norm=norm, eps_max=cap)),
        ("ours (margin_search)", lambda m, x, y: margin_search(m, x, y, norm, cap))]
    if norm == "l2":
        rows = [("ours before (defaults, alma_steps=0, fab_steps=0)",
                 lambda m, x, y: estimate_margin(m, x, y, norm=norm, eps_max=cap, alma_steps=0, fab_steps=0)),
                ("ours before (margin_search, alma_steps=0, fab_steps=0)",
                 lambda m, x, y: margin_search(m, x, y, norm, cap, alma_steps=0, fab_steps=0))] + rows
    return rows


def compare(model, x, y, norms) -> dict:
    """Every row of ``ours`` and every adv-lib attack on the same digits; adv-lib points verified."""
    refs = _advlib.load()
    if refs is None:
        print("adv-lib is not installed: pip install --no-deps adv-lib==0.2.8")
    out = {}
    for norm in norms:
        rows = {}
        for name, fn in ours(norm):
            torch.manual_seed(0)
            t = time.perf_counter()
            rows[name] = (fn(model, x, y), time.perf_counter() - t)
        for name, attack in (refs or {}).get(norm, {}).items():
            torch.manual_seed(0)
            t = time.perf_counter()
            x_adv = attack(model, x, y)
            rows[name] = (_advlib.verified_norms(model, x, y, x_adv, norm), time.perf_counter() - t)
        ref_names = [k for k in rows if not k.startswith("ours")]
        best = torch.stack([rows[k][0] for k in ref_names]).amin(0) if ref_names else None
        table = {}
        for name, (m, secs) in rows.items():
            entry = {"mean": float(m[torch.isfinite(m)].mean()), "found": int(torch.isfinite(m).sum()),
                     "seconds": round(secs, 1)}
            if best is not None:
                ratio = m / best
                entry.update(within_2pct=float((ratio <= 1.02).float().mean()), worst_ratio=float(ratio.max()),
                             best_on=int((m <= best).sum()))
                if name.startswith("ours"):
                    entry["mean_vs_best_single"] = entry["mean"] / min(float(rows[k][0].mean()) for k in ref_names)
            table[name] = entry
            print(f"{norm:4} {name:42} " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                     for k, v in entry.items()), flush=True)
        out[norm] = table
    return out


def upper(args, device) -> dict:
    model, ds = trained_lenet(args.steps, device)
    x, y = correct_digits(model, ds.test.images(slice(0, 4 * args.n)), ds.test.y[:4 * args.n], args.n)
    return {"model": "LeNet5", "n": int(len(y)), "train_steps": args.steps, "norms": compare(model, x, y, args.norms)}


def upper_run(args) -> dict:
    model, cfg, _ = load_model(args.run)
    model = model.cpu().eval()
    x, y = load_data(cfg, "test", n=4 * args.n)
    x, y = correct_digits(model, x.cpu(), y.cpu(), args.n)
    return {"run": args.run, "n": int(len(y)), "norms": compare(model, x, y, args.norms)}


def certify_one(args, device) -> dict:
    model, ds = trained_lenet(args.steps, device)
    x, y = ds.test.images(slice(0, args.n)), ds.test.y[:args.n]
    t = time.perf_counter()
    cert = certified_margin(model, x, y, norm=args.norm, method=args.method, eps_max=CAPS[args.norm])
    secs = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": args.method, "norm": args.norm, "n": args.n, "seconds": round(secs, 1),
            "peak_rss_mb": round(peak_mb), "mean_certified": float(cert.mean()),
            "certified_at": {str(e): float((cert >= e).float().mean()) for e in (0.05, 0.1, 0.2)}
            if args.norm == "linf" else {str(e): float((cert >= e).float().mean()) for e in (0.5, 1.0, 2.0)}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=160, help="Adam steps of LeNet5 training")
    ap.add_argument("--certify", action="store_true")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--norm", default="linf", help=argparse.SUPPRESS)
    ap.add_argument("--run", help="a trained run directory to benchmark instead of LeNet5")
    ap.add_argument("--norms", nargs="+", default=["linf", "l2"], choices=["linf", "l2"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (--run: 1 unless given)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    if args.threads or args.run:
        torch.set_num_threads(args.threads or 1)
    if args.run:
        write_json(args.out or "benchmarks/margins_run.json", {**upper_run(args), **device_info(device)})
        return
    if args.method:                      # a child process of --certify
        print(json.dumps(certify_one(args, device)))
        return
    if args.certify:
        results = []
        for norm in ("linf", "l2"):
            for method in ("ibp", "crown"):
                cmd = [sys.executable, __file__, "--n", str(args.n), "--steps", str(args.steps), "--method", method,
                       "--norm", norm]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                results.append(json.loads(line))
                print(results[-1])
        payload = {"certify": results, **device_info(device)}
        write_json(args.out or "benchmarks/certify.json", payload)
        return
    payload = {**upper(args, device), **device_info(device)}
    write_json(args.out or "benchmarks/margins.json", payload)


if __name__ == "__main__":
    main()
