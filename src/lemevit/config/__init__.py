"""What a run is asked to do, below the tasks that read it: the run configuration and the options of ``eval`` and
``predict`` (one dataclass each, the YAML keys and the command line's flags), and how every run optimises (AdamW,
its parameter groups and the learning-rate schedules)."""
from lemevit.config.optimization import SCHEDULES, Optimization, build_optimizer, build_scheduler
from lemevit.config.options import EvalOptions, InferenceOptions, Options, PredictOptions, RunConfig, add_options

__all__ = ["SCHEDULES", "EvalOptions", "InferenceOptions", "Optimization", "Options", "PredictOptions", "RunConfig",
           "add_options", "build_optimizer", "build_scheduler"]
