import json

import pytest
import torch
from train_helpers import tiny

import lmforge
from lmforge.errors import LmforgeError
from lmforge.train import TrainConfig, train


def test_run_folder_holds_metrics_plot_config_and_loadable_checkpoints(tmp_path, prepared):
    events = []
    result = train(tiny(tmp_path / "run", prepared), quiet=True, callback=events.append)
    run = tmp_path / "run"
    assert result.stopped == "max_iters" and result.iters == 8 and result.best_val_loss is not None
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [0, 4, 8]
    for key in ("iter", "train_loss", "val_loss", "val_ppl", "lr", "tokens_per_sec", "elapsed_s"):
        assert key in metrics[-1]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert TrainConfig.load(run / "config.yaml").model.n_embd == 32
    assert "--- iter 8 ---" in (run / "samples.txt").read_text()
    model, tokenizer = lmforge.load(run / "best")
    assert tokenizer.kind == "char" and model.config.n_layer == 1 and model.config.bias is False
    assert json.loads((run / "last" / "trainer_state.json").read_text())["iter"] == 8
    kinds = {e["event"] for e in events}
    assert {"step", "eval", "sample"} <= kinds
    assert [e["iter"] for e in events if e["event"] == "eval"] == [0, 4, 8]


def test_cpu_training_is_deterministic_and_prints_plain_lines(tmp_path, prepared, capsys):
    a = train(tiny(tmp_path / "a", prepared, **{"model.dropout": 0.1}))
    out = capsys.readouterr().out
    assert "iter 2/8: loss" in out and "tok/s" in out and "ETA" in out and "eval iter 4:" in out
    b = train(tiny(tmp_path / "b", prepared, **{"model.dropout": 0.1}), quiet=True)
    assert capsys.readouterr().out == ""
    assert a.last_eval["val_loss"] == b.last_eval["val_loss"]
    wa, wb = lmforge.load(a.best_dir).model.state_dict(), lmforge.load(b.best_dir).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path, prepared):
    big = train(tiny(tmp_path / "big", prepared, batch_size=8, max_iters=3, sample_tokens=0), quiet=True)
    acc = train(tiny(tmp_path / "acc", prepared, batch_size=4, gradient_accumulation_steps=2, max_iters=3,
                     sample_tokens=0), quiet=True)
    wa, wb = lmforge.load(big.last_dir).model.state_dict(), lmforge.load(acc.last_dir).model.state_dict()
    assert big.last_eval["tokens"] == acc.last_eval["tokens"]
    # the same windows in another grouping: equal up to float summation order, not bitwise
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_patience_stops_when_validation_does_not_improve(tmp_path, prepared):
    # an update far below float32 resolution leaves the weights, and so the loss, unchanged
    result = train(tiny(tmp_path / "run", prepared, learning_rate=1e-30, min_lr=0, max_iters=40, eval_interval=2,
                        patience=2, sample_tokens=0), quiet=True)
    assert result.stopped == "patience" and result.iters == 4


def test_time_budget_stops_with_a_final_eval_and_checkpoint(tmp_path, prepared):
    cfg = TrainConfig(**{k: v for k, v in {"out_dir": str(tmp_path / "run"), "max_iters": 10_000,
                                           "max_minutes": 1e-4, "eval_iters": 1, "sample_tokens": 0}.items()})
    cfg.data.source = str(prepared)
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = 1, 16, 2, 8
    result = train(cfg, quiet=True)
    assert result.stopped == "max_minutes" and 1 <= result.iters < 10_000
    assert result.last_eval["iter"] == result.iters
    assert json.loads((result.last_dir / "trainer_state.json").read_text())["iter"] == result.iters


@pytest.mark.parametrize("overrides, message", [
    ({"model.block_size": 4000}, r"model.block_size \(4000\) is larger than the val split \(\d+ tokens\)"),
    ({"data.source": "nowhere.txt"}, "nowhere.txt does not exist"),
    ({"model.family": "gpt3"}, "unknown model family 'gpt3'"),
    ({"dtype": "float16", "device": "cpu"}, "float16 needs a GPU"),
])
def test_bad_settings_are_one_sentence(tmp_path, prepared, overrides, message):
    with pytest.raises(LmforgeError, match=message):
        train(tiny(tmp_path / "run", prepared, **overrides), quiet=True)


def test_cli_train_prepares_raw_text_and_reports_errors(tmp_path, corpus_file, capsys):
    from lmforge.cli.main import main

    run = tmp_path / "run"
    args = ["train", "--out_dir", str(run), "--data.source", str(corpus_file), "--model.n_layer", "1",
            "--model.n_embd", "16", "--model.n_head", "2", "--model.block_size", "8", "--max_iters", "2",
            "--eval_interval", "2", "--eval_iters", "1", "--sample_tokens", "0", "--quiet"]
    assert main(args) == 0
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "char" and manifest["request"]["source"] == str(corpus_file)
    assert main(args) == 2
    assert "already holds a run; resume it with --resume" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
