"""What a new user runs into, driven through the command line (issue 29, items 8 to 15): refusals that say what is
wrong before anything is written, and outputs and help that say what they are. Each test names its item."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lemevit.cli import main

TINY = ["--model", "resnet10t", "--epochs", "1", "--num-workers", "0", "--accelerator", "cpu"]
POTSDAM = Path(__file__).parents[1] / "src" / "lemevit" / "demo_data" / "potsdam_seg"


def scenes(root: Path, classes=("Farmland", "Forest"), per_class: int = 4, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[..., c % 3] += 150
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def error_of(capsys) -> str:
    """The one line a failed command printed (and that it is one line, without a traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# 12 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("task", "data", "model", "message"), [
    ("classification", None, "no_such_model", "--model: unknown model 'no_such_model'"),
    ("segmentation", POTSDAM, "vit_tiny_patch16_224", "--model: vit_tiny_patch16_224 has feature maps at strides"),
])
def test_12_a_bad_model_is_refused_before_the_run_writes_anything(task, data, model, message, tmp_path, capsys):
    data = data or scenes(tmp_path / "scenes")
    out = tmp_path / "run"
    extra = ["--preset", "potsdam", "--split", "1.0"] if task == "segmentation" else []
    assert main(["train", "--task", task, "--data", str(data), "--output", str(out), "--img-size", "32", *extra,
                 *TINY[2:], "--model", model]) == 2
    assert message in error_of(capsys)
    assert not any(out.iterdir()) if out.exists() else True
