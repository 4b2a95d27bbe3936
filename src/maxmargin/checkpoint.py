"""Checkpoints: written to a temporary file and renamed, loaded with ``weights_only=True`` only."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, check, from_dict
from .errors import UserError
from .files import save_torch_atomic
from .models import build_model

FORMAT = "maxmargin-checkpoint-1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with the format marker as a checkpoint, atomically: a killed run keeps the old file."""
    save_torch_atomic({"format": FORMAT, **payload}, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a maxmargin checkpoint; anything else is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is truncated or not a maxmargin checkpoint ({first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a maxmargin checkpoint (no '{FORMAT}' marker)")
    return ckpt


def arch_of(cfg: Config, shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    return {"model": cfg.model, "in_channels": int(shape[0]), "num_classes": int(num_classes),
            "image_size": int(shape[-1])}


def model_from_arch(arch: dict[str, Any]) -> nn.Module:
    return build_model(arch["model"], arch["in_channels"], arch["num_classes"], arch["image_size"])


def load_weights(model: nn.Module, ckpt: dict[str, Any], path: Path,
                 expected_arch: dict[str, Any] | None = None) -> None:
    """Put a checkpoint's weights into ``model``; an architecture mismatch is a :class:`UserError`."""
    if expected_arch is not None and ckpt.get("arch") != expected_arch:
        raise UserError(f"{path} holds a {ckpt.get('arch')} model but this run builds {expected_arch}; "
                        "use a checkpoint of the same preset or another --out")
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{path} does not fit the model ({str(e).splitlines()[0][:120]})") from None


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Config, dict[str, Any]]:
    """A model ready for evaluation from a checkpoint file or a run directory (its best.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoints/best.pt", "checkpoints/last.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UserError(f"{path} holds no checkpoints/best.pt or checkpoints/last.pt; is it a run directory?")
    ckpt = load_checkpoint(path, device)
    model = model_from_arch(ckpt["arch"]).to(device)
    load_weights(model, ckpt, path)
    model.eval()
    cfg = check(from_dict(ckpt.get("config", {})))
    return model, cfg, ckpt
