"""The tokenizer training child: ``python -m engine.tokenizer.child``.

It reads sentences from stdin, trains with the recipe (engine/tokenizer/recipes.py), writes
progress as JSON lines on stderr and the tokenizer to ``--out``. It imports no torch: it starts
fast and can be paused (SIGSTOP/SIGCONT) or stopped at any moment by its parent.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from engine.tokenizer.recipes import train_in_process


def read_sentence_batches(stream: Any, block_size: int = 1 << 20) -> Iterator[list[str]]:
    """Lists of lines from a binary stream, a block at a time (cheaper than line by line)."""
    rest = b""
    while True:
        block = stream.read(block_size)
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n") + 1
        rest = block[cut:]
        if cut:
            yield block[:cut - 1].decode("utf-8", "replace").split("\n")
    if rest:
        yield [rest.decode("utf-8", "replace")]


def _exit_with_parent() -> None:
    """A child whose parent died (killed hard) must not train on for minutes."""
    parent = os.getppid()
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m engine.tokenizer.child",
                                     description="train a tokenizer on the lines of stdin "
                                                 "(progress as JSON lines on stderr)")
    parser.add_argument("--kind", choices=("bpe", "wordpiece"), required=True)
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--min-frequency", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    tokenizer = train_in_process(read_sentence_batches(sys.stdin.buffer), args.kind,
                                 args.vocab_size, args.min_frequency, progress=True)
    tokenizer.save(str(args.out))


if __name__ == "__main__":
    child_main()
