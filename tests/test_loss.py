"""The training loss: label-smoothed cross entropy over the real target tokens, lean in memory."""

import pytest
import torch
import torch.nn.functional as F

from engine import loss as loss_module
from engine.batching import target_positions
from engine.loss import label_smoothed_loss
from engine.model import Transformer


def test_padding_never_reaches_the_loss():
    target = torch.tensor([[4, 5, 0], [6, 0, 0]])  # 0 = <pad>
    keep, real = target_positions(target)
    assert keep.tolist() == [0, 1, 3] and real.tolist() == [4, 5, 6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_nll_and_gradient_are_torch_cross_entropy_with_label_smoothing(dtype, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * 37)  # several chunks of rows
    torch.manual_seed(0)
    logits = torch.randn(50, 37, dtype=dtype, requires_grad=True)
    target = torch.randint(1, 37, (50,))
    smoothed, nll = label_smoothed_loss(logits, target, epsilon=0.1)
    (smoothed / 50).backward()
    ours = logits.grad.float()

    logits.grad = None
    expected = F.cross_entropy(logits.float(), target, reduction="sum", label_smoothing=0.1)
    (expected / 50).backward()
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-5)
    assert nll.item() == pytest.approx(F.cross_entropy(logits.float(), target,
                                                       reduction="sum").item(), rel=1e-5)
    assert not nll.requires_grad  # the reported loss carries no gradient
    tolerance = 1e-6 if dtype == torch.float32 else 1e-3  # bf16: the gradient is stored in bf16
    torch.testing.assert_close(ours, logits.grad.float(), rtol=0, atol=tolerance)


def test_without_smoothing_the_loss_is_the_nll_and_no_grad_stores_no_gradient():
    logits = torch.randn(6, 11, requires_grad=True)
    target = torch.randint(0, 11, (6,))
    with torch.no_grad():
        smoothed, nll = label_smoothed_loss(logits, target, epsilon=0.0)
    assert smoothed.item() == pytest.approx(nll.item())
    assert nll.item() == pytest.approx(F.cross_entropy(logits, target, reduction="sum").item())


def test_the_model_computes_logits_only_where_asked():
    torch.manual_seed(0)
    model = Transformer(30, 30, d_model=16, ffn_hidden=32, n_head=2, n_layers=1, dropout=0.0)
    src = torch.randint(3, 30, (3, 5))
    tgt_in = torch.randint(3, 30, (3, 4))
    tgt_out = torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0], [9, 9, 2, 0]])
    keep, _ = target_positions(tgt_out)
    full = model(src, tgt_in).reshape(-1, 30)
    torch.testing.assert_close(model(src, tgt_in, keep), full[keep])
