import re

import pytest

from lmforge.data import stdlib_corpus
from lmforge.data.stdlib_corpus import build_stdlib_corpus, build_stdlib_source_corpus

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "stdlib.txt"
    stats = build_stdlib_corpus(path, separator=EOT)
    return stats, path.read_text(encoding="utf-8")


def test_real_corpus_is_sizeable_english_without_duplicates(built):
    stats, text = built
    docs = text.split(EOT)
    assert stats.n_chars == len(text) > 500_000
    assert stats.n_docs == len(docs) > 2000 and stats.n_files > 100
    assert len({" ".join(d.split()) for d in docs}) == len(docs)
    assert min(len(d) for d in docs) >= 40
    assert not re.search(r"^\s*>>>", text, flags=re.MULTILINE)
    for word in (" the ", " return ", " file ", " string ", " which "):
        assert word in text


def test_build_is_deterministic_and_uses_the_separator(built, tmp_path):
    stats, text = built
    again = build_stdlib_corpus(tmp_path / "again.txt")
    assert "\n\n".join(text.split(EOT)) == (tmp_path / "again.txt").read_text(encoding="utf-8")
    assert (again.n_docs, again.n_duplicates_dropped) == (stats.n_docs, stats.n_duplicates_dropped)


def test_filters_skips_and_deduplicates(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "site-packages").mkdir()
    prose = "Return the number of apples in the basket, counting the bruised ones too."
    (root / "pkg" / "fruit.py").write_text(
        f'"""Fruit helpers for a greengrocer who sells apples and pears."""\n\n'
        f'def count():\n    """{prose}\n\n    >>> count()\n    3\n    """\n\n'
        f'if True:\n    class Basket:\n        """{prose}"""\n\n'
        f'def short():\n    """Too short."""\n\n'
        f'def code():\n    """x = [1, 2, 3] + {{4: 5}}; y = x[0] * 2 ** 8 - 1 / 7 % 9 == (0, 0, 0)"""\n',
        encoding="utf-8")
    (root / "aaa.py").write_text('"""Module A says hello to the whole wide world of readers."""\n', encoding="utf-8")
    (root / "broken.py").write_text('"""Prose that would count, but the file does not parse."""\ndef (\n')
    (root / "latin.py").write_bytes('"""Caf\xe9 prose in Latin-1 that is long enough to keep."""\n'.encode("latin-1"))
    for skipped in ("test", "site-packages"):
        (root / skipped / "m.py").write_text('"""A skipped folder has prose too, long enough to keep."""\n')
    monkeypatch.setattr(stdlib_corpus.sysconfig, "get_paths", lambda: {"stdlib": str(root)})

    stats = build_stdlib_corpus(tmp_path / "out.txt", separator=EOT)
    docs = (tmp_path / "out.txt").read_text(encoding="utf-8").split(EOT)
    assert docs == ["Module A says hello to the whole wide world of readers.",
                    "Fruit helpers for a greengrocer who sells apples and pears.", prose]
    assert (stats.n_files, stats.n_files_skipped, stats.n_duplicates_dropped) == (2, 2, 1)
    assert build_stdlib_corpus(None).path is None


def test_source_corpus_joins_the_files_in_path_order_in_ascii(tmp_path, monkeypatch):
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "b.py").write_text("\n\nx = 'caf\u00e9 \u2603'\n\n", encoding="utf-8")
    (root / "pkg" / "a.py").write_text("def f():\n    return 1\n", encoding="utf-8")
    (root / "latin.py").write_bytes("y = 'caf\xe9'\n".encode("latin-1"))
    (root / "test" / "t.py").write_text("assert True\n", encoding="utf-8")
    monkeypatch.setattr(stdlib_corpus.sysconfig, "get_paths", lambda: {"stdlib": str(root)})

    stats = build_stdlib_source_corpus(tmp_path / "out.txt", separator=EOT)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").split(EOT) == ["x = 'caf? ?'",
                                                                              "def f():\n    return 1"]
    assert (stats.n_files, stats.n_files_skipped) == (2, 1)


def test_real_source_corpus_is_several_times_the_docstrings(built):
    stats = build_stdlib_source_corpus(None)
    assert stats.n_chars > 4 * built[0].n_chars and stats.n_files > 100
