"""The Transformer: shapes, masking, weight tying, incremental decoding, mixed precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.config import ModelConfig
from engine.model import POSITION_HEADROOM, DecoderCache, Dropout, Transformer

PAD, BOS, EOS = 0, 2, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(pre_norm: bool = False, share: bool = True, vocab: int = 40, **kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(vocab, vocab, d_model=32, ffn_hidden=64, n_head=4, n_layers=2,
                       max_len=kw.pop("max_len", 24), share_embeddings=share, pre_norm=pre_norm,
                       **kw)


def random_ids(batch: int, length: int, vocab: int = 40, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (batch, length), generator=g)


@pytest.mark.parametrize("pre_norm", [False, True])
@pytest.mark.parametrize("share", [False, True])
def test_forward_gives_one_distribution_per_target_position(pre_norm, share):
    model = Transformer(30, 30 if share else 50, d_model=32, ffn_hidden=64, n_head=4,
                        n_layers=2, share_embeddings=share, pre_norm=pre_norm)
    logits = model(random_ids(3, 7, 30), random_ids(3, 5, 30))
    assert logits.shape == (3, 5, 30 if share else 50)
    assert torch.isfinite(logits).all()


def test_from_config_builds_the_configured_model():
    cfg = ModelConfig(d_model=64, ffn_hidden=96, n_head=2, n_layers=3, dropout=0.2, max_len=40,
                      pre_norm=True)
    model = Transformer.from_config(cfg, 100, 100, share_embeddings=True)
    assert (model.d_model, model.n_head, model.max_len, model.pre_norm) == (64, 2, 40, True)
    assert len(model.encoder) == len(model.decoder) == 3
    assert model.encoder[0].ffn.up.out_features == 96
    assert model.drop.p == 0.2


def test_source_padding_does_not_change_the_output():
    model = small_model().eval()
    src, tgt = random_ids(2, 6), random_ids(2, 5, seed=2)
    padded = torch.cat([src, torch.full((2, 4), PAD)], dim=1)
    torch.testing.assert_close(model(padded, tgt), model(src, tgt), rtol=1e-5, atol=1e-5)


def test_a_shorter_sentence_in_the_batch_is_unaffected_by_its_padding():
    model = small_model().eval()
    src, tgt = random_ids(2, 8), random_ids(2, 5, seed=2)
    src[1, 5:] = PAD  # the second sentence is 5 tokens long
    alone = model(src[1:, :5], tgt[1:])
    torch.testing.assert_close(model(src, tgt)[1:], alone, rtol=1e-5, atol=1e-5)


def test_target_padding_and_future_tokens_do_not_change_earlier_logits():
    model = small_model().eval()
    src, tgt = random_ids(2, 6), random_ids(2, 7, seed=2)
    changed = tgt.clone()
    changed[:, 4:] = random_ids(2, 3, seed=3)
    changed[1, 5:] = PAD
    torch.testing.assert_close(model(src, changed)[:, :4], model(src, tgt)[:, :4],
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(src, changed)[:, 4:], model(src, tgt)[:, 4:])


def test_shared_vocabulary_ties_encoder_decoder_and_output_weights():
    model = small_model(share=True)
    weight = model.generator.weight
    assert model.src_embed.weight is weight and model.tgt_embed.weight is weight
    # one matrix in the parameter list, so the optimizer updates it once
    assert sum(p is weight for p in model.parameters()) == 1


def test_separate_vocabularies_still_tie_decoder_embedding_and_output():
    model = Transformer(30, 50, d_model=32, ffn_hidden=64, n_head=4, n_layers=1)
    assert model.tgt_embed.weight is model.generator.weight
    assert model.src_embed.weight is not model.tgt_embed.weight
    assert model.src_embed.weight.shape == (30, 32)


@pytest.mark.parametrize("share", [True, False])
def test_embeddings_start_as_tensor2tensor_and_fairseq_draw_them(share):
    # N(0, d_model^-0.5): after the x sqrt(d_model) scale a token has std 1, like the sinusoids
    torch.manual_seed(0)
    model = Transformer(8000, 8000, d_model=256, ffn_hidden=64, n_head=4, n_layers=1,
                        share_embeddings=share)
    for embedding in (model.src_embed, model.tgt_embed):
        weight = embedding.weight.detach()
        assert weight[PAD].abs().max() == 0  # the pad row starts at zero
        assert weight[1:].std().item() == pytest.approx(256 ** -0.5, rel=0.02)
        assert abs(weight[1:].mean().item()) < 0.001
    assert model.generator.weight is model.tgt_embed.weight  # the output projection too
    # the other matrices keep Xavier: uniform with std sqrt(2 / (fan_in + fan_out))
    up = model.encoder[0].ffn.up.weight.detach()
    assert up.std().item() == pytest.approx((2 / (256 + 64)) ** 0.5, rel=0.05)


def test_sharing_embeddings_needs_one_vocabulary():
    with pytest.raises(ValueError, match="src_vocab = 30 and tgt_vocab = 50"):
        Transformer(30, 50, d_model=32, n_head=4, n_layers=1, share_embeddings=True)


def test_state_dict_round_trips_and_keeps_the_tie(tmp_path):
    model = small_model()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    assert not any("positions" in key for key in model.state_dict())  # derived, not saved
    fresh = Transformer(40, 40, d_model=32, ffn_hidden=64, n_head=4, n_layers=2, max_len=24,
                        share_embeddings=True)
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert fresh.generator.weight is fresh.src_embed.weight
    src, tgt = random_ids(2, 5), random_ids(2, 4, seed=2)
    torch.testing.assert_close(fresh.eval()(src, tgt), model.eval()(src, tgt))


@pytest.mark.parametrize("pre_norm", [False, True])
def test_incremental_decoding_gives_the_full_decoding_logits(pre_norm):
    model = small_model(pre_norm=pre_norm).eval()
    src, tgt = random_ids(3, 6), random_ids(3, 7, seed=2)
    src[2, 3:] = PAD
    full = model(src, tgt)
    memory, src_pad = model.encode(src)
    cache = DecoderCache()
    steps = [model.decode(tgt[:, :t], memory, src_pad, cache) for t in range(1, 8)]
    assert all(step.shape == (3, 1, 40) for step in steps)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    # a prefix of several positions at once, then one more
    cache = DecoderCache()
    first = model.decode(tgt[:, :4], memory, src_pad, cache)
    rest = model.decode(tgt, memory, src_pad, cache)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-4, atol=1e-5)


def test_reordering_the_cache_follows_the_chosen_rows():
    model = small_model().eval()
    src, tgt = random_ids(3, 6), random_ids(3, 5, seed=2)
    memory, src_pad = model.encode(src)
    cache = DecoderCache()
    model.decode(tgt[:, :3], memory, src_pad, cache)
    order = torch.tensor([2, 0, 0])  # beam search keeps some rows twice and drops others
    cache.reorder(order, memory_index=order)
    step = model.decode(tgt[order, :4], memory[order], src_pad[order], cache)
    torch.testing.assert_close(step, model(src[order], tgt[order, :4])[:, -1:],
                               rtol=1e-4, atol=1e-5)
    assert cache.length == 4


def test_hypotheses_of_one_sentence_share_its_memory_row():
    # beam search: k = 3 target rows per source sentence, the memory stays one row each
    model = small_model().eval()
    src, tgt = random_ids(2, 6), random_ids(6, 5, seed=2)
    src[1, 4:] = PAD
    memory, src_pad = model.encode(src)
    expanded = model(src.repeat_interleave(3, dim=0), tgt)
    torch.testing.assert_close(model.decode(tgt, memory, src_pad), expanded,
                               rtol=1e-4, atol=1e-5)
    cache = DecoderCache()
    steps = [model.decode(tgt[:, :t], memory, src_pad, cache) for t in range(1, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), expanded, rtol=1e-4, atol=1e-5)


def test_decoding_past_the_position_table_computes_positions_on_the_fly():
    model = small_model(max_len=8).eval()
    long_target = random_ids(1, 8 + POSITION_HEADROOM + 5, seed=2)
    logits = model(random_ids(1, 4), long_target)
    assert logits.shape == (1, long_target.size(1), 40) and torch.isfinite(logits).all()


def test_bf16_autocast_training_step_on_cpu():
    model = small_model().train()
    src, tgt = random_ids(4, 6), random_ids(4, 6, seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    before = model.generator.weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 40).float(), tgt[:, 1:].reshape(-1),
                               ignore_index=PAD, label_smoothing=0.1)
    assert logits.dtype == torch.bfloat16
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not torch.equal(model.generator.weight, before)


def test_bf16_autocast_decoding_with_a_cache_matches_full_decoding():
    model = small_model().eval()
    src, tgt = random_ids(2, 6), random_ids(2, 5, seed=2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(src, tgt)
        memory, src_pad = model.encode(src)
        cache = DecoderCache()
        steps = [model.decode(tgt[:, :t], memory, src_pad, cache) for t in range(1, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1).float(), full.float(),
                               rtol=0.05, atol=0.05)


def test_dropout_drops_about_p_and_keeps_the_expected_value():
    torch.manual_seed(0)
    dropout = Dropout(0.1).train()
    x = torch.ones(200_000)
    y = dropout(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(dropout.eval()(x), x)


def test_dropout_gradient_flows_through_kept_positions_only():
    torch.manual_seed(0)
    x = torch.ones(1000, requires_grad=True)
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * 2.0)


def test_training_mode_is_random_and_eval_mode_deterministic():
    model = small_model()
    src, tgt = random_ids(2, 6), random_ids(2, 5, seed=2)
    assert not torch.equal(model.train()(src, tgt), model(src, tgt))
    assert torch.equal(model.eval()(src, tgt), model(src, tgt))
