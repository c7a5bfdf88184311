"""The command-line fuzzer: every verb with random flags and values, random YAML configs and corrupt input files,
run in-process (`lmforge.cli.main.main`, SystemExit caught, output captured) with a deadline per case.

The invariant of a case: exit status 0 or 2, never a traceback (an exception escaping main), and never anything
half-written: after a failure nothing new exists in the working folder or beside the inputs, and after a success no
temporary or lock file is left. A case that runs past its deadline is counted, not judged (the fuzzer may ask for
a billion training steps)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from fault_models import TEXT, pair_file, tiny_model_folder
from hypothesis import strategies as st

from lmforge.cli.main import VERBS, build_parser, main

LEFTOVER_MARKS = (".tmp", ".old", ".lmforge.lock")


class Deadline(BaseException):
    """A case ran past its time (raised from a timer signal; a BaseException so nothing in lmforge catches it)."""


@dataclass
class Outcome:
    argv: list[str]
    status: int | None  # None: the deadline passed
    stdout: str
    stderr: str
    error: BaseException | None = None  # an exception that escaped main (a traceback for a user)
    problems: list[str] = field(default_factory=list)


# ---- the files a case can point at -------------------------------------------------------------------------------

def flip_bits(data: bytes, rng: random.Random, flips: int) -> bytes:
    out = bytearray(data)
    for _ in range(flips if out else 0):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def corrupt(data: bytes, how: str, rng: random.Random) -> bytes:
    if how == "empty":
        return b""
    if how == "truncated":
        return data[:rng.randrange(len(data))] if data else b""
    if how == "bit-flipped":
        return flip_bits(data, rng, rng.choice([1, 2, 8]))
    if how == "header-flipped":  # the first bytes: safetensors' header length, JSON's opening
        return flip_bits(data[:16], rng, 2) + data[16:]
    if how == "garbage":
        return rng.randbytes(rng.choice([1, 7, 100, 5000]))
    raise ValueError(how)


class Pool:
    """Inputs built once: good ones (a tiny GPT-2 folder, a LoRA adapter for it, a text corpus, a prepared corpus,
    pairs) and a factory of bad ones (corrupt copies, bad data files, random YAML configs)."""

    def __init__(self, root: Path):
        self.root = root
        self.model = tiny_model_folder(root / "model")
        self.adapter = self._adapter(root / "adapter")
        self.text = root / "corpus.txt"
        self.text.write_text(TEXT * 8, encoding="utf-8")
        self.long_text = root / "long-corpus.txt"  # enough for the demo's validation split
        self.long_text.write_text(TEXT * 60, encoding="utf-8")
        self.pairs = pair_file(root / "pairs.jsonl")
        self.prompts = root / "prompts.txt"
        self.prompts.write_text("the king\nwhat say\n", encoding="utf-8")
        from lmforge.data.prepare import prepare

        self.prepared = root / "prepared"
        prepare(self.text, self.prepared, tokenizer="char")
        self._later_verbs(root)
        self.folder = root / "a-folder"
        self.folder.mkdir()
        self.binary = root / "binary.bin"
        self.binary.write_bytes(bytes(range(256)) * 4)
        self.empty = root / "empty.txt"
        self.empty.write_bytes(b"")
        self.unreadable = root / "unreadable.txt"
        self.unreadable.write_text("secret", encoding="utf-8")
        self.unreadable.chmod(0)  # root reads it anyway; other users do not
        self.cases = root / "cases"
        self.cases.mkdir()
        self.made = 0
        self.pristine = root.parent / f"{root.name}-pristine"
        shutil.copytree(root, self.pristine, ignore=shutil.ignore_patterns("cases"))
        self.signature = self.sign()

    def sign(self) -> dict:
        """Every input file with its size and modification time (the cases' own files aside)."""
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None for p in self.root.rglob("*")
                if not p.is_relative_to(self.cases) and not p.is_relative_to(self.root / "work")}

    def restore(self) -> bool:
        """Put back the inputs a case changed (a successful `convert SRC DST` may write DST over one); whether
        it had to."""
        if self.sign() == self.signature:
            return False
        for entry in self.root.iterdir():
            if entry.name not in ("cases", "work"):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in self.pristine.iterdir():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, self.root / entry.name)
        self.unreadable.chmod(0)
        self.signature = self.sign()
        return True

    def _adapter(self, folder: Path) -> Path:
        import lmforge
        from lmforge.adapt.adapters import add_adapter, save_adapter
        from lmforge.adapt.peft_format import AdapterSettings

        model = lmforge.load(self.model).model
        add_adapter(model, "default", AdapterSettings(method="lora", r=2, lora_alpha=4,
                                                      base_model_name_or_path=str(self.model)))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name or "lora_b" in name:
                    p.normal_()
        return save_adapter(model, folder)

    def _later_verbs(self, root: Path) -> None:
        """The inputs of the verbs added after the fuzzer: preference pairs (reward, dpo), a reward model trained
        from the tiny model in one step (ppo's reward_model, same tokenizer), a tiny scaling-lab config (scale)."""
        from lmforge.align.reward import train_reward
        from lmforge.config import preset
        from lmforge.hub.hf import save_folder
        from lmforge.models.decoder import DecoderLM
        from lmforge.tokenizer import Tokenizer

        words = ("king", "queen", "lord", "prince")
        self.preferences = root / "preferences.jsonl"
        self.preferences.write_text("".join(json.dumps({"prompt": f"the {words[i % 4]}?", "chosen": " good night",
                                                        "rejected": f" what say {words[(i + 1) % 4]}"}) + "\n"
                                            for i in range(8)), encoding="utf-8")
        run = train_reward({"out_dir": str(root / "reward-run"), "init_from": str(self.model),
                            "data.train": str(self.preferences), "data.val": str(self.preferences), "max_length": 24,
                            "max_response_length": 10, "batch_size": 4, "max_iters": 1, "eval_interval": 1,
                            "warmup_iters": 0, "log_interval": 1, "device": "cpu", "threads": 1}, quiet=True)
        self.reward_model = Path(run.best_dir)
        self.bpe_model = root / "bpe-model"  # GGUF holds byte-level BPE tokenizers only
        tokenizer = Tokenizer.train_bpe([TEXT], vocab_size=300, min_frequency=1)
        eos = tokenizer.eos_token_id
        torch.manual_seed(0)
        save_folder(DecoderLM(preset("tiny-gpt2", n_layer=1, n_head=2, n_embd=16, block_size=32,
                                     vocab_size=tokenizer.vocab_size, bos_token_id=eos, eos_token_id=eos)).eval(),
                    self.bpe_model, tokenizer=tokenizer)
        self.scale_config = root / "scale.yaml"
        self.scale_config.write_text(yaml.safe_dump(SCALE_LAB | {"data": {**SCALE_LAB["data"],
                                                                           "source": str(self.long_text)}}))

    def corrupt_reward_model(self, target: str, how: str, seed: int) -> Path:
        """A copy of the reward model folder with one file corrupted."""
        folder = self.new_path(f"reward-{target}-{how}")
        shutil.copytree(self.reward_model, folder)
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        path = folder / (target if target in files else files[seed % len(files)])
        path.write_bytes(corrupt(path.read_bytes(), how, random.Random(seed)))
        return folder

    def bad_preferences(self, kind: str, seed: int) -> Path:
        """A preference file (prompt/chosen/rejected) gone wrong in one way."""
        rng = random.Random(seed)
        path = self.new_path(f"preferences-{kind}.jsonl")
        good = self.preferences.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in good.splitlines()]
        if kind == "missing-field":
            rows[rng.randrange(len(rows))].pop(rng.choice(["prompt", "chosen", "rejected"]))
        elif kind == "wrong-types":
            rows[rng.randrange(len(rows))][rng.choice(["prompt", "chosen", "rejected"])] = rng.choice(
                [1, None, [], {}, 1.5, True])
        elif kind == "empty-responses":
            for row in rows:
                row["chosen"] = row["rejected"] = ""
        elif kind == "same-responses":
            for row in rows:
                row["rejected"] = row["chosen"]
        elif kind == "one-pair":
            rows = rows[:1]
        elif kind == "huge-prompt":
            rows[0]["prompt"] = "the king " * 20_000
        if kind == "not-json":
            path.write_text(good[:60] + "\n{oops\n", encoding="utf-8")
        elif kind == "bad-utf8":
            path.write_bytes(good.encode()[:30] + b"\xff\xfe" + good.encode()[30:])
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    def scale_variant(self, value) -> Path:
        """The tiny lab config with one key (top level or in a section) set to a random YAML value."""
        rng = random.Random(repr(value))
        config = json.loads(json.dumps(SCALE_LAB | {"data": {**SCALE_LAB["data"], "source": str(self.long_text)}}))
        section = rng.choice([config, config, config["data"], config["train"], config["shape_rule"],
                              config["sizes"][0]])
        section[rng.choice(sorted(section) + ["mdoel", "n_layer"])] = value
        return self.yaml_config(config)

    def new_path(self, name: str) -> Path:
        self.made += 1
        return self.cases / f"{self.made}-{name}"

    def corrupt_model(self, target: str, how: str, seed: int) -> Path:
        """A copy of the model (or the adapter) folder with one file corrupted."""
        source = self.adapter if target.startswith("adapter") else self.model
        folder = self.new_path(f"{target}-{how}")
        shutil.copytree(source, folder)
        name = {"weights": "model.safetensors", "config": "config.json", "tokenizer": "tokenizer.json",
                "generation": "generation_config.json", "adapter-weights": "adapter_model.safetensors",
                "adapter-config": "adapter_config.json"}[target]
        path = folder / name
        path.write_bytes(corrupt(path.read_bytes() if path.exists() else b"{}", how, random.Random(seed)))
        return folder

    def odd_config_json(self, seed: int) -> Path:
        """A model folder whose config.json is valid JSON with wrong values or types."""
        rng = random.Random(seed)
        folder = self.new_path("config-values")
        shutil.copytree(self.model, folder)
        config = json.loads((folder / "config.json").read_text())
        key = rng.choice(sorted(config))
        config[key] = rng.choice([None, -1, 0, 10**12, "x", [], {}, 1.5, True, float("nan")])
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    def bad_data(self, kind: str, seed: int) -> Path:
        rng = random.Random(seed)
        path = self.new_path(f"data-{kind}.jsonl" if kind.startswith("pairs") else f"data-{kind}.txt")
        good_pairs = self.pairs.read_bytes()
        if kind == "bad-utf8":
            path.write_bytes(TEXT.encode()[:50] + b"\xff\xfe\xc3(" + TEXT.encode()[50:200])
        elif kind == "pairs-bad-utf8":
            path.write_bytes(good_pairs[:40] + b"\xff\xfe" + good_pairs[40:])
        elif kind == "pairs-missing-field":
            rows = [json.loads(line) for line in good_pairs.decode().splitlines()]
            rows[rng.randrange(len(rows))].pop(rng.choice(["text", "summary"]))
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif kind == "pairs-empty-lines":
            path.write_text("\n\n" + good_pairs.decode().replace("\n", "\n\n") + "\n  \n")
        elif kind == "pairs-not-json":
            path.write_text(good_pairs.decode()[:77] + "\n{oops\n")
        elif kind == "pairs-wrong-types":
            path.write_text(json.dumps({"text": rng.choice([1, None, [], {}]), "summary": 2}) + "\n" +
                            good_pairs.decode())
        elif kind == "huge-line":
            path.write_text("the king " * 200_000, encoding="utf-8")
        elif kind == "empty-lines":
            path.write_text("\n" * 50, encoding="utf-8")
        elif kind == "one-char":
            path.write_text("a", encoding="utf-8")
        else:
            raise ValueError(kind)
        return path

    def yaml_config(self, data) -> Path:
        path = self.new_path("config.yaml")
        try:
            path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        except yaml.YAMLError:
            path.write_text(str(data), encoding="utf-8")
        return path


