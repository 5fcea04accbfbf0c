"""Detection's windows over an image: the sliding-window engine's grid, with the overlap of DOTA's setting."""
from __future__ import annotations

import pytest

from lemevit.errors import ConfigError
from lemevit.inference.detection import default_overlap, detection_windows
from lemevit.inference.sliding_window import window_starts


def test_windows_cover_the_image_with_the_requested_overlap():
    windows = detection_windows(2304, 1792, size=1024, overlap=200)
    assert sorted({x for x, _ in windows}) == [0, 824, 1280]
    assert sorted({y for _, y in windows}) == [0, 768]
    assert detection_windows(500, 300, size=1024) == [(0, 0)]
    # Row by row, on the grid segmentation's sliding window places at the same stride.
    assert windows == [(x, y) for y in window_starts(1792, 1024, 824) for x in window_starts(2304, 1024, 824)]
    assert default_overlap(1024) == 200 and default_overlap(512) == 100


@pytest.mark.parametrize(("size", "overlap", "option"), [(0, 0, "img_size"), (256, 256, "overlap"),
                                                         (256, -1, "overlap")])
def test_a_bad_window_or_overlap_names_its_option(size, overlap, option):
    with pytest.raises(ConfigError, match=option):
        detection_windows(1000, 1000, size, overlap)
