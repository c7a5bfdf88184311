"""`lmforge scale` end to end on a tiny grid, resuming, failures, Ctrl-C and bad input."""

import inspect
import json
import math
import os

import pytest
import yaml

from lmforge.cli.main import main
from lmforge.scale import sweep
from lmforge.scale.report import PLOTS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    """About 60,000 characters of English: the documentation of a few standard modules."""
    import argparse
    import collections
    import json as json_module
    import re
    import textwrap

    docs = []
    for module in (argparse, collections, json_module, re, textwrap, inspect, os):
        docs += [inspect.getdoc(getattr(module, name)) or "" for name in sorted(dir(module)) if not name.startswith("_")]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(d for d in docs if d)[:60000], encoding="utf-8")
    return str(path)


def lab_config(folder, corpus, **changes) -> str:
    cfg = {"out_dir": str(folder / "lab"), "data": {"source": corpus, "tokenizer": "char", "val_fraction": 0.1},
           "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 1}, {"n_layer": 1, "n_embd": 16, "n_head": 2},
                     {"n_layer": 2, "n_embd": 16, "n_head": 2}],
           "budgets": ["2e7", "4e7", "8e7"], "shape_rule": {"aspect_ratio": 8, "head_dim": 8}, "min_steps": 5,
           "evals_per_run": 1,
           "train": {"model.block_size": 16, "batch_size": 4, "eval_iters": 2, "learning_rate": 0.01,
                     "min_lr": 0.001, "threads": 1, "log_interval": 1}}
    cfg.update(changes)
    path = folder / "lab.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_a_tiny_grid_end_to_end_then_read_back(tmp_path, corpus, capsys):
    config = lab_config(tmp_path, corpus)
    assert main(["scale", "--config", config, "--check", "--predict", "1.2e8", "--bootstrap", "5"]) == 0
    lab = tmp_path / "lab"
    result = json.loads((lab / "scale.json").read_text())
    runs = result["runs"]
    assert len(runs) == 9 and all(r["status"] == "trained" for r in runs)
    tokens_per_step = 4 * 16
    for r in runs:
        step_compute = 6 * r["parameters"] * tokens_per_step
        assert abs(r["compute"] - r["budget"]) <= step_compute / 2 + 1  # the budget, to half a step
        assert r["compute"] == 6 * r["parameters"] * r["tokens"] and r["tokens"] == r["max_iters"] * tokens_per_step
        metrics = [json.loads(line) for line in open(os.path.join(r["folder"], "metrics.jsonl"))]
        assert metrics[-1]["iter"] == r["max_iters"]
        assert metrics[-1]["lr"] == pytest.approx(0.001)  # the cosine has reached min_lr exactly at the budget
        assert metrics[-1]["val_loss"] == pytest.approx(r["val_loss"])
    prediction, check = result["prediction"], result["check"]
    assert prediction["compute"] == pytest.approx(1.2e8) and check["status"] == "trained"
    assert prediction["measured"] == pytest.approx(check["val_loss"])
    assert prediction["error"] == pytest.approx(check["val_loss"] - prediction["loss"])
    assert prediction["loss_from"] == "frontier" and prediction["loss"] == prediction["loss_frontier"]
    assert prediction["error_parametric"] == pytest.approx(check["val_loss"] - prediction["loss_parametric"])
    assert result["largest_run_epochs"] == max(r["epochs"] for r in runs)
    fits = result["fits"]
    assert fits["parametric"]["alpha"] > 0 and len(fits["isoflop"]["parabolas"]) == 3
    for name in PLOTS.values():
        assert (lab / name).stat().st_size > 1000, name
    report = (lab / "report.md").read_text()
    for needed in ("## Every run", "## IsoFLOP curves", "Chinchilla", "Besiroglu", "epochs", "tokens per parameter",
                   "measured"):
        assert needed in report, needed
    assert "<img src='isoflop.png'" in (lab / "report.html").read_text()

    first = os.path.join(runs[0]["folder"], "last", "trainer_state.json")
    stamp = os.stat(first).st_mtime_ns
    capsys.readouterr()
    assert main(["scale", "--config", config, "--check", "--predict", "1.2e8", "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "9 finished run(s) read back" in out and "1 finished run(s) read back" in out
    assert os.stat(first).st_mtime_ns == stamp
    again = json.loads((lab / "scale.json").read_text())
    assert [r["status"] for r in again["runs"]] == ["read back"] * 9
    assert [r["val_loss"] for r in again["runs"]] == [r["val_loss"] for r in runs]
    lab_cfg = sweep.load_lab_config(config)
    plan = sweep.PlannedRun(**{k: runs[0][k] for k in ("name", "shape", "parameters", "budget", "max_iters", "tokens",
                                                       "compute", "epochs")})
    folder = tmp_path / "lab" / "runs" / plan.name
    same = sweep.train_config(lab_cfg, sweep.run_overrides(lab_cfg, plan, folder, lab / "data"))
    assert sweep.read_finished(folder, plan.max_iters, same) is not None
    same.learning_rate = 0.005  # a run made with other settings is not read back as this one
    assert sweep.read_finished(folder, plan.max_iters, same) is None


def fake_training(fail: str | None = None, interrupt_at: int | None = None):
    calls = []

    def run(lab, record, data, quiet):
        calls.append(record.plan.name)
        if record.plan.name == fail:
            raise RuntimeError("out of luck")
        if interrupt_at is not None and len(calls) == interrupt_at:
            record.status = "interrupted"
            return record
        p = record.plan
        record.status, record.val_loss, record.train_loss = "trained", 3 + 1e3 / p.parameters ** 0.5 + 1e2 / p.tokens ** 0.4, 3.0
        return record

    return run, calls


def test_a_failed_run_is_reported_and_the_rest_go_on(tmp_path, corpus, monkeypatch, capsys):
    lab = sweep.load_lab_config(lab_config(tmp_path, corpus))
    data = sweep.prepare_data(lab, print)
    plan = sweep.make_plan(lab, 50000, 90)
    run, calls = fake_training(fail=plan.runs[1].name)
    monkeypatch.setattr(sweep, "run_in_process", run)
    records, interrupted = sweep.run_grid(lab, plan.runs, data, print)
    assert not interrupted and len(calls) == len(plan.runs)
    assert records[1].status == "failed" and "out of luck" in records[1].error
    assert all(r.status == "trained" for i, r in enumerate(records) if i != 1)
    assert f"{plan.runs[1].name} failed: RuntimeError: out of luck" in capsys.readouterr().out


def test_runs_of_another_corpus_are_moved_aside_not_read_back(tmp_path, corpus, capsys):
    """The run folders are named by shape and budget only: after the corpus changes, a finished run of the old
    one must neither be read back nor resumed (the lab's recipe once picked up three that way)."""
    lab = sweep.load_lab_config(lab_config(tmp_path, corpus))
    sweep.prepare_data(lab, print)
    old_run = tmp_path / "lab" / "runs" / "L1-E8-C2.00e07" / "last"
    old_run.mkdir(parents=True)
    assert sweep.prepare_data(lab, print) and old_run.is_dir()  # the same corpus: nothing moves
    other = tmp_path / "other.txt"
    other.write_text(open(corpus, encoding="utf-8").read()[::-1], encoding="utf-8")
    sweep.prepare_data(sweep.load_lab_config(lab_config(tmp_path, str(other))), print)
    aside = list((tmp_path / "lab").glob("runs-before-*"))
    assert len(aside) == 1 and (aside[0] / "L1-E8-C2.00e07" / "last").is_dir() and not old_run.exists()
    assert "the corpus changed: the runs of the previous one moved to" in capsys.readouterr().out


def test_ctrl_c_stops_the_sweep_and_keeps_the_finished_runs(tmp_path, corpus, monkeypatch):
    run, calls = fake_training(interrupt_at=3)
    monkeypatch.setattr(sweep, "run_in_process", run)
    assert main(["scale", "--config", lab_config(tmp_path, corpus), "--quiet"]) == 130
    result = json.loads((tmp_path / "lab" / "scale.json").read_text())
    statuses = [r["status"] for r in result["runs"]]
    assert statuses[:3] == ["trained", "trained", "interrupted"] and set(statuses[3:]) == {"pending"}
    assert result["interrupted"] and len(calls) == 3


@pytest.mark.parametrize("changes, message", [
    ({"budgets": [100]}, "too small for the smallest model"),
    ({"max_epochs": 0.01}, "is too small for the repetition limit"),
    ({"budgets": [2e7, 5e6]}, "budget is too small for the larger models"),
    ({"memory_fraction": 1e-9}, "GiB to train"),
    ({"budget": [1e9]}, "did you mean budgets"),
    ({"train": {"learning_rat": 1}}, "did you mean learning_rate"),
    ({"size_range": {"min_parameters": 1e3, "max_parameters": 1e4, "count": 3}}, "not both"),
])
def test_bad_input_is_one_sentence_before_any_training(tmp_path, corpus, capsys, changes, message):
    assert main(["scale", "--config", lab_config(tmp_path, corpus, **changes)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "lab" / "runs").exists()


def test_a_parameter_range_follows_the_depth_width_rule(tmp_path, corpus):
    lab = sweep.load_lab_config(lab_config(tmp_path, corpus, sizes=[], size_range={
        "min_parameters": 5e3, "max_parameters": 5e5, "count": 5}, shape_rule={"aspect_ratio": 16, "head_dim": 8}))
    shapes = sweep.sizes(lab, 90)
    counts = [sweep.parameters_of(lab, s, 90) for s in shapes]
    assert len(shapes) == 5 and counts == sorted(set(counts))
    for shape, target in zip(shapes, [5e3 * 10 ** (i / 2) for i in range(5)]):
        assert shape["n_embd"] == 8 * shape["n_head"] and 0.5 <= shape["n_embd"] / (16 * shape["n_layer"]) <= 2
        assert abs(math.log(sweep.parameters_of(lab, shape, 90) / target)) < 0.25


def test_runs_as_subprocesses_give_the_same_losses_as_in_process(tmp_path, corpus):
    lab = sweep.load_lab_config(lab_config(tmp_path, corpus, budgets=["2e7"], workers=2))
    data = sweep.prepare_data(lab, print)
    runs = sweep.make_plan(lab, 50000, 90).runs[:1]
    records, interrupted = sweep.run_grid(lab, runs, data, print)
    assert not interrupted and [r.status for r in records] == ["trained"]
    lab.workers = 1
    lab.out_dir = str(tmp_path / "again")
    again, _ = sweep.run_grid(lab, runs[:1], data, print)
    assert again[0].val_loss == pytest.approx(records[0].val_loss, abs=1e-5)  # the same run, bit for bit on CPU
