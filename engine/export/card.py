"""README.md model card of a Hugging Face export: what was trained, how well, how to use it."""

from __future__ import annotations

from pathlib import Path

from engine.export.source import EngineError, Exportable, corpus_bleu, read_lines, translate


def measure_test_bleu(exp: Exportable, src: Path, ref: Path) -> tuple[float, str, int]:
    """sacreBLEU of our own translate on a test set, with the run's beam and alpha."""
    from tokenizers import Tokenizer

    sources, references = read_lines(src), read_lines(ref)
    if len(sources) != len(references) or not sources:
        raise EngineError(f"{src} and {ref}: need the same number of lines, at least one "
                          f"(got {len(sources):,} and {len(references):,})")
    e = exp.config.eval
    hypotheses = translate(exp.model, Tokenizer.from_str(exp.src_json),
                           Tokenizer.from_str(exp.tgt_json), sources, beam=e.beam,
                           length_penalty=e.length_penalty, max_len_offset=e.max_len_offset)
    score, signature = corpus_bleu(hypotheses, references)
    return score, signature, len(sources)


def write_model_card(exp: Exportable, directory: Path, name: str,
                     test_bleu: tuple[float, str, int] | None = None) -> None:
    """README.md in ``directory``; ``name`` is what the directory will be called."""
    c, f = exp.config, exp.facts
    src, tgt = c.data.src_lang, c.data.tgt_lang
    results = [f"- Trained {f.get('epoch')} epochs, {f.get('step')} updates (run "
               f"`{f.get('run_name')}`, checkpoint `{exp.path.name}`)."]
    if f.get("averaged_from"):
        results.append(f"- Weights averaged over {len(f['averaged_from'])} checkpoints: "
                       + ", ".join(f"`{Path(p).name}`" for p in f["averaged_from"]) + ".")
    if f.get("val_loss") is not None:
        results.append(f"- Validation loss (cross entropy, no label smoothing): "
                       f"{f['val_loss']:.3f}.")
    if f.get("bleu") is not None:
        results.append(f"- Validation BLEU (sample of the validation set): {f['bleu']:.2f}.")
    if test_bleu is not None:
        score, signature, n = test_bleu
        results.append(f"- Test BLEU on {n:,} sentences, beam {c.eval.beam}, alpha "
                       f"{c.eval.length_penalty}: **{score:.2f}** (`{signature}`).")
    shared = ("one shared vocabulary" if exp.shared else
              "separate vocabularies: the source tokenizer is at the top level, the target one "
              "in `target_tokenizer/`; decode outputs with the target one")
    text = f"""---
library_name: transformers
pipeline_tag: translation
language: [{src}, {tgt}]
tags: [translation, marian, transformer-tui]
---

# {c.name}: {src} → {tgt} Transformer (Vaswani et al., 2017)

Trained from scratch with transformer-tui and exported as a `MarianMTModel` (post-norm, \
sinusoidal positions, embeddings scaled by sqrt(d_model), tied output layer, ReLU \
feed-forward): d_model {c.model.d_model}, feed-forward {c.model.ffn_hidden}, \
{c.model.n_head} heads, {c.model.n_layers} + {c.model.n_layers} layers, \
{c.tokenizer.kind.upper()} tokenizer with {exp.src_vocab:,} source / {exp.tgt_vocab:,} target \
tokens ({shared}).

## Results

{chr(10).join(results)}

## Use

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForSeq2SeqLM.from_pretrained("{name}")
batch = tokenizer(["..."], return_tensors="pt", padding=True, truncation=True)
print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))
```

The tokenizer appends `</s>` to each source, as training did; generation starts from `<s>`
and never produces `<pad>` or `<s>` (`generation_config.json`).

Greedy search (`num_beams=1`) gives the same translations as transformer-tui. Beam search
differs in its length penalty only: transformers divides a finished hypothesis's log-probability
by |Y| ** length_penalty, transformer-tui by the GNMT penalty ((5 + |Y|) / 6) ** alpha, so a few
sentences among those whose best beams differ in length come out differently. Outputs are
limited to {c.model.max_len + c.eval.max_len_offset} tokens (transformer-tui: source length +
{c.eval.max_len_offset}).

## Training configuration

```toml
{c.to_toml().strip()}
```
"""
    (directory / "README.md").write_text(text, encoding="utf-8")
