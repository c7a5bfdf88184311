"""`lmforge generate` and `lmforge score`: JSON shapes, flag values, one-sentence errors with status 2."""

import json

import pytest

from hf_models import save_tiny_with_tokenizer
from lmforge.cli.main import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli-tiny")
    save_tiny_with_tokenizer(path)
    return str(path)


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_json(folder, capsys):
    out = run_json(capsys, "generate", folder, "--prompt", "The fox", "--max-new-tokens", "6", "--num-beams", "3",
                   "--num-return-sequences", "2", "--early-stopping", "never", "--json")
    assert set(out) == {"prompt_token_ids", "completions"} and len(out["completions"]) == 2
    for c in out["completions"]:
        assert set(c) == {"text", "token_ids", "score"} and 1 <= len(c["token_ids"]) <= 6
    assert out["completions"][0]["score"] >= out["completions"][1]["score"]


def test_generate_flags_take_values_and_seed(folder, capsys):
    argv = ["generate", folder, "--prompt", "The fox", "--max-new-tokens", "8", "--do-sample", "true", "--top-k",
            "0", "--seed", "3", "--ignore-eos", "--json"]
    a, b = run_json(capsys, *argv), run_json(capsys, *argv)
    assert a == b and len(a["completions"][0]["token_ids"]) == 8
    greedy = run_json(capsys, *argv[:6], "--do-sample", "false", "--json")
    assert len(greedy["completions"]) == 1


def test_generate_unconditional_and_stream(folder, capsys):
    out = run_json(capsys, "generate", folder, "--max-new-tokens", "5", "--json")
    assert len(out["prompt_token_ids"]) == 1
    assert main(["generate", folder, "--prompt", "The", "--max-new-tokens", "5", "--stream"]) == 0
    assert capsys.readouterr().out.startswith("The")


def test_score_json(folder, capsys):
    out = run_json(capsys, "score", folder, "--text", "The quick brown fox", "--json")
    assert set(out) == {"token_ids", "token_logprobs", "log_likelihood", "perplexity"}
    assert len(out["token_logprobs"]) == len(out["token_ids"]) - 1
    with_bos = run_json(capsys, "score", folder, "--text", "The quick brown fox", "--bos", "--json")
    assert len(with_bos["token_logprobs"]) == len(out["token_ids"])


@pytest.mark.parametrize("argv, words", [
    (["--temprature", "0.5"], ["--temperature"]),
    (["--num-beams", "2", "--num-return-sequences", "3"], ["num_return_sequences", "num_beams"]),
    (["--num-beams", "4", "--num-beam-groups", "3"], ["divisible"]),
    (["--do-sample", "--top-p", "1.5"], ["top_p"]),
    (["--do-sample", "--temperature", "-0.5"], ["temperature"]),
    (["--early-stopping", "sometimes"], ["never"]),
    (["--prompt", "x" * 70], ["tokens", "context (64 tokens)"]),
    (["--compile", "--penalty-alpha", "0.6", "--top-k", "4"], ["compile", "contrastive"]),
])
def test_bad_input_exits_2_with_one_sentence(folder, capsys, argv, words):
    argv = ["generate", folder, "--max-new-tokens", "5"] + argv
    if "--prompt" not in argv:
        argv += ["--prompt", "Hi"]
    with pytest.raises(SystemExit) if argv[4].startswith("--temprature") or "sometimes" in argv else _no_exit():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err


def test_generate_compiled_gives_the_same_json(folder, capsys):
    argv = ["generate", folder, "--prompt", "The fox", "--max-new-tokens", "5", "--ignore-eos", "--json"]
    compiled, eager = run_json(capsys, *argv, "--compile"), run_json(capsys, *argv)
    (c,), (e,) = compiled["completions"], eager["completions"]
    assert (c["token_ids"], c["text"]) == (e["token_ids"], e["text"])
    assert c["score"] == pytest.approx(e["score"], abs=1e-4)  # compiled steps match to float rounding


def test_truncate_left_fits_a_long_prompt(folder, capsys):
    out = run_json(capsys, "generate", folder, "--prompt", "x" * 70, "--max-new-tokens", "5", "--truncate", "left",
                   "--json")
    assert len(out["prompt_token_ids"]) == 59


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
