import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def data_dir() -> Path | None:
    """The shared public data sets (../shared/data), found only through $LMFORGE_DATA."""
    path = os.environ.get("LMFORGE_DATA")
    return Path(path) if path and Path(path).is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    path = data_dir()
    if path is None:
        pytest.skip("LMFORGE_DATA is not set to the folder of public data sets (e.g. ../shared/data)")
    return path
