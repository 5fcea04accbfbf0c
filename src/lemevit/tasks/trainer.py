"""The Lightning Trainer every task runs on: run directory, checkpoints, logs, devices and precision."""
from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lemevit.io import atomic_path

__all__ = ["TASK_KEY", "AtomicCheckpointIO", "ContinuedCSVLogger", "RunConfig", "build_trainer", "checkpoint_task",
           "check_run_dir", "resolve_precision", "training_minutes"]

#: Key naming the task in a checkpoint (absent in classification ones), so that ``lemevit eval`` and ``predict``
#: know what they load.
TASK_KEY = "lemevit_task"


def _read_checkpoint(checkpoint: str | Path) -> Any:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    try:
        return torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise ValueError(f"cannot read checkpoint {checkpoint}: {e}") from e


def checkpoint_task(checkpoint: str | Path) -> str:
    """Which kind of run wrote ``checkpoint``: ``"classification"``, ``"segmentation"``, ``"change"`` or
    ``"detection"``."""
    content = _read_checkpoint(checkpoint)
    return content.get(TASK_KEY, "classification") if isinstance(content, dict) else "classification"


def training_minutes(checkpoint: str | Path) -> float:
    """Wall-clock minutes the run spent training (its validations included) up to ``checkpoint``, summed
    over every process that resumed it."""
    content = _read_checkpoint(checkpoint)
    try:
        return content["callbacks"]["Timer"]["time_elapsed"]["train"] / 60
    except (KeyError, TypeError):
        raise ValueError(f"checkpoint {checkpoint} records no training time (written before lemevit kept it)") from None


def check_run_dir(run: Path, resume: bool) -> Path:
    """``run/last.ckpt``, which must exist to resume and must not to start: a new run never overwrites one."""
    last = run / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no {last} to resume from")
    if not resume and last.is_file():
        raise FileExistsError(f"{run} already holds a run; pass --resume to continue it or choose another --output")
    return last


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed over the old one: a run killed while
    saving keeps its previous ``last.ckpt`` intact."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class _ContinuedCSVWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning's writer deletes an existing metrics.csv here; this one reads its header and appends.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def _rows(self) -> list[dict]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            return list(csv.DictReader(file))

    def _write(self, rows: list[dict], fieldnames: list[str]) -> None:
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning truncates the file and writes it again when a column appears (every epoch's first
        # validation metrics do): a run killed meanwhile was left with an empty log.
        self._write(self._rows(), fieldnames)

    def drop_steps_from(self, step: int) -> None:
        """Forget the rows of ``step`` and later, which a resumed run trains and logs again."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        rows = self._rows()
        kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
        if len(kept) < len(rows):
            self._write(kept, self.metrics_keys)


class ContinuedCSVLogger(CSVLogger):
    """``CSVLogger`` that a resumed run continues: ``metrics.csv`` keeps the epochs logged before the
    interruption (Lightning's own logger deletes the file when a run starts), and is replaced atomically
    when a column is added."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuedCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedCSVWriter(log_dir=self.log_dir)
        return self._experiment


class _ResumableLog(pl.Callback):
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run killed mid-epoch has logged steps past its checkpoint, which the resumed run repeats.
        if trainer.ckpt_path is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, ContinuedCSVLogger):
                logger.experiment.drop_steps_from(trainer.global_step)


def resolve_precision(precision: str, accelerator: str) -> str:
    """Map fp32/bf16/fp16 to Lightning's names, refusing what the device cannot do."""
    names = {"fp32": "32-true", "32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed", "16": "16-mixed"}
    if precision not in names:
        raise ValueError(f"--precision must be one of fp32, bf16, fp16; got {precision!r}")
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if precision in ("fp16", "16") and not on_gpu:
        raise ValueError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    if precision == "bf16" and on_gpu and not torch.cuda.is_bf16_supported():
        raise ValueError("--precision bf16 is not supported by this GPU; use fp16 or fp32")
    return names[precision]


def build_trainer(run_dir: str | Path, monitor: str, max_epochs: int, accelerator: str = "auto",
                  devices: int | str = "auto", num_nodes: int = 1, precision: str = "fp32",
                  gradient_clip: float | None = None, progress: bool = True, find_unused_parameters: bool = False,
                  **kwargs) -> pl.Trainer:
    """A Trainer writing ``best.ckpt`` (best ``monitor``), ``last.ckpt`` (every epoch), CSV and TensorBoard
    logs into ``run_dir``. DDP is used when more than one device or node is asked for (also under
    torchrun, whose environment Lightning reads); ``find_unused_parameters`` is for models some of whose
    parameters get no gradient (a LeMeViT backbone's meta-token branch after its last Dual Cross-Attention
    block does not reach the dense features)."""
    run_dir = Path(run_dir)
    checkpoints = ModelCheckpoint(dirpath=run_dir, filename="best", monitor=monitor, mode="max", save_top_k=1,
                                  save_last=True, enable_version_counter=False, auto_insert_metric_name=False)
    multi = num_nodes > 1 or (isinstance(devices, int) and devices > 1) or int(os.environ.get("WORLD_SIZE", 1)) > 1
    return pl.Trainer(
        default_root_dir=run_dir,
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=("ddp_find_unused_parameters_true" if find_unused_parameters else "ddp") if multi else "auto",
        precision=resolve_precision(precision, accelerator),
        gradient_clip_val=gradient_clip,
        # Timer's elapsed time is saved in each checkpoint and carried on by a resume (training_minutes).
        callbacks=[checkpoints, LearningRateMonitor(logging_interval="step"), Timer(), _ResumableLog()],
        logger=[ContinuedCSVLogger(run_dir, name="logs", version=""),
                TensorBoardLogger(run_dir, name="logs", version="")],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        # The training loader is rebuilt every epoch so that its shuffle is seeded by the epoch, which makes a
        # resumed run see the same batches as an uninterrupted one.
        reload_dataloaders_every_n_epochs=1,
        log_every_n_steps=1,
        **kwargs,
    )


@dataclass(kw_only=True)
class RunConfig:
    """What a run of any task depends on: data, output, model, schedule and devices. Each task's config adds
    its own fields and gives its own defaults to those left without one here; the run saves it as
    ``RUN_DIR/config.yaml``, from which ``--resume`` reads it back."""

    data: str
    output: str
    model: str = "lemevit_tiny"
    img_size: int
    epochs: int
    batch_size: int
    split: float = 0.8
    seed: int = 0
    lr: float
    weight_decay: float
    warmup_epochs: float = 1.0
    drop_path_rate: float
    gradient_clip: float | None
    precision: str = "fp32"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    num_workers: int = 2
    init_checkpoint: str | None = None

    def __post_init__(self):
        if not 0.0 < self.split <= 1.0:
            raise ValueError(f"--split is the fraction of the data used for training, in (0, 1] (1.0: validate on "
                             f"the training data); got {self.split!r}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> RunConfig:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from e
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"config {path}: unknown keys {unknown}; known keys: {sorted(known)}")
        return cls(**{**values, **overrides})

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))

    def trainer(self, monitor: str, progress: bool = True, **kwargs) -> pl.Trainer:
        """The run's :func:`build_trainer`, writing into ``output`` and keeping the best ``monitor``."""
        return build_trainer(self.output, monitor, max_epochs=self.epochs, accelerator=self.accelerator,
                             devices=self.devices, num_nodes=self.num_nodes, precision=self.precision,
                             gradient_clip=self.gradient_clip, progress=progress, **kwargs)
