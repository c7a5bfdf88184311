import hashlib
import http.server
import json
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.cli.main import main
from lmforge.data import corpus as corpus_mod
from lmforge.data import public
from lmforge.data.corpus import open_corpus
from lmforge.data.prepare import prepare
from lmforge.data.public import PublicFile
from lmforge.data.tokens import TokenData, WindowSampler, token_dtype
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def test_char_prepare_splits_90_10_and_roundtrips(tmp_path):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    result = prepare(src, tmp_path / "out")
    data = TokenData.open(tmp_path / "out")
    n = len(TEXT)
    assert data.manifest["tokens"] == {"train": int(n * 0.9), "val": n - int(n * 0.9), "total": n}
    assert data.train.dtype == np.uint16 and result.tokens["train"] == len(data.train)
    assert data.tokenizer.decode(np.concatenate([data.train, data.val]).tolist()) == TEXT
    assert data.manifest["files"][0]["sha256"] == hashlib.sha256(TEXT.encode()).hexdigest()
    assert data.manifest["tokenizer"]["kind"] == "char" and data.manifest["dtype"] == "uint16"
    assert not list((tmp_path).glob(".*tmp"))


def test_token_dtype_widens_past_uint16():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_folder_and_jsonl_documents_end_with_eos(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha beta gamma\n")
    (folder / "sub" / "b.txt").write_text("delta epsilon\n")
    (folder / ".hidden").write_text("\xff never read")
    (folder / "c.jsonl").write_text(json.dumps({"text": "zeta eta"}) + "\n\n" + json.dumps({"text": "theta"}) + "\n")
    tok = Tokenizer.train_bpe(["alpha beta gamma delta epsilon zeta eta theta"], vocab_size=300)
    prepare(folder, tmp_path / "out", tokenizer=tok, val_fraction=0.25)
    data = TokenData.open(tmp_path / "out")
    ids = np.concatenate([data.train, data.val]).tolist()
    assert data.manifest["documents"] == 4 and ids.count(tok.eos_token_id) == 4
    assert tok.decode(ids) == ("alpha beta gamma\n<|endoftext|>zeta eta<|endoftext|>theta<|endoftext|>"
                               "delta epsilon\n<|endoftext|>")  # files in path order, records in file order
    assert [f["path"].rsplit("/", 1)[1] for f in data.manifest["files"]] == ["a.txt", "c.jsonl", "b.txt"]


WORDS = st.sampled_from(["the", "king", " ", "  ", "\n", "\n\n", " \n", "'s", "3", "!", "é", "\t"])


@settings(max_examples=40, deadline=None)
@given(st.lists(WORDS, max_size=80), st.integers(1, 12))
def test_pieces_tokenize_like_the_whole_text(tmp_path_factory, parts, piece_chars):
    text = "".join(parts) or "x"
    path = tmp_path_factory.mktemp("p") / "t.txt"
    path.write_bytes(text.encode())
    pieces = list(open_corpus(path).pieces(piece_chars=piece_chars))
    assert "".join(p for p, _ in pieces) == text and pieces[-1][1] and not any(e for _, e in pieces[:-1])
    tok = _bpe()
    assert [i for p, _ in pieces for i in tok.encode(p)] == tok.encode(text)


_BPE = []


def _bpe():
    if not _BPE:
        _BPE.append(Tokenizer.train_bpe(["the king's 3 kings! é\n\n  the\tking"] * 3, vocab_size=280))
    return _BPE[0]


def test_non_utf8_names_file_and_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "READ_BYTES", 7)  # the bad byte lands in a later read block
    src = tmp_path / "latin1.txt"
    src.write_bytes("héllo wörld ".encode() + b"caf\xe9 ok\n")
    message = r"latin1.txt is not UTF-8 text: byte 0xe9 at byte offset 17 .*--errors replace"
    with pytest.raises(LmforgeError, match=message):
        prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    prepare(src, tmp_path / "out", errors="replace")
    assert "caf\ufffd ok" in TokenData.open(tmp_path / "out").tokenizer.decode(
        np.concatenate([TokenData.open(tmp_path / "out").train, TokenData.open(tmp_path / "out").val]).tolist())
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(LmforgeError, match=r"bad.jsonl is not UTF-8 text: byte 0xff at byte offset 25"):
        prepare(bad, tmp_path / "out2")


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.txt", "does not exist and is not a named data set"),
    (lambda p: (p / "empty.txt").write_text("") and None or p / "empty.txt", "is empty"),
    (lambda p: (p / "e").mkdir() or p / "e", "holds no files"),
    (lambda p: (p / "x.jsonl").write_text('{"body": "hi"}\n') and p / "x.jsonl", "line 1, has no string field 'text'"),
    (lambda p: (p / "y.jsonl").write_text('{"text": "a"}\nnot json\n') and p / "y.jsonl", "line 2, is not valid JSON"),
    (lambda p: (p / "z.jsonl").write_text('{"text": ""}\n') and p / "z.jsonl", "is empty"),
])
def test_bad_corpora_are_one_sentence(tmp_path, make, message):
    with pytest.raises(LmforgeError, match=message):
        prepare(make(tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_named_data_set_from_lmforge_data(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text(TEXT)
    monkeypatch.setenv("LMFORGE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path / "tinyshakespeare")
    corpus = open_corpus("tinyshakespeare")
    assert corpus.files[0].path == tmp_path / "tinyshakespeare" / "input.txt"


class _Fixture(http.server.BaseHTTPRequestHandler):
    body = TEXT.encode()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Fixture)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/input.txt"
    server.shutdown()
    server.server_close()


def test_named_data_set_downloads_once_and_checks_sha256(tmp_path, monkeypatch, loopback_url):
    monkeypatch.delenv("LMFORGE_DATA", raising=False)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    good = PublicFile(loopback_url, hashlib.sha256(TEXT.encode()).hexdigest())
    monkeypatch.setitem(public.PUBLIC, "tinyshakespeare", {"input.txt": good})
    result = prepare("tinyshakespeare", tmp_path / "out")
    cached = tmp_path / "cache" / "data" / "tinyshakespeare" / "input.txt"
    assert cached.read_text() == TEXT and result.tokens["total"] == len(TEXT)
    monkeypatch.setitem(public.PUBLIC, "tinyshakespeare", {"input.txt": PublicFile("http://127.0.0.1:9/gone", good.sha256)})
    assert open_corpus("tinyshakespeare").files[0].path == cached  # served from the cache, no network
    cached.unlink()
    with pytest.raises(LmforgeError, match="could not download tinyshakespeare/input.txt from http://127.0.0.1:9/gone"):
        open_corpus("tinyshakespeare")
    monkeypatch.setitem(public.PUBLIC, "tinyshakespeare", {"input.txt": PublicFile(loopback_url, "0" * 64)})
    with pytest.raises(LmforgeError, match="has sha256 .* expected 0000"):
        open_corpus("tinyshakespeare")
    assert not cached.exists() and not list(cached.parent.glob(".*"))


def test_window_sampler_shards_the_global_batch():
    tokens = np.arange(1000, dtype=np.uint16)
    whole = WindowSampler(tokens, 8, 6, seed=3)
    halves = [WindowSampler(tokens, 8, 3, seed=3, rank=r, world_size=2) for r in range(2)]
    x, y = whole.next_batch()
    parts = [s.next_batch() for s in halves]
    assert (x == np.concatenate([p[0] for p in parts])).all() and (y[:, :-1] == x[:, 1:]).all()
    state = whole.state_dict()
    a = whole.next_batch()[0]
    whole.load_state_dict(state)
    assert (whole.next_batch()[0] == a).all()


def test_cli_prepare_prints_counts_and_throughput(tmp_path, capsys):
    src = tmp_path / "input.txt"
    src.write_text(TEXT)
    assert main(["prepare", str(src), "--out", str(tmp_path / "out"), "--val-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert f"{len(TEXT):,} tokens" in out and "tokens/s" in out
    assert main(["prepare", str(tmp_path / "nope.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
