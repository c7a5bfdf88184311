import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from fake_hub import FakeHub, shared_hub

torch.set_num_threads(min(2, os.cpu_count() or 1))

# No test reaches the real Hugging Face Hub or the user's caches: huggingface_hub (imported later by lmforge or
# transformers) reads HF_ENDPOINT and HF_HOME once, at import, so they point at a loopback fake Hub and a
# private folder from the start. Tests that use the Hub take the `fake_hub` fixture.
FAKE_HUB = shared_hub()
_PRIVATE = tempfile.mkdtemp(prefix="lmforge-tests-")
atexit.register(shutil.rmtree, _PRIVATE, ignore_errors=True)
os.environ.update(HF_ENDPOINT=FAKE_HUB.url, HF_HOME=os.path.join(_PRIVATE, "hf"), HF_HUB_DISABLE_TELEMETRY="1",
                  LMFORGE_CACHE=os.path.join(_PRIVATE, "lmforge"))
for _name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
    os.environ.pop(_name, None)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    """The loopback Hub, emptied, with a fresh Hugging Face cache (HF_HUB_CACHE) for this test."""
    FAKE_HUB.reset()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield FAKE_HUB
    FAKE_HUB.reset()


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


@pytest.fixture(scope="session")
def hub_models(tmp_path_factory) -> dict:
    """Tiny random models with the real repositories' layouts, by Hub name (tests/hub_repos.py)."""
    from hub_repos import build_all

    return build_all(tmp_path_factory.mktemp("hub-models"))


@pytest.fixture
def hub(fake_hub, hub_models) -> FakeHub:
    """The fake Hub serving the lecture's models and data sets under their names."""
    from hub_repos import publish

    publish(fake_hub, hub_models)
    return fake_hub
