"""DOTA mAP on a hand-made set whose value is worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from lemevit.metrics import average_precision, detection_map


def square(x: float, y: float, side: float = 10) -> list[list[float]]:
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side]]


def test_map_of_a_hand_made_prediction_set():
    names = ["plane", "ship", "harbor"]
    truths = [
        {"quads": np.array([square(0, 0), square(50, 50)]), "labels": np.array([0, 0]),
         "difficult": np.array([False, True])},
        {"quads": np.array([square(0, 0), square(30, 30)]), "labels": np.array([0, 1]),
         "difficult": np.array([False, False])},
    ]
    detections = [
        # image 0: a hit (0.9), a hit on the difficult plane (0.8, ignored), a duplicate of the first (0.5)
        {"quads": np.array([square(1, 0), square(50, 51), square(0, 1)]), "scores": np.array([0.9, 0.8, 0.5]),
         "labels": np.array([0, 0, 0])},
        # image 1: a miss (0.7), a hit (0.6), a harbor where there is none (no harbor objects: not averaged)
        {"quads": np.array([square(80, 80), square(0, 0), square(5, 5)]), "scores": np.array([0.7, 0.6, 0.4]),
         "labels": np.array([0, 0, 2])},
    ]
    metrics = detection_map(detections, truths, names)
    # plane, ranked without the ignored one: TP FP TP FP over 2 counted objects ->
    # recall .5 .5 1 1, precision 1 .5 .667 .5; 11-point AP = (6 * 1 + 5 * 2/3) / 11.
    plane = (6 + 5 * 2 / 3) / 11
    assert metrics["per_class"]["plane"]["ap"] == pytest.approx(plane)
    assert metrics["per_class"]["plane"]["num_gt"] == 2
    assert metrics["per_class"]["ship"]["ap"] == 0.0  # an object, no detection
    assert metrics["per_class"]["harbor"]["ap"] is None
    assert metrics["map50"] == pytest.approx(plane / 2)
    # The area under the interpolated curve: 0.5 * 1 + 0.5 * 2/3.
    area = detection_map(detections, truths, names, eleven_point=False)
    assert area["per_class"]["plane"]["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_iou_threshold_is_strict_about_poor_overlap():
    truths = [{"quads": np.array([square(0, 0)]), "labels": np.array([0]), "difficult": np.array([False])}]
    # IoU of two 10x10 squares shifted by 4: 60 / 140 = 0.43 < 0.5 -> a miss.
    detections = [{"quads": np.array([square(4, 0)]), "scores": np.array([0.9]), "labels": np.array([0])}]
    assert detection_map(detections, truths, ["plane"])["map50"] == 0.0
    assert detection_map(detections, truths, ["plane"], iou_threshold=0.4)["map50"] == pytest.approx(1.0)


def test_average_precision_of_a_perfect_ranking_is_one():
    assert average_precision(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
