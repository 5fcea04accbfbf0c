"""Fixtures of the model tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from lemevit.models import pretrained
from lemevit.models.pretrained import WEIGHTS_DIR_VARIABLE


@pytest.fixture
def no_installed_weights(tmp_path, monkeypatch) -> Path:
    """Neither the package nor the weights directory holds a weights file (the directory not yet made); returns the
    weights directory."""
    monkeypatch.setattr(pretrained, "PACKAGE_WEIGHTS", tmp_path / "package")
    monkeypatch.setenv(WEIGHTS_DIR_VARIABLE, str(tmp_path / "weights"))
    return tmp_path / "weights"
