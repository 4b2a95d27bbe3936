"""``maxmargin`` command line. Exit codes: 0 success, 2 bad input (one line, no traceback), 1 bug."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .certify import METHODS as CERTIFY_METHODS
from .config import Config, apply_overrides, describe, load_preset, load_toml, preset_names, quick_methods
from .errors import UserError
from .stopping import Stopped


def resolve_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """Preset (or the run's saved config on --resume), then --set, --data, --device and --seed."""
    out = Path(args.out) if args.out else None
    if args.resume and out is None:
        raise UserError("--resume continues a run: name its folder with --out RUN_DIR")
    if args.resume and out is not None and (out / "config.toml").is_file():
        cfg = load_toml(out / "config.toml")
    elif args.resume and args.preset is None:
        assert out is not None  # --resume without --out raised above
        raise UserError(f"{out} holds no run to resume (no config.toml); start it with --preset NAME")
    elif args.preset is None:
        raise UserError("train needs --preset NAME (see `maxmargin presets`), or --resume with --out RUN_DIR")
    elif args.preset.endswith(".toml"):
        cfg = load_toml(Path(args.preset))
    else:
        cfg = load_preset(args.preset)
    pairs = list(args.set or [])
    for key, value in (("data_dir", args.data), ("device", args.device), ("seed", args.seed)):
        if value is not None:
            pairs.append(f"{key}={value}")
    cfg = apply_overrides(cfg, pairs)
    return cfg, out if out is not None else Path("runs") / cfg.name


def _shutdown() -> None:
    from .distributed import shutdown

    shutdown()


def _is_main() -> bool:
    """Rank 0 under torchrun, or the only process: the one that prints summaries."""
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args: argparse.Namespace) -> int:
    from .files import WriteError
    from .train import train

    cfg, out = resolve_config(args)
    try:
        result = train(cfg, out, resume=args.resume, progress=not args.quiet)
    except WriteError as e:
        # the last checkpoint that did get written is whole: the run goes on from it
        raise e.then(f"continue with `maxmargin train --out {out} --resume`"
                     if (out / "checkpoints" / "last.pt").is_file() else "start the run again") from None
    finally:
        _shutdown()
    if _is_main():
        print(f"run directory: {result['out']} (best average validation margin {result['best_margin']:.4f})")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.name:
        cfg = load_toml(Path(args.name)) if args.name.endswith(".toml") else load_preset(args.name)
        print(f"# {args.name}: {cfg.description}" if cfg.description else f"# {args.name}")
        print(describe(cfg))
        return 0
    names = preset_names()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {load_preset(name).description}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .commands.quickstart import quickstart

    quickstart(Path(args.out), device=args.device, progress=not args.quiet, methods=args.methods)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .commands.checks import parse_eps
    from .commands.eval import eval_command

    return eval_command(Path(args.target), protocol=args.protocol, eps=parse_eps(args.eps),
                        transfer_from=[Path(p) for p in args.transfer_from or []], out=args.out, n=args.n,
                        batch_size=args.batch_size, device=args.device, data_dir=args.data, split=args.split,
                        margins=True if args.margins else None, quiet=args.quiet, seed=args.seed,
                        certify=args.certify, norm=args.norm, resume=args.resume)


def cmd_margin(args: argparse.Namespace) -> int:
    from .commands.margin import margin_command

    return margin_command(Path(args.target), out=args.out, n=args.n, batch_size=args.batch_size, device=args.device,
                          data_dir=args.data, eps_max=args.eps_max, seed=args.seed, certify=args.certify,
                          quiet=args.quiet)


def cmd_report(args: argparse.Namespace) -> int:
    from .commands.report import report_command

    return report_command(args.runs, args.out)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .commands.reproduce import reproduce

    reproduce(args.experiment, scale=args.scale, out=Path(args.out), data_dir=args.data, device=args.device,
              n=args.n, progress=not args.quiet)
    return 0


