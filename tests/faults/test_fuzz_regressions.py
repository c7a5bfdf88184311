"""Every failure the command-line fuzzer found, as a named case that must stay fixed (see docs/reliability.md)."""

from __future__ import annotations

import pytest
from fuzz_cli import Pool, clean, run_case


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Pool:
    return Pool(tmp_path_factory.mktemp("fuzz"))


def check(pool: Pool, argv: list[str], status: int = 2, message: str = "") -> None:
    workdir = pool.root / "work"
    try:
        outcome = run_case(argv, workdir, pool, seconds=120)
    finally:
        clean(workdir, pool)
    assert not outcome.problems, outcome.problems
    assert outcome.status == status and message in outcome.stderr, outcome.stderr


def test_serve_with_a_port_out_of_range(pool):
    """Was: OverflowError from socket.bind (a traceback)."""
    check(pool, ["serve", str(pool.model), "--port", "-1000000000000"],
          message="--port must be between 0 and 65535 (0 picks a free one), not -1000000000000")
    check(pool, ["serve", str(pool.model), "--port", "65536"], message="--port must be between 0 and 65535")


def test_a_demo_whose_corpus_is_too_small_leaves_no_folder(pool):
    """Was: exit 2 with out/demo/train/data/ (the tokenized corpus) left behind."""
    check(pool, ["demo", "--minutes", "0.002", "--data", str(pool.text), "--out", "out/demo", "--quiet"],
          message="is larger than the val split")


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(pool):
    """Was: the same for `train` (its run folder, with the data tokenized into it)."""
    check(pool, ["train", "--out_dir", "out/run", "--data.source", str(pool.text), "--model.block_size", "4096",
                 "--max_iters", "1", "--quiet"], message="lower model.block_size")


@pytest.mark.parametrize("key, value, message", [
    ("activation_function", [], "holds a value this gpt2 model cannot be built with"),
    ("bos_token_id", [], "holds a value this gpt2 model cannot be built with"),
    ("model_type", {}, "model_type {} is not supported"),
    ("n_layer", 10**12, "asks for 1,000,000,000,000 layers"),
])
def test_a_config_json_with_a_value_of_the_wrong_type(pool, key, value, message):
    """Was: TypeError/IndexError tracebacks from `lmforge info` (found after the merges), and a hang building 10^12
    layers."""
    import json
    import shutil

    folder = pool.root / f"config-{key}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(pool.model, folder)
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    check(pool, ["info", str(folder)], message=message)


@pytest.mark.parametrize("verb", ["convert", "merge"])
def test_a_model_written_over_an_existing_file(pool, verb):
    """Was: the file swapped for the folder, and the file left as .pairs.jsonl.XXXX.tmp beside it."""
    target = pool.new_path("out-file.txt")
    target.write_text("keep me", encoding="utf-8")
    inputs = [str(pool.model)] + ([str(pool.adapter)] if verb == "merge" else [])
    check(pool, [verb, *inputs, str(target)], message="exists and is not a folder; remove it or write the folder "
                                                      "elsewhere")
    assert target.read_text(encoding="utf-8") == "keep me"
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]


def test_evaluate_with_the_template_double_dash(pool):
    """Was: AttributeError in evaluate/run.py's Markdown table (argparse reads `--template=--` as an empty list)."""
    check(pool, ["evaluate", str(pool.model), "--data", str(pool.pairs), "--source-field", "text", "--target-field",
                 "summary", "--limit", "2", "--max-new-tokens", "2", "--out", "out/eval", "--template=--"],
          message="--template needs a value, not '--'")


def test_an_export_that_fails_leaves_no_folder_it_made(pool):
    """Was: `lmforge export gguf` of a model with a character tokenizer exited 2 but left the new folder out/
    (fsutil.atomic_path made the parents and did not remove them when the write failed)."""
    check(pool, ["export", "gguf", str(pool.model), "out/deeper/model.gguf"],
          message="GGUF export writes byte-level BPE tokenizers")


def test_a_scaling_lab_that_cannot_be_planned_leaves_no_folder(pool):
    """Was: `lmforge scale` whose budget is too small for the sizes exited 2 but left out/lab/data/ (the
    tokenized corpus) behind."""
    from fuzz_cli import SCALE_LAB

    config = pool.yaml_config(SCALE_LAB | {"budgets": ["2e6"], "data": {**SCALE_LAB["data"],
                                                                      "source": str(pool.long_text)}})
    check(pool, ["scale", "--config", str(config), "--quiet"], message="an IsoFLOP curve needs 3")


def test_an_export_onto_a_folder_is_one_sentence(pool):
    """Was: IsADirectoryError from os.replace (a traceback) for `lmforge export gguf MODEL FOLDER` (found by the long
    profile)."""
    check(pool, ["export", "gguf", str(pool.bpe_model), str(pool.folder), "--type", "f16"],
          message=f"{pool.folder} is a folder; give the name of the file to write")
