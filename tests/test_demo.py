"""The demo end to end with a tiny budget: corpus -> tokenizer -> model -> samples -> report."""

import json

from lmforge.cli.main import main
from lmforge.demo import STRATEGIES, run_demo
from lmforge.evaluate.decoding_lab import Strategy


def test_demo_writes_a_complete_report(tmp_path):
    result = run_demo(tmp_path / "demo", minutes=0.05, max_new_tokens=8, quiet=True)
    out = tmp_path / "demo"
    assert result.report == out / "report.html" and result.iters >= 1
    assert result.corpus_chars > 500_000  # the standard library's docstrings
    html = (out / "report.html").read_text()
    markdown = (out / "report.md").read_text()
    names = [Strategy.parse(s).name for s in STRATEGIES]
    for name in names:
        assert f"<b>{name}</b>" in html and f"| {name} |" in markdown
    for section in ("Training", "What the numbers show", "Unconditional samples", "Samples"):
        assert section in html and section in markdown
    results = json.loads((out / "results.json").read_text())
    for strategy in results["strategies"]:
        for key in ("mean_logprob", "repetition_rate", "distinct_1", "distinct_2", "train_8gram_share"):
            assert isinstance(strategy["metrics"][key], float), (strategy["name"], key)
    for png in ("loss.png", "metrics.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"src='{png}'" in html


def test_demo_refuses_a_bad_budget(capsys):
    assert main(["demo", "--minutes", "0"]) == 2
    assert "--minutes must be positive" in capsys.readouterr().err
