"""Checkpoints: written to a temporary file and renamed with their SHA-256, loaded with ``weights_only=True`` only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, check, from_dict
from .errors import UserError
from .files import CorruptFileError, load_torch_checked, save_torch_atomic
from .models import build_model

FORMAT = "maxmargin-checkpoint-1"
_FAMILY = FORMAT.rsplit("-", 1)[0]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with the format marker as a checkpoint, atomically: a killed run keeps the old file."""
    save_torch_atomic({"format": FORMAT, **payload}, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load a maxmargin checkpoint, its SHA-256 checked; anything else is a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    def accept(ckpt: Any) -> None:
        found = ckpt.get("format") if isinstance(ckpt, dict) else None
        if isinstance(found, str) and found.startswith(_FAMILY + "-") and found != FORMAT:
            raise CorruptFileError(f"{path}: field \"format\" is {found!r}, but this maxmargin reads {FORMAT!r} "
                                   "(a newer maxmargin wrote it?); upgrade maxmargin")
        if found != FORMAT:
            raise UserError(f"{path} is not a maxmargin checkpoint (no '{FORMAT}' marker)")

    ckpt: dict[str, Any] = load_torch_checked(path, device, accept=accept)
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
        found = ckpt.get("arch")
        theirs: dict[str, Any] = found if isinstance(found, dict) else {}
        diff = "; ".join(f"{k} {theirs.get(k)!r} there, {v!r} here" for k, v in expected_arch.items()
                         if theirs.get(k) != v)
        raise UserError(f"{path} holds another model than this run builds (field \"arch\": {diff}); "
                        "use a checkpoint of the same preset and dataset, or another --out")
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as e:
        # torch's first line only says "Error(s) in loading state_dict for X:"; the second names the keys
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()][:2]
        raise UserError(f"{path} does not fit the model: {' '.join(lines) or type(e).__name__}") from None


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
    if not isinstance(ckpt.get("arch"), dict):
        raise UserError(f"{path} lacks the field \"arch\" (which model it holds); not a checkpoint maxmargin wrote")
    model = model_from_arch(ckpt["arch"]).to(device)
    load_weights(model, ckpt, path)
    model.eval()
    cfg = check(from_dict(ckpt.get("config", {})))
    return model, cfg, ckpt