SCALE_LAB = {"out_dir": "out/lab", "data": {"source": "", "tokenizer": "char", "val_fraction": 0.1},
             "sizes": [{"n_layer": 1, "n_embd": 8, "n_head": 1}, {"n_layer": 1, "n_embd": 16, "n_head": 2},
                       {"n_layer": 2, "n_embd": 16, "n_head": 2}],
             "budgets": ["8e6"], "shape_rule": {"aspect_ratio": 8, "head_dim": 8}, "min_steps": 2, "evals_per_run": 1,
             "check": False,
             "train": {"model.block_size": 16, "batch_size": 4, "eval_iters": 1, "learning_rate": 0.01,
                       "min_lr": 0.001, "threads": 1, "log_interval": 1}}
PREFERENCE_KINDS = ("missing-field", "wrong-types", "empty-responses", "same-responses", "one-pair", "huge-prompt",
                    "not-json", "bad-utf8")
CORRUPTIONS = ("empty", "truncated", "bit-flipped", "header-flipped", "garbage")
MODEL_TARGETS = ("weights", "config", "tokenizer", "generation")
DATA_KINDS = ("bad-utf8", "pairs-bad-utf8", "pairs-missing-field", "pairs-empty-lines", "pairs-not-json",
              "pairs-wrong-types", "huge-line", "empty-lines", "one-char")


