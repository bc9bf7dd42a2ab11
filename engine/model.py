"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017), in one file.

    src ids -> embedding * sqrt(d_model) + sinusoids -> dropout -> N x EncoderLayer  -> memory
    tgt ids -> embedding * sqrt(d_model) + sinusoids -> dropout -> N x DecoderLayer  -> logits
                                                          (self-attn, cross-attn on memory, FFN)

Paper choices: sinusoidal positions, post-norm residual blocks ``x = norm(x + dropout(f(x)))``
(``pre_norm=True`` gives ``x = x + dropout(f(norm(x)))`` with a final norm per stack), ReLU
feed-forward, dropout on the embedding sums and on every sublayer output (none inside
attention), Xavier-uniform initialisation but N(0, d_model^-0.5) embeddings with the pad row
zero (tensor2tensor, fairseq), and weight tying: the decoder embedding is the output
projection, and with a shared vocabulary the encoder embedding is the same matrix too.

Speed: attention runs through ``F.scaled_dot_product_attention`` with ``is_causal`` or a boolean
key-padding mask (no float masks are built per step), q, k and v come out of one matmul, heads
are a tensor dimension. Works under ``torch.autocast`` (bfloat16 on CPU, bf16/fp16 on CUDA); on
CPU attention itself runs in fp32 (see ``_attention_dtype``) and dropout draws its mask from
cheaper random bits (see ``Dropout``): both measured in benchmarks/bench_train.py.

Incremental decoding: ``decode(..., cache=DecoderCache())`` runs only the new positions, keeping
each decoder layer's self-attention keys/values and the cross-attention keys/values of the
memory (computed once). ``cache.reorder(index, memory_index)`` follows the hypotheses beam
search keeps. Beam search's k hypotheses of a sentence share one memory row (see
``CrossAttention``), so the memory is never copied k times.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

POSITION_HEADROOM = 64  # decoding may run past max_len: outputs are up to input length + 50


def sinusoids(length: int, d_model: int, start: int = 0) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): (length, d_model)."""
    position = torch.arange(start, start + length, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                         * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
              causal: bool = False) -> Tensor:
    """Scaled dot-product attention over heads: (B, H, L, dh) x (B, H, S, dh) -> (B, H, L, dh).
    Runs in the dtype of q, k, v, even under autocast (see ``_attention_dtype``)."""
    with torch.autocast(q.device.type, enabled=False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def _attention_dtype(projected: Tensor) -> Tensor:
    """The q/k/v projections as attention takes them. On CPU the bf16 SDPA kernels are ~10x
    slower (forward + backward) than the fp32 flash kernel at translation lengths, so attention
    runs in fp32 there; one contiguous cast here, before the heads are split, is the cheapest
    place for it. The matmuls around attention stay in bf16 under autocast."""
    if projected.device.type == "cpu" and projected.dtype != torch.float32:
        return projected.float()
    return projected


class Dropout(nn.Module):
    """``nn.Dropout``, with a faster mask on CPU.

    torch's CPU dropout draws one Bernoulli variable per element, which costs ~3x more than
    the rest of a dropout (forward + backward) and adds up to ~10% of a training step. Here
    each 64-bit random integer gives four 15-bit uniform draws instead; the drop probability is
    p rounded to 1/32768 and the kept values are scaled by exactly 1/(1 - that).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 32768)
        self.scale = 32768 / (32768 - self.threshold) if self.threshold < 32768 else 0.0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():
            return F.dropout(x, self.p, training=True)  # fused kernels elsewhere
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # 63 random bits each
        draws = bits.view(torch.int16)[:n].view(x.shape) & 0x7FFF
        return x * (draws >= self.threshold).to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _heads(x: Tensor, parts: int, n_head: int) -> tuple[Tensor, ...]:
    """(B, T, parts*d) -> ``parts`` tensors of shape (B, n_head, T, d/n_head), views only.
    (Split before transposing: the backward pass then stacks the gradients straight into the
    projection's layout, one copy instead of two.)"""
    B, T, _ = x.shape
    return tuple(part.transpose(1, 2) for part in x.view(B, T, parts, n_head, -1).unbind(2))


def _merge_heads(x: Tensor) -> Tensor:
    """(B, n_head, T, dh) -> (B, T, n_head*dh)."""
    B, H, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dh)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)  # one matmul for q, k and v
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, mask: Tensor | None = None, causal: bool = False,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        qkv = self.qkv(x)
        q, k, v = _heads(_attention_dtype(qkv), 3, self.n_head)
        if past is not None:  # incremental decoding: earlier positions' keys and values
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            if causal and q.size(2) > 1:
                # several new positions: causal mask aligned to the end (is_causal aligns to 0)
                L, S = q.size(2), k.size(2)
                mask = torch.ones(L, S, dtype=torch.bool, device=x.device).tril(S - L)
            causal = False  # one new position may see every cached one
        y = attention(q, k, v, mask, causal)
        return self.out(_merge_heads(y).to(qkv.dtype)), (k, v)


class CrossAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)  # keys and values of the memory, one matmul
        self.out = nn.Linear(d_model, d_model)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        k, v = _heads(_attention_dtype(self.kv(memory)), 2, self.n_head)
        return k, v

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], mask: Tensor) -> Tensor:
        B, L, d = x.shape
        n = memory_kv[0].size(0)  # source sentences; B = n * hypotheses per sentence
        q_proj = self.q(x)
        # Beam search keeps k hypotheses per sentence in consecutive rows. They all attend to
        # the same memory, so their queries are folded into one sequence of k*L queries per
        # sentence: the memory is never copied per hypothesis. (k = 1 in training.)
        (q,) = _heads(_attention_dtype(q_proj).view(n, B // n * L, d), 1, self.n_head)
        y = attention(q, *memory_kv, mask)
        return self.out(_merge_heads(y).view(B, L, d).to(q_proj.dtype))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ffn_hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, ffn_hidden)
        self.down = nn.Linear(ffn_hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.relu(self.up(x)))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, ffn_hidden: int, n_head: int, dropout: float,
                 pre_norm: bool) -> None:
        super().__init__()
        self.attn = SelfAttention(d_model, n_head)
        self.ffn = FeedForward(d_model, ffn_hidden)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.drop = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), mask)[0])
            return x + self.drop(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask)[0]))
        return self.norm2(x + self.drop(self.ffn(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, ffn_hidden: int, n_head: int, dropout: float,
                 pre_norm: bool) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, n_head)
        self.cross_attn = CrossAttention(d_model, n_head)
        self.ffn = FeedForward(d_model, ffn_hidden)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.drop = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], memory_mask: Tensor,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if self.pre_norm:
            a, kv = self.self_attn(self.norm1(x), causal=True, past=past)
            x = x + self.drop(a)
            x = x + self.drop(self.cross_attn(self.norm2(x), memory_kv, memory_mask))
            return x + self.drop(self.ffn(self.norm3(x))), kv
        a, kv = self.self_attn(x, causal=True, past=past)
        x = self.norm1(x + self.drop(a))
        x = self.norm2(x + self.drop(self.cross_attn(x, memory_kv, memory_mask)))
        return self.norm3(x + self.drop(self.ffn(x))), kv


class DecoderCache:
    """Per decoder layer: self-attention keys/values so far, and the memory's keys/values.

    Tensors are (rows, n_head, length, d_head): a row per hypothesis for the self-attention,
    a row per source sentence for the memory (beam search's k hypotheses share one).
    """

    def __init__(self) -> None:
        self.self_kv: list[tuple[Tensor, Tensor]] = []
        self.memory_kv: list[tuple[Tensor, Tensor]] = []

    @property
    def length(self) -> int:
        """Target positions decoded so far."""
        return self.self_kv[0][0].size(2) if self.self_kv else 0

    def reorder(self, index: Tensor, memory_index: Tensor | None = None) -> None:
        """Keep hypothesis rows ``index`` (beam search: the survivors, in their new order) and,
        when sentences leave the batch, memory rows ``memory_index``."""
        self.self_kv = [(k.index_select(0, index), v.index_select(0, index))
                        for k, v in self.self_kv]
        if memory_index is not None:
            self.memory_kv = [(k.index_select(0, memory_index), v.index_select(0, memory_index))
                              for k, v in self.memory_kv]


