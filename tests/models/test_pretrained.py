"""Pretrained weights: the shipped file, timm's tag and its pretrained config, starting a run of any task from them,
and what a user sees when the file is missing or damaged."""
from __future__ import annotations

import hashlib
import shutil

import pytest
import timm
import torch
from PIL import Image
from sample_data import make_scenes

import lemevit  # noqa: F401  (registers the models and their tags)
from lemevit.demo import DEMO_DATA
from lemevit.errors import DataError
from lemevit.models import pretrained
from lemevit.models.pretrained import PRETRAINED, find_weights, pretrained_state_dict

SHIPPED = "lemevit_tiny.aid150"
SHIPPED_FILE = pretrained.PACKAGE_WEIGHTS / f"{SHIPPED}.safetensors"


def test_the_shipped_weights_are_the_recorded_file():
    path = find_weights(SHIPPED)
    assert path.parent == pretrained.PACKAGE_WEIGHTS and path.suffix == ".safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PRETRAINED[SHIPPED].sha256
    assert path.stat().st_size < 20 * 2**20  # float16: it ships in the wheel


def test_timm_loads_the_tag_with_its_pretrained_config():
    model = timm.create_model(SHIPPED, pretrained=True)
    cfg = model.pretrained_cfg
    assert model.num_classes == 30 and len(cfg["label_names"]) == 30
    assert tuple(cfg["input_size"]) == (3, 128, 128) and cfg["mean"] == (0.485, 0.456, 0.406)
    assert "AID" in cfg["description"]
    stored = pretrained_state_dict(SHIPPED)
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key].float()), key


def test_pretrained_model_recognises_scenes_it_never_saw():
    """The demo subset is left out of the pretraining: its scenes, through timm's own transform of the tag's
    config, are recognised far above chance (1/30)."""
    model = timm.create_model(SHIPPED, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    names = list(model.pretrained_cfg["label_names"])
    images, labels = [], []
    for folder in sorted(p for p in DEMO_DATA.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir())[:2]:
            images.append(transform(Image.open(path).convert("RGB")))
            labels.append(names.index(folder.name))
    with torch.inference_mode():
        predicted = model(torch.stack(images)).argmax(1)
    accuracy = (predicted == torch.tensor(labels)).float().mean().item()
    assert len(labels) == 60 and accuracy >= 0.5, accuracy


def test_another_classifier_is_reinitialised_and_other_bands_adapted():
    model = timm.create_model(SHIPPED, pretrained=True, num_classes=7, in_chans=4)
    stored = pretrained_state_dict(SHIPPED)
    assert model.head.out_features == 7 and model.stem.conv1.weight.shape[1] == 4
    deep = [k for k in stored if k.startswith("stages.3.")]
    assert deep and all(torch.equal(model.state_dict()[k], stored[k].float()) for k in deep)


def test_missing_weights_say_which_file_goes_where(no_installed_weights):
    with pytest.raises(DataError) as raised:
        timm.create_model(SHIPPED, pretrained=True)
    message = str(raised.value)
    assert "\n" not in message and f"{SHIPPED}.safetensors" in message and str(no_installed_weights) in message
    with pytest.raises(DataError, match="not installed"):
        pretrained_state_dict(SHIPPED)


def test_weights_are_found_in_the_weights_directory(no_installed_weights):
    no_installed_weights.mkdir()
    shutil.copy(SHIPPED_FILE, no_installed_weights)
    model = timm.create_model(SHIPPED, pretrained=True)
    assert model.pretrained_cfg["file"] == str(no_installed_weights / f"{SHIPPED}.safetensors")


def test_a_damaged_file_is_refused(no_installed_weights):
    no_installed_weights.mkdir()
    original = SHIPPED_FILE.read_bytes()
    (no_installed_weights / f"{SHIPPED}.safetensors").write_bytes(original[:-8] + b"\0" * 8)
    with pytest.raises(DataError, match="sha256"):
        pretrained_state_dict(SHIPPED)


def test_cli_trains_from_the_pretrained_weights(tmp_path):
    """With a learning rate of 0 the trained backbone is still exactly the pretrained one."""
    from lemevit.cli import main
    from lemevit.io.checkpoint import read_checkpoint

    data = make_scenes(tmp_path / "scenes")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(run), "--model", SHIPPED, "--pretrained", "--lr", "0",
                 "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]) == 0
    state = read_checkpoint(run / "best.ckpt")["state_dict"]
    stored = pretrained_state_dict(SHIPPED)
    assert state["model.head.weight"].shape[0] == 3
    # Batch norms' running statistics do follow the new data.
    learnt = [k for k in stored if k.startswith("stages.") and ".running_" not in k and "num_batches" not in k]
    assert learnt and all(torch.equal(state[f"model.{k}"], stored[k].float()) for k in learnt)


def test_a_dense_task_starts_its_encoder_from_the_pretrained_weights():
    from lemevit.models.segmentation import SegmentationModel
    from lemevit.tasks.base import initial_weights

    stored = initial_weights(SHIPPED)
    network = SegmentationModel(SHIPPED, "upernet", 6, decoder_channels=32, backbone_checkpoint=stored)
    encoder = network.encoder.state_dict()
    deep = [k for k in stored if k.startswith("stages.2.")]
    assert deep and all(torch.equal(encoder[f"model.{k}"], stored[k].float()) for k in deep)


@pytest.mark.parametrize("argv, expected", [
    (["--model", "lemevit_tiny", "--pretrained"], "--model: lemevit_tiny has no pretrained weights; the weights of "
                                                  "lemevit_tiny are lemevit_tiny.aid150"),
    (["--model", SHIPPED, "--pretrained", "--init-checkpoint", "w.pth"],
     "--init-checkpoint: cannot go with --pretrained"),
])
def test_cli_refuses_pretrained_without_weights(tmp_path, capsys, argv, expected):
    from lemevit.cli import main

    data = make_scenes(tmp_path / "scenes")
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), *argv]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_models_lists_the_pretrained_weights(capsys):
    from lemevit.cli import main

    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines if not line.startswith(" ")] == sorted(PRETRAINED)
    line = next(line for line in lines if line.startswith(SHIPPED))
    assert "128px" in line and str(find_weights(SHIPPED)) in line