# ---- values -----------------------------------------------------------------------------------------------------

JUNK_TEXT = st.sampled_from(["", " ", "-", "--", "nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "1.5", "true",
                             "null", "None", "{}", "[]", "a=b", "ü✓漢字", "\u202e", "x" * 300, "../..", "/", "~",
                             "1_000", "0x10", "١٢", "--help"])
NUMBERS = st.one_of(st.integers(-3, 5), st.sampled_from([-(10**12), 10**12, 2**63, 10**30]),
                    st.floats(allow_nan=True, allow_infinity=True, width=64))


def number_text(kind: type | None) -> st.SearchStrategy[str]:
    """Mostly sensible numbers for the flag's type, often wrong ones."""
    if kind is int:
        good = st.integers(0, 4)
    elif kind is float:
        good = st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0])
    else:
        good = st.integers(0, 4)
    return st.one_of(good.map(str), NUMBERS.map(str), JUNK_TEXT)


def path_value(pool: Pool, role: str) -> st.SearchStrategy[str]:
    """A path for a flag or positional of `role` (model, adapter, data, text, out), good or bad."""
    common = st.sampled_from([str(pool.root / "does-not-exist"), str(pool.folder), str(pool.binary), str(pool.empty),
                              str(pool.unreadable), ""])
    if role == "model":
        bad = st.builds(pool.corrupt_model, st.sampled_from(MODEL_TARGETS), st.sampled_from(CORRUPTIONS),
                        st.integers(0, 2**16))
        odd = st.builds(pool.odd_config_json, st.integers(0, 2**16))
        names = st.sampled_from(["gpt2", "someone/nothing", "a/b/c", "gpt2@nope"])
        return st.one_of(st.just(str(pool.model)), st.just(str(pool.model)), bad.map(str), odd.map(str), names,
                         st.just(str(pool.adapter)), common)
    if role == "adapter":
        bad = st.builds(pool.corrupt_model, st.sampled_from(("adapter-weights", "adapter-config")),
                        st.sampled_from(CORRUPTIONS), st.integers(0, 2**16))
        return st.one_of(st.just(str(pool.adapter)), bad.map(str), st.just(str(pool.model)), common)
    if role == "data":
        bad = st.builds(pool.bad_data, st.sampled_from(DATA_KINDS), st.integers(0, 2**16))
        return st.one_of(st.sampled_from([str(pool.pairs), str(pool.text), str(pool.prepared)]), bad.map(str),
                         st.sampled_from(["samsum", "multi30k:validation", "owner/data", "x.csv"]), common)
    if role == "preferences":
        bad = st.builds(pool.bad_preferences, st.sampled_from(PREFERENCE_KINDS), st.integers(0, 2**16))
        return st.one_of(st.just(str(pool.preferences)), st.just(str(pool.preferences)), bad.map(str),
                         st.sampled_from([str(pool.pairs), str(pool.text), "hh-rlhf-helpful-base:nope", "a+b"]), common)
    if role == "reward-model":
        bad = st.builds(pool.corrupt_reward_model, st.sampled_from(["model.safetensors", "config.json", "other"]),
                        st.sampled_from(CORRUPTIONS), st.integers(0, 2**16))
        return st.one_of(st.just(str(pool.reward_model)), st.just(str(pool.reward_model)), bad.map(str),
                         st.just(str(pool.model)), common)
    if role == "scale-config":
        return st.one_of(st.just(str(pool.scale_config)), st.builds(pool.scale_variant, yaml_value(pool)).map(str))
    if role == "out":
        return st.one_of(st.sampled_from(["out", "out/deeper", "runs/x", "."]), st.just(str(pool.binary)),
                         st.just(str(pool.folder)), st.just(str(pool.model)), common)
    raise ValueError(role)


