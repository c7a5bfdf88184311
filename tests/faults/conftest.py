import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fault_models import TEXT  # noqa: E402


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    from lmforge.data.prepare import prepare

    folder = tmp_path_factory.mktemp("corpus")
    (folder / "plays.txt").write_text(TEXT * 20, encoding="utf-8")
    out = folder / "plays-char"
    prepare(folder / "plays.txt", out, tokenizer="char", log=lambda *a: None)
    return out
