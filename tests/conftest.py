"""Shared fixtures: the parity fixtures shipped with the tests and, when present, the full-size ones."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

# A compile cache of the run's own: a process killed while inductor wrote a kernel leaves an empty library in the
# shared /tmp/torchinductor_$USER, and every later run on that machine fails loading it ("file too short").
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lemevit-tests-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import pytest
import torch
from safetensors.torch import load_file

import lemevit  # noqa: F401  (registers the models with timm)

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
MINI_PARITY = FIXTURES / "parity" / "mini"
# The full-size parity fixtures and the sample data sets live next to the repository in ../shared (CI has it, a
# clone may not).
SHARED = TESTS.parent.parent / "shared"
SHARED_PARITY = SHARED / "fixtures" / "parity"


@pytest.fixture(scope="session")
def mini_configs() -> dict:
    return json.loads((MINI_PARITY / "configs.json").read_text())


def shared_parity(name: str) -> Path:
    """Path of a full-size parity file, or skip the test when ../shared is not there."""
    path = SHARED_PARITY / name
    if not path.exists():
        pytest.skip(f"full-size parity fixture {path} not present (it lives in ../shared, next to the clone)")
    return path


def load_io(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(path)).items()}


def mini_parity_model(name: str, configs: dict) -> torch.nn.Module:
    """A mini configuration of the published code (``lemevit_mini``, ``lvt_backbone_mini``, ``vvt_mini``), built with
    our constructors and loaded strictly from its published-layout checkpoint, in eval mode."""
    import lemevit.models.lemevit as lemevit_module
    import lemevit.models.lvt as lvt_module
    import lemevit.models.vvt as vvt_module
    from lemevit.models import LVT, VVT, LeMeViT
    from lemevit.models.factory import load_checkpoint_file

    cfg = configs[name]
    if name == "lemevit_mini":
        model = LeMeViT(depths=cfg["depths"], dims=cfg["dims"], attn_types=cfg["attention_types"],
                        head_dim=cfg["head_dim"], num_meta_tokens=cfg["num_meta_tokens"], mlp_ratio=cfg["mlp_ratio"],
                        num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
        filter_fn = lemevit_module.checkpoint_filter_fn
    elif name == "lvt_backbone_mini":
        model = LVT(depths=cfg["depths"], dims=cfg["dims"], num_heads=cfg["num_heads"], mlp_ratios=cfg["mlp_ratios"],
                    attn_types=cfg["attention"], conv_mlp=cfg["mlp_dwconv"], sr_ratios=cfg["sr_ratios"],
                    atrous_rates=cfg["rasa"]["atrous_rates"], recursions=cfg["rasa"]["recursions"],
                    dense_backbone=True, num_classes=0, in_chans=cfg["in_chans"])
        filter_fn = lvt_module.checkpoint_filter_fn
    else:
        model = VVT(depths=cfg["depths"], dims=cfg["dims"], num_heads=cfg["num_heads"], mlp_ratios=cfg["mlp_ratios"],
                    feature_reduction=cfg["feature_reduction"], qkv_bias=cfg["qkv_bias"],
                    num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
        filter_fn = vvt_module.checkpoint_filter_fn
    state = filter_fn(load_checkpoint_file(MINI_PARITY / f"{name}.official_state_dict.safetensors"))
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


@pytest.fixture(scope="session")
def scene_run(tmp_path_factory):
    """A one-epoch scene-recognition run on :func:`sample_data.make_scenes` (the data and the run folder), shared by
    the tests that only need some trained run."""
    from sample_data import make_scenes

    from lemevit.cli import main

    root = tmp_path_factory.mktemp("scene_run")
    data = make_scenes(root / "scenes")
    run = root / "run"
    assert main(["train", "--data", str(data), "--output", str(run), "--model", "lemevit_tiny", "--img-size", "32",
                 "--epochs", "1", "--batch-size", "4", "--num-workers", "0", "--split", "0.75"]) == 0
    return data, run


# The trained runs of the CLI tests (test_cli_hardening, test_cli_clarity): one of each per module.
@pytest.fixture(scope="module")
def cls_run(tmp_path_factory) -> Path:
    from test_cli_hardening import TINY, scenes

    from lemevit.cli import main

    root = tmp_path_factory.mktemp("cls")
    data = scenes(root / "scenes")
    assert main(["train", "--data", str(data), "--output", str(root / "run"), "--img-size", "32", "--batch-size",
                 "4", "--split", "0.5", *TINY]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    from test_cli_hardening import POTSDAM, TINY

    from lemevit.cli import main

    run = tmp_path_factory.mktemp("seg") / "run"
    assert main(["train", "--task", "segmentation", "--data", str(POTSDAM), "--preset", "potsdam", "--output",
                 str(run), "--img-size", "32", "--batch-size", "2", "--crops-per-tile", "2", "--split", "1.0",
                 "--decoder-channels", "8", "--window", "128", *TINY]) == 0
    return run


@pytest.fixture
def no_installed_weights(tmp_path, monkeypatch) -> Path:
    """Neither the package nor the weights directory holds a weights file (the directory not yet made); returns the
    weights directory."""
    from lemevit.models import pretrained

    monkeypatch.setattr(pretrained, "PACKAGE_WEIGHTS", tmp_path / "package")
    monkeypatch.setenv(pretrained.WEIGHTS_DIR_VARIABLE, str(tmp_path / "weights"))
    return tmp_path / "weights"
