"""Export to Hugging Face ``transformers``: a MarianMTModel directory with its tokenizer.

Our model and MarianMTModel compute the same function (post-norm layers, ReLU feed-forward,
embeddings scaled by sqrt(d_model), sinusoidal positions, tied output layer, LayerNorm eps 1e-5,
attention scaled by head_dim ** -0.5, no final stack norm), with two differences of layout:

- q, k and v (and the memory's k, v) are fused in one matrix here; Marian has one per
  projection. Our fused matrices stack q, k, v along the output rows, so they split in three.
- Our sinusoids interleave sin and cos (dims 2i, 2i+1); Marian computes them with all sines in
  the first half and all cosines in the second (``MarianSinusoidalPositionalEmbedding``), and
  never saves them. Positions are added to the residual stream, so we permute the d_model
  dimensions of the residual stream of every weight: Marian dim m is our dim ``PERM[m]``,
  PERM = [0, 2, 4, ..., 1, 3, 5, ...]. Every residual-stream dimension is touched the same way:
  embeddings (columns), LayerNorm weight and bias, inputs of q/k/v and of the first
  feed-forward layer (columns), outputs of the attention out-projection and of the second
  feed-forward layer (rows and bias). Head dimensions inside attention and the feed-forward
  hidden units are untouched. LayerNorm and the dot products are invariant to a permutation, so
  the model is the same function; only floating-point summation order changes.

The tokenizer is our ``tokenizer.json`` with a post-processor that appends ``</s>`` (as our
translate encodes sources), loaded as ``PreTrainedTokenizerFast`` by ``AutoTokenizer``. With
separate vocabularies the root tokenizer is the source one and the target one lies in
``target_tokenizer/`` (Marian's own tokenizer class is SentencePiece-only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from engine.export.source import BOS_ID, EOS_ID, PAD_ID, POSITION_HEADROOM, EngineError, Exportable

TARGET_TOKENIZER = "target_tokenizer"


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise EngineError("export --to hf needs the transformers package "
                          "(pip install 'transformer-tui[export]')") from None
    return transformers


def check_marian_compatible(exp: Exportable) -> None:
    if exp.config.model.pre_norm:
        raise EngineError(f"{exp.path}: model.pre_norm = true cannot be a MarianMTModel "
                          "(Marian is post-norm only); export it with --to ct2")


def residual_permutation(d_model: int) -> torch.Tensor:
    """Marian residual dimension m holds our dimension PERM[m] (sines first, then cosines)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def max_positions(exp: Exportable) -> int:
    """Marian computes a fixed table: room for the longest source and the longest output."""
    longest = exp.config.model.max_len + exp.config.eval.max_len_offset + POSITION_HEADROOM
    return max(512, 64 * math.ceil(longest / 64))


def marian_config(exp: Exportable):
    from transformers import MarianConfig

    m = exp.config.model
    return MarianConfig(
        vocab_size=exp.src_vocab, decoder_vocab_size=exp.tgt_vocab,
        share_encoder_decoder_embeddings=exp.shared, tie_word_embeddings=True,
        d_model=m.d_model, encoder_layers=m.n_layers, decoder_layers=m.n_layers,
        encoder_attention_heads=m.n_head, decoder_attention_heads=m.n_head,
        encoder_ffn_dim=m.ffn_hidden, decoder_ffn_dim=m.ffn_hidden,
        activation_function="relu", scale_embedding=True,
        dropout=m.dropout, attention_dropout=0.0, activation_dropout=0.0,  # where ours has it
        max_position_embeddings=max_positions(exp),
        pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID, forced_eos_token_id=None)


def generation_config(exp: Exportable):
    """Beam and alpha of the run; <pad> and <s> never produced (as in our search). Marian's
    length_penalty divides by |Y| ** alpha, not our GNMT ((5 + |Y|) / 6) ** alpha: see README."""
    from transformers import GenerationConfig

    e = exp.config.eval
    return GenerationConfig(
        decoder_start_token_id=BOS_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        pad_token_id=PAD_ID, num_beams=e.beam, length_penalty=e.length_penalty,
        early_stopping=True,  # done at beam-many finished hypotheses, as ours
        max_length=exp.config.model.max_len + e.max_len_offset + 1,  # + the start token
        suppress_tokens=[PAD_ID, BOS_ID])


