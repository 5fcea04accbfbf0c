"""The README's TerraTorch configuration trains through TerraTorch's own command line.

It runs in a child process, as a user runs it, and because importing terratorch changes process-wide state
(one of its backbones sets ``torch.set_float32_matmul_precision("medium")`` on import)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lemevit.models.pretrained import pretrained_state_dict

ROOT = Path(__file__).parents[2]
CONFIG = ROOT / "examples" / "terratorch" / "potsdam_unet.yaml"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("terratorch") is None,
                                reason='terratorch is in the "interop" extra')


def test_readme_shows_the_shipped_configuration_word_for_word():
    readme = (ROOT / "README.md").read_text()
    assert f"terratorch fit --config {CONFIG.relative_to(ROOT)}" in readme
    assert CONFIG.read_text() in readme


@pytest.mark.slow
def test_configuration_fine_tunes_the_tagged_weights_it_names(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH"))
                                                       if p)}
    command = [sys.executable, "-m", "terratorch", "fit", "--config", str(CONFIG.relative_to(ROOT)),
               "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
               "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path)]
    # One step, then the validation whose loss the checkpoint callback TerraTorch adds watches.
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {tmp_path}"
    checkpoint = torch.load(checkpoints[0], map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 1
    stem = next(v for k, v in checkpoint["state_dict"].items() if k.endswith("stem.conv1.weight"))
    pretrained = pretrained_state_dict("lemevit_tiny.aid150")["stem.conv1.weight"].float()
    # Started from lemevit_tiny.aid150 (backbone_pretrained), then moved by one AdamW step of lr 1e-3.
    change = (stem - pretrained).abs()
    assert 0 < change.max() < 5e-3
