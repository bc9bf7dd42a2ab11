"""The exported model against ours: our translate vs transformers' generate vs CTranslate2.

One trained checkpoint, its test split (the first --sentences pairs), beam 4 and alpha 0.6 by
default. For every system: sentences/s (wall) with the CPU seconds beside it, sacreBLEU, and
the share of outputs identical to ours in the same search. Greedy rows show the exported model
is the same function; beam rows show what the length penalty's formula changes:

    ours          GNMT penalty: a finished hypothesis scores logp / ((5 + |Y|) / 6) ** alpha
    transformers  logp / |Y| ** alpha (|Y| = generated tokens, </s> included), early_stopping
    ctranslate2   logp / |Y| ** alpha (its TranslationOptions.length_penalty)
    transformers, GNMT rescored: generate with length_penalty=0 returning all 4 finished beams,
                  then picked by our GNMT score: isolates the formula as the only difference.

Every system runs in this process on --threads threads, after a warm-up batch, in batches of
--batch-size sentences sorted by length (CTranslate2 sorts itself); the systems take turns
over --rounds shares of the sentences, so load from other processes falls on all of them.
transformers' and CTranslate2's length limits are per batch or per call, ours per sentence
(source ids, </s> included, + eval.max_len_offset): their outputs are cut at our limit, which
for greedy search is the same as stopping there.

    python benchmarks/bench_export.py --checkpoint saved/RUN/checkpoint_best.pt [--sentences 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never wait on the network

import torch
from tokenizers import Tokenizer

from engine.data.stage import load_corpus
from engine.export.ct2 import export_ct2
from engine.export.hf import export_hf
from engine.export.source import EOS_ID, PAD_ID, corpus_bleu, gnmt_penalty, load_exportable, translate


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def hf_system(directory: Path, beam: int, alpha: float, offset: int, batch_size: int,
              rescore: bool = False):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSeq2SeqLM.from_pretrained(directory).eval()

    def run(sentences: list[str]) -> list[str]:
        order = sorted(range(len(sentences)), key=lambda i: len(tokenizer(sentences[i])["input_ids"]))
        outputs = [""] * len(sentences)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer([sentences[i] for i in rows], return_tensors="pt", padding=True,
                              truncation=True)
            limits = batch["attention_mask"].sum(dim=1) + offset
            options = dict(num_beams=beam, max_new_tokens=int(limits.max()))
            if rescore:
                options.update(length_penalty=0.0, num_return_sequences=beam,
                               return_dict_in_generate=True, output_scores=True)
            else:
                options.update(length_penalty=alpha)
            with torch.inference_mode():
                generated = model.generate(**batch, **options)
            if rescore:
                ids = pick_by_gnmt(generated.sequences[:, 1:].tolist(),
                                   generated.sequences_scores.tolist(), beam, alpha)
            else:
                ids = [cut(row) for row in generated[:, 1:].tolist()]
            ids = [row[:limit] for row, limit in zip(ids, limits.tolist())]
            for i, text in zip(rows, tokenizer.batch_decode(ids, skip_special_tokens=True)):
                outputs[i] = text
        return outputs

    return run


def cut(row: list[int]) -> list[int]:
    """Generated ids up to </s> (excluded), without the padding after it."""
    return row[: row.index(EOS_ID)] if EOS_ID in row else [t for t in row if t != PAD_ID]


def pick_by_gnmt(rows: list[list[int]], scores: list[float], beam: int, alpha: float):
    """Per sentence, of its ``beam`` finished hypotheses (scores = summed log-probabilities,
    length_penalty 0), the best by our GNMT-normalised score."""
    picked = []
    for s in range(0, len(rows), beam):
        def gnmt(j: int) -> float:
            length = len(cut(rows[j])) + (EOS_ID in rows[j])  # |Y| counts </s>
            return scores[j] / gnmt_penalty(length, alpha)

        picked.append(cut(rows[max(range(s, s + beam), key=gnmt)]))
    return picked


def ct2_system(directory: Path, src_tok: Tokenizer, tgt_tok: Tokenizer, beam: int, alpha: float,
               offset: int, max_decoding: int, batch_size: int, threads: int):
    import ctranslate2

    translator = ctranslate2.Translator(str(directory), device="cpu", inter_threads=1,
                                        intra_threads=threads)

    def run(sentences: list[str]) -> list[str]:
        tokens = [e.tokens for e in src_tok.encode_batch(sentences, add_special_tokens=False)]
        results = translator.translate_batch(
            tokens, max_batch_size=batch_size, batch_type="examples", beam_size=beam,
            length_penalty=alpha, max_decoding_length=max_decoding,
            suppress_sequences=[["<pad>"], ["<s>"]])
        # its length limit is per call; ours is per sentence (source ids, </s> included, + offset)
        ids = [[tgt_tok.token_to_id(t) for t in r.hypotheses[0]][: len(source) + 1 + offset]
               for r, source in zip(results, tokens)]
        return tgt_tok.decode_batch(ids, skip_special_tokens=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--sentences", type=int, default=1000, help="first N test pairs")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--skip", nargs="*", default=[], help="system names to leave out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()  # max_new_tokens beside the saved max_length

    exp = load_exportable(args.checkpoint)
    pairs = load_corpus(exp.config.data).test[: args.sentences]
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    src_tok, tgt_tok = Tokenizer.from_str(exp.src_json), Tokenizer.from_str(exp.tgt_json)
    offset = exp.config.eval.max_len_offset
    max_decoding = exp.config.model.max_len + offset
    print(f"{args.checkpoint}: {len(sources):,} test sentences, beam {args.beam}, alpha "
          f"{args.alpha}, {args.threads} threads, batches of {args.batch_size}")

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    started = time.perf_counter()
    export_hf(exp, work / "hf")
    hf_seconds = time.perf_counter() - started
    for quantization in ("float32", "int8"):
        export_ct2(exp, work / f"ct2-{quantization}", quantization)
    print(f"exported in {time.perf_counter() - started:.1f}s (hf {hf_seconds:.1f}s) to {work}")

    def ours(beam: int):
        return lambda lines: translate(exp.model, src_tok, tgt_tok, lines, beam=beam,
                                       length_penalty=args.alpha, max_len_offset=offset,
                                       batch_size=args.batch_size)

    k, a, b, t = args.beam, args.alpha, args.batch_size, args.threads
    systems = [  # (name, search, translate function); the first of each search is the peer
        ("ours", "greedy", ours(1)),
        ("transformers", "greedy", hf_system(work / "hf", 1, a, offset, b)),
        ("ct2 float32", "greedy", ct2_system(work / "ct2-float32", src_tok, tgt_tok, 1, a, offset,
                                             max_decoding, b, t)),
        ("ours", f"beam {k}", ours(k)),
        ("transformers", f"beam {k}", hf_system(work / "hf", k, a, offset, b)),
        ("transformers GNMT-rescored", f"beam {k}",
         hf_system(work / "hf", k, a, offset, b, rescore=True)),
        ("ct2 float32", f"beam {k}", ct2_system(work / "ct2-float32", src_tok, tgt_tok, k, a, offset,
                                                max_decoding, b, t)),
        ("ct2 int8", f"beam {k}", ct2_system(work / "ct2-int8", src_tok, tgt_tok, k, a, offset,
                                             max_decoding, b, t)),
    ]
    systems = [(name, search, function) for name, search, function in systems
               if name not in args.skip]
    for _, _, function in systems:
        function(sources[:16])  # warm-up: first-call allocations, lazy initialisation
    # the machine is shared: every system translates each round's share in turn, so a busy
    # spell slows them all alike (round r holds sentences r, r + rounds, ...)
    outputs = {i: [""] * len(sources) for i in range(len(systems))}
    wall, cpu = [0.0] * len(systems), [0.0] * len(systems)
    for r in range(args.rounds):
        rows = list(range(r, len(sources), args.rounds))
        for i, (_, _, function) in enumerate(systems):
            texts, w, c = timed(function, [sources[j] for j in rows])
            wall[i] += w
            cpu[i] += c
            for j, text in zip(rows, texts):
                outputs[i][j] = text

    print(f"\n{'system':28} {'search':7} {'sent/s':>8} {'wall s':>7} {'cpu s':>7} "
          f"{'x ours':>7} {'BLEU':>6} {'same as ours':>13}")
    peers: dict[str, int] = {}  # search -> index of its first system (ours)
    for i, (name, search, _) in enumerate(systems):
        peer = peers.setdefault(search, i)
        bleu, _ = corpus_bleu(outputs[i], references)
        same = sum(x == y for x, y in zip(outputs[i], outputs[peer])) / len(sources)
        print(f"{name:28} {search:7} {len(sources) / wall[i]:8.1f} {wall[i]:7.1f} {cpu[i]:7.1f} "
              f"{wall[peer] / wall[i]:7.2f} {bleu:6.2f} {same:13.1%}")

if __name__ == "__main__":
    main()