def yaml_value(pool: Pool) -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                        st.text(max_size=8), st.just(str(pool.prepared)), st.just(str(pool.pairs)))
    keys = st.sampled_from(["max_iters", "learning_rate", "out_dir", "model", "data", "n_layer", "model.n_layer",
                            "data.source", "batch_size", "eval_interval", "device", "dtype", "adapter", "mdoel",
                            "n_embd", "block_size", "source", "init_from", "max_minutes", "ü"])
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(keys, inner, max_size=4)), max_leaves=8)


# ---- argv -------------------------------------------------------------------------------------------------------

FAST_TRAIN = {"max_iters": "2", "eval_interval": "2", "eval_iters": "1", "warmup_iters": "1", "log_interval": "1",
              "model.n_layer": "1", "model.n_head": "2", "model.n_embd": "16", "model.block_size": "16",
              "batch_size": "2", "sample_tokens": "0", "device": "cpu", "threads": "1"}
FAST_FINETUNE = {"max_iters": "2", "eval_interval": "2", "warmup_iters": "1", "log_interval": "1",
                 "model.preset": "tiny-bart", "model.d_model": "16", "model.n_head": "2", "model.d_ff": "32",
                 "model.n_layer": "1", "data.vocab_size": "300", "data.max_source_length": "24",
                 "data.max_target_length": "8", "batch_tokens": "64", "gen_examples": "0", "num_beams": "1",
                 "device": "cpu", "threads": "1", "data.source_field": "text", "data.target_field": "summary"}


