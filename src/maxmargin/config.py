"""Run configuration: shared keys at the top level, the method's options in its own table.

A run's ``config.toml`` reads::

    name = "quick-mma"
    dataset = "digits"
    method = "mma"
    ...                      # every shared key the run reads
    [mma]
    d_max = 0.45             # the method's options (maxmargin.methods: its Options dataclass)
    ...

``--set key=value`` finds ``key`` among the shared keys, then among the
method's options (``--set mma.d_max=0.3`` says it explicitly); a key the run
does not read is refused with the list of valid ones. Files written before
the per-method tables (one flat list of keys) still load: their method keys
go into the table by the method's ``legacy_keys``.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

from .data import dataset_names
from .errors import UserError
from .files import write_text_atomic as write_atomic  # the old name, still importable
from .methods import get_method, method_names
from .methods.base import Method
from .models import is_model_spec, model_names
from .norms import NORMS
from .options import KeyInfo, Options, coerce, key_infos, option, parse_text
from .plugins import import_plugins


@dataclass
class Config:
    """Everything that defines a run: the shared keys, and the method's options in ``options``.

    Reading ``cfg.d_max`` falls through to the method's options, so code and
    tests can read any key of the run by name.
    """

    name: str = option("custom", "the run's name (default folder runs/NAME)")
    description: str = option("", "the one line `maxmargin presets` shows")
    # data
    dataset: str = option("digits", "dataset", choices=lambda: dataset_names())
    data_dir: str | None = option(None, "dataset folder (--data)")
    val_size: int = option(1000, "validation images held out from the start of the training split", min=0)
    augment: bool = option(False, "reflect-pad 4 + random crop + horizontal flip")
    plugins: str = option("", "your modules to import first (comma-separated): they register methods, models "
                              "or datasets")
    # model
    model: str = option("small_cnn", "model: a registered name or module:callable")
    # objective
    method: str = option("standard", "training method; its options are in the [method] table",
                         choices=lambda: method_names())
    norm: str = option("linf", "threat model of training and evaluation", choices=lambda: tuple(NORMS))
    # optimisation
    optimizer: str = option("adam", "optimizer", choices=("adam", "sgd"))
    lr: float = option(1e-4, "learning rate until the first milestone", min=0)
    lr_milestones: list = option(help="steps at which lr_values take over", default_factory=list)
    lr_values: list = option(help="learning rates from each milestone on", default_factory=list)
    momentum: float = option(0.9, "SGD momentum", min=0)
    weight_decay: float = option(0.0, "weight decay", min=0)
    grad_clip: float = option(0.0, "clip the gradient norm to this (0 = off)", min=0)
    batch_size: int = option(50, "examples per step (over all processes)", positive=True)
    steps: int = option(100_000, "training steps", positive=True)
    # evaluation during training (on the validation split)
    eval_every: int = option(5000, "steps between validation passes (and checkpoints)", positive=True)
    eval_size: int = option(0, "validation examples per pass (0 = the whole validation split)", min=0)
    eval_batch_size: int = option(500, "batch size of the validation pass", positive=True)
    val_pgd_eps: float = option(0.3, "radius of the validation PGD", min=0)
    val_pgd_step: float = option(0.01, "step of the validation PGD", min=0)
    val_pgd_steps: int = option(40, "steps of the validation PGD", positive=True)
    margin_eps_max: float = option(0.5, "cap of the validation margin estimate (MMA presets: 1.05·d_max)", min=0)
    margin_eps_init: float | None = option(None, "radius of its PGD (none = margin_eps_max/2; MMA presets: "
                                                    "val_pgd_eps)", positive=True)
    margin_attack_loss: str = option("lm", "loss of its PGD (MMA presets: slm, as the official trainer)",
                                     choices=("lm", "slm"))
    margin_steps: int = option(20, "PGD steps of the validation margin estimate", positive=True)
    # run
    seed: int = option(0, "seed of everything: weights, batches, attacks")
    device: str = option("auto", "device", choices=("auto", "cpu", "cuda"))
    amp: str = option("off", "CUDA only: model arithmetic in bf16, attacks stay float32", choices=("off", "bf16"))
    channels_last: bool = option(False, "conv nets in channels_last layout (faster on CPU and GPU)")
    compile: bool = option(False, "CUDA only: torch.compile the model")
    cuda_graphs: bool = option(False, "CUDA only: replay the attacks' PGD loops as CUDA graphs")
    # the method's options; None = its defaults
    options: Options | None = dataclasses.field(default=None, metadata={"help": "", "table": True})

    def __post_init__(self) -> None:
        if self.options is None:
            self.options = self.method_class().Options()

    def method_class(self) -> type[Method]:
        return get_method(self.method)

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: a method option read by name
        options = self.__dict__.get("options")
        if options is not None:
            name = get_method(self.__dict__["method"]).legacy_keys.get(name, name)    # cfg.attack_steps
            if name in {f.name for f in fields(options)}:
                return getattr(options, name)
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """Shared keys, and the method's options as a nested dict under the method's name."""
        out = {k: getattr(self, k) for k in SHARED}
        out[self.method] = self.options.to_dict() if self.options is not None else {}
        return out


SHARED: dict[str, KeyInfo] = {k: v for k, v in key_infos(Config).items() if k != "options"}


def check(cfg: Config) -> Config:
    """Validate every key (types, choices, ranges, the method's options against the norm); returns ``cfg``."""
    for key, info in SHARED.items():
        setattr(cfg, key, coerce(info, getattr(cfg, key), f"config key {key!r}"))
    if cfg.model not in model_names() and not is_model_spec(cfg.model):
        raise UserError(f"config key 'model' must be one of {', '.join(model_names())} or a module:callable "
                        f"spec, got {cfg.model!r}")
    if len(cfg.lr_milestones) != len(cfg.lr_values):
        raise UserError("lr_milestones and lr_values must have the same length")
    cls = cfg.method_class()
    if not isinstance(cfg.options, cls.Options):
        raise UserError(f"the options of method {cfg.method!r} must be {cls.Options.__name__}, "
                        f"got {type(cfg.options).__name__}")
    cfg.options.check_run(cfg.norm)
    return cfg


def method_keys(method: str) -> dict[str, KeyInfo]:
    """The options of ``method``, by name."""
    return key_infos(get_method(method).Options)


def _legacy_method_keys() -> set[str]:
    """Keys of any method, as files of the flat format listed them (every method's, whatever the run)."""
    out: set[str] = set()
    for name in method_names():
        cls = get_method(name)
        out |= set(key_infos(cls.Options)) | set(cls.legacy_keys)
    return out


def from_dict(values: dict[str, Any], base: Config | None = None, source: str = "config") -> Config:
    """A config from ``values`` on top of ``base``: the table format, or the flat one of older runs.

    ``values[method]`` (a table) holds the method's options. In the flat
    format the method's keys sit beside the shared ones, under their option
    names or their ``legacy_keys``; keys of other methods, which those files
    listed too, are dropped. ``source`` names the file in errors.
    """
    cfg = dataclasses.replace(base) if base is not None else Config()
    plugins = values.get("plugins", cfg.plugins)
    if not isinstance(plugins, str):
        raise UserError(f"{source}: key 'plugins' must be a string of module names, got {plugins!r}")
    import_plugins(plugins)     # before the method's name is looked up: it may be theirs
    method = values.get("method", cfg.method)
    if not isinstance(method, str):
        raise UserError(f"{source}: key 'method' must be a string, got {method!r}")
    cls = get_method(method)
    if method != cfg.method:
        cfg.method, cfg.options = method, _switch_options(cfg.options, cls)
    own = key_infos(cls.Options)
    updates: dict[str, Any] = {}
    legacy = None
    for key, value in values.items():
        if key in SHARED:
            setattr(cfg, key, value)
        elif key == method and isinstance(value, dict):
            for k, v in value.items():
                if k not in own:
                    raise UserError(f"{source}: [{method}] has no option {k!r}; valid: {', '.join(own)}")
                updates[k] = v
        elif isinstance(value, dict):
            raise UserError(f"{source}: table [{key}] does not belong to method {method!r}")
        elif key in own:
            updates[key] = value
        elif key in cls.legacy_keys:
            updates[cls.legacy_keys[key]] = value
        else:
            legacy = _legacy_method_keys() if legacy is None else legacy
            if key not in legacy:
                raise UserError(f"{source}: unknown config key {key!r}")
    if updates:
        cfg.options = _replace_options(cfg.options, updates, source)
    return cfg


def _switch_options(old: Options | None, cls: type[Method]) -> Options:
    """Defaults of the new method, keeping the values of options both methods have (eps, steps...)."""
    own = key_infos(cls.Options)
    kept = {k: v for k, v in (old.to_dict() if old is not None else {}).items() if k in own}
    try:
        return cls.Options(**kept)
    except UserError:
        return cls.Options()


def _replace_options(options: Options | None, updates: dict[str, Any], source: str) -> Options:
    assert options is not None
    try:
        # Options itself is no dataclass, so mypy sees no dataclass instance; a method's Options subclass
        # always is one (register() refuses any other), which is all replace needs at run time
        return dataclasses.replace(options, **updates)  # type: ignore[type-var]
    except TypeError as e:
        raise UserError(f"{source}: {e}") from None


def apply_overrides(cfg: Config, pairs: list[str] | None) -> Config:
    """``--set key=value`` pairs on top of ``cfg`` (a new config; ``method`` first, options together).

    ``key`` is a shared key, one of the method's options, ``METHOD.option``,
    or a key of the flat format (``attack_steps``); anything else is a
    :class:`UserError` that lists the run's keys.
    """
    parsed: list[tuple[str, str]] = []
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        parsed.append((key.strip(), text))
    out = dataclasses.replace(cfg)
    for key, text in parsed:
        if key == "plugins":
            out = from_dict({"plugins": text}, out, "--set")
    for key, text in parsed:
        if key == "method":
            out = from_dict({"method": parse_text(SHARED["method"], text, "--set method")}, out, "--set")
    cls = out.method_class()
    own = key_infos(cls.Options)
    shared: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, text in parsed:
        if key in ("method", "plugins"):
            continue
        table, _, name = key.rpartition(".")
        if table and table != out.method:
            raise UserError(f"--set {key}: this run's method is {out.method!r}, not {table!r}")
        if not table and name in SHARED:
            shared[name] = parse_text(SHARED[name], text, f"--set {name}")
            continue
        name = cls.legacy_keys.get(name, name)
        if name not in own:
            raise UserError(f"--set {key}: not a key of this run; shared keys: {', '.join(SHARED)}; "
                            f"{out.method} options: {', '.join(own) or '(none)'}")
        # checked under the name the user typed (attack_steps), before the options check themselves
        options[name] = coerce(own[name], parse_text(own[name], text, f"--set {key}"), f"--set {key}")
    for key, value in shared.items():
        setattr(out, key, value)
    if options:
        out.options = _replace_options(out.options, options, "--set")
    return check(out)


# ---------------------------------------------------------------- presets and files

def _preset_dir() -> Traversable:
    return resources.files("maxmargin") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in _preset_dir().iterdir() if p.name.endswith(".toml"))


