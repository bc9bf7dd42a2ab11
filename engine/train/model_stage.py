"""The model stage: build the Transformer, its optimizer, schedule and scaler (or restore them
from a checkpoint) as the TrainingState the train stage advances."""

from __future__ import annotations

import random
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine import checkpoint as ckpt
from engine import distributed, replicas
from engine.device import enable_tf32, pick_device, resolve_precision
from engine.errors import ConfigError
from engine.events import Emit
from engine.stages import StageResult
from engine.train.state import NoamSchedule, TrainingState

if TYPE_CHECKING:
    from engine.config import RunConfig
    from engine.tokenizer.stage import TokenizerSet


def run_model_stage(config: RunConfig, tokenizers: TokenizerSet, run_dir: Path, emit: Emit,
                    resume: str | None = None) -> StageResult[TrainingState]:
    """Build the Transformer, its optimizer and schedule; with ``resume``, restore a checkpoint."""
    from engine.model import Transformer

    if config.eval.best_by == "bleu" and config.eval.bleu_every == 0:
        raise ConfigError(f"{config.source}: [eval] best_by = \"bleu\" needs bleu_every >= 1")
    device = pick_device(config.training.device)
    precision, amp_dtype = resolve_precision(config.training.precision, device)
    tf32 = enable_tf32(device, precision)
    src_vocab, tgt_vocab = tokenizers.src.get_vocab_size(), tokenizers.tgt.get_vocab_size()

    # same seed, same initial weights, same dropout masks
    seed = config.training.seed
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    model = Transformer.from_config(config.model, src_vocab, tgt_vocab,
                                    share_embeddings=bool(tokenizers.shared)).to(device)
    # fused: one kernel over all parameters (about 4x faster than the default step on the CPU)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9,
                                 fused=True)
    schedule = NoamSchedule(optimizer, config.model.d_model, config.training.warmup,
                            config.training.lr_factor)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    state = TrainingState(model, optimizer, schedule, scaler, device, precision, amp_dtype)
    ckpt.remove_stale_temporaries(run_dir)

    if resume:
        path, saved = ckpt.load_for_resume(resume, run_dir, config.model, tokenizers)
        ckpt.restore_training(state, saved, path)
        progress = state.progress
        progress.batch_in_epoch, notice = replicas.adapt_resume(
            saved, progress.epoch, progress.batch_in_epoch, path, config.training.update_freq,
            config.training.max_tokens)
        if notice is not None:
            emit(notice)
        state.resumed_from = str(path)
    # one id for all the checkpoints of this run, resumes included (average checks it)
    state.progress.run_id = state.progress.run_id or uuid.uuid4().hex

    replicas.broadcast_parameters(model)  # every rank starts from rank 0's weights
    parameters = sum(p.numel() for p in model.parameters())  # tied weights counted once
    info = {"parameters": parameters, "device": device.type, "precision": precision,
            "attention": config.training.attention}
    if tf32:
        info["tf32"] = True
    if distributed.active():
        info["processes"], info["backend"] = distributed.world_size(), distributed.backend()
    if state.resumed_from:
        info.update(resumed_from=state.resumed_from, epoch=state.progress.epoch,
                    batch_in_epoch=state.progress.batch_in_epoch, step=state.step)
    return StageResult(output=state, info=info)
