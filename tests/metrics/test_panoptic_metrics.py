"""Panoptic quality on a hand-made case worked out by hand, and against torchmetrics' PanopticQuality."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lemevit.labels import VOID
from lemevit.metrics.panoptic import PanopticStats, panoptic_metrics

NAMES = ["building", "car", "road", "water"]
THINGS = ["building", "car"]


def row(*runs: tuple[int, int]) -> np.ndarray:
    """A one-row map from (segment id, length) runs."""
    return np.concatenate([np.full(n, i) for i, n in runs])[None]


def test_pq_of_a_hand_made_case():
    # ground truth: building 1 (10 px), car 2 (4), road 3 (4), void (2)
    truth = row((1, 10), (2, 4), (3, 4), (VOID, 2))
    # prediction: building 10 on 8 px of the building and 1 void px; car 11 on 2 px of building and 2 of the car;
    # road 12 on the car's last 2 px and the road; car 13 on a void px only
    pred = row((10, 8), (11, 4), (12, 6), (10, 1), (13, 1))
    stats = PanopticStats(len(NAMES))
    stats.update(pred, {10: 0, 11: 1, 12: 2, 13: 1}, truth, {1: 0, 2: 1, 3: 2})
    m = panoptic_metrics(stats, NAMES, THINGS)
    # building: 8 / (9 + 10 - 8 - 1 void px) = 0.8, a match; car 11: 2 / (4 + 4 - 2) = 1/3, a false positive and
    # the car a false negative; road: 4 / (6 + 4 - 4) = 2/3, a match; car 13 lies on void: not a false positive
    assert m["per_class"]["building"] == pytest.approx({"pq": 0.8, "sq": 0.8, "rq": 1.0, "tp": 1, "fp": 0, "fn": 0,
                                                        "isthing": True})
    assert m["per_class"]["car"] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1,
                                                   "isthing": True})
    assert m["per_class"]["road"]["pq"] == pytest.approx(2 / 3) and not m["per_class"]["road"]["isthing"]
    assert m["per_class"]["water"]["pq"] is None  # neither present nor predicted: not averaged
    assert m["pq"] == pytest.approx((0.8 + 0 + 2 / 3) / 3) and m["num_classes"] == 3
    assert m["sq"] == pytest.approx((0.8 + 0 + 2 / 3) / 3) and m["rq"] == pytest.approx(2 / 3)
    assert m["things"] == pytest.approx({"pq": 0.4, "sq": 0.4, "rq": 0.5, "num_classes": 2})
    assert m["stuff"] == pytest.approx({"pq": 2 / 3, "sq": 2 / 3, "rq": 1.0, "num_classes": 1})


def test_crowd_regions_are_neither_missed_nor_false_positives():
    truth = row((1, 4), (2, 4))  # 1: a crowd of cars, 2: a car
    pred = row((5, 5), (6, 3))  # 5: 4 of its 5 px on the crowd; 6: 3 px of the car, IoU 3/4
    stats = PanopticStats(len(NAMES))
    stats.update(pred, {5: 1, 6: 1}, truth, {1: 1, 2: 1}, crowd={1})
    car = panoptic_metrics(stats, NAMES, THINGS)["per_class"]["car"]
    assert (car["tp"], car["fp"], car["fn"]) == (1, 0, 0) and car["sq"] == pytest.approx(0.75)


def test_an_iou_of_one_half_is_not_a_match_and_images_add_up():
    stats = PanopticStats(len(NAMES))
    stats.update(row((7, 2), (8, 2)), {7: 0, 8: 2}, row((1, 4)), {1: 0})  # IoU 2/4: not above one half
    other = PanopticStats(len(NAMES))
    other.update(row((7, 4)), {7: 0}, row((1, 4)), {1: 0})
    stats += other
    building = panoptic_metrics(stats, NAMES, THINGS)["per_class"]["building"]
    assert (building["tp"], building["fp"], building["fn"]) == (1, 1, 1)
    assert building["rq"] == pytest.approx(0.5) and building["sq"] == pytest.approx(1.0)


def test_an_id_without_a_segment_is_refused():
    stats = PanopticStats(len(NAMES))
    with pytest.raises(ValueError, match=r"predicted map has segment id\(s\) \[9\]"):
        stats.update(row((9, 2)), {}, row((1, 2)), {1: 0})
    with pytest.raises(ValueError, match="not among the classes"):
        panoptic_metrics(stats, NAMES, ["ship"])


def _random_panoptic(rng: np.random.Generator, things: list[int], stuffs: list[int], void: int | None):
    """A 16x16 (category, instance) map of 4x4 blocks, stuff with instance 0, and a prediction: a copy with some
    pixels changed and some instances split."""
    categories = things + stuffs + ([void] if void is not None else [])
    cat = rng.choice(categories, size=(4, 4))
    inst = np.where(np.isin(cat, things), rng.integers(0, 3, size=(4, 4)), 0)
    target = np.stack([cat, inst], -1).repeat(4, 0).repeat(4, 1)
    pred = target.copy()
    # every predicted pixel has a class: torchmetrics would leave out missed segments mostly left unpredicted,
    # which COCO's panopticapi counts as missed
    changed = (rng.random((16, 16)) < 0.15) | ~np.isin(pred[..., 0], things + stuffs)
    pred[changed, 0] = rng.choice(things + stuffs, size=int(changed.sum()))
    is_thing = np.isin(pred[..., 0], things)
    pred[..., 1] = np.where(is_thing, pred[..., 1] + (rng.random((16, 16)) < 0.1), 0)
    return pred, target


def _ids(panoptic: np.ndarray, known: list[int]) -> tuple[np.ndarray, dict[int, int]]:
    """Our representation: segment ids (0 where the category is not a class) and id -> class index."""
    ids = np.where(np.isin(panoptic[..., 0], known), panoptic[..., 0] * 100 + panoptic[..., 1] + 1, VOID)
    return ids, {int(i): known.index(int(i - 1) // 100) for i in np.unique(ids) if i != VOID}


def test_pq_agrees_with_torchmetrics_on_random_maps():
    from torchmetrics.detection import PanopticQuality

    things, stuffs = [1, 2], [3, 4, 5]
    known = things + stuffs
    per_class = PanopticQuality(things=set(things), stuffs=set(stuffs), return_sq_and_rq=True, return_per_class=True)
    overall = PanopticQuality(things=set(things), stuffs=set(stuffs), return_sq_and_rq=True)
    stats = PanopticStats(len(known))
    rng = np.random.default_rng(0)
    for _ in range(6):
        pred, target = _random_panoptic(rng, things, stuffs, void=9)
        for reference in (per_class, overall):
            reference.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
        stats.update(*_ids(pred, known), *_ids(target, known))
    names = [f"c{c}" for c in known]
    ours = panoptic_metrics(stats, names, [f"c{c}" for c in things])
    # torchmetrics orders classes as the sorted union of things and stuffs
    expected = per_class.compute().reshape(-1, 3).double().numpy()
    got = np.array([[ours["per_class"][n][k] or 0.0 for k in ("pq", "sq", "rq")] for n in names])
    assert stats.tp.sum() > 5 and stats.fp.sum() > 0 and stats.fn.sum() > 0  # the case exercises every count
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose([ours["pq"], ours["sq"], ours["rq"]], overall.compute().double().numpy(), atol=1e-6)
