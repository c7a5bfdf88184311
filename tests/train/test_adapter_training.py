"""Training adapters with the one loop: `lmforge train` and `lmforge finetune` with `adapter.*`. Only the adapter
learns (the base weights stay bit for bit), the optimizer holds state for the adapter alone, checkpoints are PEFT
adapter folders, and an interrupted run resumes bit for bit."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import tiny

import lmforge
from hf_models import save_tiny, save_tiny_with_tokenizer
from lmforge.cli.main import main
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.train import FinetuneConfig, TrainConfig, finetune, train

QA = [{"question": f"colour of {thing}?", "answer": f" {colour}"}
      for thing, colour in (("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"))]


@pytest.fixture(scope="module")
def base(tmp_path_factory, corpus_file):
    """A tiny random transformers Llama (grouped-query attention) with a character tokenizer of the corpus."""
    save_tiny("llama", folder := tmp_path_factory.mktemp("base") / "llama")
    return Tokenizer.train_char([corpus_file.read_text()]).save(folder)


@pytest.fixture(scope="module")
def qa_base(tmp_path_factory):
    """A tiny random GPT-2 over a 300-token byte-level BPE with an EOS token (the vocabulary is the model's)."""
    folder = tmp_path_factory.mktemp("qa-base") / "gpt2"
    save_tiny_with_tokenizer(folder)
    return folder


def lora_run(out_dir, corpus_file, base, **extra):
    return tiny(out_dir, corpus_file, **{"init_from": str(base), "adapter.method": "lora", "adapter.r": 4,
                                         "adapter.alpha": 8, "adapter.dropout": 0.1, "adapter.targets": "q_proj,v_proj",
                                         "learning_rate": 1e-2, "threads": 2, "max_iters": 8, **extra})


def test_lora_trains_only_the_adapter_and_checkpoints_a_peft_folder(tmp_path, corpus_file, base):
    result = train(lora_run(tmp_path / "run", corpus_file, base), quiet=True)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    for folder in (result.best_dir, result.last_dir):
        assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    tensors = load_file(result.last_dir / "adapter_model.safetensors")
    assert len(tensors) == 2 * 2 * 2  # layers x (q_proj, v_proj) x (lora_A, lora_B)
    trainable = sum(t.numel() for t in tensors.values())
    optimizer = torch.load(result.last_dir / "optimizer.pt", weights_only=True)
    assert sum(s["exp_avg"].numel() for s in optimizer["state"].values()) == trainable
    config = json.loads((result.last_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base) and config["target_modules"] == ["q_proj", "v_proj"]

    adapted = lmforge.load(base, adapter=result.best_dir)
    plain = lmforge.load(base).model.state_dict()
    with adapted.disable_adapter():  # the base weights are untouched
        ids = torch.tensor([adapted.tokenizer.encode("the king and queen")])
        assert torch.equal(adapted.model(ids), lmforge.load(base).model(ids))
    assert all(torch.equal(v, plain[k]) for k, v in adapted.model.state_dict().items() if k in plain)

    peft = pytest.importorskip("peft")
    import transformers

    hf = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), result.best_dir)
    with torch.no_grad():
        assert (hf.eval()(ids).logits - adapted.model(ids)).abs().max() <= 1e-4


PREFIX_PROJECTION = {"adapter.method": "prefix", "adapter.num_virtual_tokens": 3, "adapter.prefix_projection": True,
                     "adapter.encoder_hidden_size": 16}


