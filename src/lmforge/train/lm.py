"""Language modelling on a token corpus (`lmforge train`): the task, and its configuration.

    data      a prepared folder (tokenized once, memory-mapped), random windows per step
    model     a DecoderLM of a family shape from scratch, or a Hugging Face/lmforge folder (init_from)
    loss      next-token cross-entropy over every position of the window
    evaluate  mean loss over eval_iters fixed batches of each split, and a sample from `generate`

    from lmforge.train import TrainConfig, train
    result = train(TrainConfig.load("configs/shakespeare-char-cpu.yaml", {"max_iters": 500}))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lmforge.adapt.config import AdapterConfig
from lmforge.adapt.training import prepare_training
from lmforge.config import ModelConfig
from lmforge.data.prepare import prepare
from lmforge.data.tokens import TokenData, WindowSampler, is_prepared
from lmforge.errors import LmforgeError
from lmforge.generate.api import generate
from lmforge.hub.hf import load_folder
from lmforge.losses import cross_entropy
from lmforge.models.decoder import DecoderLM
from lmforge.quant.model import prepare_training_base
from lmforge.train import distributed
from lmforge.train.config import LoopConfig, adapter_checks, quantize_field
from lmforge.train.loop import Run, RunResult, set_dropout, train_task

DATA = "data"


@dataclass
class DataConfig:
    source: str = field(default="tinyshakespeare", metadata={
        "help": "a named data set (tinyshakespeare), a Hub data set id (Abirate/english_quotes), a text file, a "
                "folder of them, a .jsonl file, or a folder made by `lmforge prepare`"})
    tokenizer: str = field(default="auto", metadata={
        "help": "char, bpe (trained on the corpus), or a tokenizer/model folder; auto: the fine-tuned "
                "model's tokenizer, else char"})
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary size of a trained bpe tokenizer"})
    val_fraction: float = field(default=0.1, metadata={"help": "share of the tokens held out for validation"})
    text_field: str = field(default="text", metadata={"help": "the text field of JSON Lines records"})
    errors: str = field(default="strict", metadata={
        "help": "non-UTF-8 bytes: strict (stop and name them), replace or ignore"})


@dataclass
class ModelShape:
    """The architecture of a model trained from scratch; a fine-tuned model brings its own (only
    `block_size`, the training context, and `dropout` apply to it)."""

    family: str = field(default="gpt2", metadata={"help": "gpt2, opt, llama, mistral or qwen2"})
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = field(default=64, metadata={"help": "context length of the training windows"})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width; null: 4 * n_embd"})
    dropout: float = 0.0
    bias: bool = field(default=False, metadata={"help": "biases in linear layers and norms"})


@dataclass
class TrainConfig(LoopConfig):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelShape = field(default_factory=ModelShape)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    quantize: str | None = quantize_field()
    batch_size: int = field(default=12, metadata={"help": "sequences per micro-step per process"})
    eval_iters: int = field(default=20, metadata={"help": "batches per split in each evaluation"})
    sample_tokens: int = field(default=200, metadata={"help": "tokens of the sample printed at each evaluation"})
    sample_prompt: str = field(default="\n", metadata={"help": "the prompt of the periodic samples"})
    temperature: float = field(default=0.8, metadata={"help": "of the periodic samples (0: greedy)"})
    top_k: int = field(default=200, metadata={"help": "of the periodic samples (0: all tokens)"})

    RESUMABLE: ClassVar[frozenset[str]] = LoopConfig.RESUMABLE | {
        "eval_iters", "sample_tokens", "sample_prompt", "temperature", "top_k"}

    def checks(self) -> list[tuple[bool, str]]:
        return super().checks() + [
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (self.eval_iters >= 1, "eval_iters must be at least 1"),
            (self.sample_tokens >= 0 and self.top_k >= 0, "sample_tokens and top_k must not be negative"),
            (0 <= self.model.dropout < 1, "model.dropout must be in [0, 1)"),
            (self.model.block_size >= 1, "model.block_size must be at least 1"),
            (self.data.errors in ("strict", "replace", "ignore"), "data.errors must be strict, replace or ignore"),
            (0 < self.data.val_fraction < 1, "data.val_fraction must be between 0 and 1 (exclusive)"),
        ] + adapter_checks(self)


def train(config: TrainConfig | dict | str | os.PathLike, *, resume: bool = False, quiet: bool = False,
          callback: Callable[[dict], None] | None = None) -> RunResult:
    """Train a language model as `config` says (a TrainConfig, a mapping of (dotted) keys, a YAML file, or
    a run folder) and return where the run went and how it ended. `resume=True` continues the run in
    out_dir. `quiet` prints nothing; `callback` receives every event as a dict:
    {"event": "step" | "eval" | "sample" | "message", "iter": ..., ...}."""
    return train_task(LanguageModelling(TrainConfig.from_any(config)), resume=resume, quiet=quiet,
                      callback=callback)


class LanguageModelling:
    """Next-token prediction on random windows of a prepared corpus."""

    def __init__(self, config: TrainConfig):
        self.config = config

    def setup(self, run: Run, resume_from: Path | None) -> None:
        cfg = self.config
        self.run = run
        origin = None if run.init_from == "scratch" else run.init_from
        self.data = self.load_data(origin)
        self.tokenizer = self.data.tokenizer
        if cfg.adapter.enabled:  # the base as for a new run, then the adapter: new, or the last checkpoint's
            self.model, self.generation = self.build_model(origin, None)
            run.say(prepare_training(self.model, cfg.adapter, origin, self.tokenizer, cfg.seed, resume_from))
        else:
            self.model, self.generation = self.build_model(None if resume_from else origin, resume_from)
        self.sampler = WindowSampler(self.data.train, cfg.model.block_size, cfg.batch_size, cfg.seed,
                                     run.dist.rank, run.dist.world_size)

    def load_data(self, init_folder: str | None) -> TokenData:
        """The prepared corpus: `data.source` when it is prepared already, else tokenized into the run folder."""
        d, run = self.config.data, self.run
        if is_prepared(d.source):
            return TokenData.open(d.source)
        tokenizer = d.tokenizer
        if tokenizer == "auto":
            tokenizer = init_folder or "char"
        folder = run.run_dir / DATA
        request = {"source": d.source, "tokenizer": tokenizer, "vocab_size": d.vocab_size,
                   "val_fraction": d.val_fraction, "text_field": d.text_field, "errors": d.errors}
        if run.main:
            current = TokenData.open(folder).manifest.get("request") if is_prepared(folder) else None
            if current != request:
                prepare(log=run.say, **request, out_dir=folder)
        distributed.barrier(run.dist)
        return TokenData.open(folder)

    def build_model(self, init_folder: str | None, resume_from: Path | None) -> tuple[nn.Module, dict]:
        cfg, shape, tok = self.config, self.config.model, self.tokenizer
        generation = {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k}
        if resume_from is not None or init_folder:
            source = resume_from or Path(init_folder)
            checkpoint = load_folder(source)
            model = checkpoint.model
            prepare_training_base(model, cfg.quantize, cfg.adapter.enabled, str(source))
            generation = {**checkpoint.generation_config, **generation}
            if init_folder:
                check_tokenizer(tok, checkpoint.tokenizer, init_folder)
                self.run.say(f"fine-tuning {init_folder}: {model.config.family}, {model.config.n_layer} layers, "
                             f"{model.num_parameters() / 1e6:.1f}M parameters (model.* shape settings other than "
                             "block_size and dropout come from the checkpoint)")
            if shape.block_size > model.config.block_size:
                raise LmforgeError(f"model.block_size ({shape.block_size}) is longer than the context of "
                                   f"{source} ({model.config.block_size}); lower model.block_size")
            set_dropout(model, shape.dropout)
        else:
            torch.manual_seed(cfg.seed)
            mcfg = ModelConfig.for_family(
                shape.family, vocab_size=tok.vocab_size, n_layer=shape.n_layer, n_head=shape.n_head,
                n_embd=shape.n_embd, block_size=shape.block_size, intermediate_size=shape.intermediate_size,
                dropout=shape.dropout, bias=shape.bias,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            model = DecoderLM(mcfg)
        if tok.vocab_size > model.config.vocab_size:
            raise LmforgeError(f"the tokenizer has {tok.vocab_size} tokens but the model only "
                               f"{model.config.vocab_size}; prepare the data with the model's tokenizer")
        for split in ("train", "val"):
            n = len(self.data.split(split))
            if n <= shape.block_size:
                raise LmforgeError(f"model.block_size ({shape.block_size}) is larger than the {split} split "
                                   f"({n} tokens); lower model.block_size or use a bigger corpus or val_fraction")
        return model.to(self.run.device), {k: v for k, v in generation.items() if v is not None}

    # ---- what the loop calls -------------------------------------------------------------------

    def describe(self) -> str:
        cfg = self.config
        tokens = cfg.batch_size * cfg.gradient_accumulation_steps * self.run.dist.world_size * cfg.model.block_size
        return f"{tokens:,} tokens per step"

    def next_batch(self) -> dict:
        x, y = self.sampler.next_batch(self.run.device)
        return {"input_ids": x, "labels": y}

    def loss(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        loss, nll = cross_entropy(module(batch["input_ids"]), batch["labels"])
        return loss, nll, batch["input_ids"].numel()

    def evaluate(self, step: int, final: bool) -> dict:
        """Mean loss over `eval_iters` batches per split (the same windows at every evaluation), and a sample."""
        cfg, run = self.config, self.run
        out = {}
        for offset, split in enumerate(("train", "val")):
            sampler = WindowSampler(self.data.split(split), cfg.model.block_size, cfg.batch_size, cfg.seed + 1 + offset,
                                    run.dist.rank, run.dist.world_size)
            total = torch.zeros((), dtype=torch.float64, device=run.device)
            for _ in range(cfg.eval_iters):
                x, y = sampler.next_batch(run.device)
                total += cross_entropy(self.model(x), y)[1].double()
            out[f"{split}_loss"] = distributed.mean_over_ranks(run.dist, total.item() / cfg.eval_iters, run.device)
        if cfg.sample_tokens > 0 and step > 0:
            text = run.on_main(lambda model: sample_text(model, self.tokenizer, cfg, step))
            if run.main:
                run.files.add_sample(step, text)
                run.progress.message(f"sample at iter {step}:\n{text}\n")
                run.emit("sample", iter=step, text=text)
        return out

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])


def check_tokenizer(data_tok, model_tok, folder: str) -> None:
    if model_tok is None:
        raise LmforgeError(f"{folder} has no tokenizer (tokenizer.json); add the model's tokenizer to the folder")
    if data_tok.backend.get_vocab() != model_tok.backend.get_vocab():
        raise LmforgeError(f"the prepared data was tokenized with another tokenizer than {folder}'s; "
                           "prepare it with the model's tokenizer (--tokenizer " + folder + ")")


def sample_text(model: nn.Module, tokenizer, cfg: TrainConfig, step: int) -> str:
    """`cfg.sample_tokens` tokens sampled by `generate` after `cfg.sample_prompt`, with the run's temperature and
    top-k; past the context, each further piece continues from the last half of what came before."""
    try:
        prompt = tokenizer.encode(cfg.sample_prompt) if cfg.sample_prompt else []
    except LmforgeError:  # a character the tokenizer does not know
        prompt = []
    if not prompt:
        prompt = [next((i for i in (tokenizer.eos_token_id, tokenizer.bos_token_id) if i is not None), 0)]
    context = cfg.model.block_size
    unknown = [[i] for i in range(tokenizer.vocab_size, model.config.vocab_size)]  # rows the tokenizer lacks
    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k} if cfg.temperature > 0 \
        else {"do_sample": False}
    history, new = prompt[-(context - 1):], []
    while len(new) < cfg.sample_tokens:
        window = history[-(context // 2):] if new else history
        n = min(cfg.sample_tokens - len(new), context - len(window))
        out = generate(model, [window], max_new_tokens=n, ignore_eos=True, seed=cfg.seed + step + len(new),
                       bad_words_ids=unknown or None, **sampling)
        piece = out.completions[0][0].token_ids
        history, new = history + piece, new + piece
    return tokenizer.decode(new)
