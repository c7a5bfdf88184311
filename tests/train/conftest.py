from pathlib import Path

import pytest
from train_helpers import make_text

from lmforge.data.prepare import prepare


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "plays.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, corpus_file) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "plays-char"
    prepare(corpus_file, out, tokenizer="char")
    return out
