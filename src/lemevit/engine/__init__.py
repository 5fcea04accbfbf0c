"""Running the tasks: configs and their options, the Trainer, the run skeleton (``train``), and ``evaluate`` and
``predict`` of checkpoints, on one CPU, a GPU or many through Lightning."""
from lemevit.engine.checkpoint import read_checkpoint, training_minutes
from lemevit.engine.config import EvalOptions, PredictOptions, RunConfig
from lemevit.engine.inference import evaluate, evaluate_checkpoint, load_task, predict
from lemevit.engine.run import RunDirectory, train

__all__ = ["EvalOptions", "PredictOptions", "RunConfig", "RunDirectory", "evaluate", "evaluate_checkpoint",
           "load_task", "predict", "read_checkpoint", "train", "training_minutes"]
