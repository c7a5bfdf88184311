"""Checkpoint formats (safetensors, sharded, .bin), the CLI's info/convert, and clear errors on bad folders."""

import json
import subprocess
import sys

import pytest
import torch

import lmforge
from hf_models import hf_position_ids, left_padded_batch, save_tiny
from lmforge.cli.main import main
from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.models import DecoderLM


def logits_equal(model, hf, tol=1e-4):
    ids, mask = left_padded_batch()
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=hf_position_ids(mask)).logits
    return (ours - theirs).abs()[mask.bool()].max().item() <= tol


def test_sharded_safetensors(tmp_path):
    hf = save_tiny("llama", tmp_path / "m")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert logits_equal(lmforge.load(tmp_path / "sharded").model, hf)


def test_pytorch_bin_and_convert_to_safetensors(tmp_path, capsys):
    hf = save_tiny("gpt2", tmp_path / "m")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "m" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert logits_equal(lmforge.load(tmp_path / "bin").model, hf)
    assert main(["convert", str(tmp_path / "bin"), str(tmp_path / "st"), "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "st" / "model.safetensors").is_file()
    assert lmforge.load(tmp_path / "st", dtype=None).model.wte.weight.dtype == torch.bfloat16
    capsys.readouterr()
    assert main(["info", str(tmp_path / "st"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "gpt2" and info["dtype"] == "bfloat16" and info["vocab_size"] == 97
    assert info["parameters"] == hf.num_parameters() and info["context_length"] == 64


def test_bias_free_model_round_trips_through_gpt2_format(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig.for_family("gpt2", vocab_size=50, n_layer=2, n_head=2, n_embd=16, block_size=32, bias=False)
    torch.manual_seed(0)
    model = DecoderLM(cfg).eval()
    lmforge.save(model, tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        assert torch.allclose(model(ids), hf(ids).logits, atol=1e-5)
    again = lmforge.load(tmp_path / "m").model
    assert not again.config.bias and again.num_parameters() == model.num_parameters()


def cli_error(args):
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stderr.strip()


@pytest.fixture
def tiny_folder(tmp_path):
    save_tiny("llama", tmp_path / "m")
    return tmp_path / "m"


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = cli_error(["info", str(tmp_path / "empty")])
    assert code == 2 and "config.json" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_unknown_model_type(tiny_folder):
    cfg = json.loads((tiny_folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tiny_folder / "config.json").write_text(json.dumps(cfg))
    code, err = cli_error(["info", str(tiny_folder)])
    assert code == 2 and "'mamba'" in err and "llama" in err and "Traceback" not in err


def test_truncated_safetensors(tiny_folder):
    path = tiny_folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    code, err = cli_error(["info", str(tiny_folder)])
    assert code == 2 and "truncated" in err and "Traceback" not in err


def test_missing_tensor_named(tiny_folder):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_folder / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tiny_folder / "model.safetensors")
    code, err = cli_error(["convert", str(tiny_folder), str(tiny_folder.parent / "out")])
    assert code == 2 and "model.layers.1.mlp.up_proj.weight" in err and "Traceback" not in err
    assert not (tiny_folder.parent / "out").exists()


def test_shape_mismatch_and_extra_tensor(tiny_folder):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_folder / "model.safetensors")
    state["model.extra.weight"] = torch.zeros(3)
    save_file(state, tiny_folder / "model.safetensors")
    with pytest.raises(LmforgeError, match="model.extra.weight"):
        lmforge.load(tiny_folder)
    del state["model.extra.weight"]
    state["model.norm.weight"] = torch.zeros(5)
    save_file(state, tiny_folder / "model.safetensors")
    with pytest.raises(LmforgeError, match=r"model.norm.weight has shape \(5,\)"):
        lmforge.load(tiny_folder)


def test_help_lists_verbs():
    proc = subprocess.run([sys.executable, "-m", "lmforge.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for verb in ("train", "generate", "info", "convert", "demo"):
        assert verb in proc.stdout
