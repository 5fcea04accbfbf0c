"""Scores of every task on hand-made cases."""
from __future__ import annotations

import pytest
import torch

from lemevit.labels import IGNORE_INDEX
from lemevit.metrics import change_metrics, classification_metrics, confusion_matrix, segmentation_metrics
from lemevit.metrics.confusion import best_change_threshold, change_histogram

CLASSES = ("Farmland", "Forest", "Port")


def test_classification_metrics_on_a_hand_made_case():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([0, 1, 1, 2])
    m = classification_metrics(probs, labels, list(CLASSES))
    assert m["top1"] == pytest.approx(0.75)
    assert m["top5"] == pytest.approx(1.0)
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["Farmland"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["Forest"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})


def test_segmentation_metrics_on_a_hand_made_case_with_ignored_pixels():
    target = torch.tensor([[0, 0, 1, 1],
                           [2, 2, IGNORE_INDEX, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [2, 0, 2, 0]])  # the ignored pixels' predictions must not count
    confusion = confusion_matrix(pred, target, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = segmentation_metrics(confusion, ["a", "b", "c", "d"])
    assert m["oa"] == pytest.approx(4 / 6) and m["num_pixels"] == 6
    # a: tp 1, fp 1, fn 1 -> IoU 1/3, F1 1/2; b: tp 2, fp 1 -> IoU 2/3, F1 4/5; c: tp 1, fn 1 -> IoU 1/2, F1 2/3
    assert m["per_class"]["a"] == pytest.approx({"iou": 1 / 3, "f1": 1 / 2, "precision": 1 / 2, "recall": 1 / 2,
                                                 "support": 2})
    assert m["per_class"]["b"]["iou"] == pytest.approx(2 / 3) and m["per_class"]["b"]["f1"] == pytest.approx(4 / 5)
    assert m["per_class"]["c"]["iou"] == pytest.approx(1 / 2) and m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["per_class"]["d"]["iou"] is None  # neither present nor predicted: left out of the means
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["mf1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_change_metrics_on_a_hand_computed_case():
    target = torch.tensor([[1, 1, 0, 0, 255], [1, 0, 0, 0, 255]])
    pred = torch.tensor([[1, 0, 1, 0, 1], [1, 0, 0, 0, 0]])
    m = change_metrics(confusion_matrix(pred, target, 2))
    # tp 2, fn 1 (top row, 2nd), fp 1 (top row, 3rd), tn 4; the last column is not labelled
    assert m["confusion_matrix"] == [[4, 1], [1, 2]]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["iou"] == pytest.approx(2 / 4)
    assert m["oa"] == pytest.approx(6 / 8) and m["num_pixels"] == 8 and m["changed_pixels"] == 3

    nothing = change_metrics(confusion_matrix(torch.zeros(3, 3), torch.zeros(3, 3, dtype=torch.long), 2))
    assert nothing["f1"] is None and nothing["iou"] is None and nothing["oa"] == 1.0


def test_the_best_change_threshold_from_binned_probabilities():
    probability = torch.tensor([[0.9, 0.6, 0.3, 0.99], [0.2, 0.1, 0.05, 0.7]])
    target = torch.tensor([[1, 1, 1, 255], [0, 0, 0, 0]])
    histogram = change_histogram(probability, target)
    assert histogram.sum() == 7 and histogram[1].sum() == 3
    # From 0.21 up to 0.3 the three changes are found and only the 0.7 is a false alarm: F1 6 / 7. Above 0.3 one
    # change is missed (F1 4 / 6 up to 0.6); above 0.7 the false alarm goes, with a second change (F1 2 / 3).
    threshold, f1 = best_change_threshold(histogram)
    assert threshold == 0.21 and f1 == pytest.approx(6 / 7)
    at = confusion_matrix((probability >= threshold).long(), target, 2)
    assert change_metrics(at)["f1"] == pytest.approx(f1)
    assert best_change_threshold(change_histogram(probability, torch.zeros(2, 4, dtype=torch.long))) == (None, None)
