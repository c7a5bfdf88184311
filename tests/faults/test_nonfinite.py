"""Non-finite numbers: a checkpoint with NaN or infinite weights is reported by `lmforge info` and refused by the
verbs that decode with it; a run whose loss stays non-finite stops with a sentence after max_nonfinite_steps
skipped steps in a row, keeping its last good checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fault_models import cli_args, one_thread, tiny_model_folder, train_settings
from safetensors.torch import load_file, save_file

from lmforge.cli.main import main
from lmforge.errors import LmforgeError
from lmforge.train import train
from lmforge.train.lm import LanguageModelling


@pytest.fixture
def poisoned(tmp_path):
    folder = tiny_model_folder(tmp_path / "model")
    state = load_file(folder / "model.safetensors")
    name = "transformer.h.0.attn.c_proj.weight"
    state[name].view(-1)[:2] = torch.tensor([math.nan, math.inf])
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder, name


def test_info_reports_non_finite_weights(poisoned, capsys):
    folder, name = poisoned
    assert main(["info", str(folder), "--json"]) == 0
    bad = json.loads(capsys.readouterr().out)["non_finite_weights"]  # by lmforge's names of the tensors
    assert bad == {"blocks.0.attn.proj.weight": 2}  # transformer.h.0.attn.c_proj.weight in the file
    assert main(["info", str(folder)]) == 0
    assert "NOT FINITE: 2 NaN or infinite values in 1 tensor(s)" in capsys.readouterr().out
    assert main(["info", str(tiny_model_folder(folder.parent / "clean"))]) == 0
    assert "weights       finite" in capsys.readouterr().out


@pytest.mark.parametrize("verb", [["generate", "--max-new-tokens", "2"], ["score", "--text", "the king"]])
def test_decoding_verbs_refuse_non_finite_weights(poisoned, verb, capsys):
    folder, name = poisoned
    assert main([verb[0], str(folder), *verb[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmforge {verb[0]}: error: the weights of {folder} hold NaN or infinite values (2 in ")
    assert err.endswith("), so it cannot produce text; use an earlier checkpoint of its run (best/ or last/)\n")
    assert err.count("\n") == 1


def nan_loss_from(call: int, monkeypatch) -> None:
    """Every loss from the `call`-th micro-batch on is NaN (as a diverged run's)."""
    real_loss, calls = LanguageModelling.loss, []

    def loss(self, module, batch):
        calls.append(1)
        value, logged, tokens = real_loss(self, module, batch)
        return (value * math.nan, logged * math.nan, tokens) if len(calls) >= call else (value, logged, tokens)

    monkeypatch.setattr(LanguageModelling, "loss", loss)


def test_a_diverged_run_stops_with_a_sentence_and_keeps_the_last_good_checkpoint(tmp_path, prepared, monkeypatch,
                                                                                 capsys):
    run = tmp_path / "run"
    settings = train_settings(run, prepared, max_iters=40, max_nonfinite_steps=3)
    nan_loss_from(6, monkeypatch)  # steps 1-5 are fine, the checkpoint at step 4 too
    with one_thread():
        assert main(["train", *cli_args(settings), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == (f"lmforge train: error: stopping at iter 8: 3 steps in a row had a loss or gradient that is not "
                   f"finite (lower learning_rate, check the data, or use float32); the last good checkpoint is "
                   f"{run / 'last'}\n")
    assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 4
    from lmforge.hub.hf import load_folder, non_finite_weights

    assert non_finite_weights(load_folder(run / "last").model) == {}
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]


def test_isolated_non_finite_steps_are_skipped_and_zero_never_stops(tmp_path, prepared, monkeypatch):
    nan_loss_from(3, monkeypatch)
    with one_thread():
        result = train(train_settings(tmp_path / "run", prepared, max_iters=6, max_nonfinite_steps=0), quiet=True)
    assert result.iters == 6 and any("skipped 4 step(s)" in n for n in result.notes)
    with pytest.raises(LmforgeError, match="max_nonfinite_steps must not be negative"):
        train(train_settings(tmp_path / "other", prepared, max_nonfinite_steps=-1), quiet=True)