class Transformer(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 512, ffn_hidden: int = 2048,
                 n_head: int = 8, n_layers: int = 6, dropout: float = 0.1, max_len: int = 256,
                 share_embeddings: bool = False, pre_norm: bool = False, pad_id: int = 0) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"n_head = {n_head} must divide d_model = {d_model}")
        if d_model % 2:
            raise ValueError(f"d_model = {d_model} must be even (sinusoidal positions)")
        if share_embeddings and src_vocab != tgt_vocab:
            raise ValueError(f"share_embeddings needs one vocabulary, got src_vocab = "
                             f"{src_vocab} and tgt_vocab = {tgt_vocab}")
        self.d_model, self.n_head, self.pad_id, self.max_len = d_model, n_head, pad_id, max_len
        self.pre_norm = pre_norm

        self.tgt_embed = nn.Embedding(tgt_vocab, d_model)
        self.src_embed = self.tgt_embed if share_embeddings else nn.Embedding(src_vocab, d_model)
        self.register_buffer("positions", sinusoids(max_len + POSITION_HEADROOM, d_model),
                             persistent=False)  # derived, so not part of checkpoints
        self.drop = Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, ffn_hidden, n_head, dropout, pre_norm)
                                     for _ in range(n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, ffn_hidden, n_head, dropout, pre_norm)
                                     for _ in range(n_layers))
        # the paper's final norms belong to pre-norm stacks; post-norm layers end normalised
        self.encoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.generator = nn.Linear(d_model, tgt_vocab, bias=False)

        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # embeddings as in tensor2tensor and fairseq: N(0, d_model^-0.5), so that after the
        # x sqrt(d_model) scale tokens have std 1, as strong as the sinusoids (Xavier left them
        # about 4x weaker); the pad row starts at zero
        shared = self.src_embed is self.tgt_embed
        for embedding in [self.tgt_embed] + ([] if shared else [self.src_embed]):
            nn.init.normal_(embedding.weight, mean=0.0, std=d_model ** -0.5)
            with torch.no_grad():
                embedding.weight[pad_id].zero_()
        self.generator.weight = self.tgt_embed.weight  # tied after init: one matrix, one init

    @classmethod
    def from_config(cls, model_cfg, src_vocab: int, tgt_vocab: int,
                    share_embeddings: bool) -> "Transformer":
        """Build from an ``engine.config.ModelConfig``."""
        return cls(src_vocab, tgt_vocab, d_model=model_cfg.d_model,
                   ffn_hidden=model_cfg.ffn_hidden, n_head=model_cfg.n_head,
                   n_layers=model_cfg.n_layers, dropout=model_cfg.dropout,
                   max_len=model_cfg.max_len, share_embeddings=share_embeddings,
                   pre_norm=model_cfg.pre_norm)

    def _embed(self, embedding: nn.Embedding, ids: Tensor, start: int = 0) -> Tensor:
        T = ids.size(1)
        if start + T <= self.positions.size(0):
            pos = self.positions[start:start + T]
        else:  # longer than ever planned for: compute the sinusoids on the fly
            pos = sinusoids(T, self.d_model, start).to(ids.device)
        return self.drop(embedding(ids) * math.sqrt(self.d_model) + pos)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) ids -> memory (B, S, d_model), src_pad (B, S) bool, True at padding."""
        src_pad = src.eq(self.pad_id)
        mask = self._attention_mask(src_pad)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x), src_pad

    @staticmethod
    def _attention_mask(src_pad: Tensor) -> Tensor:
        # SDPA's boolean masks say where attention is allowed; (B, 1, 1, S) broadcasts over
        # heads and queries
        return ~src_pad[:, None, None, :]

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad: Tensor,
               cache: DecoderCache | None = None, last_only: bool = False,
               keep: Tensor | None = None) -> Tensor:
        """Logits (B, T, tgt_vocab) of the next token after each position of ``tgt_in``.

        ``memory`` (n, S, d_model) and ``src_pad`` (n, S) may have fewer rows than ``tgt_in``
        when B = n * k: rows i*k .. i*k+k-1 of ``tgt_in`` are then hypotheses of sentence i.

        With a ``cache``, ``tgt_in`` is the whole prefix so far; only the positions not yet in
        the cache are run, and only their logits are returned. ``last_only`` returns the last
        position's logits only (B, 1, tgt_vocab), sparing the output projection of the others.
        ``keep`` (N,), flat indices into the B*T positions, returns only their logits (N,
        tgt_vocab): training leaves the padding out of the largest matmul and tensor.
        Target padding needs no mask: it only ever follows the real tokens, which the causal
        mask keeps them from seeing.
        """
        mask = self._attention_mask(src_pad)
        start = cache.length if cache is not None else 0
        x = self._embed(self.tgt_embed, tgt_in[:, start:], start)
        if cache is not None and not cache.memory_kv:
            cache.memory_kv = [layer.cross_attn.memory_kv(memory) for layer in self.decoder]
        for i, layer in enumerate(self.decoder):
            if cache is None:
                x, _ = layer(x, layer.cross_attn.memory_kv(memory), mask)
            else:
                past = cache.self_kv[i] if i < len(cache.self_kv) else None
                x, kv = layer(x, cache.memory_kv[i], mask, past)
                if past is None:
                    cache.self_kv.append(kv)
                else:
                    cache.self_kv[i] = kv
        if last_only:
            x = x[:, -1:]
        if keep is not None:
            x = x.reshape(-1, x.size(-1)).index_select(0, keep)
        return self.generator(self.decoder_norm(x))

    def forward(self, src: Tensor, tgt_in: Tensor, keep: Tensor | None = None) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) = <s> y1 .. y(T-1) -> logits (B, T, V);
        with ``keep`` (N,), flat indices into B*T, the logits of those positions only: (N, V)."""
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad, keep=keep)