def base_argv(verb: str, pool: Pool) -> list[str]:
    """A quick command that succeeds: the fuzzer's starting point for `verb`."""
    model, fast = str(pool.model), ["--max-new-tokens", "2"]
    return {
        "prepare": [str(pool.text), "--out", "out/prepared"],
        "train": ["--out_dir", "out/run", "--data.source", str(pool.prepared), "--quiet",
                  *[f"--{k}={v}" for k, v in FAST_TRAIN.items()]],
        "finetune": ["--out_dir", "out/run", "--data.train", str(pool.pairs), "--data.val", str(pool.pairs), "--quiet",
                     *[f"--{k}={v}" for k, v in FAST_FINETUNE.items()]],
        "generate": [model, "--prompt", "the king", *fast],
        "score": [model, "--text", "the king"],
        "decode-compare": [model, "--prompts", str(pool.prompts), "--strategies", "greedy", "--out", "out/lab", *fast],
        "evaluate": [model, "--data", str(pool.pairs), "--source-field", "text", "--target-field", "summary",
                     "--limit", "2", "--metrics", "bleu,length", "--out", "out/eval", *fast],
        "convert": [model, "out/converted"],
        "merge": [model, str(pool.adapter), "out/merged"],
        "info": [model],
        "serve": [model, "--port", "0"],
        "download": ["gpt2", "--offline"],
        "demo": ["--minutes", "0.002", "--data", str(pool.long_text), "--out", "out/demo", "--max-new-tokens", "2",
                 "--quiet"],
        **later_verbs(pool),
    }[verb]


