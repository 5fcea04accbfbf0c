"""The LightningModule every task subclasses (in the manner of torchgeo's ``BaseTask``), and what a task
declares so that ``train``, ``eval``, ``predict`` and the command line work through it alone."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.utilities.apply_func import apply_to_collection
from torch.utils.data import Dataset

from lemevit.config.optimization import Optimization, ScheduleSteps, build_optimizer, build_scheduler
from lemevit.config.options import EvalOptions, InferenceOptions, PredictOptions, RunConfig
from lemevit.data.sampling import reseed, step_seed
from lemevit.data.splits import Split
from lemevit.data.statistics import Normalisation
from lemevit.errors import ConfigError, DataError
from lemevit.inference.onnx import NETWORK, OnnxGraph
from lemevit.io import atomic_path
from lemevit.io.checkpoint import TASK_KEY, backbone_state_dict, checkpoint_task, read_checkpoint
from lemevit.io.model_file import model_file_folder, read_model_file
from lemevit.labels import default_palette
from lemevit.models.pretrained import PRETRAINED, pretrained_state_dict
from lemevit.viz import save_confusion_png

__all__ = ["BaseTask", "NamedClasses", "initial_weights"]


def initial_weights(path: str | Path | None) -> str | dict[str, torch.Tensor] | None:
    """What ``init_checkpoint`` names, ready for :func:`lemevit.models.create_model`: a weights file as it is, the
    backbone of a lemevit run checkpoint or model file of any task, or pretrained weights by name
    (``lemevit_tiny.aid150``)."""
    if path is None:
        return None
    if str(path) in PRETRAINED:
        return pretrained_state_dict(str(path))
    if model_file_folder(path) is not None:
        return read_model_file(path).backbone_state_dict()
    path = Path(path)
    if path.suffix.lower() != ".ckpt":
        return str(path)
    from lemevit.tasks.registry import get_task

    content = read_checkpoint(path)
    task = checkpoint_task(content)
    return backbone_state_dict(content, get_task(task).backbone_prefix, f"{path} (a {task} run)")


class BaseTask(pl.LightningModule):
    """A task's LightningModule, with what all tasks share.

    - **Seeding**: the random state is re-seeded from (seed, step, rank) before every training step, so that a run
      resumed from an epoch boundary continues exactly as the uninterrupted run would have (the data's order
      and augmentation are seeded by (seed, epoch) in :class:`~lemevit.data.SeededDataModule`).
    - **Optimizer**: AdamW over ``self.model`` and its schedule, stepped per batch, from the ``optimization``
      hyperparameter (:mod:`lemevit.config.optimization`).
    - **Evaluation**: validation and test collect ``(index, record)`` pairs per item (``evaluation_records``),
      gather them from every process, drop the repeats a distributed sampler adds, and score them together
      (``summarize``): the metrics of a run on several devices are those of one process over all items.
    - **The checkpoint's task key**, which ``eval`` and ``predict`` dispatch on.

    A subclass declares, as class attributes, its ``name`` (the registry key and ``--task``), its ``config``
    (a :class:`~lemevit.config.options.RunConfig` subclass), its ``eval_options`` and ``predict_options``, the
    metric ``monitor`` that picks ``best.ckpt``, the ``logged_metrics`` of validation, ``backbone_prefix``
    (where its backbone's weights are in the state dict) and its ``data_layout`` with ``holds_data``; and
    implements the class methods ``prepare``
    (scan, split and check the data), ``training_images`` and ``from_config``, and the methods below.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    config: ClassVar[type[RunConfig]]
    eval_options: ClassVar[type[EvalOptions]] = EvalOptions
    predict_options: ClassVar[type[PredictOptions]] = PredictOptions
    monitor: ClassVar[str]
    logged_metrics: ClassVar[tuple[str, ...]]
    backbone_prefix: ClassVar[str]
    entry_type: ClassVar[type]
    #: How the task's data is laid out, as messages name it, and the test of a folder for it (``eval --data`` of
    #: another task's layout is refused naming both).
    data_layout: ClassVar[str]
    holds_data: ClassVar[Callable[[Path], bool]]
    #: The layout is loose enough that another task's data also passes ``holds_data`` (any folder of image
    #: folders is one of class folders): a folder is checked for the strict layouts first.
    loose_layout: ClassVar[bool] = False
    #: Evaluation and prediction take one whole image (tile, pair, scene) per batch, whose windows the task
    #: batches itself, rather than batches of images.
    batches_whole_images: ClassVar[bool] = False
    evaluation_collate: ClassVar[Any] = None
    prediction_collate: ClassVar[Any] = None
    #: DDP must look for parameters without a gradient (a LeMeViT backbone's meta-token branch after its last
    #: Dual Cross-Attention block does not reach the dense features).
    find_unused_parameters: ClassVar[bool] = False

    #: The network is a timm classifier: its model file loads with ``timm.create_model`` alone.
    network_is_timm_model: ClassVar[bool] = False

    model: torch.nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._records: list[tuple[int, Any]] = []
        #: The metrics of the last ``test`` (what ``eval`` writes).
        self.test_metrics: dict | None = None
        #: Items (or windows of a whole image) per forward pass at evaluation and prediction.
        self.inference_batch_size = 8
        #: Whether work inside a step (the windows of a scene) shows a progress bar.
        self.show_progress = True
        #: What runs the network in eval and predict instead of ``model`` (onnxruntime on its export), if anything.
        self.runtime_network: Callable[..., Any] | None = None

    # --- what a task declares ---------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: RunConfig, progress: bool = True) -> tuple[Split, list[dict]]:
        """Scan ``cfg.data``, split it as ``cfg`` says and check every item; returns the split and the items
        left out as bad (``{"path", "reason"}``, only where the task skips bad items)."""
        raise NotImplementedError

    @classmethod
    def data_root(cls, cfg: RunConfig, progress: bool = True) -> Path:
        """The folder the items of a run's split are found in: ``cfg.data``, unless the task derives the data it
        trains on from it (change detection stacks the OSCD release into the run)."""
        return Path(cfg.data)

    @classmethod
    def load_meta(cls, meta: dict, source: str) -> dict:
        """Check the ``meta`` a split file stores for this task (class names, a label scheme)."""
        return meta

    @classmethod
    def training_images(cls, split: Split) -> list[Path]:
        """The image files of the training items, for the band statistics."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg: RunConfig, split: Split, normalisation: Normalisation) -> BaseTask:
        raise NotImplementedError

    def datamodule(self, cfg: RunConfig, split: Split) -> pl.LightningDataModule:
        raise NotImplementedError

    def evaluation_dataset(self, root: Path, items: Sequence) -> Dataset:
        """The dataset validation and ``eval`` score (whole items, with their truth)."""
        raise NotImplementedError

    def run_meta(self) -> dict:
        """The ``meta`` of the split this module was trained on (what a run's split must match)."""
        return {}

    def evaluation_items(self, data: Path | None, split: Split | None) -> tuple[Path, list]:
        """What ``eval`` scores: the run's own held-out items (``data`` None), or those of ``data``."""
        raise NotImplementedError

    def configure_inference(self, options: InferenceOptions) -> None:
        """Take the options of ``eval`` or ``predict`` that change how the model is run (window, stride)."""
        self.inference_batch_size = options.batch_size

    def evaluation_records(self, batch: Any) -> list[tuple[int, Any]]:
        raise NotImplementedError

    def summarize(self, records: list[Any]) -> dict:
        """The metrics of the records of every item, in index order."""
        raise NotImplementedError

    def confusion_title(self, metrics: dict) -> str | None:
        """The title of the confusion matrix picture ``eval`` draws (None: the task draws none)."""
        return None

    def write_evaluation(self, metrics: dict, output: Path) -> list[Path]:
        """Write ``metrics.json`` and, for tasks with a confusion matrix, ``confusion_matrix.png`` into ``output``;
        returns the files written."""
        written = [output / "metrics.json"]
        with atomic_path(written[0]) as tmp:
            tmp.write_text(json.dumps(metrics, indent=1))
        title = self.confusion_title(metrics)
        if title is not None:
            written.append(output / "confusion_matrix.png")
            save_confusion_png(metrics["confusion_matrix"], metrics["class_names"], written[1], title)
        return written

    def describe(self, metrics: dict) -> str:
        """One line of the scores, for the command line."""
        raise NotImplementedError

    def prediction_dataset(self, options: PredictOptions) -> Dataset:
        """What ``predict`` reads, item by item (after its outputs were checked)."""
        raise NotImplementedError

    def check_prediction(self, options: PredictOptions) -> None:
        """Refuse, before any work, options and outputs that ``predict`` cannot honour."""

    @classmethod
    def interrupted_prediction(cls, output: Path) -> str:
        """What a ``predict`` into ``output`` stopped by Ctrl-C has left there, and how to finish it."""
        return f"nothing was written to {output}; run the same command again"

    def finish_prediction(self, records: list[Any], options: PredictOptions) -> list[str]:
        """Write what gathers every item's prediction (a CSV, DOTA Task-1 files); returns lines to print."""
        raise NotImplementedError

    def label_names(self) -> list[str]:
        """The names of the classes the network outputs, in order (what a model file records)."""
        raise NotImplementedError

    def label_colours(self) -> list[tuple[int, int, int]]:
        """An RGB colour per class of :meth:`label_names` (those of the data's palette where it has one)."""
        return list(default_palette(len(self.label_names())))

    def onnx_graph(self) -> OnnxGraph:
        """The network as it is exported to ONNX: its inputs and outputs, named, at the training size."""
        raise ConfigError("format", f"ONNX export of {self.name} models is not available")

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """The graphs of the export by part name: the network alone, unless part of the model stays in Python
        between two graphs (a detector's proposals)."""
        return {NETWORK: self.onnx_graph()}

    def class_probabilities(self) -> tuple[torch.nn.Module, list[str]]:
        """A network from normalised images ``(B, C, H, W)`` to per-pixel class probabilities ``(B, K, H, W)``, and
        the names of its K classes: what a class-map export (QGIS's Deepness) runs."""
        raise ConfigError("format", f"{self.name} models give no per-pixel class probabilities")

    def network_on_runtime(self, networks: dict[str, torch.nn.Module]) -> Any:
        """What runs in place of ``model`` given a network per part of :meth:`onnx_graphs` on another runtime."""
        return networks[NETWORK]

    # --- shared behaviour -------------------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> Any:
        return (self.model if self.runtime_network is None else self.runtime_network)(*inputs)

    def use_runtime(self, runtime: str, checkpoint: str | Path) -> None:
        """Run the network of ``eval`` and ``predict`` on ``runtime``: ``torch``, or ``onnxruntime`` on the ONNX
        export of ``checkpoint`` (exported and cached beside it on first use), or ``onnxruntime-int8`` on its dynamic
        int8 quantization."""
        if runtime == "torch":
            self.runtime_network = None
            return
        from lemevit.inference.runtime import onnx_networks

        try:
            graphs = self.onnx_graphs()
        except ConfigError as e:
            raise ConfigError("runtime", f"onnxruntime: {e.message}") from None
        self.runtime_network = self.network_on_runtime(onnx_networks(checkpoint, graphs,
                                                                     int8=runtime == "onnxruntime-int8"))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Pixels of no data (NaN or infinite values, which a float image declaring nodata=nan holds) are fed as the
        # band means, as padding is: 0 in the normalised images, the (B, C, H, W) float tensors of every batch.
        def fill(x: torch.Tensor) -> torch.Tensor:
            return torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0) if x.is_floating_point() and x.ndim == 4 \
                else x

        return apply_to_collection(batch, torch.Tensor, fill)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        reseed(step_seed(self.hparams.seed, self.global_step, self.global_rank))

    def configure_optimizers(self) -> dict:
        opt = Optimization.from_dict(self.hparams.optimization)
        trainer, datamodule = self.trainer, self.trainer.datamodule
        world = trainer.world_size
        optimizer = build_optimizer(self.model, opt, datamodule.batch_size * world)
        # From the data module rather than trainer.estimated_stepping_batches, which builds the training loader
        # before a resumed run's progress is restored (and the loader then misses where the run stopped).
        per_epoch = max(1, datamodule.steps_per_epoch(world))
        if trainer.max_steps > 0:
            steps = ScheduleSteps.of(opt, trainer.max_steps, 1)
        else:
            steps = ScheduleSteps.of(opt, trainer.max_epochs * per_epoch, per_epoch)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": build_scheduler(optimizer, opt, steps), "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm's schedulers are set from the number of updates done, which also makes a resumed run's rate exact.
        scheduler.step_update(self.global_step)

    def log_loss(self, loss: torch.Tensor, batch_size: int, parts: dict[str, torch.Tensor] | None = None) -> None:
        for name, value in (parts or {}).items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[TASK_KEY] = self.name

    def gather_records(self, records: list[tuple[int, Any]]) -> list[Any]:
        """The records of every process, each item once, in index order."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, records)
            records = [r for part in everyone for r in part]
        return [record for _, record in sorted(dict(records).items())]

    def _finish(self, stage: str) -> dict:
        metrics = self.summarize(self.gather_records(self._records))
        self._records = []
        for i, key in enumerate(self.logged_metrics):
            # Every process computed the same value from the same records. An undefined score (nothing changed,
            # nothing predicted) is logged as 0 so that choosing best.ckpt on it keeps working.
            value = metrics.get(key)
            self.log(f"{stage}/{key}", 0.0 if value is None or value != value else float(value), prog_bar=i == 0,
                     sync_dist=False)
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._records = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._records.extend(self.evaluation_records(batch))

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_start(self) -> None:
        self._records = []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._records.extend(self.evaluation_records(batch))

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._finish("test")

    def on_test_start(self) -> None:
        self.use_device_memory_format()

    def on_predict_start(self) -> None:
        self.use_device_memory_format()

    def use_device_memory_format(self) -> None:
        """On CUDA, eval and predict run the network channels-last (the layout convolutions are fastest in on tensor
        cores; a convolution given channels-last weights works in it whatever its input's layout). On the CPU, the
        layout stays as trained."""
        if self.device.type == "cuda" and self.runtime_network is None:
            self.model.to(memory_format=torch.channels_last)

    def on_predict_epoch_start(self) -> None:
        self._records = []

    def on_predict_epoch_end(self) -> None:
        self.prediction_records = self.gather_records(self._records)
        self._records = []

    def check_input(self, path: Path | str, bands: int, dtype: str | None = None) -> None:
        """Refuse an input whose band count, or data type, differs from the training images': its values would be
        normalised on the wrong scale (a uint16 copy of a uint8 scene, say)."""
        if bands != self.hparams.in_chans:
            raise DataError(f"{path} has {bands} band(s), the model expects {self.hparams.in_chans}")
        trained = self.hparams.get("input_dtype")
        if dtype is not None and trained is not None and dtype != trained:
            raise DataError(f"{path} holds {dtype} values, the model was trained on {trained} images: its values "
                            f"would be normalised on the wrong scale; convert it to {trained} first")


class NamedClasses:
    """For tasks whose labels are a list of class names (``hparams.class_names``, kept in the split's meta)."""

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)])

    @classmethod
    def load_meta(cls, meta: dict, source: str) -> dict:
        names = meta.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DataError(f"{source}: \"meta\" must hold the class_names")
        return meta

    def run_meta(self) -> dict:
        return {"class_names": self.class_names}

    def label_names(self) -> list[str]:
        return self.class_names