def _eval_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (its checkpoints/best.pt) or a checkpoint file")
    p.add_argument("--out", help="folder for the outputs (default: the run directory)")
    p.add_argument("--n", "--num-examples", dest="n", type=int,
                   help="evaluate the first N test examples (default: all; under torchrun write --num-examples)")
    p.add_argument("--batch-size", type=int, default=500, help="examples attacked at once (default 500)")
    p.add_argument("--data", help="dataset folder, if the run's config does not say")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run (default: a GPU if there is one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts (default 0)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maxmargin", description="Max-margin adversarial training and evaluation.")
    p.add_argument("--version", action="version", version=f"maxmargin {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="train standard, PGD-AT, MMA and IBP on the bundled digits and compare")
    q.add_argument("--out", default="runs/quickstart", help="folder for the runs (default runs/quickstart)")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to train and evaluate (default: a GPU if there is one)")
    q.add_argument("--methods", help="comma-separated methods with a quick-METHOD preset: "
                                     f"{','.join(quick_methods())} (default standard,pgd,mma,ibp)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quickstart)

    t = sub.add_parser(
        "train", help="train one model from a preset",
        description="Train one model from a preset into a run directory.",
        epilog="Config keys: `maxmargin presets NAME` prints a preset's resolved config with the meaning of every "
               "key. Shared keys (dataset, model, optimizer, steps, ...) sit at the top level, the method's options "
               "in its table ([mma], [pgd], ...); --set KEY=VALUE finds KEY in either place (METHOD.KEY says it "
               "explicitly) and refuses a key the run does not read. model=package.module:callable trains your "
               "own model.")
    t.add_argument("--preset", help="preset name (`maxmargin presets`) or a config .toml file")
    t.add_argument("--data", help="dataset folder (IDX files or CIFAR python batches)")
    t.add_argument("--out", help="run directory (default runs/PRESET)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default: the config's, auto)")
    t.add_argument("--seed", type=int, help="seed of everything (default: the config's, 0)")
    t.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="robust accuracy over an ε grid, with gradient-masking checks")
    _eval_common(e)
    e.add_argument("--protocol", default="quick", choices=["quick", "paper", "autoattack"],
                   help="quick: PGD-50 CE and CW; paper: the MMA paper's Table-1 attacks; autoattack: AutoAttack "
                        "standard (default quick)")
    e.add_argument("--eps",
                   help="comma-separated radii, e.g. 0.1,0.2,0.3 or 8/255,16/255 (default: the dataset's grid)")
    e.add_argument("--norm", choices=["linf", "l2"],
                   help="threat model (default: the run's norm); the default ε grid follows it")
    e.add_argument("--transfer-from", nargs="+", metavar="CKPT",
                   help="source models for transfer attacks (--protocol paper only)")
    e.add_argument("--split", default="test", choices=["test", "val"], help="split to evaluate (default test)")
    e.add_argument("--margins", action="store_true", help="also estimate margins (always on for --protocol paper)")
    e.add_argument("--certify", choices=list(CERTIFY_METHODS),
                   help="also prove robustness by bound propagation: a certified-accuracy column")
    e.add_argument("--resume", action="store_true",
                   help="continue an interrupted evaluation of the same settings from its partial results "
                        "(eval.partial.pt in the output folder); without it they are replaced")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("margin", help="per-example margin estimates on the test split, with plots")
    _eval_common(m)
    m.add_argument("--eps-max", type=float, help="cap of the search (default 0.5 for linf, 8 for l2)")
    m.add_argument("--certify", choices=list(CERTIFY_METHODS),
                   help="also certified lower bounds per example (margins from both sides)")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    m.set_defaults(func=cmd_margin)

    r = sub.add_parser("report", help="compare evaluated runs in one table and one plot")
    r.add_argument("runs", nargs="+", metavar="RUN_DIR", help="evaluated run directories")
    r.add_argument("--out", help="folder for compare.md and compare.png (default: the first run's parent)")
    r.set_defaults(func=cmd_report)

    rp = sub.add_parser("reproduce", help="train standard, PGD and MMA models and run the paper's Table-1 protocol")
    rp.add_argument("experiment", choices=["mnist-linf"], help="the paper's experiment")
    rp.add_argument("--scale", default="quick", choices=["quick", "paper"],
                    help="quick: the quick presets on the bundled digits (CPU); paper: the paper presets (GPU)")
    rp.add_argument("--out", default="runs/reproduce", help="folder for the runs (default runs/reproduce)")
    rp.add_argument("--data", help="MNIST IDX folder (paper scale)")
    rp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="where to train and evaluate (default: a GPU if there is one)")
    rp.add_argument("--n", type=int, help="test examples to evaluate (default 300 quick, all paper)")
    rp.add_argument("--quiet", action="store_true", help="no progress bars")
    rp.set_defaults(func=cmd_reproduce)

    ps = sub.add_parser("presets", help="list the presets with one line each, or show one with every key explained")
    ps.add_argument("name", nargs="?", metavar="NAME",
                    help="a preset (or a config .toml file): print its resolved config, each key with its meaning")
    ps.set_defaults(func=cmd_presets)
    return p


def stopped_message(e: Stopped, command: str) -> str:
    """The one line a run stopped by a signal leaves: what stopped it, where, how to go on."""
    if command != "train":
        how = f"maxmargin {command} with the same arguments (it resumes {e.out})"
    elif e.world > 1:
        how = f"torchrun --nproc-per-node {e.world} -m maxmargin train --out {e.out} --resume"
    else:
        how = f"maxmargin train --out {e.out} --resume"
    return f"maxmargin: stopped by {e.signal_name} after step {e.step}; continue with: {how}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0 done, 2 the user's mistake, 1 a bug, 130 interrupted,
    128 + the signal number for a run stopped by SIGTERM or SIGINT after writing its checkpoint."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Stopped as e:
        if _is_main():
            print(stopped_message(e, args.command), file=sys.stderr)
        return e.exit_code
    except UserError as e:
        # the user's to fix: one line naming the problem, no traceback to wade through
        print(f"maxmargin: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maxmargin: interrupted", file=sys.stderr)
        return 130
    except Exception:
        # anything else is ours: the full traceback, so that it can be reported and fixed
        traceback.print_exc()
        print("maxmargin: internal error (a bug, not your input): please report it with the traceback above",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
