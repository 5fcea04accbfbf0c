"""Running the models over whole images: the blended sliding window and its window geometry, whole-scene
prediction of the dense tasks, panoptic windows merged across their borders, detection window by window, and the
runtimes (eager PyTorch, ONNX graphs checked against it and run by onnxruntime, int8)."""
from lemevit.inference.scene import ScenePrediction, predict_scene, preview_path
from lemevit.inference.sliding_window import (
    blend_weight,
    blended_strips,
    default_stride,
    sliding_window_confusion,
    sliding_window_probs,
    softmax_predictor,
    window_starts,
)

__all__ = ["ScenePrediction", "blend_weight", "blended_strips", "default_stride", "predict_scene", "preview_path",
           "sliding_window_confusion", "sliding_window_probs", "softmax_predictor", "window_starts"]
