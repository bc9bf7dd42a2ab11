"""The subcommands of `transformer-train` that use a trained checkpoint.

    transformer-train translate --checkpoint PATH [TEXT ...]      (no TEXT: stdin, line by line)
    transformer-train evaluate --checkpoint PATH --src FILE --ref FILE [--beam N] [--out FILE]
                               [--lowercase] [--paper-bleu]
    transformer-train average --out PATH CKPT [CKPT ...]  |  average --out PATH --last N RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.errors import EngineError


def _decode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="a .pt file of a run")
    parser.add_argument("--beam", type=int, help="beam size, 1 = greedy (default: the run's eval.beam)")
    parser.add_argument("--length-penalty", type=float, help="alpha (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def _check_out(out: Path | None) -> None:
    """--out must be writable where it points, checked before any decoding."""
    if out is None:
        return
    if out.is_dir():
        raise EngineError(f"--out {out}: is a directory (give a file path)")
    if not out.parent.is_dir():
        raise EngineError(f"--out {out}: directory {out.parent} does not exist (create it, or "
                          "give a path in an existing directory)")


def _load(args: argparse.Namespace):
    """translate(lines) -> translations, with the checkpoint's model and decoding settings."""
    from engine.checkpoint import build_for_inference
    from engine.device import pick_device

    if args.beam is not None and args.beam < 1:
        raise EngineError(f"--beam {args.beam}: must be 1 (greedy) or more")
    model, src_tok, tgt_tok, config = build_for_inference(args.checkpoint, pick_device(args.device))
    beam = args.beam or config.eval.beam
    alpha = config.eval.length_penalty if args.length_penalty is None else args.length_penalty
    max_len = config.model.max_len

    def translate(lines: list[str], first_line: int = 1) -> list[str]:
        from engine.decode import translate as decode

        # the model has positions for max_len tokens: a longer source is cut, and we say so
        for number, enc in enumerate(src_tok.encode_batch(lines, add_special_tokens=False),
                                     start=first_line):
            if len(enc.ids) > max_len - 1:
                print(f"warning: line {number}: {len(enc.ids):,} tokens, more than this model "
                      f"reads (model.max_len = {max_len}); only its first {max_len - 1} tokens "
                      "were translated", file=sys.stderr, flush=True)
        return decode(model, src_tok, tgt_tok, lines, beam=beam, length_penalty=alpha,
                      max_len_offset=config.eval.max_len_offset, batch_size=args.batch_size)

    return translate


def translate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="transformer-train translate",
                                     description="Translate the arguments, or stdin line by line.")
    _decode_options(parser)
    parser.add_argument("text", nargs="*", help="sentences to translate (default: read stdin)")
    args = parser.parse_args(argv)
    translate = _load(args)
    if args.text:
        for line in translate(args.text):
            print(line)
        return 0
    # streaming: one output line per input line, as it comes; bytes, so that a line that is
    # not UTF-8 is reported (an empty output line keeps the alignment) and the rest translated
    bad = 0
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            bad += 1
            print(f"error: stdin line {number}: not UTF-8 (byte 0x{raw[exc.start]:02x} at "
                  f"position {exc.start + 1}); skipped, an empty line printed in its place "
                  "(translate takes UTF-8 text)", file=sys.stderr, flush=True)
            print(flush=True)
            continue
        print(translate([line], first_line=number)[0], flush=True)
    return 2 if bad else 0


def evaluate_main(argv: list[str]) -> int:
    from engine.data.local import read_lines
    from engine.decode import corpus_bleu, paper_bleu

    parser = argparse.ArgumentParser(prog="transformer-train evaluate",
                                     description="sacreBLEU of a checkpoint on a test set.")
    _decode_options(parser)
    parser.add_argument("--src", required=True, type=Path, help="source sentences, one a line")
    parser.add_argument("--ref", required=True, type=Path, help="reference translations, aligned")
    parser.add_argument("--out", type=Path, help="write the hypotheses here, one a line")
    parser.add_argument("--lowercase", action="store_true",
                        help="also lowercased sacreBLEU (13a, case:lc), as the Multi30k "
                             "literature reports; reads higher than cased")
    parser.add_argument("--paper-bleu", action="store_true",
                        help="also the paper's BLEU: tokenized (13a), hyphenated compounds "
                             "split, as tensor2tensor's get_ende_bleu.sh; reads higher than "
                             "sacreBLEU, compare it with papers only")
    args = parser.parse_args(argv)
    _check_out(args.out)
    sources, references = read_lines(args.src), read_lines(args.ref)
    if len(sources) != len(references):
        raise EngineError(f"{args.src} has {len(sources):,} lines but {args.ref} has "
                          f"{len(references):,}: they must be aligned line by line")
    if not sources:
        raise EngineError(f"{args.src}: no sentences to evaluate")
    hypotheses = _load(args)(sources)
    if args.out:
        args.out.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    score, signature = corpus_bleu(hypotheses, references)
    print(f"BLEU = {score:.2f} | {len(sources):,} sentences | {signature}")
    if args.lowercase:
        score, signature = corpus_bleu(hypotheses, references, lowercase=True)
        print(f"lowercased BLEU = {score:.2f} | {len(sources):,} sentences | {signature}")
    if args.paper_bleu:
        score, signature = paper_bleu(hypotheses, references)
        print(f"paper BLEU = {score:.2f} | {len(sources):,} sentences | {signature}")
    return 0


def average_main(argv: list[str]) -> int:
    from engine.checkpoint import average_checkpoints, periodic_checkpoints, save_checkpoint

    parser = argparse.ArgumentParser(
        prog="transformer-train average",
        description="Average the model weights of several checkpoints (the paper averages the "
                    "last 5 of the base model).")
    parser.add_argument("--out", required=True, type=Path, help="the averaged checkpoint")
    parser.add_argument("--last", type=int, metavar="N",
                        help="average the last N model_epoch_*.pt (or, when the run dir has "
                             "them, checkpoint_update_*.pt) of the run dir given")
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="checkpoint files, or with --last one run directory")
    args = parser.parse_args(argv)
    _check_out(args.out)
    paths = args.checkpoints
    if args.last is not None:
        if args.last < 1 or len(paths) != 1 or not paths[0].is_dir():
            raise EngineError("--last N takes N >= 1 and exactly one run directory")
        by_updates = bool(periodic_checkpoints(paths[0], by_updates=True))
        paths = periodic_checkpoints(paths[0], by_updates)[-args.last:]
        if len(paths) < args.last:
            kind = "checkpoint_update_*.pt" if by_updates else "model_epoch_*.pt"
            raise EngineError(f"{args.checkpoints[0]}: {len(paths)} {kind} found, "
                              f"--last {args.last} needs that many")
    state = average_checkpoints(paths)
    size = save_checkpoint(state, args.out)
    print(f"Averaged {len(paths)} checkpoints ({', '.join(p.name for p in paths)}) "
          f"into {args.out} ({size / 2**20:.1f} MB)")
    return 0