FAST_ALIGN = {"out_dir": "out/run", "max_length": "24", "max_response_length": "10", "batch_size": "4",
              "max_iters": "1", "eval_interval": "1", "warmup_iters": "0", "log_interval": "1", "device": "cpu",
              "threads": "1"}


def later_verbs(pool: Pool) -> dict[str, list[str]]:
    """The quick commands of the verbs added after the fuzzer was written."""
    model, pairs = str(pool.model), str(pool.preferences)
    align = [*[f"--{k}={v}" for k, v in FAST_ALIGN.items()], "--quiet"]
    return {
        "reward": ["--init_from", model, "--data.train", pairs, "--data.val", pairs, *align],
        "dpo": ["--init_from", model, "--data.train", pairs, "--data.val", pairs, *align],
        "ppo": ["--init_from", model, "--reward_model", str(pool.reward_model), "--prompts", str(pool.prompts),
                "--rollout_batch_size", "2", "--num_minibatches", "1", "--ppo_epochs", "1", "--max_new_tokens", "3",
                "--out_dir", "out/run", "--max_iters", "1", "--eval_interval", "1", "--log_interval", "1",
                "--sample_interval", "0", "--device", "cpu", "--threads", "1", "--quiet"],
        "export": ["gguf", str(pool.bpe_model), "out/model.gguf", "--type", "f16"],
        "scale": ["--config", str(pool.scale_config), "--bootstrap", "2", "--quiet"],
    }


ROLE_OF = {"model": "model", "path": "model", "src": "model", "base": "model", "adapter": "adapter", "dst": "out",
           "out": "out", "source": "data", "data": "data", "prompt_file": "data", "prompts": "data", "file": "data",
           "templates": "data", "train_data": "data", "config": "yaml", "out_dir": "out", "cfg:out_dir": "out",
           "cfg:data.source": "data", "cfg:data.train": "data", "cfg:data.val": "data", "cfg:init_from": "model",
           "tokenizer": "model", "name": "name", "cfg:reward_model": "reward-model", "cfg:value_model": "reward-model",
           "cfg:prompts": "data", "cfg:ptx_data": "data", "cfg:data.tokenizer": "model"}
VERB_ROLES = {(verb, dest): role for verbs, dest, role in [
    (("reward", "dpo", "ppo"), "cfg:data.train", "preferences"), (("reward", "dpo", "ppo"), "cfg:data.val", "preferences"),
    (("ppo",), "cfg:prompts", "preferences"), (("scale",), "config", "scale-config")] for verb in verbs}


def flag_value(action, pool: Pool, draw, verb: str = "") -> str | None:
    """A value for an optional flag's action (None: the flag takes none)."""
    if action.nargs == 0:
        return None
    role = VERB_ROLES.get((verb, action.dest), ROLE_OF.get(action.dest))
    if role == "yaml":
        return str(pool.yaml_config(draw(yaml_value(pool))))
    if role == "name":
        return draw(st.one_of(JUNK_TEXT, st.sampled_from(["gpt2", "samsum", "a/b"])))
    if role:
        return draw(path_value(pool, role))
    if action.choices:
        return draw(st.one_of(st.sampled_from(sorted(map(str, action.choices))), JUNK_TEXT))
    kind = action.type if action.type in (int, float) else {"INT": int, "FLOAT": float}.get(action.metavar)
    if kind:
        return draw(number_text(kind))
    return draw(st.one_of(JUNK_TEXT, st.text(max_size=12), number_text(None)))


