"""What only LeMeViT has: meta tokens (their attention maps, weight decay), SDPA attention with the D blocks'
scale, gradient checkpointing, the final BatchNorm, the chunked CPU MLP and the smp UperNet encoder.
The checks every model passes are in test_models.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lemevit.models.lemevit import LeMeViT


def small_model(**kwargs) -> LeMeViT:
    """The mini parity configuration: same structure as the paper's models, fast on CPU."""
    cfg = dict(depths=(1, 1, 1, 2, 1), dims=(32, 32, 64, 96, 128), num_classes=10)
    return LeMeViT(**{**cfg, **kwargs})


def test_forward_intermediates_norm_applies_the_final_batch_norm_to_the_last_map():
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], model.norm(feats[3]))


def test_a_1000_px_input_runs_through_the_chunked_mlp(monkeypatch):
    """At 1000 x 1000 the stride-4 stages' MLPs take the chunked CPU path (hidden activations over 16 MiB)."""
    from lemevit.layers.mlp import Mlp

    chunked = []
    original = Mlp._chunked
    monkeypatch.setattr(Mlp, "_chunked", lambda self, *args: chunked.append(self) or original(self, *args))
    model = small_model().eval()
    size = (1000, 1000)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
        feats = model.forward_intermediates(x, intermediates_only=True)
    half = lambda sides: [-(-s // 2) for s in sides]  # noqa: E731  (3x3 stride-2 convs round up)
    expected, sides = [], half(half(list(size)))
    for _ in range(4):
        expected.append(tuple(sides))
        sides = half(sides)
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert chunked


def test_every_attention_goes_through_sdpa(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("scale"))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = small_model().eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    # C block: 1 call; D blocks: 2 each (2 blocks); S blocks: 2 each (3 blocks).
    assert len(calls) == 1 + 2 * 2 + 2 * 3
    # The D image branch uses log_N(M) * dim^-0.5 with N = 16x16 tokens at stride 4, M = 16, dim = 32.
    assert calls[1] == pytest.approx(torch.log(torch.tensor(16.0)).item() / torch.log(torch.tensor(256.0)).item()
                                     * 32 ** -0.5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 4])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = small_model().train()
        model.set_grad_checkpointing(checkpointing)
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_reset_classifier_and_no_weight_decay():
    model = small_model().eval()
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        model.reset_classifier(0)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 128)
    assert "meta_tokens" in model.no_weight_decay()
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p is model.meta_tokens for p in no_decay)


@pytest.mark.slow
def test_smp_upernet_trains_one_step_at_512():
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.UPerNet(encoder_name="tu-lemevit_tiny", encoder_weights=None, classes=6).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(2, 3, 512, 512), torch.randint(0, 6, (2, 512, 512))
    logits = model(x)
    assert logits.shape == (2, 6, 512, 512)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    before = model.encoder.model.model.stem.conv1.weight.detach().clone()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.encoder.model.model.stem.conv1.weight)
