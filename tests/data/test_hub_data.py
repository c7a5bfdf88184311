"""Data sets by Hub name (Parquet shards, JSON Lines, CSV, gzipped, subsets and splits), offline, and the named
data sets' fallback to their checksummed public sources, against the loopback fake Hub."""

import gzip
import hashlib
import json

import pytest

from hub_repos import DIALOGUES, QUOTES, parquet_bytes, samsum_csv
from lmforge.cli.main import main
from lmforge.data import public
from lmforge.data.corpus import open_corpus
from lmforge.data.hub import resolve_dataset
from lmforge.data.pairs import load_pairs
from lmforge.data.prepare import prepare
from lmforge.data.public import HubCopy, PublicFile, hub_copy_lines, named_file
from lmforge.data.records import iter_records
from lmforge.errors import LmforgeError


def texts(spec, field="text"):
    return [t for t, _ in open_corpus(spec, text_field=field).pieces()]


def test_a_jsonl_data_set_trains_on_the_field_chosen(hub, tmp_path, capsys):
    assert texts("Abirate/english_quotes", "quote") == [q for q, _, _ in QUOTES]
    with pytest.raises(LmforgeError, match=r"quotes.jsonl, line 1, has no string field 'text' \(its fields: author, "
                                           r"quote, tags\)"):
        texts("Abirate/english_quotes")
    result = prepare("Abirate/english_quotes", tmp_path / "q", text_field="quote")
    assert result.manifest["documents"] == len(QUOTES) and result.manifest["source"] == "Abirate/english_quotes"
    assert main(["prepare", "Abirate/english_quotes", "--text-field", "author", "--out", str(tmp_path / "a")]) == 0
    code = main(["prepare", "Abirate/english_quotes", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "has no string field 'text'" in err and len(err.strip().splitlines()) == 1


def test_parquet_shards_make_the_split_and_are_read_in_place(hub):
    train = resolve_dataset("parquet/quotes")
    assert train.split == "train" and [p.name for p in train.files] == ["train-00000-of-00002.parquet",
                                                                         "train-00001-of-00002.parquet"]
    assert texts("parquet/quotes", "quote") == [q for q, _, _ in QUOTES[:20]]
    assert texts("parquet/quotes:validation", "quote") == [q for q, _, _ in QUOTES[20:]]
    with pytest.raises(LmforgeError, match=r"has no column 'text' \(its columns: quote, author\)"):
        texts("parquet/quotes")
    with pytest.raises(LmforgeError, match=r"no split 'test'.*its splits: train, validation"):
        resolve_dataset("parquet/quotes:test")
    pairs = load_pairs("parquet/quotes:val", source_field="author", target_field="quote")
    assert pairs.description == "parquet/quotes:validation" and pairs.targets == [q for q, _, _ in QUOTES[20:]]


def test_csv_pairs_with_crlf_dialogues(hub):
    pairs = load_pairs("knkarthick/samsum:validation", source_field="dialogue", target_field="summary")
    assert len(pairs) == 3 and pairs.ids == [d[0] for d in DIALOGUES[:3]] and "\r" not in pairs.sources[0]
    assert len(load_pairs("knkarthick/samsum", "test", "dialogue", "summary")) == 2
    with pytest.raises(LmforgeError, match=r"no source field 'source'; its fields are: id, dialogue, summary"):
        load_pairs("knkarthick/samsum:train")


def test_subsets_from_folders_and_from_the_card(fake_hub):
    gz = lambda rows: gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())  # noqa: E731
    fake_hub.add("Anthropic/hh-rlhf", {
        "harmless-base/train.jsonl.gz": gz([{"chosen": "a", "rejected": "b"}] * 3),
        "harmless-base/test.jsonl.gz": gz([{"chosen": "c", "rejected": "d"}]),
        "helpful-base/train.jsonl.gz": gz([{"chosen": "e", "rejected": "f"}] * 2)}, repo_type="dataset")
    split = resolve_dataset("Anthropic/hh-rlhf:harmless-base/test")
    assert split.description == "Anthropic/hh-rlhf:harmless-base/test" and len(split.files) == 1
    assert texts("Anthropic/hh-rlhf:harmless-base", "chosen") == ["a"] * 3
    assert texts("Anthropic/hh-rlhf:helpful-base/train", "rejected") == ["f"] * 2
    assert len(texts("Anthropic/hh-rlhf", "chosen")) == 5  # no subset: every folder's train files
    card = ("---\nconfigs:\n- config_name: English\n  data_files:\n  - split: train\n    path: English/train.csv\n"
            "  - split: test\n    path: English/test.csv\n- config_name: Polish\n  default: true\n  data_files:\n"
            "  - split: train\n    path: pl/*.csv\n---\n# cards\n")
    fake_hub.add("org/multi", {"README.md": card, "English/train.csv": samsum_csv(), "English/test.csv":
                               samsum_csv(DIALOGUES[:1]), "pl/part-1.csv": samsum_csv(DIALOGUES[:2])},
                 repo_type="dataset")
    assert len(texts("org/multi", "summary")) == 2  # the default config
    assert len(texts("org/multi:English/test", "summary")) == 1
    with pytest.raises(LmforgeError, match="the data set org/multi has no subset 'German'; its subsets: Polish, English"):
        resolve_dataset("org/multi:German/train")


def test_data_sets_offline_and_without_network(hub, capsys, monkeypatch):
    with pytest.raises(LmforgeError, match="offline mode is on"):
        from lmforge.hub import remote

        with remote.options(offline=True):
            texts("Abirate/english_quotes", "quote")
    assert main(["download", "--dataset", "Abirate/english_quotes"]) == 0
    assert capsys.readouterr().out.strip().endswith("quotes.jsonl")
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert len(texts("Abirate/english_quotes", "quote")) == len(QUOTES) and hub.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert len(texts("Abirate/english_quotes", "quote")) == len(QUOTES)  # unreachable: the cached files
    with pytest.raises(LmforgeError, match=r"could not reach http://127.0.0.1:9.*datasets--parquet--quotes"):
        texts("parquet/quotes", "quote")


def test_unknown_data_set_and_revision(fake_hub):
    with pytest.raises(LmforgeError, match="nobody/nothing is not a data set on"):
        texts("nobody/nothing")
    fake_hub.add("a/b", {"x.jsonl": '{"text": "hi"}\n'}, repo_type="dataset")
    with pytest.raises(LmforgeError, match="no revision 'v2'"):
        texts("a/b@v2")
    assert texts("a/b@main") == ["hi"]


# ---- named data sets: $LMFORGE_DATA first, else their public source, checked ---------------------------------

def test_samsum_falls_back_to_its_hub_copy_checked_by_checksum(hub, monkeypatch):
    monkeypatch.delenv("LMFORGE_DATA", raising=False)
    with pytest.raises(LmforgeError, match=r"\$LMFORGE_DATA is not set.*have sha256 .* expected 4260"):
        load_pairs("samsum:validation")  # the fake copy is not the real SAMSum: refused
    assert not (public.cache_dir() / "samsum" / "validation.jsonl").exists()
    expected = "".join(hub_copy_lines(((None, dict(zip(("id", "dialogue", "summary"), d))) for d in DIALOGUES[:3]),
                                      ("id", "dialogue", "summary")))
    copy = HubCopy("knkarthick/samsum", "validation", ("id", "dialogue", "summary"),
                   hashlib.sha256(expected.encode()).hexdigest())
    monkeypatch.setitem(public.PUBLIC, "samsum", {"validation.jsonl": copy})
    pairs = load_pairs("samsum:validation")
    assert len(pairs) == 3 and pairs.source_field == "dialogue"
    assert (public.cache_dir() / "samsum" / "validation.jsonl").read_text() == expected
    hub.log.clear()
    assert len(load_pairs("samsum:validation")) == 3 and hub.log == []


def test_multi30k_test_splits_fall_back_to_the_published_gzip_files(fake_hub, monkeypatch):
    monkeypatch.delenv("LMFORGE_DATA", raising=False)
    files = {}
    for lang, lines in (("en", ["A dog runs.", "Two men talk."]), ("de", ["Ein Hund rennt.", "Zwei Männer reden."])):
        packed = gzip.compress(("\n".join(lines) + "\n").encode())
        fake_hub.static[f"test_2017_flickr.{lang}.gz"] = packed
        files[f"test2017.{lang}"] = PublicFile(f"{fake_hub.url}/files/test_2017_flickr.{lang}.gz",
                                               hashlib.sha256(packed).hexdigest(), gunzip=True)
    monkeypatch.setitem(public.PUBLIC, "multi30k", files)
    pairs = load_pairs("multi30k:test2017")
    assert pairs.sources == ["A dog runs.", "Two men talk."] and pairs.targets[1] == "Zwei Männer reden."
    assert (public.cache_dir() / "multi30k" / "test2017.de").read_text().startswith("Ein Hund")
    files["test2017.en"] = PublicFile(files["test2017.en"].url, "f" * 64, gunzip=True)
    (public.cache_dir() / "multi30k" / "test2017.en").unlink()
    with pytest.raises(LmforgeError, match="expected ffff"):
        load_pairs("multi30k:test2017")
    assert not list((public.cache_dir() / "multi30k").glob(".*"))


def test_lmforge_data_is_the_authority_and_holds_test_splits_back(tmp_path, monkeypatch):
    (tmp_path / "multi30k").mkdir()
    monkeypatch.setenv("LMFORGE_DATA", str(tmp_path))
    with pytest.raises(LmforgeError, match="held back"):
        load_pairs("multi30k:test2018")


def test_the_preference_sets_are_registered_with_pinned_sources(fake_hub, monkeypatch):
    for name in ("hh-rlhf-helpful-base", "hh-rlhf-helpful-online", "hh-rlhf-helpful-rejection-sampled"):
        assert set(public.PUBLIC[name]) == {"train.jsonl", "test.jsonl"}
    for files in public.PUBLIC.values():
        for source in files.values():
            assert len(source.sha256) == 64
            if isinstance(source, PublicFile):
                assert "/master/" not in source.url and "/main/" not in source.url  # pinned to a commit
    monkeypatch.delenv("LMFORGE_DATA", raising=False)
    packed = gzip.compress(b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": "x"}\n')
    fake_hub.static["test.jsonl.gz"] = packed
    monkeypatch.setitem(public.PUBLIC, "hh-rlhf-helpful-base", {"test.jsonl": PublicFile(
        f"{fake_hub.url}/files/test.jsonl.gz", hashlib.sha256(packed).hexdigest(), gunzip=True)})
    path = named_file("hh-rlhf-helpful-base", "test.jsonl")
    assert [r for _, r in iter_records(path)][0]["rejected"] == "x"


def test_records_formats(tmp_path):
    rows = [{"a": "x", "b": 1}, {"a": "y", "b": 2}]
    (tmp_path / "r.json").write_text(json.dumps(rows))
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(b'{"a": "x", "b": 1}\n\n{"a": "y", "b": 2}\n'))
    (tmp_path / "r.parquet").write_bytes(parquet_bytes(rows))
    (tmp_path / "r.tsv").write_text("a\tb\nx\t1\ny\t2\n")
    for name in ("r.json", "r.jsonl.gz", "r.parquet", "r.tsv"):
        assert [r["a"] for _, r in iter_records(tmp_path / name)] == ["x", "y"], name
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(b"{}" * 100)[:20])
    with pytest.raises(LmforgeError, match="not a valid gzip file"):
        list(iter_records(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(LmforgeError, match="not a valid Parquet file"):
        list(iter_records(tmp_path / "bad.parquet"))
    assert texts(str(tmp_path / "r.parquet"), "a") == ["x", "y"]  # a local Parquet file is a corpus too
