"""The decoding lab: strategies parsed, metrics measured, reports written; `lmforge decode-compare`."""

import json

import numpy as np
import pytest

import lmforge
from hf_models import save_tiny_with_tokenizer
from lmforge.cli.main import main
from lmforge.errors import LmforgeError
from lmforge.evaluate import NGramIndex
from lmforge.evaluate.decoding_lab import ReportSection, Strategy, compare_strategies, write_report

PROMPTS = ["The quick brown", "Café crème & <b>"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("lab-tiny")
    save_tiny_with_tokenizer(path)
    return path


def test_strategy_specs():
    assert Strategy.parse("beam").params == {"num_beams": 4}
    s = Strategy.parse("beam:num_beams=8,length_penalty=1.5,early_stopping=never")
    assert s.name == "beam" and s.params == {"num_beams": 8, "length_penalty": 1.5, "early_stopping": "never"}
    assert Strategy.parse("hot:do_sample=true,temperature=1.3").params == {"do_sample": True, "temperature": 1.3}
    with pytest.raises(LmforgeError, match="unknown strategy 'bem'"):
        Strategy.parse("bem")


def test_compare_and_report(folder, tmp_path):
    ckpt = lmforge.load(folder)
    first = compare_strategies(ckpt, None, PROMPTS, ["greedy"], max_new_tokens=12, ignore_eos=True)
    index = NGramIndex.build(np.asarray(first.strategies[0].token_ids[0]), n=8)  # "training data" = a greedy text
    results = compare_strategies(ckpt, None, PROMPTS, ["greedy", "beam", "nucleus"], train_index=index,
                                 max_new_tokens=12, ignore_eos=True)
    greedy, beam, nucleus = results.strategies
    assert greedy.token_ids == first.strategies[0].token_ids
    assert greedy.metrics["mean_length"] == 12
    assert greedy.metrics["train_8gram_share"] >= 0.5  # the first of two texts is the whole index
    for s in results.strategies:
        m = s.metrics
        assert m["mean_logprob"] < 0 and 0 <= m["repetition_rate"] <= 1 and 0 <= m["distinct_1"] <= 1
        assert m["tokens_per_s"] > 0
    assert beam.metrics["mean_logprob"] >= nucleus.metrics["mean_logprob"]

    (tmp_path / "loss.png").write_bytes(b"\x89PNG fake")
    paths = write_report(results, tmp_path / "report", extra_sections=[
        ReportSection("Training", "The loss went down.", tmp_path / "loss.png")])
    page = paths["html"].read_text()
    assert "Café crème &amp; &lt;b&gt;" in page  # prompts and texts are escaped
    for s in results.strategies:
        assert f"<h4>{s.name}</h4>" in page
    assert "The loss went down." in page and (tmp_path / "report" / "loss.png").is_file()
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    md = paths["markdown"].read_text()
    assert "| greedy |" in md and "8-grams in training data" in md
    assert json.loads(paths["json"].read_text())["strategies"][1]["name"] == "beam"


def test_decode_compare_cli(folder, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    (tmp_path / "train.txt").write_text("The quick brown fox jumps over the lazy dog. " * 10)
    code = main(["decode-compare", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--strategies",
                 "greedy", "top-k", "beam:num_beams=2", "--max-new-tokens", "8", "--train-data",
                 str(tmp_path / "train.txt"), "--out", str(tmp_path / "lab")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| beam |" in out and "report:" in out
    assert {p.name for p in (tmp_path / "lab").iterdir()} >= {"report.md", "report.html", "metrics.png",
                                                             "results.json"}
    assert main(["decode-compare", str(folder), "--prompts", str(tmp_path / "prompts.txt"), "--strategies",
                 "nuclues"]) == 2
    assert "unknown strategy 'nuclues'" in capsys.readouterr().err
