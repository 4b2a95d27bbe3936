"""Readers for the dataset formats users have on disk, all returning uint8 arrays.

Each reader checks magic numbers, sizes and label ranges, and raises a
:class:`~maxmargin.errors.UserError` naming the file when something is off.
"""
from __future__ import annotations

import gzip
import io
import pickle
from pathlib import Path

import numpy as np

from ..errors import UserError

IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801


def _open_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise UserError(f"{path} is a corrupt gzip file ({e}); download it again") from None
    return raw


def find_file(root: Path, stem: str) -> Path:
    """``stem`` or ``stem.gz`` inside ``root``."""
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise UserError(f"missing {root / stem}[.gz]; put the dataset's files in {root} or pass --data DIR")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (MNIST, Fashion-MNIST): big-endian header, then uint8 data."""
    raw = _open_maybe_gz(path)
    ndim = {IDX_IMAGES: 3, IDX_LABELS: 1}[magic]
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        kind = "image" if magic == IDX_IMAGES else "label"
        raise UserError(f"{path} is not an IDX {kind} file (bad magic number); is it the right file?")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise UserError(f"{path} holds {len(raw) - header} bytes of data but its header says {expected}; "
                        "the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_split(root: Path, prefix: str, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    images_path = find_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_file(root, f"{prefix}-labels-idx1-ubyte")
    x = read_idx(images_path, IDX_IMAGES)
    y = read_idx(labels_path, IDX_LABELS)
    if len(x) != len(y):
        raise UserError(f"{images_path} has {len(x)} images but {labels_path} has {len(y)} labels")
    if y.size and int(y.max()) >= num_classes:
        raise UserError(f"{labels_path} holds label {int(y.max())}, outside 0..{num_classes - 1}")
    return x[:, None], y


class _ArraysOnly(pickle.Unpickler):
    """Unpickle CIFAR batches without running arbitrary code: numpy arrays and builtins only."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "bytes"),
        ("_codecs", "encode"), ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: ``data`` [N, 3072] uint8 and a label list."""
    if not path.is_file():
        raise UserError(f"missing {path}; extract the CIFAR python archive there or pass --data DIR")
    try:
        d = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except Exception as e:  # any failure to parse means the same thing to the user
        raise UserError(f"{path} is not a readable CIFAR python batch ({type(e).__name__}); "
                        "download and extract it again") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{path} has data of shape {data.shape} and {len(labels)} labels; "
                        "expected [N, 3072] and N labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path} holds labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.uint8)
