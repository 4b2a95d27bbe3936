"""``maxmargin`` command line. Exit codes: 0 success, 2 bad input (one line, no traceback), 1 bug."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import Config, check, from_dict, load_preset, load_toml, parse_value, preset_names
from .errors import UserError


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(key.strip(), value)
    return out


def resolve_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """Preset (or the run's saved config on --resume), then --data/--device/--seed/--set."""
    out = Path(args.out) if args.out else None
    if args.resume and out is not None and (out / "config.toml").is_file():
        cfg = load_toml(out / "config.toml")
    elif args.preset is None:
        raise UserError("train needs --preset NAME (see `maxmargin presets`), or --resume with --out RUN_DIR")
    elif args.preset.endswith(".toml"):
        cfg = load_toml(Path(args.preset))
    else:
        cfg = load_preset(args.preset)
    values = _overrides(args.set)
    if args.data is not None:
        values["data_dir"] = args.data
    if args.device is not None:
        values["device"] = args.device
    if args.seed is not None:
        values["seed"] = args.seed
    cfg = check(from_dict(values, cfg))
    return cfg, out if out is not None else Path("runs") / cfg.name


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg, out = resolve_config(args)
    result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    print(f"run directory: {result['out']} (best average validation margin {result['best_margin']:.4f})")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {load_preset(name).description}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    quickstart(Path(args.out), device=args.device, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maxmargin", description="Max-margin adversarial training and evaluation.")
    p.add_argument("--version", action="version", version=f"maxmargin {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train standard, PGD-AT and MMA on the bundled digits and compare")
    q.add_argument("--out", default="runs/quickstart", help="folder for the three runs (default runs/quickstart)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quickstart)

    t = sub.add_parser("train", help="train one model from a preset")
    t.add_argument("--preset", help="preset name (`maxmargin presets`) or a config .toml file")
    t.add_argument("--data", help="dataset folder (IDX files or CIFAR python batches)")
    t.add_argument("--out", help="run directory (default runs/PRESET)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int)
    t.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    ps = sub.add_parser("presets", help="list the presets with one line each")
    ps.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UserError, ValueError) as e:
        print(f"maxmargin: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maxmargin: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
