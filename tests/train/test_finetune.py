import json

import pytest
import torch
from train_helpers import tiny

import lmforge
from hf_models import save_tiny
from lmforge.data.prepare import prepare
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.train import train


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, corpus_file):
    """A tiny random transformers GPT-2 (vocabulary 97) with a character tokenizer of the corpus."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    save_tiny("gpt2", folder)
    Tokenizer.train_char([corpus_file.read_text()]).save(folder)
    return folder


def test_fine_tunes_an_imported_gpt2_with_its_tokenizer(tmp_path, corpus_file, gpt2_folder):
    result = train(tiny(tmp_path / "ft", corpus_file, init_from=str(gpt2_folder), max_iters=12, eval_interval=6,
                        learning_rate=3e-3, **{"model.dropout": 0.1, "model.n_layer": 9}), quiet=True)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"] - 0.5
    manifest = json.loads((result.run_dir / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["origin"] == str(gpt2_folder)
    model, tokenizer = lmforge.load(result.best_dir)
    assert model.config.n_layer == 2 and model.config.vocab_size == 97  # the checkpoint's shape, not model.*
    assert tokenizer.vocab_size == Tokenizer.from_pretrained(gpt2_folder).vocab_size

    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(result.best_dir).eval()
    ids = torch.tensor([tokenizer.encode("the king and queen")])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), atol=1e-4, rtol=1e-4)
    assert hf.config.resid_pdrop == 0.1


def test_fine_tuning_refuses_a_foreign_tokenizer_or_a_longer_context(tmp_path, corpus_file, gpt2_folder):
    other = tmp_path / "other.txt"
    other.write_text("completely different characters: XYZ 0123456789 {}[]\n" * 50)
    prepare(other, tmp_path / "other-char")
    with pytest.raises(LmforgeError, match="tokenized with another tokenizer than"):
        train(tiny(tmp_path / "a", tmp_path / "other-char", init_from=str(gpt2_folder)), quiet=True)
    with pytest.raises(LmforgeError, match=r"model.block_size \(128\) is longer than the context of .* \(64\)"):
        train(tiny(tmp_path / "b", corpus_file, init_from=str(gpt2_folder), **{"model.block_size": 128}), quiet=True)
    bare = tmp_path / "bare"
    save_tiny("gpt2", bare)
    with pytest.raises(LmforgeError, match="not an existing tokenizer|no tokenizer"):
        train(tiny(tmp_path / "c", corpus_file, init_from=str(bare)), quiet=True)
