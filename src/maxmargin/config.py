"""Run configuration: one flat dataclass, TOML presets, ``--set key=value`` overrides.

Every key can be overridden from the command line; values are parsed by the
field's type and checked before any training starts.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

from .errors import UserError


@dataclass
class Config:
    """Everything that defines a run. ``description`` is the one line ``maxmargin presets`` shows."""

    name: str = "custom"
    description: str = ""
    # data
    dataset: str = "digits"              # digits | mnist | fashion-mnist | cifar10 | cifar100
    data_dir: Optional[str] = None
    val_size: int = 1000
    augment: bool = False                # reflect-pad 4 + random crop + horizontal flip
    # model
    model: str = "small_cnn"             # lenet5 | small_cnn | wrn28_4 | mlp800
    # objective
    method: str = "standard"             # standard | pgd | mma | trades | amm
    norm: str = "linf"
    eps: float = 0.3                     # PGD-AT radius
    pgdls_steps: int = 0                 # PGDLS: eps grows linearly over this many steps (0 = off)
    attack_steps: int = 40               # PGD steps inside PGD-AT and AN-PGD
    attack_loss: str = "ce"              # PGD-AT: loss its PGD ascends, ce | slm | cw | lm (paper presets: slm)
    d_max: float = 0.45                  # MMA: largest margin trained for
    eps_min: float = 0.1                 # MMA: initial radius and floor
    clean_weight: float = 1.0 / 3.0      # MMA: 1/3; OMMA: 0
    search_steps: int = 10               # MMA: line-search steps of AN-PGD
    search: str = "bisect"               # MMA: bisect (paper) | secant (fewer passes, same resolution)
    eps_inc: Optional[float] = None      # MMA: None = official bracket; a number = preprint bracket
    refine: bool = False                 # MMA: second PGD at the radius found (preprint)
    inner: str = "anpgd"                 # MMA: anpgd | ddn (L2 only)
    ddn_gamma: float = 0.05              # MMA with inner=ddn: radius change per step
    beta: float = 6.0                    # TRADES: weight of the KL term
    attack_step: Optional[float] = None  # TRADES: step of the KL PGD (None = 2.5·eps/attack_steps)
    amm_lam: float = 32.0                # AMM: λ
    amm_c: float = 2.0                   # AMM: shrinkage on correct examples, λ·exp(−c‖r‖)
    amm_d: float = 1.0                   # AMM: growth on misclassified ones, λ·exp(d‖r‖)
    amm_top_k: int = 10
    amm_iters: int = 5
    amm_overshoot: float = 0.02
    amm_aggregation: str = "avg"         # avg | min
    amm_grad_eps: float = 1e-5
    # optimisation
    optimizer: str = "adam"              # adam | sgd
    lr: float = 1e-4
    lr_milestones: list = field(default_factory=list)   # steps at which lr_values take over
    lr_values: list = field(default_factory=list)
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float = 0.0               # 0 = off
    batch_size: int = 50
    steps: int = 100_000
    # evaluation during training (on the validation split)
    eval_every: int = 5000
    eval_size: int = 0                   # 0 = the whole validation split
    eval_batch_size: int = 500
    val_pgd_eps: float = 0.3
    val_pgd_step: float = 0.01
    val_pgd_steps: int = 40
    margin_eps_max: float = 0.5          # cap of the validation margin estimate (MMA presets: 1.05·d_max)
    margin_eps_init: Optional[float] = None   # radius of its PGD (None = margin_eps_max/2; MMA presets: val_pgd_eps)
    margin_attack_loss: str = "lm"       # loss of its PGD, lm | slm (MMA presets: slm, as the official trainer)
    margin_steps: int = 20               # PGD steps of the validation margin estimate
    # run
    seed: int = 0
    device: str = "auto"
    amp: str = "off"                     # off | bf16 (CUDA only: model arithmetic in bf16, attacks stay float32)
    channels_last: bool = False          # conv nets in channels_last layout (faster on CPU and GPU)
    compile: bool = False                # CUDA only: torch.compile the model
    cuda_graphs: bool = False            # CUDA only: replay the attacks' PGD loops as CUDA graphs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HINTS = get_type_hints(Config)
KEYS = [f.name for f in fields(Config)]
CHOICES = {
    "dataset": ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100"),
    "model": ("lenet5", "small_cnn", "wrn28_4", "mlp800"),
    "method": ("standard", "pgd", "mma", "trades", "amm"),
    "inner": ("anpgd", "ddn"),
    "amm_aggregation": ("avg", "min"),
    "norm": ("linf", "l2"),
    "optimizer": ("adam", "sgd"),
    "search": ("bisect", "secant"),
    "attack_loss": ("ce", "slm", "cw", "lm"),
    "margin_attack_loss": ("lm", "slm"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("off", "bf16"),
}
NON_NEGATIVE = ("eps", "pgdls_steps", "d_max", "eps_min", "lr", "momentum", "weight_decay",
                "grad_clip", "val_pgd_eps", "val_pgd_step", "margin_eps_max", "eval_size", "val_size",
                "search_steps", "eps_inc", "ddn_gamma", "beta", "attack_step", "amm_lam",
                "amm_c", "amm_d", "amm_overshoot", "amm_grad_eps")
POSITIVE_INTS = ("amm_top_k", "amm_iters")
POSITIVE = ("batch_size", "steps", "eval_every", "eval_batch_size", "margin_steps", "val_pgd_steps", "attack_steps")


def _base_type(key: str) -> tuple[type, bool]:
    hint = _HINTS[key]
    if get_origin(hint) is Union:
        args = [a for a in get_args(hint) if a is not type(None)]
        return args[0], True
    return (list if get_origin(hint) is list or hint is list else hint), False


def parse_value(key: str, text: str) -> Any:
    """Parse the text of ``--set key=value`` by the key's type."""
    if key not in _HINTS:
        raise UserError(f"unknown config key {key!r}; see the keys in any config.toml or `maxmargin presets`")
    typ, optional = _base_type(key)
    raw = text.strip()
    if optional and raw.lower() in ("none", "null", ""):
        return None
    try:
        if typ is bool:
            low = raw.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if typ is int:
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is list:
            return [float(v) for v in raw.strip("[]").split(",") if v.strip()]
        return raw
    except ValueError:
        raise UserError(f"--set {key}={text}: expected a value of type {typ.__name__}") from None


