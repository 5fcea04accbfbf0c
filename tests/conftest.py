"""Shared fixtures: the parity fixtures shipped with the tests and, when present, the full-size ones."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lemevit  # noqa: F401  (registers the models with timm)

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
MINI_PARITY = FIXTURES / "parity" / "mini"
# The full-size parity fixtures and the sample data sets live next to the repository in ../shared (CI has it, a
# clone may not).
SHARED = TESTS.parent.parent / "shared"
SHARED_PARITY = SHARED / "fixtures" / "parity"



@pytest.fixture(scope="session")
def mini_configs() -> dict:
    return json.loads((MINI_PARITY / "configs.json").read_text())


def shared_parity(name: str) -> Path:
    """Path of a full-size parity file, or skip the test when ../shared is not there."""
    path = SHARED_PARITY / name
    if not path.exists():
        pytest.skip(f"full-size parity fixture {path} not present (it lives in ../shared, next to the clone)")
    return path


def load_io(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(path)).items()}
