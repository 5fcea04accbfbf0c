"""The tasks: scene recognition, semantic segmentation, change detection, oriented object detection and panoptic
segmentation, each a LightningModule registered with :mod:`lemevit.tasks.registry`."""
from lemevit.tasks import change, classification, detection, panoptic, segmentation  # noqa: F401  (register the tasks)
from lemevit.tasks.base import BaseTask
from lemevit.tasks.registry import get_task, register_task, task_names

__all__ = ["BaseTask", "get_task", "register_task", "task_names"]