def check(cfg: Config) -> Config:
    """Reject values no run can use; the message names the key."""
    for key in KEYS:
        value = getattr(cfg, key)
        typ, optional = _base_type(key)
        if value is None and optional:
            continue
        if typ is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            setattr(cfg, key, value)
        if typ is list and isinstance(value, list):
            continue
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise UserError(f"config key {key!r} must be of type {typ.__name__}, got {value!r}")
        if typ is float and not math.isfinite(value):
            raise UserError(f"config key {key!r} must be finite, got {value!r}")
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"config key {key!r} must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    for key in NON_NEGATIVE:
        v = getattr(cfg, key)
        if v is not None and v < 0:
            raise UserError(f"config key {key!r} must be >= 0, got {v!r}")
    for key in POSITIVE + POSITIVE_INTS:
        if getattr(cfg, key) <= 0:
            raise UserError(f"config key {key!r} must be > 0, got {getattr(cfg, key)!r}")
    if len(cfg.lr_milestones) != len(cfg.lr_values):
        raise UserError("lr_milestones and lr_values must have the same length")
    if cfg.margin_eps_init is not None and not cfg.margin_eps_init > 0:
        raise UserError(f"config key 'margin_eps_init' must be > 0 (or none), got {cfg.margin_eps_init!r}")
    if not 0.0 <= cfg.clean_weight <= 1.0:
        raise UserError(f"config key 'clean_weight' must lie in [0, 1], got {cfg.clean_weight}")
    if cfg.method == "mma" and cfg.inner == "ddn" and cfg.norm != "l2":
        raise UserError("inner=ddn is an L2 attack: set norm=l2 or inner=anpgd")
    if cfg.method == "mma" and cfg.eps_min > cfg.d_max:
        raise UserError(f"eps_min ({cfg.eps_min}) must not exceed d_max ({cfg.d_max})")
    return cfg


def from_dict(values: dict[str, Any], base: Config | None = None) -> Config:
    cfg = dataclasses.replace(base) if base is not None else Config()
    for key, value in values.items():
        if key not in _HINTS:
            raise UserError(f"unknown config key {key!r}")
        setattr(cfg, key, value)
    return cfg


# ---------------------------------------------------------------- presets

def _preset_dir():
    return resources.files("maxmargin") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> Config:
    path = _preset_dir() / f"{name}.toml"
    if not path.is_file():
        names = preset_names()
        close = [n for n in names if name.split("-")[0] in n][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown preset {name!r}{hint}; `maxmargin presets` lists them")
    return check(from_dict(tomllib.loads(path.read_text()), Config(name=name)))


def load_toml(path: Path) -> Config:
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML ({e}); fix or delete it") from None
    return check(from_dict(values))


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


# Keys that only one objective reads: a run's config.toml lists its own and leaves out the others'.
METHOD_KEYS = {
    "pgd": ("eps", "pgdls_steps", "attack_loss"),
    "mma": ("d_max", "eps_min", "clean_weight", "search_steps", "search", "eps_inc", "refine", "inner",
            "ddn_gamma"),
    "trades": ("eps", "beta", "attack_step"),
    "amm": tuple(k for k in KEYS if k.startswith("amm_")),
}
ATTACKING = ("pgd", "mma", "trades")     # methods whose inner attack reads attack_steps


def unused_keys(method: str) -> set[str]:
    """Keys of other objectives, which a run of ``method`` never reads."""
    own = set(METHOD_KEYS.get(method, ())) | ({"attack_steps"} if method in ATTACKING else set())
    others = {k for keys in METHOD_KEYS.values() for k in keys} | {"attack_steps"}
    return others - own


def to_toml(cfg: Config) -> str:
    """TOML text of the resolved config: every key the run reads (``None`` values as comments).

    Other objectives' keys are left out; loading the file gives them their
    defaults, which the run never reads.
    """
    lines = []
    skip = unused_keys(cfg.method)
    for key, value in cfg.to_dict().items():
        if key in skip:
            continue
        lines.append(f"# {key} = none" if value is None else f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# Atomic writes live in files.py; the old name stays importable from here.
from .files import write_text_atomic as write_atomic  # noqa: E402,F401
