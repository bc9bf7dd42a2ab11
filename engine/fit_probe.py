"""Fit's measurements: the peak memory of the worst batches at one ``max_tokens`` (and of
validation beam search after them), each in a fresh child process, so that peaks do not mix: on
CUDA the caching allocator's peak, on the CPU the child's peak resident memory.

    python -m engine.fit_probe SPEC      (SPEC: JSON {config, device, max_tokens}; prints {peak})
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from engine.memory import peak_since_reset, reset_peak

if TYPE_CHECKING:
    from engine.config import RunConfig

SHORT_ROWS = 16  # the "many short rows" shape: sentences of this many tokens
SHAPE_ROUNDS = 3  # the worst shapes are run this many times over (see worst_shapes)
BEAM_SENTENCES = 64  # engine.decode.translate's batch of sentences


def _probe_command(config: RunConfig, device: str, max_tokens: int) -> list[str]:
    spec = {"config": config.to_dict(), "device": device, "max_tokens": max_tokens}
    return [sys.executable, "-m", "engine.fit_probe", json.dumps(spec)]


def measure_in_child(config: RunConfig, device: str, max_tokens: int,
                     timeout: float | None = None) -> int | None:
    """Peak bytes of the worst steps and validation beam search at ``max_tokens``, in a fresh
    process; None
    when it ran out of memory (CUDA's error, or the child killed by the kernel)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)  # the engine the parent runs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    # cwd: ``python -m`` looks there first, and it must find this engine, not another checkout
    done = subprocess.run(_probe_command(config, device, max_tokens), env=env, cwd=root,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        error = done.stderr.lower()
        if done.returncode < 0 or "out of memory" in error or "can't allocate memory" in error:
            return None
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise EngineError(f"fit: the memory probe (max_tokens {max_tokens}) failed: "
                          f"{last}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak"])


def worst_shapes(max_tokens: int, max_len: int) -> list[tuple[int, int]]:
    """(rows, tokens per row) of the batches to run at ``max_tokens``: many short rows, middling
    rows, few rows of the longest sentence ``max_len`` admits (source and decoder input alike),
    SHAPE_ROUNDS times over: a run's memory creeps up as shapes change (the allocators keep
    freed blocks that the next shape cannot use; measured on the CPU at max_tokens 6,208: 1.32
    GiB after one round of two shapes, 1.52 after four rounds of three), and a probe of one
    round of each would promise more than a long run keeps."""
    lengths = sorted({min(SHORT_ROWS, max_len), min(4 * SHORT_ROWS, max_len), max_len})
    return [(max(1, max_tokens // n), n) for n in lengths] * SHAPE_ROUNDS


def _probe(spec: dict[str, Any]) -> int:
    """Runs in the child: builds the model and optimizer, runs the probe, returns its peak."""
    import torch

    from engine.batching import target_positions
    from engine.config import config_from_dict
    from engine.decode import beam_search, beam_sentences
    from engine.device import resolve_precision
    from engine.loss import label_smoothed_loss
    from engine.model import Transformer
    from engine.vocab import BOS_ID, EOS_ID, PAD_ID

    config = config_from_dict(spec["config"])
    device = torch.device(spec["device"])
    _, amp_dtype = resolve_precision(config.training.precision, device)
    vocab = config.tokenizer.vocab_size
    torch.manual_seed(0)
    model = Transformer.from_config(config.model, vocab, vocab,
                                    share_embeddings=config.tokenizer.shared).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    max_len = config.model.max_len

    def step(rows: int, length: int) -> None:
        src = torch.randint(4, vocab, (rows, length))
        src[:, -1] = EOS_ID
        tgt = torch.randint(4, vocab, (rows, length + 1))
        tgt[:, 0] = BOS_ID
        tgt[:, -1] = EOS_ID
        keep, target = target_positions(tgt[:, 1:])
        with autocast:
            logits = model(src.to(device), tgt[:, :-1].to(device), keep.to(device))
        loss, _ = label_smoothed_loss(logits, target.to(device), config.training.label_smoothing)
        del logits
        (loss / len(target)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    for rows, length in worst_shapes(spec["max_tokens"], max_len):
        step(rows, length)
    if config.eval.bleu_every:  # validation follows training in the same process
        ev = config.eval
        n = min(BEAM_SENTENCES, ev.bleu_samples or BEAM_SENTENCES,
                beam_sentences(spec["max_tokens"], ev.beam, max_len, ev.max_len_offset))
        src = torch.randint(4, vocab, (n, max_len))
        src[:, -1] = EOS_ID
        with autocast:
            beam_search(model, src.to(device), BOS_ID, EOS_ID, PAD_ID, beam=ev.beam,
                        length_penalty=ev.length_penalty, max_len_offset=ev.max_len_offset)
    return peak_since_reset(device)


if __name__ == "__main__":
    try:
        peak = _probe(json.loads(sys.argv[1]))
    except Exception as exc:  # CUDA's OutOfMemoryError among them: say so on stderr
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(3)
    print(json.dumps({"peak": peak}))
