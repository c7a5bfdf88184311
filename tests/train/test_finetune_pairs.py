"""Fine-tuning smoke tests: a seq2seq model and a decoder-only prompt->completion model each overfit a
handful of pairs (the loss falls, greedy decoding reproduces a target); config overrides and errors."""

import json
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.cli.main import main
from lmforge.config import encdec_preset
from lmforge.data.pairs import PairEncoder
from lmforge.errors import LmforgeError
from lmforge.generate.api import generate
from lmforge.models.encdec import EncoderDecoderLM
from lmforge.tokenizer import Tokenizer
from lmforge.train import FinetuneConfig, finetune
from lmforge.train.pairs import COPY_PROMPT, copy_examples

PAIRS = [
    {"id": "a", "text": "the cat sat on the mat", "summary": "cat on mat"},
    {"id": "b", "text": "a dog ran in the park all day", "summary": "dog ran"},
    {"id": "c", "text": "birds sing loudly every single morning", "summary": "birds sing"},
    {"id": "d", "text": "the sun rises in the east", "summary": "sun rises"},
]
QA = [
    {"question": "colour of the sky?", "answer": " blue"},
    {"question": "colour of grass?", "answer": " green"},
    {"question": "colour of snow?", "answer": " white"},
    {"question": "colour of coal?", "answer": " black"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def small_run(tmp_path, data_file, **overrides):
    settings = {"out_dir": str(tmp_path / "run"), "data": {"train": data_file, "val": data_file, "vocab_size": 300,
                                                           "max_source_length": 32, "max_target_length": 16},
                "model": {"preset": "tiny-t5", "dropout": 0.0}, "max_iters": 40, "learning_rate": 5e-3,
                "warmup_iters": 5, "eval_interval": 20, "label_smoothing": 0.0, "num_beams": 1,
                "max_new_tokens": 8, "gen_examples": 4, "device": "cpu", "seed": 0}
    for key, value in overrides.items():
        if isinstance(value, dict):
            settings[key] = {**settings.get(key, {}), **value}
        else:
            settings[key] = value
    return settings


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seq2seq")
    data = write_jsonl(tmp / "pairs.jsonl", PAIRS)
    config = small_run(tmp, data, data={"source_field": "text", "target_field": "summary",
                                        "template": "summarize: {text}"},
                       metrics="rouge,length", best_metric="rouge1")
    return finetune(config, quiet=True), tmp


def test_seq2seq_overfits_a_handful_of_pairs(seq2seq_run):
    result, _ = seq2seq_run
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < 0.5 * metrics[0]["val_loss"]
    # untrained, the source hardly matters; trained, a target after the wrong source costs far more
    assert abs(metrics[0]["source_gain"]) < 0.1 and metrics[-1]["source_gain"] > 1.0
    assert result.last_eval["rouge1"] > 90 and result.best_metric == "rouge1"
    for name in ("config.yaml", "log.jsonl", "loss.png", "samples.txt"):
        assert (result.run_dir / name).is_file()
    ckpt = lmforge.load(result.best_dir)
    assert ckpt.generation_config["num_beams"] == 1
    state = json.loads((result.best_dir / "trainer_state.json").read_text())
    assert state["config"]["data"]["template"] == "summarize: {text}"
    ids = ckpt.tokenizer.encode("summarize: the cat sat on the mat", add_eos=True)
    out = generate(ckpt, [ids], max_new_tokens=8)
    assert out.completions[0][0].text.strip() == "cat on mat"


def test_fine_tune_an_imported_checkpoint(seq2seq_run, tmp_path):
    result, data_dir = seq2seq_run
    config = small_run(tmp_path, str(data_dir / "pairs.jsonl"), init_from=str(result.best_dir), max_iters=2,
                       data={"source_field": "text", "target_field": "summary"}, gen_examples=0)
    tuned = finetune(config, quiet=True)
    assert tuned.iters == 2 and (tuned.last_dir / "model.safetensors").is_file()
    before = lmforge.load(result.best_dir).model.shared.weight
    assert not torch.equal(before, lmforge.load(tuned.last_dir).model.shared.weight)
    with pytest.raises(LmforgeError, match="already holds a run"):
        finetune(config, quiet=True)


def test_decoder_only_prompt_completion_through_the_cli(tmp_path, capsys):
    data = write_jsonl(tmp_path / "qa.jsonl", QA)
    run = tmp_path / "run"
    rc = main(["finetune", "--quiet", "--out_dir", str(run), "--data.train", data, "--data.val", data,
               "--data.source_field", "question", "--data.target_field", "answer",
               "--data.template", "Q: {question}\nA:", "--data.vocab_size", "300",
               "--data.max_source_length", "24", "--data.max_target_length", "8",
               "--model.preset", "tiny-gpt2", "--model.dropout", "0", "--max_iters", "40",
               "--learning_rate", "5e-3", "--warmup_iters", "5", "--eval_interval", "20", "--label_smoothing", "0",
               "--num_beams", "1", "--max_new_tokens", "4", "--gen_examples", "0", "--device", "cpu"])
    assert rc == 0 and "best val_loss" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < 0.2 * metrics[0]["val_loss"]
    ckpt = lmforge.load(run / "best")
    assert not ckpt.model.is_encoder_decoder and ckpt.model.config.block_size == 32
    prompt = [ckpt.tokenizer.bos_token_id] + ckpt.tokenizer.encode("Q: colour of snow?\nA:")
    out = generate(ckpt, [prompt], max_new_tokens=8)
    assert out.completions[0][0].text == " white"


def test_config_overrides_and_errors(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("max_iters: 5\ndata:\n  template: 'summarize: {dialogue}'\nmodel:\n  preset: tiny-bart\n")
    config = FinetuneConfig.load(yaml_file, ["--model.d_model", "32", "data.too_long=error", "--max-iters=7"])
    assert (config.max_iters, config.model.preset, config.model.d_model) == (7, "tiny-bart", 32)
    assert config.data.template == "summarize: {dialogue}" and config.data.too_long == "error"
    with pytest.raises(LmforgeError, match="did you mean label_smoothing"):
        FinetuneConfig.load(overrides={"label_smothing": 0.1})
    with pytest.raises(LmforgeError, match="too_long must be truncate, drop or error"):
        FinetuneConfig.load(overrides={"data.too_long": "cut"})
    with pytest.raises(LmforgeError, match="best_metric 'bleu'"):
        finetune({"metrics": "rouge", "best_metric": "bleu", "out_dir": str(tmp_path / "x")}, quiet=True)
    with pytest.raises(LmforgeError, match="unknown model preset 'tiny-xl'"):
        finetune(small_run(tmp_path, write_jsonl(tmp_path / "p.jsonl", PAIRS), model={"preset": "tiny-xl"},
                           data={"source_field": "text", "target_field": "summary"}), quiet=True)


def test_cli_errors_exit_2(tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    rc = main(["finetune", "--quiet", "--out_dir", str(tmp_path / "r"), "--data.train", data, "--data.val", data,
               "--data.source_field", "dialogue", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "no source field 'dialogue'; its fields are: id, text, summary" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_untied_t5_head_from_scratch(tmp_path):
    """model.tie_embeddings false gives T5 its own output head, initialised for unit-variance logits."""
    torch.manual_seed(0)
    model = EncoderDecoderLM(encdec_preset("tiny-t5", d_model=256, head_dim=64, vocab_size=4000,
                                           tie_word_embeddings=False))
    assert model.lm_head.weight is not model.shared.weight and not model.config.scale_decoder_outputs
    assert abs(model.lm_head.weight.std().item() - 256 ** -0.5) < 2e-3
    assert abs(model.shared.weight.std().item() - 1.0) < 2e-2

    data = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    result = finetune(small_run(tmp_path, data, max_iters=2, gen_examples=0,
                                model={"tie_embeddings": False},
                                data={"source_field": "text", "target_field": "summary"}), quiet=True)
    saved = json.loads((result.last_dir / "config.json").read_text())
    assert saved["tie_word_embeddings"] is False
    ckpt = lmforge.load(result.last_dir)
    assert ckpt.model.lm_head.weight.data_ptr() != ckpt.model.shared.weight.data_ptr()


def test_copy_examples_are_windows_of_the_sources():
    sources = [p["text"] * 3 for p in PAIRS] * 5
    tokenizer = Tokenizer.train_bpe(sources, vocab_size=300, special_tokens=("<s>", "<pad>", "</s>"))
    encoder = PairEncoder(tokenizer, True, "bart", 24, 10)
    copies = copy_examples(sources, tokenizer, encoder, 0.5, seed=3)
    assert len(copies) == 10
    prompt = tokenizer.encode(COPY_PROMPT)
    encoded = [tokenizer.encode(s) for s in sources]
    for source, target in copies:
        window = target[1:-1]
        assert target == encoder.bos + window + encoder.eos and len(target) <= 10 and len(source) <= 24
        assert source == encoder.bos + prompt + window + encoder.eos
        assert any(window == toks[i:i + len(window)] for toks in encoded for i in range(len(toks)))


def test_copy_fraction_in_a_run(tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    result = finetune(small_run(tmp_path, data, max_iters=2, gen_examples=0, copy_fraction=1.0,
                                data={"source_field": "text", "target_field": "summary"}), quiet=True)
    assert any("4 copy example(s) from" in note and "train first" in note for note in result.notes)
    # the 4 pairs and the 4 copies are one batch each: step 1 is the copy pass, step 2 the first epoch
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["iter"] == 2 and metrics[-1]["epoch"] == 1
    with pytest.raises(LmforgeError, match="copy_fraction applies to encoder-decoder models only"):
        finetune(small_run(tmp_path, write_jsonl(tmp_path / "q.jsonl", QA), out_dir=str(tmp_path / "dec"),
                           copy_fraction=0.5, model={"preset": "tiny-gpt2"},
                           data={"source_field": "question", "target_field": "answer"}), quiet=True)


@pytest.mark.parametrize("name", ["multi30k-cpu", "samsum-cpu"])
def test_seq2seq_recipes_load(name):
    config = FinetuneConfig.load(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert config.model.preset == "tiny-bart" and config.max_minutes == 60 and config.max_iters is None
