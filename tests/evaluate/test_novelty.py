import numpy as np
import pytest

from lmforge.errors import LmforgeError
from lmforge.evaluate.novelty import NGramIndex, word_ids


def brute_force(tokens, n):
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


@pytest.mark.parametrize("vocab,n", [(4, 3), (3, 8), (50_000, 2)])
def test_matches_a_python_set(vocab, n):
    rng = np.random.default_rng(n)
    corpus = rng.integers(0, vocab, size=3000)
    expected = brute_force(corpus.tolist(), n)
    index = NGramIndex.build(corpus, n=n, chunk_size=97)
    assert len(index) == len(expected)
    queries = np.concatenate([corpus[:n * 200].reshape(-1, n), rng.integers(0, vocab, size=(500, n))])
    assert index.contains(queries).tolist() == [tuple(q) in expected for q in queries.tolist()]
    text = rng.integers(0, vocab, size=200).tolist()
    grams = [tuple(text[i:i + n]) for i in range(len(text) - n + 1)]
    assert index.share_found(text) == pytest.approx(np.mean([g in expected for g in grams]))


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 8, 9, 1000, 1 << 22])
def test_chunk_size_does_not_change_the_index(chunk_size):
    corpus = np.random.default_rng(0).integers(0, 5, size=1000, dtype=np.uint16)
    whole = NGramIndex.build(corpus, n=8)
    assert np.array_equal(NGramIndex.build(corpus, n=8, chunk_size=chunk_size).hashes, whole.hashes)


def test_memory_mapped_corpus_and_save_load(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 6, size=5000).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    mapped = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r")
    index = NGramIndex.build(mapped, n=5, chunk_size=333)
    assert np.array_equal(index.hashes, NGramIndex.build(tokens, n=5).hashes)
    index.save(tmp_path / "index.npy")
    loaded = NGramIndex.load(tmp_path / "index.npy")
    assert loaded.n == 5 and np.array_equal(loaded.hashes, index.hashes)
    text = tokens[100:140].tolist() + [9, 9, 9, 9, 9]
    assert loaded.share_found(text) == index.share_found(text) == pytest.approx(36 / 41)


def test_short_text_and_empty_corpus():
    index = NGramIndex.build(np.arange(10), n=8)
    assert index.share_found([1, 2, 3]) is None
    assert index.share_found(list(range(8))) == 1.0
    empty = NGramIndex.build(np.arange(3), n=8)
    assert len(empty) == 0 and empty.share_found(list(range(8))) == 0.0


def test_user_mistakes_raise(tmp_path):
    with pytest.raises(LmforgeError):
        NGramIndex.build(np.linspace(0, 1, 20))
    with pytest.raises(LmforgeError):
        NGramIndex.build(np.arange(20), n=0)
    with pytest.raises(LmforgeError):
        NGramIndex.build(np.arange(20), n=3).contains([[1, 2]])
    with pytest.raises(LmforgeError):
        NGramIndex.load(tmp_path / "missing.npy")
    np.save(tmp_path / "other.npy", np.arange(5))
    with pytest.raises(LmforgeError):
        NGramIndex.load(tmp_path / "other.npy")


def test_word_ngrams():
    vocab: dict[str, int] = {}
    train = word_ids("the cat sat on the mat and the dog sat on the rug", vocab)
    assert train[0] == train[4] == vocab["the"]
    index = NGramIndex.build(np.array(train), n=3)
    assert index.share_found(word_ids("the dog sat on the sofa", vocab)) == pytest.approx(3 / 4)
    assert "sofa" in vocab
