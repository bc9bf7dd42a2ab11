"""The command line of transformer-tui: arguments are checked here, before the App starts, so that
a bad preset or run directory is one line on stderr and exit code 2, with or without a terminal.

    transformer-tui [--runs-dir DIR]          the runs under saved/ (or DIR): attach, or start one
    transformer-tui [--preset NAME|PATH] [--set section.key=value ...] [--start] [--run-dir DIR]
    transformer-tui --attach RUN_DIR          follow a run, with pause/resume/stop

The app needs a terminal (stdin and stderr, where Textual reads keys and draws): without one it
exits 2 at once and names transformer-train, the same runs without a screen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.config import PRESET_NAMES, load_config
from engine.errors import EngineError
from engine.inputs import check_run_dir
from engine.paths import RUNS_ROOT
from engine.runs import EVENTS, LOCK, is_run_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="transformer-tui",
        description="Train a translation Transformer and watch it: pick a preset, start, pause, "
                    "resume, stop. Runs go on without the app: transformer-tui lists them again. "
                    "Needs a terminal; without one, use transformer-train. "
                    "Keys: s start, p pause/resume, x stop, r resume from a checkpoint, l runs, "
                    "q quit, 1-4 pages, ctrl+s screenshot.")
    parser.add_argument("--preset", metavar="NAME|PATH",
                        help=f"a preset ({', '.join(PRESET_NAMES)}) or a TOML file (default sample); "
                             "opens on the preset picker instead of the list of runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a preset key (repeatable)")
    parser.add_argument("--start", action="store_true", help="start the run at once")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="where the run writes (default saved/<preset name>)")
    parser.add_argument("--attach", metavar="RUN_DIR",
                        help="follow a run (started here or elsewhere), with pause/resume/stop")
    parser.add_argument("--runs-dir", default=str(RUNS_ROOT), metavar="DIR",
                        help="where runs are listed and new runs go (default saved)")
    args = parser.parse_args(argv)
    if args.attach and (args.start or args.overrides or args.run_dir or args.preset):
        parser.error("--attach follows an existing run; it takes no --preset, --start, --set or "
                     "--run-dir")
    # no choice of what to run or follow: open on the list of runs
    args.show_runs = not (args.attach or args.preset or args.start or args.overrides
                          or args.run_dir)
    args.preset = args.preset or "sample"
    return args


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, in one line, or None."""
    if args.attach is not None:
        if not Path(args.attach).is_dir():
            return f"--attach {args.attach}: no such run directory"
        if not is_run_dir(Path(args.attach)):
            return (f"--attach {args.attach}: not a run directory (no {EVENTS} or {LOCK} "
                    "there); give the directory a run writes, or run transformer-tui to list "
                    "the runs")
        return None
    try:
        load_config(args.preset, args.overrides)
        if args.run_dir is not None:
            check_run_dir(Path(args.run_dir))
    except EngineError as exc:
        return str(exc)
    return None


def no_terminal() -> str | None:
    """Why the app cannot run here, or None. Textual reads keys from stdin and draws on stderr:
    without a terminal on both (a cron job, `ssh host cmd` without -t) it would wait forever."""
    missing = [name for name, stream in (("stdin", sys.stdin), ("stderr", sys.stderr))
               if stream is None or not stream.isatty()]
    if not missing:
        return None
    return (f"needs a terminal ({' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not one); for a run without a terminal use transformer-train (transformer-train "
            "--help)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args) or no_terminal()
    if problem is not None:
        print(f"transformer-tui: {problem}", file=sys.stderr)
        return 2

    from tui.app import TransformerApp  # Textual loads only once the arguments are good

    app = TransformerApp(preset=args.preset, overrides=args.overrides, start=args.start,
                         attach=args.attach, run_dir=args.run_dir, runs_dir=args.runs_dir,
                         show_runs=args.show_runs)
    app.run()
    if app.state.status == "failed":
        print(f"transformer-tui: failed: {app.state.reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
