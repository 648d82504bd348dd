import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"


@pytest.fixture
def official_fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"official checkpoint fixtures not found at {FIXTURES} (shared/ is absent)")
    return FIXTURES
