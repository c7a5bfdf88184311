"""The command line: convert --quantize, info, --quantize at load, and bad input (one sentence, exit 2, nothing
written)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmforge
from hf_models import save_tiny
from lmforge.cli.main import main
from lmforge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2") / "model"
    save_tiny("gpt2", folder)  # widths 32 and 128: int4 groups of 32 divide them
    tokenizer = Tokenizer.train_char(["".join(map(chr, range(32, 127)))], special_tokens=["<s>", "</s>"])  # 97
    tokenizer.save(folder)
    return folder


def _fails(capsys, argv, *phrases) -> None:
    try:
        status = main(argv)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in err, err


def test_convert_writes_a_folder_info_describes_and_load_reads_as_is(gpt2, tmp_path, capsys):
    out = tmp_path / "int4"
    assert main(["convert", str(gpt2), str(out), "--quantize", "int4", "--group-size", "32"]) == 0
    config = json.loads((out / "config.json").read_text())
    q = config["quantization_config"]
    assert (q["quant_method"], q["bits"], q["group_size"]) == ("lmforge", 4, 32) and "lm_head" not in q["modules"]
    tensors = load_file(out / "model.safetensors")
    assert tensors["transformer.h.0.attn.c_attn.qweight"].dtype == torch.uint8
    assert tensors["transformer.h.0.attn.c_attn.qweight"].shape == (96, 16)  # (out, in/2), nn.Linear's orientation
    assert tensors["transformer.h.0.attn.c_attn.scales"].shape == (96, 1)
    assert "transformer.h.0.attn.c_attn.weight" not in tensors and (out / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["quantization"]["bits"] == 4 and len(info["quantization"]["modules"]) == 8
    assert main(["info", str(out)]) == 0
    assert "int4 weights, groups of 32 inputs (8 linear layers)" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "ab", "--max-new-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("verb", [["generate", "--prompt", "ab", "--max-new-tokens", "3", "--json"],
                                  ["score", "--text", "abc", "--json"]])
def test_quantize_at_load_on_the_loading_verbs(gpt2, capsys, verb):
    assert main([verb[0], str(gpt2), *verb[1:], "--quantize", "int8"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_bad_input_is_one_sentence_and_exit_2(gpt2, tmp_path, capsys):
    q8 = tmp_path / "int8"
    assert main(["convert", str(gpt2), str(q8), "--quantize", "int8"]) == 0
    capsys.readouterr()
    _fails(capsys, ["convert", str(q8), str(tmp_path / "again"), "--quantize", "int4"], "already quantized")
    _fails(capsys, ["generate", str(q8), "--prompt", "a", "--quantize", "int8"], "already quantized")
    _fails(capsys, ["convert", str(gpt2), str(tmp_path / "x"), "--quantize", "int2"], "invalid choice")
    _fails(capsys, ["convert", str(gpt2), str(tmp_path / "x"), "--quantize", "int4", "--group-size", "48"],
           "group size 48 is not supported")
    _fails(capsys, ["convert", str(gpt2), str(tmp_path / "x"), "--quantize", "int4", "--group-size", "64"],
           "does not divide the 32 inputs of layer blocks.0.attn.qkv")
    _fails(capsys, ["convert", str(gpt2), str(tmp_path / "x"), "--quantize", "int8", "--group-size", "32"],
           "int4 only")
    assert not (tmp_path / "again").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("corruption", ["nan", "negative", "shape", "missing"])
def test_a_corrupt_scales_tensor_is_refused(gpt2, tmp_path, capsys, corruption):
    q8 = tmp_path / "int8"
    assert main(["convert", str(gpt2), str(q8), "--quantize", "int8"]) == 0
    tensors = load_file(q8 / "model.safetensors")
    key = "transformer.h.1.mlp.c_proj.scales"
    if corruption == "nan":
        tensors[key][3] = float("nan")
    elif corruption == "negative":
        tensors[key][0] = -1.0
    elif corruption == "shape":
        tensors[key] = tensors[key][:-1].clone()
    else:
        del tensors[key]
    save_file(tensors, q8 / "model.safetensors")
    capsys.readouterr()
    _fails(capsys, ["generate", str(q8), "--prompt", "a"], "scales" if corruption != "missing" else "missing",
           str(q8))


def test_merging_lora_into_an_integer_base_is_refused(gpt2, tmp_path, capsys):
    from lmforge.adapt import AdapterSettings, add_adapter, save_adapter

    model = lmforge.load(gpt2).model
    add_adapter(model, "a", AdapterSettings(method="lora", r=2, target_modules=["c_attn"]))
    save_adapter(model, tmp_path / "adapter")
    q8 = tmp_path / "int8"
    assert main(["convert", str(gpt2), str(q8), "--quantize", "int8"]) == 0
    capsys.readouterr()
    _fails(capsys, ["merge", str(q8), str(tmp_path / "adapter"), str(tmp_path / "merged")],
           "quantized (integer) weights", "merge it into the float base model")
    assert not (tmp_path / "merged").exists()
