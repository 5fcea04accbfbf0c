"""Running the tasks, above them: the Trainer, the run skeleton (``train``), and ``evaluate`` and ``predict`` of
checkpoints (``eval_predict``), on one CPU, a GPU or many through Lightning. The configurations they take live in
:mod:`lemevit.config` and are re-exported here with the checkpoint facts a caller of ``train`` asks for."""
from lemevit.config.options import EvalOptions, PredictOptions, RunConfig
from lemevit.engine.eval_predict import evaluate, evaluate_checkpoint, load_task, predict
from lemevit.engine.run import RunDirectory, train
from lemevit.io.checkpoint import read_checkpoint, training_minutes

__all__ = ["EvalOptions", "PredictOptions", "RunConfig", "RunDirectory", "evaluate", "evaluate_checkpoint",
           "load_task", "predict", "read_checkpoint", "train", "training_minutes"]
