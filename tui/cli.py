"""The command line of transformer-tui: arguments are checked here, before the App starts, so that
a bad preset or run directory is one line on stderr and exit code 2, with or without a terminal.

    transformer-tui [--preset NAME|PATH] [--set section.key=value ...] [--start] [--run-dir DIR]
    transformer-tui --attach RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import PRESET_NAMES, load_config
from engine.errors import EngineError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="transformer-tui",
        description="Train a translation Transformer and watch it: pick a preset, start, pause, "
                    "resume, stop. Keys: s start, p pause/resume, x stop, q quit, 1-4 pages.")
    parser.add_argument("--preset", default="sample", metavar="NAME|PATH",
                        help=f"a preset ({', '.join(PRESET_NAMES)}) or a TOML file (default sample)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a preset key (repeatable)")
    parser.add_argument("--start", action="store_true", help="start the run at once")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="where the run writes (default saved/<preset name>)")
    parser.add_argument("--attach", metavar="RUN_DIR",
                        help="follow a run started elsewhere, from its events.jsonl")
    args = parser.parse_args(argv)
    if args.attach and (args.start or args.overrides or args.run_dir):
        parser.error("--attach follows an existing run; it takes no --start, --set or --run-dir")
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in one line, or None."""
    if args.attach is not None:
        if not Path(args.attach).is_dir():
            return f"--attach {args.attach}: no such run directory"
        return None
    try:
        load_config(args.preset, args.overrides)
    except EngineError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem is not None:
        print(f"transformer-tui: {problem}", file=sys.stderr)
        return 2

    from tui.app import TransformerApp  # Textual loads only once the arguments are good

    app = TransformerApp(preset=args.preset, overrides=args.overrides, start=args.start,
                         attach=args.attach, run_dir=args.run_dir)
    app.run()
    if app.state.status == "failed":
        print(f"transformer-tui: failed: {app.state.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
