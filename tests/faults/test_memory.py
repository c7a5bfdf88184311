"""Too big for memory: training and decoding are estimated before their big allocations and refused with the
estimate and the limit (--max-memory, or what the machine has available)."""

from __future__ import annotations

import pytest
import torch
from fault_models import cli_args, tiny_model_folder, train_settings

from lmforge import memory
from lmforge.cli.main import main
from lmforge.config import preset
from lmforge.errors import LmforgeError
from lmforge.models.decoder import DecoderLM


def test_sizes_parse_and_nonsense_is_refused():
    assert memory.parse_size("512MB") == 512 * 10**6 and memory.parse_size("8GiB") == 8 * 2**30
    assert memory.parse_size("1.5G") == 1_500_000_000 and memory.parse_size(4096) == 4096
    for bad in ("", "-1G", "0", "lots", "1.5 parsecs", "nan", "1e999999"):
        with pytest.raises(LmforgeError, match="must be a positive size"):
            memory.parse_size(bad)
    assert 0 < memory.available("cpu") < 2**50


def test_the_training_estimate_counts_what_autograd_keeps():
    """Measured against the process's peak memory of a real step would be noisy on a shared machine; instead
    the estimate's parts are checked against their definitions on a model whose sizes are known."""
    model = DecoderLM(preset("tiny-gpt2", vocab_size=100))
    n = sum(p.numel() for p in model.parameters())
    parts = memory.training_parts(model, rows=4, length=128, dtype="float32")
    assert parts["weights"] == 4 * n and parts["gradients"] == 4 * n and parts["optimizer"] == 8 * n
    per_layer = 4 * 128 * (34 * 64 + 5 * 2 * 128) * 2
    assert parts["activations"] == 2 * per_layer + 4 * 128 * 100 * 4 * 3
    frozen = DecoderLM(preset("tiny-gpt2", vocab_size=100)).requires_grad_(False)
    assert memory.training_parts(frozen, 4, 128, "float32")["optimizer"] == 0


def test_training_that_cannot_fit_is_refused_before_it_starts(tmp_path, prepared, capsys):
    run = tmp_path / "run"
    settings = train_settings(run, prepared, max_memory="100KB")
    assert main(["train", *cli_args(settings), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmforge train: error: training with micro-batches of 4 x 16 tokens needs about ")
    assert "(weights " in err and "optimizer " in err and "activations " in err
    assert err.endswith("but --max-memory is 97.7 KiB; lower batch_size (gradient_accumulation_steps keeps the batch), "
                        "the context or the model, or set max_memory if the estimate is wrong\n")
    assert not run.exists()  # nothing was written
    assert main(["train", *cli_args({**settings, "max_memory": "1GB", "max_iters": 1}), "--quiet"]) == 0


def test_the_default_limit_is_the_available_memory(tmp_path, prepared, monkeypatch):
    from lmforge.train import train

    monkeypatch.setattr(memory, "available", lambda device: 50_000)
    with pytest.raises(LmforgeError, match=r"but the machine has 48.8 KiB available"):
        train(train_settings(tmp_path / "run", prepared), quiet=True)


@pytest.mark.parametrize("verb", [["generate", "--num-beams", "4"], ["score", "--text", "the"]])
def test_decoding_that_cannot_fit_is_refused_before_loading(tmp_path, verb, capsys, monkeypatch):
    folder = tiny_model_folder(tmp_path / "model")
    loaded = []
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda *a, **k: loaded.append(1))
    assert main([verb[0], str(folder), *verb[1:], "--max-memory", "10KB"]) == 2
    err = capsys.readouterr().err
    sequences = 4 if verb[0] == "generate" else 1
    assert err.startswith(f"lmforge {verb[0]}: error: decoding {sequences} sequence(s) of up to 32 tokens with "
                          f"{folder} needs about ")
    assert "KV cache" in err and "but --max-memory is 9.8 KiB" in err and not loaded
    monkeypatch.undo()
    assert main([verb[0], str(folder), *verb[1:], "--max-memory", "1GB"]) == 0
