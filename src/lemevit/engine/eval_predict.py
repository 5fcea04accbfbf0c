"""``eval`` and ``predict`` for every task: a run's checkpoint loaded safely, run on the devices asked for through
Lightning's test and predict loops (several devices share the items out; the results are gathered), and the
task's outputs written by the first process."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from lemevit.config.options import EvalOptions, PredictOptions
from lemevit.data.datamodule import Indexed
from lemevit.engine.run import RunDirectory
from lemevit.engine.trainer import build_inference_trainer, interruptible
from lemevit.errors import ConfigError, DataError
from lemevit.io.checkpoint import read_trained_model, trained_model_task
from lemevit.io.model_file import model_file_folder
from lemevit.io.paths import check_writable_folder
from lemevit.tasks.base import BaseTask
from lemevit.tasks.registry import check_data_layout, get_task

__all__ = ["evaluate", "evaluate_checkpoint", "load_task", "predict"]


def load_task(checkpoint: str | Path) -> BaseTask:
    """The task module of a run's checkpoint or of a model file, with its weights (the EMA ones when the run kept
    an EMA), in eval mode on the CPU. Nothing but tensors and plain values is read."""
    trained = read_trained_model(checkpoint)
    task = get_task(trained.task)
    # The weights come from the checkpoint itself, not from the file the run was initialised from.
    hparams = {**trained.hyper_parameters, "init_checkpoint": None}
    try:
        module = task(**hparams)
    except TypeError as e:
        raise DataError(f"{checkpoint}: a {task.name} model of another lemevit version ({e})") from None
    try:
        module.load_state_dict(trained.state_dict)
    except RuntimeError as e:
        raise DataError(f"{checkpoint}: its weights do not fit its own settings "
                        f"({str(e).splitlines()[0]})") from None
    return module.eval()


def _loader(module: BaseTask, dataset, batch_size: int, num_workers: int, collate) -> DataLoader:
    return DataLoader(dataset, batch_size=1 if module.batches_whole_images else batch_size, num_workers=num_workers,
                      collate_fn=collate)


def evaluate(options: EvalOptions, progress: bool = True) -> tuple[BaseTask, dict]:
    """Score ``options.checkpoint`` on its run's held-out items (``options.data`` None) or on ``options.data``;
    writes the task's ``metrics.json`` (and plots) into ``options.output``. Returns the task and the metrics."""
    module = load_task(options.checkpoint)
    module.configure_inference(options)
    module.use_runtime(options.runtime, options.checkpoint)
    split = None
    if options.data is None:
        if model_file_folder(options.checkpoint) is not None:
            raise ConfigError("data", f"is required: {options.checkpoint} is a model file, which holds no split of "
                                      "held-out items")
        run = RunDirectory(Path(options.checkpoint).parent)
        if not run.split_file.is_file():
            raise DataError(f"{run.split_file} is missing: give the data to evaluate on with --data")
        split = run.read_split(module.name)
        if split.meta != module.run_meta():
            raise DataError(f"{run.split_file} is not the split of {options.checkpoint}: their classes differ (was "
                            "another run written into this folder?)")
    else:
        check_data_layout(type(module), options.data)
    root, items = module.evaluation_items(Path(options.data) if options.data else None, split)
    output = check_writable_folder(options.output)
    loader = _loader(module, Indexed(module.evaluation_dataset(root, items)), options.batch_size,
                     options.num_workers, module.evaluation_collate)
    trainer = build_inference_trainer(options.accelerator, options.devices, options.num_nodes, options.precision,
                                      progress=progress)
    with interruptible(trainer):
        trainer.test(module, dataloaders=loader, verbose=False)
    metrics = {**module.test_metrics, "checkpoint": str(Path(options.checkpoint).resolve()), "data": str(root)}
    if trainer.is_global_zero:
        module.write_evaluation(metrics, output)
    return module, metrics


def evaluate_checkpoint(checkpoint: str | Path, output: str | Path, progress: bool = True, **options) -> dict:
    """:func:`evaluate` with the options of the checkpoint's task as keyword arguments (``data``, ``window``,
    ``devices``, ...); returns the metrics."""
    task = get_task(trained_model_task(checkpoint))
    return evaluate(task.eval_options(checkpoint=str(checkpoint), output=str(output), **options), progress)[1]


def predict(options: PredictOptions, progress: bool = True) -> list[str]:
    """Predict with ``options.checkpoint`` what its task predicts (top classes, class maps, change maps, boxes)
    into ``options.output``; returns the lines to print. Inputs and outputs are checked before any work."""
    module = load_task(options.checkpoint)
    module.configure_inference(options)
    module.use_runtime(options.runtime, options.checkpoint)
    module.show_progress = progress
    module.check_prediction(options)
    trainer = build_inference_trainer(options.accelerator, options.devices, options.num_nodes, options.precision,
                                      progress=progress)
    dataset = module.prediction_dataset(options)
    if len(dataset):
        loader = _loader(module, dataset, options.batch_size, 0 if module.batches_whole_images else options.num_workers,
                         module.prediction_collate)
        with interruptible(trainer):
            trainer.predict(module, dataloaders=loader, return_predictions=False)
    else:
        module.prediction_records = []
    return module.finish_prediction(module.prediction_records, options) if trainer.is_global_zero else []
