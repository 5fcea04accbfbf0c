"""What only LVT and VVT have: LVT's dense backbone with per-stage norms and its final norm on the last map,
logits that do not change with the training mode, and the smp decoders over both. The checks every model
passes are in test_models.py."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import lemevit.models.lvt  # noqa: F401  (registers lvt, lvt_backbone)
import lemevit.models.vvt  # noqa: F401  (registers vvt_tiny/small/medium/large)

NUM_CLASSES = 10


def test_lvt_features_only_is_the_dense_backbone_with_per_stage_norms():
    with torch.device("meta"):
        model = timm.create_model("lvt", features_only=True)
        # The classifier's own stage outputs on request: no per-stage norms, no class-token layers left over.
        plain = timm.create_model("lvt", features_only=True, dense_backbone=False)
    assert model.model.dense_backbone and len(model.model.stage_norms) == 4
    assert model.model.cls_token is None and len(model.model.post_blocks) == 0
    # It is the published dense backbone, parameter for parameter.
    assert sum(p.numel() for p in model.parameters()) == 3_430_180
    assert any(k.startswith("model.stage_norms.") for k in model.state_dict())
    assert plain.model.stage_norms is None
    assert not any(k.startswith(("cls_token", "post_blocks", "norm.", "head", "aux_head"))
                   for k in plain.model.state_dict())


def test_a_classifiers_weights_start_lvts_dense_encoder_its_stage_norms_fresh(caplog):
    """lvt.aid_ucm (a classifier) is what --pretrained gives a segmentation or change run: the dense backbone takes
    every tensor the two share, and its own per-stage norms start at their initialisation, as in the published
    dense code."""
    from lemevit.models.factory import create_dense_encoder

    torch.manual_seed(0)
    classifier = timm.create_model("lvt", num_classes=NUM_CLASSES)
    state = {k: v + 0.5 for k, v in classifier.state_dict().items()}
    encoder = create_dense_encoder("lvt", checkpoint=state)
    own = encoder.model.state_dict()
    shared = [k for k in own if k in state]
    assert len(shared) == len(own) - 8 and all(torch.equal(own[k], state[k]) for k in shared)
    for norm in encoder.model.stage_norms:
        assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and not norm.bias.any()
    assert "no 8 (stage_norms.0.weight" in caplog.text and "left at initialisation" in caplog.text


def test_a_classifier_starts_a_features_wrapper_that_renames_its_modules():
    """timm's FeatureListNet names pvt_v2's modules ``stages_0``, the classifier ``stages.0``: a classifier trained by
    ``lemevit train`` still starts its dense encoder, every tensor of it, and its stem takes other bands (convnext's
    stem is ``stem_0`` there); another architecture's weights are still refused."""
    from lemevit.errors import DataError
    from lemevit.io.model_file import BackboneWeights
    from lemevit.models.factory import create_dense_encoder

    torch.manual_seed(0)
    state = {k: v + 0.5 for k, v in timm.create_model("pvt_v2_b0", num_classes=NUM_CLASSES).state_dict().items()}
    encoder = create_dense_encoder("pvt_v2_b0", checkpoint=state)
    own = encoder.state_dict()
    assert type(encoder).__name__ == "FeatureListNet" and "stages_0.blocks.0.norm1.weight" in own
    assert all(torch.equal(v, state[k.replace("stages_", "stages.")]) for k, v in own.items())
    # The backbone of a classification run (--init-checkpoint run/best.ckpt) takes the same path.
    from_run = create_dense_encoder("pvt_v2_b0", checkpoint=BackboneWeights(state, "run/best.ckpt")).state_dict()
    assert all(torch.equal(v, own[k]) for k, v in from_run.items())

    convnext = timm.create_model("convnext_atto", num_classes=NUM_CLASSES).state_dict()
    four_bands = create_dense_encoder("convnext_atto", in_chans=4, checkpoint=convnext).state_dict()
    assert four_bands["stem_0.weight"].shape[1] == 4
    torch.testing.assert_close(four_bands["stages_3.blocks.1.mlp.fc2.weight"],
                               convnext["stages.3.blocks.1.mlp.fc2.weight"])
    with pytest.raises(DataError, match="does not fit FeatureListNet"):
        create_dense_encoder("pvt_v2_b0", checkpoint=convnext)


def test_lvt_forward_intermediates_norm_applies_the_final_norm_to_the_last_map():
    torch.manual_seed(0)
    model = timm.create_model("lvt", num_classes=NUM_CLASSES).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, model.norm(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        with pytest.raises(ValueError, match="intermediates_only=True"):
            model.forward_intermediates(x, indices=[1], stop_early=True)


@pytest.mark.parametrize("name", ["lvt", "vvt_tiny"])
def test_training_mode_gives_the_inference_logits(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eval_logits = model.eval()(x)
        logits = model.train()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    # Without dropout, training and inference compute the same logits (LVT: head(cls) + 0.5 max aux).
    torch.testing.assert_close(logits, eval_logits)


@pytest.mark.parametrize("arch, encoder", [("UPerNet", "tu-vvt_tiny"), ("Segformer", "tu-lvt")])
def test_segmentation_model_builds_and_trains_one_step(arch, encoder):
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=6).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, target = torch.randn(2, 3, 128, 128), torch.randint(0, 6, (2, 128, 128))
    out = model(x)
    assert out.shape == (2, 6, 128, 128)
    loss = F.cross_entropy(out, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.encoder.parameters())
    before = model.encoder.model.model.stages[0].patch_embed.proj.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.encoder.model.model.stages[0].patch_embed.proj.weight)
