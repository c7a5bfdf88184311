"""A pickle that would run code when loaded is refused with one sentence (exit status 2), and nothing runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fault_models import tiny_model_folder
from safetensors.torch import load_file

from lmforge.cli.main import main
from lmforge.errors import LmforgeError
from lmforge.hub.hf import load_torch_file


class RunsCode:
    """Unpickling this calls os.system: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_bin(folder: Path, marker: Path) -> Path:
    """`folder` with its weights as a pytorch_model.bin that also pickles a RunsCode."""
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save({**state, "payload": RunsCode(marker)}, folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin"


@pytest.fixture
def evil_folder(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    folder = tiny_model_folder(tmp_path / "model")
    malicious_bin(folder, marker)
    return folder, marker


def test_the_payload_really_runs_code_when_unpickled_unsafely(tmp_path):
    """The fixture is dangerous for real: loading it without weights_only runs the command."""
    marker = tmp_path / "code-ran"
    torch.save({"payload": RunsCode(marker)}, tmp_path / "evil.bin")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("verb", [["info"], ["generate", "--max-new-tokens", "2"], ["score", "--text", "the king"],
                                  ["convert", "DST"]])
def test_every_verb_refuses_the_pickle_in_one_sentence(evil_folder, verb, capsys, tmp_path):
    folder, marker = evil_folder
    args = [verb[0], str(folder), *(str(tmp_path / "out") if a == "DST" else a for a in verb[1:])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{folder / 'pytorch_model.bin'} was refused because it holds objects other than tensors, which could " \
           "run code when loaded; re-save it as safetensors with the tool that wrote it" in err
    assert "weights_only" not in err and "unsafe" not in err.lower()  # never an option to load it anyway
    assert not marker.exists(), "the pickle ran code"
    assert not (tmp_path / "out").exists()


def test_a_clean_bin_still_loads(tmp_path):
    folder = tiny_model_folder(tmp_path / "model")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert main(["info", str(folder)]) == 0


def test_a_truncated_bin_is_corrupt_not_dangerous(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"w": torch.ones(64)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LmforgeError, match="could not be read|corrupt or truncated") as info:
        load_torch_file(path)
    assert "could run code" not in str(info.value)


def test_an_adapter_bin_and_a_resume_state_are_refused_alike(tmp_path):
    marker = tmp_path / "code-ran"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 2, "lora_alpha": 4, '
                                                 '"target_modules": ["c_attn"]}')
    torch.save({"payload": RunsCode(marker)}, adapter / "adapter_model.bin")
    from lmforge.adapt.peft_format import read_folder
    from lmforge.train.checkpoint import load_resumable

    with pytest.raises(LmforgeError, match="holds objects other than tensors, which could run code"):
        read_folder(adapter)
    run = tmp_path / "last"
    run.mkdir()
    torch.save({"payload": RunsCode(marker)}, run / "optimizer.pt")
    torch.save({}, run / "training_state.pt")
    with pytest.raises(LmforgeError, match=r"optimizer.pt was refused because it holds objects other than tensors"):
        load_resumable(run, torch.device("cpu"))
    assert not marker.exists()