@pytest.mark.parametrize("extra", [{}, PREFIX_PROJECTION], ids=["lora", "prefix-projection"])
def test_an_interrupted_adapter_run_resumes_bit_for_bit(extra, tmp_path, corpus_file, base):
    reference = train(lora_run(tmp_path / "ref", corpus_file, base, **extra), quiet=True)

    def interrupt(event):
        if event["event"] == "step" and event["iter"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    config = lora_run(tmp_path / "run", corpus_file, base, **extra)
    assert train(config, quiet=True, callback=interrupt).stopped == "interrupted"
    resumed = train(config, quiet=True, resume=True)
    assert resumed.iters == 8
    for name in ("adapter_model.safetensors",) + (("prefix_encoder.safetensors",) if extra else ()):
        ref, ours = (load_file(r.last_dir / name) for r in (reference, resumed))
        assert ref.keys() == ours.keys() and all(torch.equal(ref[k], ours[k]) for k in ref)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_prompt_completion_with_virtual_tokens_through_the_cli(method, tmp_path, qa_base, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA), encoding="utf-8")
    run = tmp_path / "run"
    rc = main(["finetune", "--quiet", "--out_dir", str(run), "--init_from", str(qa_base), "--data.train", str(data),
               "--data.val", str(data), "--data.source_field", "question", "--data.target_field", "answer",
               "--data.template", "Q: {question}\nA:", "--data.max_source_length", "24",
               "--data.max_target_length", "8", "--adapter.method", method, "--adapter.num_virtual_tokens", "4",
               "--adapter.init", "text", "--adapter.init_text", "answer with a colour", "--max_iters", "12",
               "--learning_rate", "3e-2", "--warmup_iters", "2", "--eval_interval", "6", "--label_smoothing", "0",
               "--num_beams", "2", "--max_new_tokens", "3", "--gen_examples", "2", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    config = json.loads((run / "best" / "adapter_config.json").read_text())
    assert config["peft_type"] == {"prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}[method]
    rc = main(["generate", str(qa_base), "--adapter", str(run / "best"), "--prompt", "Q: colour of snow?\nA:",
               "--max-new-tokens", "3"])
    assert rc == 0


def test_virtual_tokens_count_against_the_context_before_training(tmp_path, qa_base, capsys):
    """56 + 8 tokens fit the tiny model's 64 positions, but not with 4 virtual tokens in front: refused up front,
    not at the first long batch."""
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA), encoding="utf-8")
    rc = main(["finetune", "--quiet", "--out_dir", str(tmp_path / "run"), "--init_from", str(qa_base),
               "--data.train", str(data), "--data.val", str(data), "--data.source_field", "question",
               "--data.target_field", "answer", "--data.max_source_length", "56", "--data.max_target_length", "8",
               "--adapter.method", "prompt",
               "--adapter.num_virtual_tokens", "4", "--max_iters", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "and the adapter's 4 virtual tokens are longer than the context" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run" / "best").exists()


def test_seq2seq_lora_finetune(tmp_path):
    from hf_models import save_tiny_seq2seq

    base = tmp_path / "t5"
    save_tiny_seq2seq("t5", base)
    Tokenizer.train_char([q["question"] + q["answer"] for q in QA], special_tokens=("<pad>", "</s>")).save(base)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QA), encoding="utf-8")
    result = finetune({"out_dir": str(tmp_path / "run"), "init_from": str(base), "adapter": {"method": "lora"},
                       "data": {"train": str(data), "val": str(data), "source_field": "question",
                                "target_field": "answer", "max_source_length": 16, "max_target_length": 8},
                       "max_iters": 6, "eval_interval": 3, "learning_rate": 1e-2, "warmup_iters": 1,
                       "gen_examples": 2, "num_beams": 2, "max_new_tokens": 4, "device": "cpu"}, quiet=True)
    config = json.loads((result.best_dir / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM" and config["target_modules"] == ["q", "v"]
    assert "rouge1" in result.last_eval


def test_adapter_config_errors(tmp_path, corpus_file, base):
    with pytest.raises(LmforgeError, match="r .* at least 1"):
        TrainConfig.load(overrides=lora_run(tmp_path, corpus_file, base, **{"adapter.r": 0}))
    with pytest.raises(LmforgeError, match="adapter.r needs adapter.method"):
        TrainConfig.load(overrides={"adapter.r": 16})
    with pytest.raises(LmforgeError, match="init_from"):
        FinetuneConfig.load(overrides={"adapter.method": "lora"})
    with pytest.raises(LmforgeError, match="'qkv' names no linear module .* q_proj, k_proj, v_proj"):
        train(lora_run(tmp_path / "bad", corpus_file, base, **{"adapter.targets": "qkv"}), quiet=True)


def test_lora_trains_under_torchrun_with_ddp(tmp_path, corpus_file, base):
    import subprocess
    import sys

    args = ["--init_from", str(base), "--data.source", str(corpus_file), "--model.block_size", "16", "--batch_size", "4",
            "--max_iters", "4", "--eval_interval", "2", "--eval_iters", "1", "--sample_tokens", "0", "--threads", "1",
            "--adapter.method", "lora", "--adapter.r", "4", "--out_dir", str(tmp_path / "ddp"), "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "lmforge.cli.main", "train", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and "of 0." in proc.stdout  # trainable of total parameters
    assert (tmp_path / "ddp" / "last" / "adapter_model.safetensors").is_file()
