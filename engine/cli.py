"""`transformer-train`: the engine without the app, printing the seed's progress lines.

    transformer-train [--preset NAME|PATH] [--set section.key=value ...] [--run-dir DIR]
                      [--until STAGE] [--resume last|PATH]
    transformer-train translate|evaluate|average|fit ...   (see `transformer-train COMMAND --help`)

Under torchrun (WORLD_SIZE > 1 in the environment) every process joins one distributed job:
    torchrun --nproc_per_node=N -m engine --preset NAME ...   (see engine/distributed.py)

Exit status: 0 finished or stopped on request, 1 the run failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from engine.config import PRESET_NAMES, describe_keys, load_config
from engine.control import RunControl
from engine.errors import EngineError
from engine.stages import STAGES, stage_names

COMMANDS = {  # subcommand -> "module:function(argv) -> exit status"
    "translate": "engine.commands:translate_main",
    "evaluate": "engine.commands:evaluate_main",
    "average": "engine.commands:average_main",
    "fit": "engine.fit:fit_main",
}


def default_run_dir(config_name: str) -> Path:
    return Path("saved") / config_name


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transformer-train",
        description="Train a translation Transformer headless, printing progress lines.",
        epilog="Config keys (--set section.key=value):\n" + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sample",
                        help=f"{', '.join(PRESET_NAMES)}, or the path of a .toml file (default: sample)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set training.epochs=3 (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="where outputs go (default: saved/<preset>)")
    parser.add_argument("--until", metavar="STAGE",
                        help=f"stop after this stage: {', '.join(STAGES)}")
    parser.add_argument("--resume", metavar="last|PATH",
                        help="continue training from a checkpoint (last = the run dir's checkpoint_last.pt)")
    return parser


def install_stop_signals(control: RunControl) -> None:
    """SIGINT (Ctrl-C) and SIGHUP (a dropped SSH session) stop cleanly: a checkpoint is saved.

    A second Ctrl-C while stopping interrupts at once.
    """

    def on_signal(signum: int, frame: object) -> None:
        if control.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"\n{signal.Signals(signum).name}: stopping after the current batch "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        control.stop()

    signal.signal(signal.SIGINT, on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_signal)


def run_train(argv: list[str]) -> int:
    from engine import distributed
    from engine.pipeline import run
    from engine.printer import HeadlessPrinter

    args = train_parser().parse_args(argv)
    try:
        config = load_config(args.preset, args.overrides)
        stage_names(args.until)  # validates --until before any work
        if config.training.device == "cuda":  # only then is torch worth importing here
            from engine.device import pick_device

            pick_device("cuda")
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or default_run_dir(config.name)
    control = RunControl()
    install_stop_signals(control)
    try:
        distributed.init_from_env(config.training.device)  # a no-op without torchrun
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # rank 0 prints the progress; the other ranks only their own failure
    printer = (HeadlessPrinter() if distributed.is_main()
               else distributed.failures_only(HeadlessPrinter(sys.stderr)))
    status = "failed"
    try:
        status = run(config, run_dir, printer, control, until=args.until, resume=args.resume)
    finally:
        distributed.teardown(failed=status == "failed")
    return {"finished": 0, "stopped": 0}.get(status, 1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        import importlib

        module, _, function = COMMANDS[argv[0]].partition(":")
        try:
            return getattr(importlib.import_module(module), function)(argv[1:])
        except EngineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run_train(argv)


if __name__ == "__main__":
    sys.exit(main())
