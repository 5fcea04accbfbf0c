"""Scores of every task, computed from what the models predict over a whole evaluation set."""
from lemevit.metrics.classification import classification_metrics
from lemevit.metrics.confusion import CHANGE_CLASS_NAMES, change_metrics, confusion_matrix, segmentation_metrics
from lemevit.metrics.detection import average_precision, detection_map
from lemevit.metrics.panoptic import PanopticStats, panoptic_metrics

__all__ = ["CHANGE_CLASS_NAMES", "PanopticStats", "average_precision", "change_metrics", "classification_metrics",
           "confusion_matrix", "detection_map", "panoptic_metrics", "segmentation_metrics"]
