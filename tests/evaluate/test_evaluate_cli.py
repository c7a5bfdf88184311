"""`lmforge evaluate` end to end on tiny random models: outputs, reports, scores equal to sacrebleu's and
rouge-score's own on the written outputs, template comparison, and the bad inputs (exit status 2)."""

import json

import pytest
import torch
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

import lmforge
from lmforge.cli.main import main
from lmforge.config import preset
from lmforge.evaluate.text_metrics import split_sentences
from lmforge.models.decoder import DecoderLM
from lmforge.tokenizer import Tokenizer
from lmforge.train import finetune

PAIRS = [("Amanda: I baked cookies. Do you want some?\nJerry: Sure!", "Amanda baked cookies and will bring Jerry some."),
         ("Tom: Are you coming tonight?\nAnna: Yes, at eight.", "Anna is coming tonight at eight."),
         ("Ben: I lost my keys again.\nSue: Check the car.", "Ben lost his keys again and Sue helps."),
         ("Kim: Station at noon?\nLee: OK, see you there.", "Kim and Lee meet at the station at noon.")]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    records = [{"id": str(i), "dialogue": d, "summary": s} for i, (d, s) in enumerate(PAIRS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_bpe([t for p in PAIRS for t in p] * 3, vocab_size=320,
                               special_tokens=("<pad>", "</s>", "<s>"))


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory, data_file):
    """A tiny T5 fitted for a few seconds to the four pairs, so that its outputs overlap the references."""
    run = tmp_path_factory.mktemp("models") / "t5"
    result = finetune({"out_dir": str(run), "data": {"train": str(data_file), "val": str(data_file),
                                                     "source_field": "dialogue", "target_field": "summary",
                                                     "vocab_size": 320, "max_source_length": 48,
                                                     "max_target_length": 16},
                       "model": {"preset": "tiny-t5", "dropout": 0.0}, "max_iters": 25, "learning_rate": 5e-3,
                       "warmup_iters": 5, "eval_interval": 25, "label_smoothing": 0.0, "num_beams": 2,
                       "max_new_tokens": 16, "gen_examples": 0, "device": "cpu", "seed": 0}, quiet=True)
    return result.last_dir


def run_cli(*argv):
    return main(["evaluate", *map(str, argv)])


def test_evaluate_writes_reports_and_matches_the_reference_scorers(t5_folder, data_file, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = run_cli(t5_folder, "--data", data_file, "--source-field", "dialogue", "--target-field", "summary",
                 "--num-beams", "1", "--out", out)
    printed = capsys.readouterr().out
    assert rc == 0
    lines = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["0", "1", "2", "3"] and all(x["template"] == "default" for x in lines)
    outputs, refs = [x["output"] for x in lines], [x["reference"] for x in lines]
    summary = json.loads((out / "summary.json").read_text())
    result = summary["results"][0]
    assert result["examples"] == 4 and summary["generation"]["num_beams"] == 1
    bleu, chrf = BLEU(), CHRF()
    assert result["bleu"] == pytest.approx(bleu.corpus_score(outputs, [refs]).score)
    assert result["chrf"] == pytest.approx(chrf.corpus_score(outputs, [refs]).score)
    assert result["bleu"] > 0
    assert summary["signatures"]["bleu"] == bleu.get_signature().format()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score("\n".join(split_sentences(r)), "\n".join(split_sentences(o))) for o, r in zip(outputs, refs)]
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert result[key] == pytest.approx(100 * sum(s[key].fmeasure for s in scores) / 4)
    assert result["rouge1"] > 0
    assert result["words"] == pytest.approx(sum(len(o.split()) for o in outputs) / 4)
    assert 0 <= result["novel_1grams"] <= 100
    assert "rougeLsum: summary-level" in summary["rouge_note"]
    markdown = (out / "summary.md").read_text()
    assert "| default | 4 |" in markdown and "signature" in markdown and "rougeL: longest common subsequence" in markdown
    assert "| template | examples | rouge1 |" in printed


def test_templates_run_side_by_side_and_sources_are_truncated_and_counted(t5_folder, data_file, tmp_path):
    templates = tmp_path / "templates.yaml"
    templates.write_text("plain: null\nprefixed: 'summarize: {dialogue}'\ntldr: \"{dialogue}\\nTL;DR:\"\n")
    out = tmp_path / "eval"
    rc = run_cli(t5_folder, "--data", data_file, "--source-field", "dialogue", "--target-field", "summary",
                 "--templates", templates, "--metrics", "rouge1,length", "--max-source-length", "6", "--limit", "3",
                 "--out", out, "--json")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in summary["results"]] == ["plain", "prefixed", "tldr"]
    assert summary["metrics"] == ["rouge1", "words", "ref_words"]
    assert all(r["lengths"]["truncated"]["source"] == 3 for r in summary["results"])
    assert any("truncated 3 source(s) longer than 6 tokens" in n for n in summary["notes"])
    lines = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(lines) == 9 and lines[3]["prompt"].startswith("summarize: Amanda:")
    assert "| prefixed: `summarize: {dialogue}` | 3 |" in (out / "summary.md").read_text()


def test_decoder_only_model(tmp_path, tokenizer, data_file):
    torch.manual_seed(0)
    cfg = preset("tiny-gpt2", vocab_size=tokenizer.vocab_size, block_size=64, bos_token_id=tokenizer.bos_token_id,
                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    lmforge.save(DecoderLM(cfg), tmp_path / "gpt", tokenizer=tokenizer)
    rc = run_cli(tmp_path / "gpt", "--data", data_file, "--source-field", "dialogue", "--target-field", "summary",
                 "--template", "{dialogue}\nSummary:", "--max-new-tokens", "5", "--metrics", "chrf",
                 "--out", tmp_path / "eval")
    assert rc == 0
    assert len((tmp_path / "eval" / "outputs.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("extra, message", [
    (["--metrics", "rouge,blue"], "unknown metric 'blue'; valid metrics are: rouge, rouge1"),
    (["--source-field", "text"], "no source field 'text'; its fields are: id, dialogue, summary"),
    (["--max-source-length", "4", "--too-long", "error"], "longer than max_source_length (4)"),
    (["--template", "{speaker}: {dialogue}"], "names the field 'speaker'"),
])
def test_bad_input_is_one_sentence_and_exit_2(t5_folder, data_file, tmp_path, capsys, extra, message):
    argv = [t5_folder, "--data", data_file, "--target-field", "summary", "--out", tmp_path / "e"]
    if "--source-field" not in extra:
        argv += ["--source-field", "dialogue"]
    rc = run_cli(*argv, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("lmforge evaluate: error:") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_mismatched_parallel_files_exit_2(t5_folder, tmp_path, capsys):
    (tmp_path / "v.en").write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "v.de").write_text("eins\n", encoding="utf-8")
    rc = run_cli(t5_folder, "--data", f"{tmp_path / 'v.en'},{tmp_path / 'v.de'}", "--out", tmp_path / "e")
    assert rc == 2 and "has 2 lines but" in capsys.readouterr().err


def test_empty_target_exits_2(t5_folder, tmp_path, capsys):
    (tmp_path / "d.jsonl").write_text('{"source": "hello there", "target": ""}\n', encoding="utf-8")
    rc = run_cli(t5_folder, "--data", tmp_path / "d.jsonl", "--source-field", "source", "--target-field", "target",
                 "--out", tmp_path / "e")
    assert rc == 2 and "has an empty target 'target'" in capsys.readouterr().err