def quick_methods() -> list[str]:
    """What ``quickstart --methods`` takes: every X with a CPU-scale preset ``quick-X``."""
    return [n[len("quick-"):] for n in preset_names() if n.startswith("quick-")]


def load_preset(name: str) -> Config:
    """The preset ``name`` (``maxmargin presets`` lists them); a :class:`UserError` suggests close names."""
    path = _preset_dir() / f"{name}.toml"
    if not path.is_file():
        names = preset_names()
        close = [n for n in names if name.split("-")[0] in n][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown preset {name!r}{hint}; `maxmargin presets` lists them")
    return check(from_dict(tomllib.loads(path.read_text()), Config(name=name), f"preset {name}"))


def load_toml(path: Path) -> Config:
    """A config file (a run's ``config.toml`` or a preset file), either format."""
    try:
        values = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path} is not valid TOML ({e}); fix or delete it") from None
    try:
        return check(from_dict(values, source=str(path)))
    except UserError as e:
        # check() names the key, not the file it came from
        raise UserError(str(e) if str(path) in str(e) else f"{path}: {e}") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def _toml_lines(values: dict[str, Any]) -> list[str]:
    return [f"# {k} = none" if v is None else f"{k} = {_toml_value(v)}" for k, v in values.items()]


def to_toml(cfg: Config) -> str:
    """TOML text of the resolved config: the shared keys, then the method's table (``None`` as comments)."""
    d = cfg.to_dict()
    table = d.pop(cfg.method)
    lines = _toml_lines(d)
    if table:
        lines += ["", f"[{cfg.method}]", *_toml_lines(table)]
    return "\n".join(lines) + "\n"


def describe(cfg: Config) -> str:
    """The resolved config as TOML with each key's one-line meaning beside it (``maxmargin presets NAME``)."""
    def block(values: dict[str, Any], infos: dict[str, KeyInfo]) -> list[str]:
        rows = [(line, infos[k].describe()) for line, k in zip(_toml_lines(values), values)]
        width = min(max((len(r[0]) for r in rows), default=0), 40)
        return [f"{line:<{width}}  # {meaning}" if meaning else line for line, meaning in rows]

    d = cfg.to_dict()
    table = d.pop(cfg.method)
    lines = block(d, SHARED)
    if table:
        lines += ["", f"[{cfg.method}]", *block(table, method_keys(cfg.method))]
    return "\n".join(lines)


__all__ = ["Config", "SHARED", "check", "from_dict", "apply_overrides", "load_preset", "load_toml", "preset_names",
           "quick_methods", "to_toml", "describe", "method_keys", "write_atomic", "option"]
