"""Running the dense models over whole images: the blended sliding window and whole-scene prediction."""
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
