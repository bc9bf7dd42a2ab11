"""What an export reads from a checkpoint, in one place.

Everything ``engine.export`` needs from the rest of the engine is imported here (the checkpoint
loader, the config, the model class, the special token ids, and translate/BLEU for the model
card), so that a move inside engine/ changes this file only. The checkpoint keys read are
"model", "config", "vocab", "tokenizers", "run_name", "epoch", "step", "val_loss", "bleu" and
"averaged_from".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import build_for_inference, load_checkpoint
from engine.config import RunConfig
from engine.data.local import read_lines
from engine.decode import corpus_bleu, gnmt_penalty, translate
from engine.errors import EngineError
from engine.model import POSITION_HEADROOM, Transformer, sinusoids
from engine.vocab import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "POSITION_HEADROOM", "SPECIALS", "UNK_ID", "Exportable",
           "EngineError", "corpus_bleu", "gnmt_penalty", "load_exportable", "read_lines",
           "sinusoids", "translate"]


@dataclass
class Exportable:
    """A trained model as an export needs it: weights in eval mode, tokenizers, facts."""

    path: Path
    model: Transformer
    config: RunConfig
    src_json: str  # tokenizer.json text of the source side
    tgt_json: str  # the same text when the vocabulary is shared
    shared: bool
    src_vocab: int
    tgt_vocab: int
    facts: dict[str, Any]  # run_name, epoch, step, val_loss, bleu, averaged_from

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """float32 copies: converters may change arrays in place (CTranslate2 quantizes them)."""
        return {k: v.detach().float().clone() for k, v in self.model.state_dict().items()}


def load_exportable(path: Path | str) -> Exportable:
    """Load a checkpoint of ours for export; one-line EngineError when it cannot be exported."""
    path = Path(path)
    state = load_checkpoint(path)
    model, _, _, config = build_for_inference(path, "cpu")
    vocab = state["vocab"]
    facts = {k: state.get(k) for k in ("run_name", "epoch", "step", "val_loss", "bleu",
                                       "averaged_from")}
    return Exportable(path=path, model=model, config=config, src_json=state["tokenizers"]["src"],
                      tgt_json=state["tokenizers"]["tgt"], shared=bool(vocab["shared"]),
                      src_vocab=int(vocab["src_size"]), tgt_vocab=int(vocab["tgt_size"]),
                      facts=facts)
