"""Scene recognition through the CLI: train, resume, evaluate, predict, explain; metrics on a hand-made case."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from resumption import check_kill_and_resume
from sample_data import CLASSES, make_scenes

from lemevit.cli import main


def train_args(data: Path, out: Path, epochs: int = 2, **extra) -> list[str]:
    args = ["train", "--data", str(data), "--output", str(out), "--model", "lemevit_tiny", "--img-size", "32",
            "--epochs", str(epochs), "--batch-size", "4", "--num-workers", "0", "--seed", "3", "--split", "0.75"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_train_writes_the_run_and_eval_predict_explain_use_it(tmp_path):
    data = make_scenes(tmp_path / "scenes")
    run = tmp_path / "run"
    assert main(train_args(data, run)) == 0
    for name in ("best.ckpt", "last.ckpt", "split.json", "config.yaml", "logs/metrics.csv"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    held_out = {s["path"] if isinstance(s, dict) else s[0] for s in split["splits"]["val"]}
    assert len(held_out) == 3 * 2  # 25 % of 6 images per class

    assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--output", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == len(held_out)
    assert set(metrics["per_class"]) == set(CLASSES)
    assert np.array(metrics["confusion_matrix"]).sum() == len(held_out)
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    odd = tmp_path / "odd.png"
    Image.fromarray(np.full((57, 91, 3), 200, np.uint8)).save(odd)
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(data / "Forest"), str(odd),
                 "--output", str(out_csv), "--topk", "2"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6 + 1
    assert {r["class_1"] for r in rows} <= set(CLASSES)
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)

    png = tmp_path / "attention.png"
    assert main(["explain", "--checkpoint", str(run / "best.ckpt"), str(odd), "--output", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_run_killed_within_an_epoch_resumes_from_its_step_checkpoint_to_the_same_weights(tmp_path):
    data = make_scenes(tmp_path / "scenes", per_class=12)
    args = train_args(data, tmp_path / "unused", 2, ema_decay=0.9, checkpoint_steps=2)
    args = args[:args.index("--output")] + args[args.index("--output") + 2:]
    # 27 training images in batches of 4: 6 steps an epoch; the first checkpoint is written at step 2. (Resuming at
    # an epoch's end is what the other tasks' kill-and-resume tests check.)
    weights = check_kill_and_resume(args, tmp_path, epochs=2, monitor="val/loss", steps_per_epoch=6)
    assert any(k.startswith("raw.") for k in weights)  # the EMA weights and the raw ones


def test_training_again_into_a_run_directory_needs_resume(tmp_path, capsys):
    data = make_scenes(tmp_path / "scenes", per_class=3)
    run = tmp_path / "run"
    assert main(train_args(data, run, epochs=1)) == 0
    assert main(train_args(data, run, epochs=1)) == 2
    assert "--resume" in capsys.readouterr().err


def test_demo_trains_evaluates_and_explains_on_the_shipped_scenes(tmp_path, capsys):
    from lemevit.demo import DEMO_DATA, run_demo

    assert len(list(DEMO_DATA.glob("*/*.jpg"))) == 30 * 12
    metrics = run_demo(tmp_path / "demo", epochs=1, img_size=32, progress=False)
    assert metrics["num_images"] == 60 and len(metrics["class_names"]) == 30
    for name in ("run/best.ckpt", "eval/metrics.json", "eval/confusion_matrix.png", "attention.png"):
        assert (tmp_path / "demo" / name).is_file(), name
    out = capsys.readouterr().out
    assert "fine-tuned from its AID pretraining (lemevit_tiny.aid150)" in out
    assert "chance 3.3%" in out and "img/s" in out and "from scratch, the same split reached 68.3%" in out


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_with_ema(tmp_path):
    data = make_scenes(tmp_path / "scenes", per_class=4)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lemevit.cli"] + train_args(data, run, epochs=1) + [
        "--accelerator", "cpu", "--devices", "2", "--ema-decay", "0.99"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and checkpoint["global_step"] > 0
    assert "current_model_state" in checkpoint  # trained with the EMA, which DDP accepts
    assert done.stdout.count("run written to") == 1


def test_explain_says_clearly_that_other_models_have_no_meta_tokens(tmp_path, capsys):
    data = make_scenes(tmp_path / "scenes", per_class=3)
    run = tmp_path / "run"
    args = train_args(data, run, epochs=1)
    args[args.index("lemevit_tiny")] = "resnet10t"
    assert main(args) == 0
    image = next((data / "Forest").iterdir())
    png = tmp_path / "a.png"
    assert main(["explain", "--checkpoint", str(run / "best.ckpt"), str(image), "--output", str(png)]) == 2
    assert "resnet10t has no meta tokens" in capsys.readouterr().err
    assert not png.exists()


@pytest.mark.slow
def test_a_timm_model_of_fixed_input_size_trains_and_predicts_at_the_size_asked(tmp_path):
    """A plain ViT's position table is built for --img-size (timm's default, 224 px, would refuse 32 px crops)."""
    data = make_scenes(tmp_path / "scenes", per_class=2)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--output", str(run), "--model", "deit_tiny_patch16_224",
                 "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]) == 0
    assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(data),
                 "--output", str(tmp_path / "eval")]) == 0
