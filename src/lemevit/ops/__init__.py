"""Operators in plain PyTorch (no compiled extensions): oriented-box geometry, rotated IoU, NMS, RoI Align; the
export forms of what a traced graph would fix to the export size."""
from lemevit.ops.export import fold, is_exporting
from lemevit.ops.rotated import (
    box_to_hbox,
    box_to_quad,
    convex_quad_iou,
    normalize_boxes,
    quad_to_box,
    rotated_batched_nms,
    rotated_box_iou,
    rotated_multiclass_nms,
    rotated_nms,
    rotated_roi_align,
)

__all__ = [
    "box_to_hbox", "box_to_quad", "convex_quad_iou", "fold", "is_exporting", "normalize_boxes", "quad_to_box",
    "rotated_batched_nms", "rotated_box_iou", "rotated_multiclass_nms", "rotated_nms", "rotated_roi_align",
]
