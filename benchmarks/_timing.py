"""Shared timing helpers for the benchmarks (not a test: numbers, not assertions)."""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import torch

from maxmargin.files import write_text_atomic


def timeit(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Fastest wall time of ``fn`` over ``repeats`` runs, in seconds (CUDA-synchronized on a GPU).

    The minimum, not the median: on a shared 2-core machine the noise only
    ever adds time, and ratios of minima are what stays stable between runs.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))
    print(f"wrote {path}")