@torch.no_grad()
def load_marian_weights(hf_model, exp: Exportable) -> None:
    """Copy our weights into a freshly built MarianMTModel (layout explained above)."""
    w = exp.weights
    perm = residual_permutation(exp.config.model.d_model)

    def reads(weight: torch.Tensor) -> torch.Tensor:  # input side on the residual stream
        return weight[:, perm]

    def put(linear, weight, bias, writes: bool) -> None:
        linear.weight.copy_(weight[perm] if writes else reads(weight))
        linear.bias.copy_(bias[perm] if writes else bias)

    def put_norm(norm, prefix: str) -> None:
        norm.weight.copy_(w[f"{prefix}.weight"][perm])
        norm.bias.copy_(w[f"{prefix}.bias"][perm])

    model = hf_model.model
    model.encoder.embed_tokens.weight.copy_(reads(w["src_embed.weight"]))
    model.decoder.embed_tokens.weight.copy_(reads(w["tgt_embed.weight"]))
    hf_model.final_logits_bias.zero_()

    for i, layer in enumerate(model.encoder.layers):
        p = f"encoder.{i}"
        _put_split(layer.self_attn, ["q_proj", "k_proj", "v_proj"], [w[f"{p}.attn.qkv.weight"]],
                   [w[f"{p}.attn.qkv.bias"]], put)
        put(layer.self_attn.out_proj, w[f"{p}.attn.out.weight"], w[f"{p}.attn.out.bias"], True)
        put_norm(layer.self_attn_layer_norm, f"{p}.norm1")
        put(layer.fc1, w[f"{p}.ffn.up.weight"], w[f"{p}.ffn.up.bias"], False)
        put(layer.fc2, w[f"{p}.ffn.down.weight"], w[f"{p}.ffn.down.bias"], True)
        put_norm(layer.final_layer_norm, f"{p}.norm2")
    for i, layer in enumerate(model.decoder.layers):
        p = f"decoder.{i}"
        _put_split(layer.self_attn, ["q_proj", "k_proj", "v_proj"],
                   [w[f"{p}.self_attn.qkv.weight"]], [w[f"{p}.self_attn.qkv.bias"]], put)
        put(layer.self_attn.out_proj, w[f"{p}.self_attn.out.weight"],
            w[f"{p}.self_attn.out.bias"], True)
        put_norm(layer.self_attn_layer_norm, f"{p}.norm1")
        _put_split(layer.encoder_attn, ["q_proj", "k_proj", "v_proj"],
                   [w[f"{p}.cross_attn.q.weight"], w[f"{p}.cross_attn.kv.weight"]],
                   [w[f"{p}.cross_attn.q.bias"], w[f"{p}.cross_attn.kv.bias"]], put)
        put(layer.encoder_attn.out_proj, w[f"{p}.cross_attn.out.weight"],
            w[f"{p}.cross_attn.out.bias"], True)
        put_norm(layer.encoder_attn_layer_norm, f"{p}.norm2")
        put(layer.fc1, w[f"{p}.ffn.up.weight"], w[f"{p}.ffn.up.bias"], False)
        put(layer.fc2, w[f"{p}.ffn.down.weight"], w[f"{p}.ffn.down.bias"], True)
        put_norm(layer.final_layer_norm, f"{p}.norm3")
    if not torch.equal(hf_model.lm_head.weight, model.decoder.embed_tokens.weight):
        raise EngineError("internal: MarianMTModel did not tie lm_head to the decoder embedding")


def _put_split(hf_attn, names, weights, biases, put) -> None:
    """Our fused projections (q, k, v stacked along the rows, in that order) -> Marian's."""
    rows = torch.cat(weights, dim=0).chunk(len(names), dim=0)
    bias = torch.cat(biases, dim=0).chunk(len(names), dim=0)
    for name, weight, b in zip(names, rows, bias):
        put(getattr(hf_attn, name), weight, b, writes=False)


def hf_tokenizer_json(tokenizer_json: str) -> str:
    """Our tokenizer.json with a post-processor appending </s>, as our translate encodes."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", EOS_ID)])
    return tokenizer.to_str()


def write_tokenizer(directory: Path, tokenizer_json: str, max_len: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(hf_tokenizer_json(tokenizer_json), encoding="utf-8")
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "model_max_length": max_len,  # sources are cut to max_len ids, </s> included
                "clean_up_tokenization_spaces": False}  # the Metaspace decoder spaces text
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n",
                                                     encoding="utf-8")


def export_hf(exp: Exportable, directory: Path) -> None:
    """Write config.json, generation_config.json, model.safetensors and the tokenizer(s)."""
    check_marian_compatible(exp)
    transformers = require_transformers()
    from transformers import MarianMTModel

    transformers.utils.logging.disable_progress_bar()  # the engine prints nothing of its own

    hf_model = MarianMTModel(marian_config(exp)).eval()
    load_marian_weights(hf_model, exp)
    hf_model.generation_config = generation_config(exp)
    hf_model.save_pretrained(directory)
    max_len = exp.config.model.max_len
    write_tokenizer(directory, exp.src_json, max_len)
    if not exp.shared:
        write_tokenizer(directory / TARGET_TOKENIZER, exp.tgt_json, max_len)
