"""`transformer-train export`: a checkpoint of ours as a model other tools load.

    transformer-train export --checkpoint C --to hf DIR     MarianMTModel + tokenizer + README
    transformer-train export --checkpoint C --to ct2 DIR [--quantization int8|float32|...]

``hf``: ``AutoModelForSeq2SeqLM.from_pretrained(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``
load it with no code of ours (see engine/export/hf.py). ``ct2``: a CTranslate2 model directory
(see engine/export/ct2.py). Both need optional packages: ``pip install 'transformer-tui[export]'``.

DIR must not exist yet (or be empty): the export is written to a temporary directory beside it
and renamed into place when complete, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from engine.export.source import EngineError, load_exportable

TARGETS = ("hf", "ct2")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="transformer-train export",
        description="Export a checkpoint to Hugging Face transformers (MarianMTModel) or "
                    "CTranslate2.")
    p.add_argument("--checkpoint", required=True, type=Path, help="a .pt file of a run")
    p.add_argument("--to", required=True, nargs=2, metavar=("FORMAT", "DIR"),
                   help="hf DIR (transformers) or ct2 DIR (CTranslate2)")
    p.add_argument("--quantization", default="float32",
                   help="ct2 only: float32 (default), int8, int8_float32, int16, float16, ...")
    p.add_argument("--test-src", type=Path, help="hf only: test sources, for the BLEU in README.md")
    p.add_argument("--test-ref", type=Path, help="hf only: aligned test references")
    return p


def export_main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    target, out = args.to[0], Path(args.to[1])
    if target not in TARGETS:
        raise EngineError(f"--to {target!r}: must be one of {', '.join(TARGETS)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EngineError(f"--to {target} {out}: already exists and is not empty "
                          "(choose a new directory; nothing is overwritten)")
    if bool(args.test_src) != bool(args.test_ref):
        raise EngineError("--test-src and --test-ref must be given together")
    for path in (args.test_src, args.test_ref):
        if path is not None and not path.is_file():
            raise EngineError(f"{path}: file not found")
    if target == "hf":
        from engine.export.hf import check_marian_compatible, export_hf, require_transformers

        require_transformers()
        exp = load_exportable(args.checkpoint)
        check_marian_compatible(exp)
        test_bleu = None
        if args.test_src:
            from engine.export.card import measure_test_bleu

            test_bleu = measure_test_bleu(exp, args.test_src, args.test_ref)

        def write(tmp: Path) -> None:
            from engine.export.card import write_model_card

            export_hf(exp, tmp)
            write_model_card(exp, tmp, out.name, test_bleu)
    else:
        from engine.export.ct2 import QUANTIZATIONS, export_ct2, require_ctranslate2

        require_ctranslate2()
        if args.quantization not in QUANTIZATIONS:
            raise EngineError(f"--quantization {args.quantization!r}: must be one of "
                              f"{', '.join(QUANTIZATIONS)}")
        exp = load_exportable(args.checkpoint)

        def write(tmp: Path) -> None:
            export_ct2(exp, tmp, args.quantization)
    write_atomically(out, write)
    print(f"Exported {args.checkpoint} to {out} ({target}"
          + (f", {args.quantization}" if target == "ct2" else "") + ")")
    return 0


def write_atomically(out: Path, write) -> None:
    """``write(tmp)`` fills a temporary directory beside ``out``, which then becomes ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary directory
    try:
        write(tmp)
        if out.exists():
            out.rmdir()  # empty, checked before any work
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
