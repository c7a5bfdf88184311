import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fault_models import TEXT, one_thread, train_settings  # noqa: E402


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    from lmforge.data.prepare import prepare

    folder = tmp_path_factory.mktemp("corpus")
    (folder / "plays.txt").write_text(TEXT * 20, encoding="utf-8")
    out = folder / "plays-char"
    prepare(folder / "plays.txt", out, tokenizer="char", log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def reference(tmp_path_factory, prepared) -> Path:
    """The uninterrupted run of `train_settings` that crashed and resumed runs must match bit for bit."""
    from lmforge.train import train

    run = tmp_path_factory.mktemp("reference") / "run"
    with one_thread():
        train(train_settings(run, prepared), quiet=True)
    return run
