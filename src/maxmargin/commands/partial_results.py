"""Partial results of ``maxmargin eval``, kept beside its outputs so that ``eval --resume`` continues a killed one.

After every attacked batch each process saves (atomically) the
:class:`~maxmargin.evaluate.AttackState` of its examples, the margins and
certified radii computed before the attacks, and the settings they belong to:
``eval.partial.pt`` in one process, ``eval.partial.rank{R}.pt`` per rank under
``torchrun``. A resumed evaluation restores all of it, so its ``eval.json`` is
the uninterrupted one's; partial results of other settings are refused. The
files go once the evaluation is written.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..distributed import Dist, all_reduce
from ..errors import UserError
from ..evaluate import AttackState
from ..files import load_torch_checked, save_torch_atomic

FORMAT = 1


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, dtypes, shapes and values), whatever file it came from."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _shown(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64:   # a digest: its start is enough to tell two apart
        return value[:12] + "…"
    return repr(value)


class PartialResults:
    """One process's partial results of an evaluation with ``settings`` in ``folder``."""

    def __init__(self, folder: Path, info: Dist, settings: dict[str, Any]) -> None:
        self.info = info
        self.path = folder / ("eval.partial.pt" if info.world == 1 else f"eval.partial.rank{info.rank}.pt")
        self.settings = {"format": FORMAT, **settings, "processes": info.world}

    def start(self, resume: bool, device: torch.device) -> dict[str, Any] | None:
        """What to continue from with ``resume`` (``None``: start over), after every process agreed.

        Starting over removes the partial results there are (they would be
        replaced at the first batch anyway), including those of another number
        of processes. Refuses (:class:`UserError`) partial results of other
        settings, and unreadable ones.
        """
        strays = self._strays()
        if not resume:
            if self.path.is_file() or strays:
                self._say(f"replacing the partial results of an interrupted evaluation in {self.path.parent} "
                          "(eval --resume continues them)")
            self._clear(strays)
            return None
        saved, problem = self._load(device) if self.path.is_file() else (None, None)
        # every process must take the same path: the margin search and certification gather across them
        votes = all_reduce(torch.tensor([saved is not None, problem is not None], device=device, dtype=torch.int64))
        if problem is not None:
            raise UserError(problem)
        if int(votes[1]):
            raise UserError("--resume: another process's partial results do not fit this evaluation")
        if int(votes[0]) == self.info.world:
            assert saved is not None
            st = saved["state"]
            done = 0 if st.alive is None else min(st.batch_start, st.alive.numel())
            self._say(f"--resume: continuing from {self.path} at ε={self.settings['eps'][st.eps_index]:g}, "
                      f"attack {st.attack_index + 1}, {done} of its examples done")
            return saved
        if int(votes[0]) or strays:
            self._say(f"--resume: the partial results in {self.path.parent} are not those of all "
                      f"{self.info.world} process(es); evaluating from the start")
        else:
            self._say(f"--resume: no partial results in {self.path.parent}; evaluating from the start")
        self._clear(strays)
        return None

    def _strays(self) -> list[Path]:
        """Partial results of another number of processes (the main process alone looks after them)."""
        if not self.info.main:
            return []
        ours = ({"eval.partial.pt"} if self.info.world == 1 else
                {f"eval.partial.rank{r}.pt" for r in range(self.info.world)})
        return [f for f in sorted(self.path.parent.glob("eval.partial*.pt")) if f.name not in ours]

    def _clear(self, strays: list[Path]) -> None:
        for f in [self.path, *strays]:
            f.unlink(missing_ok=True)

    def _load(self, device: torch.device) -> tuple[dict[str, Any] | None, str | None]:
        """The saved payload with its state on ``device``, or the one-line reason it cannot be used."""
        try:   # checksummed like every file we write: a flipped bit is refused, not resumed from
            payload = load_torch_checked(self.path, map_location="cpu", what="maxmargin partial evaluation",
                                         fix="run without --resume to start over")
            saved = payload["settings"]
            state = AttackState.from_dict(payload["state"], device)
        except UserError as e:
            return None, f"--resume: {e}"
        except Exception as e:   # any foreign file: refuse it by name rather than trust it
            return None, (f"--resume: {self.path} is unreadable ({type(e).__name__}); "
                          "run without --resume to start over")
        if saved != self.settings:
            keys = [k for k in self.settings if saved.get(k) != self.settings[k]]
            keys += [k for k in saved if k not in self.settings]
            diff = "; ".join(f"{k} {_shown(saved.get(k))} there, {_shown(self.settings.get(k))} now"
                             for k in keys)
            return None, (f"--resume: {self.path} holds partial results of another evaluation ({diff}); "
                          "run without --resume to start over")
        return {"state": state, "margins": _to(payload.get("margins"), device),
                "certified": _to(payload.get("certified"), device)}, None

    def saver(self, margins: Tensor | None, certified: Tensor | None) -> Callable[[AttackState], None]:
        """The ``on_progress`` callback of :meth:`~maxmargin.evaluate.EvalPlan.attack` that saves everything."""
        extra = {"margins": _to(margins, "cpu"), "certified": _to(certified, "cpu")}

        def save(state: AttackState) -> None:
            save_torch_atomic({"settings": self.settings, "state": state.as_dict(), **extra}, self.path)
        return save

    def discard(self) -> None:
        """Remove the file: the evaluation it belongs to is written."""
        self.path.unlink(missing_ok=True)

    def _say(self, line: str) -> None:
        if self.info.main:
            print(line, flush=True)


def _to(t: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if t is None else t.detach().to(device)
