"""Run every benchmark, write one JSON file and print one table.

    python benchmarks/run_all.py [--device cpu|cuda] [--quick] [--cuda-graphs] [--out benchmarks/all.json]

Rows: device, model, batch, time per step and its ratio to the floor for each
training method, attack throughput (examples per second through PGD-K and
AN-PGD), peak memory. ``--quick`` uses fewer repeats and only batch 50.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import attacks
import training
from _timing import device_info, write_json


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/all.json")
    ap.add_argument("--cuda-graphs", action="store_true", help="replay the attacks' PGD loops as CUDA graphs")
    args = ap.parse_args()
    dev = torch.device(args.device)
    reps = ["--repeats", "3" if args.quick else "7"] + (["--cuda-graphs"] if args.cuda_graphs else [])
    batches = ["50"] if args.quick else ["50", "128"]
    tmp = args.out + ".part"
    att = [attacks.run(["--device", args.device, "--batch", b, "--out", tmp, *reps]) for b in batches]
    trn = training.run(["--device", args.device, "--batch", *batches, "--out", tmp, *reps])
    os.remove(tmp)
    peak = peak_memory_mb(dev)

    print(f"\ndevice: {device_info(dev)}")
    print(f"{'what':<26}{'batch':>6}{'ms':>10}{'ratio to floor':>16}{'examples/s':>12}")
    for a in att:
        for r in a["results"]:
            print(f"{r['attack']:<26}{a['batch']:>6}{r['seconds'] * 1e3:>10.1f}{r['ratio']:>16.3f}"
                  f"{a['batch'] / r['seconds']:>12.0f}")
    for r in trn["results"]:
        if "method" in r:
            print(f"{'train ' + r['method']:<26}{r['batch']:>6}{r['seconds'] * 1e3:>10.1f}"
                  f"{r['ratio_to_floor']:>16.3f}{r['batch'] / r['seconds']:>12.0f}")
    for r in trn["results"]:
        if "comparison" in r:
            print(f"{r['comparison']} at K={r['K']}, batch {r['batch']}: {r['ratio']:.2f}×")
    print(f"peak memory: {peak:.0f} MiB")
    write_json(args.out, {"benchmark": "all", **device_info(dev), "cuda_graphs": args.cuda_graphs,
                          "peak_memory_mib": peak,
                          "attacks": att, "training": trn})


if __name__ == "__main__":
    main()