def draw_argv(verb: str, pool: Pool, draw) -> list[str]:
    """`verb`'s quick command, some of its parts dropped or replaced, random flags (from its parser) added."""
    parser = build_parser().verb_parsers[verb]
    argv = base_argv(verb, pool)
    if draw(st.booleans()):  # replace a positional or a flag's value
        i = draw(st.integers(0, len(argv) - 1))
        if not argv[i].startswith("--"):
            argv[i] = draw(st.one_of(path_value(pool, draw(st.sampled_from(["model", "data", "out"]))), JUNK_TEXT))
    if draw(st.integers(0, 3)) == 0 and len(argv) > 1:  # drop an item
        del argv[draw(st.integers(0, len(argv) - 1))]
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    for action in draw(st.lists(st.sampled_from(options), max_size=4)):
        flag = draw(st.sampled_from(action.option_strings))
        value = flag_value(action, pool, draw, verb)
        if value is None:
            argv.append(flag)
        elif draw(st.booleans()):
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    if draw(st.integers(0, 9)) == 0:
        argv.append(draw(st.sampled_from(["--nonsense", "-x", "--max-new-token", "extra", "a=b", "--"])))
    return argv


# ---- running a case ---------------------------------------------------------------------------------------------

def tree(*roots: Path) -> set[str]:
    return {str(p) for root in roots if root.exists() for p in root.rglob("*")}


@contextlib.contextmanager
def deadline(seconds: float):
    def expire(signum, frame):
        raise Deadline()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(argv: list[str], workdir: Path, pool: Pool, seconds: float) -> Outcome:
    """Run `lmforge ARGV` in `workdir` and judge it."""
    workdir.mkdir(parents=True, exist_ok=True)
    inputs_before = tree(pool.root) - tree(workdir)
    before = tree(workdir)
    out, err = io.StringIO(), io.StringIO()
    outcome = Outcome(argv, None, "", "")
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(workdir)
    try:
        with deadline(seconds), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                outcome.status = main(argv)
            except SystemExit as exc:
                outcome.status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Deadline:
        outcome.status = None
    except Exception as exc:  # what a user would see as a traceback
        outcome.error = exc
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        for thread in threading.enumerate():  # a server's threads must not outlive its case
            if thread.name.startswith("lmforge-"):
                thread.join(timeout=5)
    outcome.stdout, outcome.stderr = out.getvalue(), err.getvalue()
    judge(outcome, before, tree(workdir), inputs_before, tree(pool.root) - tree(workdir), pool)
    return outcome


def judge(o: Outcome, before: set[str], after: set[str], inputs_before: set[str], inputs_after: set[str],
          pool: Pool) -> None:
    if o.error is not None:
        o.problems.append(f"traceback: {type(o.error).__name__}: {o.error}")
    if o.status not in (0, 2, None):
        o.problems.append(f"exit status {o.status}")
    if "Traceback (most recent call last)" in o.stderr:
        o.problems.append("a traceback on stderr")
    last = o.stderr.strip().splitlines()[-1] if o.stderr.strip() else ""
    if o.status == 2 and not re.match(r"lmforge( [a-z-]+)?: (error: )?\S", last):
        o.problems.append(f"no one-sentence error at the end of stderr: {last[:200]!r}")
    new = sorted(after - before)
    if o.status == 2 and new:
        o.problems.append(f"a failure left {new[:3]}")
    leftovers = [p for p in after | (inputs_after - inputs_before)
                 if Path(p).name.startswith(".") and Path(p).name.endswith(LEFTOVER_MARKS)]
    if o.status is not None and leftovers:
        o.problems.append(f"temporary or lock files left: {leftovers[:3]}")
    changed_inputs = sorted(p for p in inputs_after - inputs_before if not p.startswith(str(pool.cases)))
    if o.status == 2 and changed_inputs:
        o.problems.append(f"a failure left beside the inputs: {changed_inputs[:3]}")


def clean(workdir: Path, pool: Pool) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    pool.restore()


@dataclass
class Tally:
    """Cases run, by verb and by outcome (for docs/reliability.md)."""

    counts: Counter = field(default_factory=Counter)

    def add(self, verb: str, outcome: Outcome) -> None:
        kind = "deadline" if outcome.status is None else f"exit {outcome.status}"
        self.counts[(verb, kind)] += 1
        if outcome.problems:
            self.counts[(verb, "problem")] += 1

    def table(self) -> dict:
        out: dict = {}
        for (verb, kind), n in sorted(self.counts.items()):
            out.setdefault(verb, {})[kind] = n
        return out


ALL_VERBS = list(VERBS)
