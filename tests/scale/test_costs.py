"""Model arithmetic against references: transformers' num_parameters() for the same configuration, the GPT-3
paper's compute, and counts worked out by hand."""

import json
import time

import pytest
import torch

from lmforge.cli.main import main
from lmforge.config import ModelConfig
from lmforge.scale.costs import PF_DAY, model_costs, parse_amount, training_compute
from lmforge.scale.presets import GPT_FAMILY, preset_config


def hf_model_on_meta(name: str):
    """transformers' own model for a preset's shape, built without storage."""
    import transformers as tf

    shape = GPT_FAMILY[name].shape
    if shape["family"] == "openai-gpt":
        cfg, cls = tf.OpenAIGPTConfig(vocab_size=shape["vocab_size"], n_positions=shape["block_size"],
                                      n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                                      n_head=shape["n_head"]), tf.OpenAIGPTLMHeadModel
    else:
        cfg, cls = tf.GPT2Config(vocab_size=shape["vocab_size"], n_positions=shape["block_size"],
                                 n_embd=shape["n_embd"], n_layer=shape["n_layer"],
                                 n_head=shape["n_head"]), tf.GPT2LMHeadModel
    with torch.device("meta"):
        return cls(cfg)


@pytest.mark.parametrize("name", list(GPT_FAMILY))
def test_parameter_counts_equal_transformers(name):
    hf = hf_model_on_meta(name)
    costs = model_costs(preset_config(name))
    assert costs.parameters == hf.num_parameters()
    assert costs.parameters_without_embeddings == hf.num_parameters(exclude_embeddings=True)


def test_counts_agree_with_the_papers():
    printed = {"openai-gpt": 117e6, "gpt2": 124e6, "gpt2-medium": 355e6, "gpt2-large": 774e6, "gpt2-xl": 1558e6,
               "gpt3-125m": 125e6, "gpt3-350m": 350e6, "gpt3-760m": 760e6, "gpt3-1.3b": 1.3e9, "gpt3-2.7b": 2.7e9,
               "gpt3-6.7b": 6.7e9, "gpt3-13b": 13e9, "gpt3-175b": 175e9}
    for name, n in printed.items():
        assert abs(model_costs(preset_config(name)).parameters / n - 1) < 0.035, name


def test_gpt3_175b_on_300b_tokens_is_the_papers_compute():
    """GPT-3 paper, Table D.1: 3.14e23 FLOPs, 3.64e3 PF-days for 175B on 300B tokens."""
    costs = model_costs(preset_config("gpt3-175b"))
    run = training_compute(costs, 300e9, 1e15)
    assert f"{run.flops:.2e}" == "3.14e+23"
    assert f"{run.pf_days:.2e}" == "3.64e+03"
    assert run.seconds == pytest.approx(run.flops / 1e15)
    assert run.pf_days * PF_DAY == pytest.approx(run.flops)


def test_kaplan_count_by_hand():
    """GPT-2 small at 1024 context: N = 12 · 12 · 768² + biases and norms; attention adds 6 · 12 · 1024 · 768."""
    c = model_costs(preset_config("gpt2"))
    n_body = c.parameters_without_embeddings
    layer = 4 * 768 * 768 + 3 * 768 + 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768  # attn, mlp, two norms
    assert n_body == 12 * layer + 2 * 768
    assert c.flops_per_token_6n == 6 * c.parameters
    assert c.flops_per_token_kaplan == 6 * n_body + 6 * 12 * 1024 * 768


def test_memory_and_kv_cache_by_hand():
    cfg = ModelConfig.for_family("llama", vocab_size=100, n_layer=3, n_head=4, n_kv_head=2, n_embd=32,
                                 intermediate_size=64, block_size=16)
    c = model_costs(cfg)
    n = c.parameters
    assert c.memory["float32"] == {"weights": 4 * n, "gradients": 4 * n, "adamw": 8 * n, "total": 16 * n}
    assert c.memory["int8"]["total"] == 4 * n and c.memory["mixed"]["total"] == 16 * n
    assert c.kv_cache_per_token == {"float32": 2 * 3 * 2 * 8 * 4, "bfloat16": 2 * 3 * 2 * 8 * 2, "int8": 2 * 3 * 2 * 8}


def test_amounts_read_with_suffixes():
    assert parse_amount("300B", "x") == 300e9 and parse_amount("3e11", "x") == 3e11
    assert parse_amount("2.5t", "x") == 2.5e12 and parse_amount("1e15", "x") == 1e15


def test_info_preset_gpt3_175b_in_seconds(capsys):
    began = time.perf_counter()
    assert main(["info", "--preset", "gpt3-175b", "--tokens", "300B", "--flops-per-second", "1e15", "--json"]) == 0
    assert time.perf_counter() - began < 20
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 174_604_259_328
    assert round(info["training"]["pf_days"]) == 3638
    assert main(["info", "--preset", "openai-gpt"]) == 0
    text = capsys.readouterr().out
    assert "116,534,784" in text and "post-norm" in text


def test_info_measures_the_machine_without_flops_per_second(capsys):
    assert main(["info", "--preset", "tiny-gpt2", "--tokens", "1M", "--json"]) == 0
    training = json.loads(capsys.readouterr().out)["training"]
    assert training["flops_per_second"] > 1e8 and training["flops_per_second_source"].startswith("measured")


def test_unknown_preset_is_one_sentence(capsys):
    assert main(["info", "--preset", "gpt5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown preset 'gpt5'" in err and "gpt3-175b" in err
    assert main(["info", "--preset", "gpt2", "--tokens", "lots"]) == 2
    assert "cannot read --tokens" in capsys.readouterr().err
