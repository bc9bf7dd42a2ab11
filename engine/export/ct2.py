"""Export to CTranslate2 through its converter API: a ``Converter`` whose ``_load`` builds a
``TransformerSpec`` straight from our checkpoint.

Why not ``ct2-transformers-converter`` on the Hugging Face export: its Marian loader assumes
OPUS-MT models, whose vocabulary ends in an extra ``<pad>`` that it drops (on our export it
stops with "Source vocabulary 0 has size 1000 but the model expected a vocabulary of size
999") and whose decoder starts from a zero embedding (``start_from_zero_embedding``); ours
starts from the ``<s>`` embedding. Building the
spec ourselves keeps everything as trained: the fused q/k/v (CTranslate2 fuses them the same way:
q, k, v stacked along the rows, the memory's k, v likewise), our own sinusoid table (so no
permutation), separate source and target vocabularies, and pre-norm models too.

The source gets ``</s>`` appended by CTranslate2 (``add_source_eos``), so callers pass the
tokens only; decoding starts from ``<s>``.
"""

from __future__ import annotations

from pathlib import Path

from engine.export.source import POSITION_HEADROOM, SPECIALS, EngineError, Exportable, sinusoids

QUANTIZATIONS = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16",
                 "int8_float16", "int8_bfloat16")


def require_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise EngineError("export --to ct2 needs the ctranslate2 package "
                          "(pip install 'transformer-tui[export]')") from None
    return ctranslate2


def position_table_length(exp: Exportable) -> int:
    """CTranslate2 cannot go past the table: room for the longest source and output."""
    return max(512, exp.config.model.max_len + exp.config.eval.max_len_offset + POSITION_HEADROOM)


def vocabulary(tokenizer_json: str, size: int) -> list[str]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokens = [tokenizer.id_to_token(i) for i in range(size)]
    if tokens[: len(SPECIALS)] != SPECIALS or None in tokens or len(set(tokens)) != size:
        raise EngineError("checkpoint tokenizer: ids must be 0..size-1 with distinct tokens and "
                          f"the specials {' '.join(SPECIALS)} first")
    return tokens


def build_spec(exp: Exportable):
    require_ctranslate2()
    from ctranslate2.specs import common_spec, transformer_spec

    m = exp.config.model
    w = {k: v.numpy() for k, v in exp.weights.items()}
    spec = transformer_spec.TransformerSpec.from_config(
        (m.n_layers, m.n_layers), m.n_head, pre_norm=m.pre_norm,
        activation=common_spec.Activation.RELU)
    spec.config.layer_norm_epsilon = 1e-5  # torch's LayerNorm default, ours

    def linear(target, prefix: str) -> None:
        target.weight = w[f"{prefix}.weight"]
        if f"{prefix}.bias" in w:
            target.bias = w[f"{prefix}.bias"]

    def norm(target, prefix: str) -> None:
        target.gamma, target.beta = w[f"{prefix}.weight"], w[f"{prefix}.bias"]

    table = sinusoids(position_table_length(exp), m.d_model).numpy()
    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = w["src_embed.weight"]
    decoder.embeddings.weight = w["tgt_embed.weight"]
    for stack in (encoder, decoder):
        stack.scale_embeddings = True  # * sqrt(d_model)
        stack.position_encodings.encodings = table
    decoder.projection.weight = w["generator.weight"]  # tied: the target embedding

    for i, layer in enumerate(encoder.layer):
        p = f"encoder.{i}"
        linear(layer.self_attention.linear[0], f"{p}.attn.qkv")
        linear(layer.self_attention.linear[1], f"{p}.attn.out")
        norm(layer.self_attention.layer_norm, f"{p}.norm1")
        linear(layer.ffn.linear_0, f"{p}.ffn.up")
        linear(layer.ffn.linear_1, f"{p}.ffn.down")
        norm(layer.ffn.layer_norm, f"{p}.norm2")
    for i, layer in enumerate(decoder.layer):
        p = f"decoder.{i}"
        linear(layer.self_attention.linear[0], f"{p}.self_attn.qkv")
        linear(layer.self_attention.linear[1], f"{p}.self_attn.out")
        norm(layer.self_attention.layer_norm, f"{p}.norm1")
        linear(layer.attention.linear[0], f"{p}.cross_attn.q")
        linear(layer.attention.linear[1], f"{p}.cross_attn.kv")
        linear(layer.attention.linear[2], f"{p}.cross_attn.out")
        norm(layer.attention.layer_norm, f"{p}.norm2")
        linear(layer.ffn.linear_0, f"{p}.ffn.up")
        linear(layer.ffn.linear_1, f"{p}.ffn.down")
        norm(layer.ffn.layer_norm, f"{p}.norm3")
    if m.pre_norm:  # the final norm of each pre-norm stack
        norm(encoder.layer_norm, "encoder_norm")
        norm(decoder.layer_norm, "decoder_norm")

    spec.register_source_vocabulary(vocabulary(exp.src_json, exp.src_vocab))
    spec.register_target_vocabulary(vocabulary(exp.tgt_json, exp.tgt_vocab))
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = SPECIALS[1:4]
    spec.config.decoder_start_token = SPECIALS[2]  # <s>
    spec.config.add_source_eos = True  # sources are tokens + </s>, as in our translate
    return spec


def export_ct2(exp: Exportable, directory: Path, quantization: str = "float32") -> None:
    ctranslate2 = require_ctranslate2()
    if quantization not in QUANTIZATIONS:
        raise EngineError(f"--quantization {quantization!r}: must be one of "
                          f"{', '.join(QUANTIZATIONS)}")

    class CheckpointConverter(ctranslate2.converters.Converter):
        def _load(self):
            return build_spec(exp)

    CheckpointConverter().convert(str(directory), quantization=quantization, force=True)
