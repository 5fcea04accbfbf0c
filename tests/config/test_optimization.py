"""The optimiser and its schedules: the learning rate a run sees at each step, scaled by the global batch, per
module, and the weight decay of each parameter."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from sample_data import make_scenes
from torch import nn

from lemevit.config.optimization import Optimization, ScheduleSteps, build_optimizer, build_scheduler
from lemevit.errors import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.decoder = nn.Linear(4, 2)
        self.tokens = nn.Parameter(torch.zeros(3, 4))


def rates(opt: Optimization, total: int, steps_per_unit: float = 1, global_batch: int = 1, group: int = 0):
    optimizer = build_optimizer(Net(), opt, global_batch)
    scheduler = build_scheduler(optimizer, opt, ScheduleSteps.of(opt, total, steps_per_unit))
    out = []
    for step in range(total):
        scheduler.step_update(step)
        out.append(optimizer.param_groups[group]["lr"])
    return out


def test_cosine_warms_up_from_its_factor_decays_to_the_minimum_and_holds_it_in_the_cooldown():
    opt = Optimization(lr=1e-3, warmup_epochs=1, warmup_lr_factor=0.002, min_lr_factor=0.01, cooldown_epochs=2)
    lr = rates(opt, total=100, steps_per_unit=10)
    # timm's convention: the warm-up is inside the cosine's span, which ends where the cooldown begins.
    assert lr[0] == pytest.approx(2e-6)
    assert lr[9] < lr[10] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 10 / 80)))
    assert all(a >= b for a, b in zip(lr[10:79], lr[11:80], strict=True))
    assert lr[80:] == pytest.approx([1e-5] * 20)


def test_poly_of_power_one_is_a_linear_decay():
    lr = rates(Optimization(lr=1.0, schedule="poly", warmup_epochs=0, min_lr_factor=0.0), total=10)
    assert lr == pytest.approx([1 - t / 10 for t in range(10)])


def test_multistep_drops_at_each_milestone_step():
    opt = Optimization(lr=1.0, schedule="multistep", warmup_epochs=0, milestones=(8, 11), decay_rate=0.1)
    lr = rates(opt, total=12 * 5, steps_per_unit=5)
    assert lr[39] == 1.0 and lr[40] == pytest.approx(0.1) and lr[54] == pytest.approx(0.1)
    assert lr[55] == pytest.approx(0.01)


def test_warmup_in_iterations_and_the_linear_scaling_rule():
    opt = Optimization(lr=5e-4, lr_batch=512, schedule="constant", warmup_iterations=4, warmup_lr_factor=0.0)
    lr = rates(opt, total=10, steps_per_unit=100, global_batch=128)
    assert lr[4:] == pytest.approx([1.25e-4] * 6) and lr[0] == 0 and lr[2] == pytest.approx(1.25e-4 / 2)


def test_module_multipliers_and_weight_decay_groups():
    opt = Optimization(lr=1e-3, weight_decay=0.05, lr_multipliers={"decoder": 10.0}, no_weight_decay=("encoder.0",))
    optimizer = build_optimizer(Net(), opt, 1)
    by_size = {sum(p.numel() for p in g["params"]): (g["lr_scale"], g["weight_decay"]) for g in optimizer.param_groups}
    # decoder weight (8) decays at x10, its bias (2) does not; the encoder's Linear is listed without decay;
    # the tokens (12, a 2-d parameter not listed) decay.
    assert by_size[8] == (10.0, 0.05) and by_size[2] == (10.0, 0.0) and by_size[12] == (1.0, 0.05)
    assert by_size[4 * 4 + 4 + 4 + 4] == (1.0, 0.0)
    with pytest.raises(ConfigError, match=r"lr_multipliers: no parameters under \['head'\].*\['decoder', "):
        build_optimizer(Net(), Optimization(lr_multipliers={"head": 10.0}), 1)


def _logged_rates(run) -> list[float]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return [float(row["lr"]) for row in csv.DictReader(f) if row.get("lr")]


def test_an_iteration_budget_and_a_schedule_through_lemevit_train(tmp_path):
    from lemevit.cli import main
    from lemevit.io.checkpoint import read_checkpoint

    data = make_scenes(tmp_path / "scenes")
    run = tmp_path / "run"
    # 12 training images in batches of 4: 3 steps an epoch, so 7 steps end within the third epoch.
    assert main(["train", "--data", str(data), "--output", str(run), "--img-size", "32", "--batch-size", "4",
                 "--split", "0.67", "--num-workers", "0", "--iterations", "7", "--schedule", "poly", "--lr", "0.7",
                 "--warmup-iterations", "0", "--min-lr-factor", "0", "--lr-batch", "8"]) == 0
    assert read_checkpoint(run / "last.ckpt")["global_step"] == 7
    # The budget ends within an epoch, and the run still validates there: after each of the two whole epochs
    # and at the last step.
    with open(run / "logs" / "metrics.csv", newline="") as f:
        validated = [int(row["step"]) for row in csv.DictReader(f) if row.get("val/top1")]
    assert validated == [2, 5, 6]
    # The linear rule halves 0.7 (batch 4 for 8), and poly of power 1 decays it linearly over the 7 steps.
    assert _logged_rates(run)[:7] == pytest.approx([0.35 * (1 - t / 7) for t in range(7)])


@pytest.mark.parametrize("argv, message", [
    (["--lr-multipliers", "decoder=fast"], "--lr-multipliers: expected KEY=VALUE with a float value"),
    (["--schedule", "multistep"], "--milestones: are needed by the multistep schedule"),
    (["--milestones", "8", "3"], "--milestones: must be positive and increasing"),
])
def test_bad_schedule_options_are_one_line(tmp_path, capsys, argv, message):
    from lemevit.cli import main

    data = make_scenes(tmp_path / "scenes")
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_checkpoints_of_runs_before_the_optimization_mapping_still_load():
    from lemevit.io.checkpoint import current_hyper_parameters
    from lemevit.tasks.classification import ClassificationTask

    saved = {"model": "lemevit_tiny", "num_classes": 3, "img_size": 32, "lr": 2e-3, "weight_decay": 0.05,
             "warmup_epochs": 3, "min_lr_factor": 0.01}
    hparams = current_hyper_parameters(saved)
    assert hparams["optimization"] == {"lr": 2e-3, "weight_decay": 0.05, "warmup_epochs": 3, "min_lr_factor": 0.01}
    assert Optimization.from_dict(ClassificationTask(**hparams).hparams.optimization).lr == 2e-3
