"""Models by Hub name, against the loopback fake Hub: what is downloaded (once), the cache shared with transformers,
offline mode, revisions, gated and private repositories, and one-sentence errors for everything that can fail."""

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import lmforge
from fake_hub import GOOD_TOKEN
from lmforge.cli.main import main
from lmforge.hub import remote

LMFORGE_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def downloads(hub) -> set[str]:
    return {r.path.rsplit("/", 1)[-1] for r in hub.log if r.method == "GET" and "/resolve/" in r.path}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence_error(capsys, *argv) -> str:
    code, _, err = run(capsys, *argv)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def snapshot_files(cache: Path, repo: str) -> set[str]:
    snaps = list((cache / f"models--{repo.replace('/', '--')}" / "snapshots").glob("*/*"))
    return {p.name for p in snaps}


def test_generate_by_name_downloads_only_what_it_reads_once(hub, hub_models, capsys):
    argv = ["generate", "gpt2", "--prompt", "Once upon a time", "--max-new-tokens", "6", "--json"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert downloads(hub) == LMFORGE_FILES  # not pytorch_model.bin, vocab.json, tf_model.h5, 64.tflite, ...
    assert [r for r in hub.log if r.path.startswith("/api/")] == hub.log[:1]  # one listing, then the files
    local = lmforge.load(hub_models["gpt2"])
    from lmforge.generate import Generator

    expected = Generator(local).generate("Once upon a time", max_new_tokens=6).to_dict()
    assert json.loads(out) == expected
    hub.log.clear()
    assert run(capsys, *argv)[1] == out and hub.log == []  # the second run asks the Hub nothing


def test_a_model_transformers_cached_is_used_without_a_request(hub, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = remote.hub_cache()
    hf = AutoModelForCausalLM.from_pretrained("gpt2", cache_dir=cache).eval()
    AutoTokenizer.from_pretrained("gpt2", cache_dir=cache)
    assert hub.requests("/resolve/")  # transformers went through the fake Hub into this cache
    hub.log.clear()
    ckpt = lmforge.load("gpt2")
    assert hub.log == []
    assert str(ckpt.path).startswith(str(cache / "models--gpt2" / "snapshots"))
    ids = torch.tensor([ckpt.tokenizer.encode("Once upon a time there was")])
    with torch.no_grad():
        assert (ckpt.model(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_transformers_reads_what_lmforge_downloaded(hub):
    from transformers import AutoModelForCausalLM

    ckpt = lmforge.load("facebook/opt-125m")
    hf = AutoModelForCausalLM.from_pretrained("facebook/opt-125m", cache_dir=remote.hub_cache(),
                                              local_files_only=True).eval()
    ids = torch.tensor([[2, 15, 27, 99, 5, 140]])
    with torch.no_grad():
        assert (ckpt.model(ids) - hf(ids).logits).abs().max() <= 1e-4


@pytest.mark.parametrize("name, expected, kind", [
    ("facebook/opt-125m", {"config.json", "generation_config.json", "pytorch_model.bin", "vocab.json", "merges.txt",
                           "tokenizer_config.json", "special_tokens_map.json"}, "causal"),
    ("facebook/bart-large-cnn", {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                                 "tokenizer_config.json"}, "seq2seq"),
    ("sdadas/flan-t5-base-translator-en-pl", {"config.json", "generation_config.json", "model.safetensors",
                                              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"},
     "seq2seq"),
    ("sharded/llama", {"config.json", "generation_config.json", "model.safetensors.index.json",
                       *(f"model-0000{i}-of-00006.safetensors" for i in range(1, 7))}, "causal"),
])
def test_real_layouts_load_with_transformers_logits(hub, hub_models, name, expected, kind):
    import transformers as tf

    ckpt = lmforge.load(name)
    assert downloads(hub) == expected and snapshot_files(remote.hub_cache(), name) == expected
    auto = tf.AutoModelForCausalLM if kind == "causal" else tf.AutoModelForSeq2SeqLM
    hf = auto.from_pretrained(hub_models[name]).eval()
    ids = torch.tensor([[5, 17, 33, 60, 41, 8, 2]]) % ckpt.model.config.vocab_size
    with torch.no_grad():
        if kind == "causal":
            theirs, ours = hf(ids).logits, ckpt.model(ids)
        else:
            dec = torch.tensor([[hf.config.decoder_start_token_id, 9, 12, 30]])
            theirs = hf(input_ids=ids, decoder_input_ids=dec).logits
            ours = ckpt.model(ids, None, dec)
    assert (ours - theirs).abs().max() <= 1e-4


def test_bart_cnn_generation_config_is_applied_as_transformers_does(hub, hub_models, tmp_path, capsys):
    from transformers import BartForConditionalGeneration

    article = tmp_path / "article.txt"
    article.write_text("The fishermen went out every morning and came back with stories of the quiet sea.")
    code, out, _ = run(capsys, "generate", "facebook/bart-large-cnn", "--prompt-file", str(article), "--json")
    assert code == 0
    result = json.loads(out)
    hf = BartForConditionalGeneration.from_pretrained(hub_models["facebook/bart-large-cnn"]).eval()
    ids = torch.tensor([result["prompt_token_ids"]])
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids))[0].tolist()  # beams 4, length_penalty 2, ...
    assert hf.generation_config.num_beams == 4 and hf.generation_config.no_repeat_ngram_size == 3
    ours = result["completions"][0]["token_ids"]
    assert ours == theirs[1:] and len(theirs) >= 8  # min_length 8 counts the decoder start


def test_offline_reads_the_cache_only(hub, capsys, monkeypatch):
    cache = remote.hub_cache()
    err = one_sentence_error(capsys, "info", "gpt2", "--offline")
    assert "offline" in err and str(cache / "models--gpt2") in err and hub.log == []
    assert run(capsys, "download", "gpt2")[0] == 0
    hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, _ = run(capsys, "info", "gpt2", "--json")
    assert code == 0 and json.loads(out)["family"] == "gpt2" and hub.log == []
    err = one_sentence_error(capsys, "info", "facebook/opt-125m")
    assert "offline" in err and "models--facebook--opt-125m" in err


def test_no_network_and_nothing_cached_says_where_it_looked(hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    err = one_sentence_error(capsys, "generate", "gpt2", "--prompt", "hi")
    assert "could not reach http://127.0.0.1:9" in err and str(remote.hub_cache() / "models--gpt2") in err
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert run(capsys, "info", "gpt2")[0] == 0
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert run(capsys, "info", "gpt2")[0] == 0  # the cached copy needs no network


def test_revisions_branch_commit_and_unknown(hub, hub_models, capsys, tmp_path):
    from hub_repos import gpt2

    old = gpt2(tmp_path / "old")
    state = json.loads((old / "config.json").read_text())
    state["n_layer"] = 1
    sha = hub.add_folder("gpt2", old, revision="v1")  # a tag with other weights
    main_model = lmforge.load("gpt2").model
    v1 = lmforge.load("gpt2@v1")
    assert torch.equal(v1.model.wte.weight, lmforge.load(old).model.wte.weight)
    assert str(v1.path).endswith(sha) and (remote.hub_cache() / "models--gpt2" / "refs" / "v1").read_text() == sha
    assert lmforge.load(f"gpt2@{sha}").path == v1.path
    assert main_model.config.n_layer == 2
    err = one_sentence_error(capsys, "info", "gpt2@nope")
    assert "no revision 'nope'" in err and "gpt2@main" in err


def test_gated_and_private_repositories(hub, hub_models, capsys, monkeypatch):
    hub.add_folder("meta/gated", hub_models["gpt2"], gated=True)
    hub.add_folder("someone/private", hub_models["gpt2"], private=True)
    err = one_sentence_error(capsys, "info", "meta/gated")
    assert "gated" in err and f"{hub.url}/meta/gated" in err and "hf auth login" in err and "HF_TOKEN" in err
    err = one_sentence_error(capsys, "info", "someone/private")
    assert "someone/private is neither a local path nor a repository on" in err and "hf auth login" in err
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert "your token has no access" in one_sentence_error(capsys, "info", "meta/gated")
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert run(capsys, "info", "meta/gated")[0] == 0 and run(capsys, "info", "someone/private")[0] == 0
    assert [r.token for r in hub.log if "gated" in r.path and r.method == "GET"][-1] == GOOD_TOKEN


@pytest.mark.parametrize("files, words", [
    ({"README.md": b"hi"}, ["no config.json", "README.md"]),
    ({"config.json": b'{"model_type": "gpt2"}', "tf_model.h5": b"x"}, ["no PyTorch weights", "tf_model.h5"]),
    ({"config.json": b'{"model_type": "gpt2"}',
      "model.safetensors.index.json": b'{"weight_map": {"wte.weight": "model-00001-of-00002.safetensors"}}'},
     ["model-00001-of-00002.safetensors", "does not have"]),
])
def test_repositories_that_lack_files(fake_hub, capsys, files, words):
    fake_hub.add("odd/repo", files)
    err = one_sentence_error(capsys, "info", "odd/repo")
    for word in words:
        assert word in err


def test_a_file_the_listing_shows_but_the_hub_does_not_serve(hub, capsys):
    hub.vanished.add("tokenizer.json")
    err = one_sentence_error(capsys, "info", "gpt2")
    assert "the model gpt2 has no file tokenizer.json" in err


def test_convert_a_hub_model_to_a_local_folder(hub, tmp_path, capsys):
    assert run(capsys, "convert", "facebook/opt-125m", str(tmp_path / "opt-bf16"), "--dtype", "bfloat16")[0] == 0
    assert lmforge.load(tmp_path / "opt-bf16", dtype=None).stored_dtype == "bfloat16"


def test_unknown_repository_and_not_a_name(fake_hub, capsys, tmp_path):
    err = one_sentence_error(capsys, "generate", "nobody/nothing", "--prompt", "hi")
    assert "nobody/nothing is neither a local path nor a repository on" in err
    assert "does not exist" in one_sentence_error(capsys, "info", str(tmp_path / "no" / "such" / "folder"))


def test_a_cut_download_is_retried(hub, hub_models, monkeypatch):
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd.time, "sleep", lambda seconds: None)  # its retries wait a second each
    hub.cuts["model.safetensors"] = 1
    ckpt = lmforge.load("gpt2")
    gets = [r for r in hub.log if r.method == "GET" and r.path.endswith("model.safetensors")]
    # huggingface_hub retries, resuming with a Range request from the last whole chunk (10 MB) it wrote: this
    # small file starts again from the beginning
    assert len(gets) == 2
    stored = (ckpt.path / "model.safetensors").read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256((hub_models["gpt2"] / "model.safetensors").read_bytes()).digest()
    assert not list(remote.hub_cache().rglob("*.incomplete"))


def test_a_download_cut_for_good_leaves_nothing_half_written(hub, capsys, monkeypatch):
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd.time, "sleep", lambda seconds: None)  # its retries wait a second each
    hub.cuts["model.safetensors"] = 1
    hub.dead_after_cut.add("model.safetensors")
    err = one_sentence_error(capsys, "info", "gpt2")
    assert "cut off" in err and "run the command again" in err
    cache = remote.hub_cache()
    assert "model.safetensors" not in snapshot_files(cache, "gpt2") and not list(cache.rglob("*.incomplete"))
    hub.dead_after_cut.clear()
    assert run(capsys, "info", "gpt2")[0] == 0


def test_a_full_disk_is_one_sentence_and_leaves_nothing(hub, capsys, monkeypatch):
    import huggingface_hub.file_download as fd

    def full(url, temp_file, **kwargs):
        temp_file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fd, "http_get", full)
    err = one_sentence_error(capsys, "info", "gpt2")
    assert "disk is full" in err and "HF_HUB_CACHE" in err
    assert snapshot_files(remote.hub_cache(), "gpt2") == set()
    assert not [p for p in remote.hub_cache().rglob("*") if p.is_file() and "blobs" in p.parts]


def test_a_local_folder_wins_over_the_hub_and_verbose_says_so(hub, hub_models, capsys, tmp_path, monkeypatch):
    from hub_repos import gpt2

    monkeypatch.chdir(tmp_path)
    gpt2(tmp_path / "gpt2")
    code, _, err = run(capsys, "info", "gpt2", "--verbose")
    assert code == 0 and "gpt2 is a local path; using it rather than the Hub repository" in err
    assert hub.log == []


def test_download_verb_prints_the_snapshot_and_checks_for_a_newer_commit(hub, hub_models, capsys):
    code, out, _ = run(capsys, "download", "facebook/bart-large-cnn")
    path = Path(out.strip())
    assert code == 0 and path.is_dir() and (path / "model.safetensors").is_file()
    assert path.parent.parent == remote.hub_cache() / "models--facebook--bart-large-cnn"
    hub.log.clear()
    assert run(capsys, "download", "facebook/bart-large-cnn")[1] == out
    assert [r.path for r in hub.log] == ["/api/models/facebook/bart-large-cnn/revision/main"]  # asked, nothing fetched
    hub.log.clear()
    assert run(capsys, "download", "facebook/bart-large-cnn", "--offline")[1] == out and hub.log == []
    assert "local path" in one_sentence_error(capsys, "download", str(path))


def test_tokenizer_by_name_fetches_the_tokenizer_files_only(hub):
    from lmforge.hub.hf import load_tokenizer

    tok = load_tokenizer("facebook/opt-125m")
    assert tok.kind == "bpe" and tok.eos_token == "</s>"
    assert downloads(hub) == {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    assert os.environ["HF_HUB_CACHE"] in str(remote.hub_cache())
