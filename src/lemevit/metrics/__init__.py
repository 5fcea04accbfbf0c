"""Scores of every task, computed from what the models predict over a whole evaluation set."""
from lemevit.metrics.classification import classification_metrics
from lemevit.metrics.confusion import CHANGE_CLASS_NAMES, change_metrics, confusion_matrix, segmentation_metrics
from lemevit.metrics.detection import average_precision, detection_map

__all__ = ["CHANGE_CLASS_NAMES", "average_precision", "change_metrics", "classification_metrics", "confusion_matrix",
           "detection_map", "segmentation_metrics"]
