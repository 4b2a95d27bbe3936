"""Datasets as whole uint8 tensors on the training device, batches drawn by index.

Splits: ``train`` (without the validation images), ``val`` (the first
``val_size`` training images) and ``test``. Every batch carries its dataset
indices (into ``train``) because MMA remembers a radius per example.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .formats import read_cifar_batch, read_idx_split

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DIGITS_TEST = 2000


@dataclass
class Split:
    x: Tensor   # uint8 [N, C, H, W]
    y: Tensor   # int64 [N]

    def __len__(self) -> int:
        return self.y.shape[0]

    def images(self, idx: Tensor | slice | None = None) -> Tensor:
        """Float images in [0, 1] (optionally only ``idx``)."""
        x = self.x if idx is None else self.x[idx]
        return x.float().div_(255.0)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return cast(tuple[int, int, int], tuple(self.train.x.shape[1:]))  # images are [N, C, H, W]


def _digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    path = resources.files("maxmargin") / "data" / "digits.npz"
    try:
        with path.open("rb") as f, np.load(f) as z:
            x, y = z["x"], z["y"]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"the bundled digits ({path}) are missing or corrupt ({e}); "
                        "rebuild them with scripts/make_digits.py or reinstall maxmargin") from None
    x = x[:, None]
    return (x[:-DIGITS_TEST], y[:-DIGITS_TEST]), (x[-DIGITS_TEST:], y[-DIGITS_TEST:])


Arrays = tuple[np.ndarray, np.ndarray]
Reader = Callable[[Path | None], tuple[Arrays, Arrays, int]]
READERS: dict[str, Reader] = {}


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    """Decorator: ``reader(root) -> ((x_train, y_train), (x_test, y_test), num_classes)`` as ``dataset = "name"``.

    Images are uint8 ``[N, C, H, W]``, labels integers; ``root`` is ``--data``
    (``None`` when not given). Errors a user can fix are :class:`UserError`.
    """
    def add(reader: Reader) -> Reader:
        READERS[name] = reader
        return reader
    return add


def dataset_names() -> list[str]:
    return list(READERS)


@register_dataset("digits")
def _read_digits(root: Path | None) -> tuple[Arrays, Arrays, int]:
    if root is not None:   # silently training on the bundled digits instead would be worse
        raise UserError(f"dataset 'digits' is bundled and reads no folder, but --data {root} was given; "
                        "to read the IDX files there, add --set dataset=mnist (or dataset=fashion-mnist)")
    train, test = _digits()
    return train, test, 10


def _idx(name: str, root: Path | None, default: Path | None) -> tuple[Arrays, Arrays, int]:
    if root is None:
        if default is None:
            raise UserError(f"dataset {name!r} needs --data DIR (a folder with the four IDX files)")
        root = default
    if not root.is_dir():
        hint = " (apt-get install dataset-fashion-mnist puts it there)" if str(root) == FASHION_MNIST_DIR else ""
        raise UserError(f"data folder {root} does not exist{hint}")
    return read_idx_split(root, "train"), read_idx_split(root, "t10k"), 10


@register_dataset("mnist")
def _read_mnist(root: Path | None) -> tuple[Arrays, Arrays, int]:
    return _idx("mnist", root, None)


@register_dataset("fashion-mnist")
def _read_fashion(root: Path | None) -> tuple[Arrays, Arrays, int]:
    return _idx("fashion-mnist", root, Path(FASHION_MNIST_DIR))


@register_dataset("cifar10")
def _read_cifar10(root: Path | None) -> tuple[Arrays, Arrays, int]:
    if root is None:
        raise UserError("dataset 'cifar10' needs --data DIR (the folder cifar-10-batches-py or its parent)")
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    parts = [read_cifar_batch(root / f"data_batch_{i}", b"labels", 10) for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, read_cifar_batch(root / "test_batch", b"labels", 10), 10


@register_dataset("cifar100")
def _read_cifar100(root: Path | None) -> tuple[Arrays, Arrays, int]:
    if root is None:
        raise UserError("dataset 'cifar100' needs --data DIR (the folder cifar-100-python or its parent)")
    if (root / "cifar-100-python").is_dir():
        root = root / "cifar-100-python"
    return (read_cifar_batch(root / "train", b"fine_labels", 100),
            read_cifar_batch(root / "test", b"fine_labels", 100), 100)


def _read(name: str, root: Path | None) -> tuple[Arrays, Arrays, int]:
    if name not in READERS:
        raise UserError(f"unknown dataset {name!r}; choose {', '.join(READERS)}")
    return READERS[name](root)


def load_dataset(name: str, root: str | Path | None = None, val_size: int = 1000,
                 device: torch.device | str = "cpu") -> Dataset:
    """Load a dataset into memory on ``device``; the first ``val_size`` training images are validation."""
    (xtr, ytr), (xte, yte), classes = _read(name, Path(root) if root is not None else None)
    if not 0 <= val_size < len(ytr):
        raise UserError(f"val_size {val_size} must be less than the {len(ytr)} training images of {name}")

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(np.array(x, copy=True)).to(device),
                     torch.from_numpy(y.astype(np.int64)).to(device))

    return Dataset(name, split(xtr[val_size:], ytr[val_size:]), split(xtr[:val_size], ytr[:val_size]),
                   split(xte, yte), classes)


class BatchStream:
    """Deterministic batches: batch ``s`` is positions ``[s·B, (s+1)·B)`` of a stream of
    per-epoch permutations, each seeded by ``(seed, epoch)``.

    A batch is a pure function of the step, so resuming needs only the step, and
    ``rank``/``world`` take disjoint shards of the same global batch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str = "cpu") -> None:
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, torch.device(device)
        self._cache: dict[int, Tensor] = {}

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            self._cache[epoch] = torch.randperm(self.n, generator=g).to(self.device)
        return self._cache[epoch]

    def indices(self, step: int, rank: int = 0, world: int = 1) -> Tensor:
        start = step * self.batch_size
        end = start + self.batch_size
        first, last = start // self.n, (end - 1) // self.n
        stream = torch.cat([self._perm(e) for e in range(first, last + 1)])
        idx = stream[start - first * self.n: end - first * self.n]
        return idx[rank::world]


def augment(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Reflect-pad ``pad``, random crop back to size, random horizontal flip: batched on ``x``'s device."""
    b, c, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    flip = torch.rand(b, generator=generator, device=dev) < 0.5
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]          # [B, H, 1]
    cols = ox[:, None] + torch.arange(w, device=dev)                         # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]        # [B, 1, W]
    bidx = torch.arange(b, device=dev)[:, None, None]
    return padded.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2).contiguous()


__all__ = ["Dataset", "Split", "load_dataset", "register_dataset", "dataset_names", "BatchStream", "augment",
           "FASHION_MNIST_DIR"]
