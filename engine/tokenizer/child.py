"""The tokenizer training child: ``python -m engine.tokenizer.child``.

It trains with the recipe (engine/tokenizer/recipes.py) on the text files ``--files`` (one
sentence a line), writes progress as JSON lines on stderr and the tokenizer to ``--out``. It imports no torch: it starts
fast and can be paused (SIGSTOP/SIGCONT) or stopped at any moment by its parent.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from engine.tokenizer.recipes import train_from_files


def _exit_with_parent() -> None:
    """A child whose parent died (killed hard) must not train on for minutes."""
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.tokenizer.child",
                                     description="train a tokenizer on the lines of text files "
                                                 "(progress as JSON lines on stderr)")
    parser.add_argument("--kind", choices=("bpe", "wordpiece"), required=True)
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--min-frequency", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--files", type=Path, nargs="+", required=True)
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    tokenizer = train_from_files(args.files, args.kind, args.vocab_size, args.min_frequency,
                                 progress=True)
    tokenizer.save(str(args.out))


if __name__ == "__main__":
    child_main()
