"""Fine-tuning on source/target pairs (`lmforge finetune`): seq2seq models, and decoder-only models on
prompt->completion; the task and its configuration.

    data      pairs (data/pairs.py), tokenized once, batched by length with dynamic padding
    model     an EncoderDecoderLM or DecoderLM from a preset with a BPE tokenizer trained on the
              training split, or a Hugging Face/lmforge folder (init_from)
    loss      teacher forcing, label smoothing; padding (and a decoder-only prompt) never counts
    evaluate  validation loss on a fixed sample and `source_gain`; every gen_interval steps and at the
              end, generation metrics (ROUGE, BLEU, ...) on a fixed validation sample
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lmforge.adapt.config import AdapterConfig
from lmforge.adapt.training import prepare_training
from lmforge.config import ENCDEC_PRESETS, PRESETS, encdec_preset, preset
from lmforge.data.pairs import LengthReport, PairEncoder, PairSet, length_batches, load_pairs
from lmforge.errors import LmforgeError
from lmforge.evaluate.run import METRIC_COLUMNS, generate_texts, metric_columns, parse_metrics, score
from lmforge.hub.hf import load_folder, load_tokenizer
from lmforge.losses import cross_entropy, logits_of, summed_nll
from lmforge.models.decoder import DecoderLM
from lmforge.models.encdec import EncoderDecoderLM
from lmforge.quant.model import prepare_training_base
from lmforge.tokenizer import Tokenizer
from lmforge.train import distributed
from lmforge.train.config import LoopConfig, adapter_checks, quantize_field
from lmforge.train.loop import Run, RunResult, set_dropout, train_task

SPECIAL_TOKENS = ("<pad>", "</s>", "<s>")  # ids 0, 1, 2 of a trained tokenizer: pad, eos, bos
COPY_PROMPT = "copy: "
COPY_LENGTHS = (8, 32)  # tokens of a copy window, drawn uniformly


@dataclass
class PairDataConfig:
    train: str = field(default="samsum:train", metadata={
        "help": "training pairs: a named data set (samsum, multi30k, optionally :split), a Hub data set id "
                "(knkarthick/samsum:train), a .jsonl/.csv/.tsv file, or two parallel text files joined by a comma"})
    val: str = field(default="samsum:validation", metadata={"help": "validation pairs, as train"})
    source_field: str | None = field(default=None, metadata={
        "help": "the source field; null: the data set's own (samsum: dialogue, multi30k: en), else 'source'"})
    target_field: str | None = field(default=None, metadata={"help": "the target field, as source_field"})
    template: str | None = field(default=None, metadata={
        "help": "prompt template over the fields, e.g. 'summarize: {dialogue}'; null: the source itself"})
    prefix: str = field(default="", metadata={"help": "task prefix put before every prompt, e.g. 'summarize: '"})
    max_source_length: int = field(default=512, metadata={"help": "tokens of a source (prompt), specials included"})
    max_target_length: int = field(default=128, metadata={"help": "tokens of a target, specials included"})
    too_long: str = field(default="truncate", metadata={
        "help": "a longer source or target: truncate, drop, or error (the counts are reported)"})
    tokenizer: str = field(default="bpe", metadata={
        "help": "bpe (byte-level BPE trained on the training split), or a tokenizer folder; a model folder "
                "given as init_from brings its own"})
    vocab_size: int = field(default=8192, metadata={"help": "vocabulary of a trained BPE tokenizer"})


@dataclass
class PairModelConfig:
    """The architecture of a model trained from scratch (None: the preset's value); a model loaded from
    init_from keeps its own, except dropout."""

    preset: str = field(default="tiny-t5", metadata={
        "help": "an encoder-decoder preset (tiny-t5, tiny-bart, t5-small, bart-base, ...) or a decoder-only "
                "one (tiny-gpt2, tiny-llama, gpt2, ...)"})
    d_model: int | None = field(default=None, metadata={"help": "width (n_embd of a decoder-only model)"})
    n_head: int | None = None
    d_ff: int | None = field(default=None, metadata={"help": "feed-forward width (intermediate_size)"})
    n_layer: int | None = field(default=None, metadata={"help": "layers (of the encoder, and of the decoder)"})
    n_decoder_layer: int | None = field(default=None, metadata={"help": "decoder layers, when not n_layer"})
    context: int | None = field(default=None, metadata={
        "help": "learned positions (BART) or block_size (decoder-only); null: enough for the length limits"})
    tie_embeddings: bool | None = field(default=None, metadata={
        "help": "share the input embedding with the output head (null: the preset's choice; T5 v1.0 ties "
                "them, and from scratch an untied head learns several times faster per token)"})
    dropout: float = 0.1


@dataclass
class FinetuneConfig(LoopConfig):
    out_dir: str = field(default="runs/finetune", metadata={"help": "the run folder"})
    init_from: str = field(default="scratch", metadata={
        "help": "scratch (model.preset + a trained tokenizer) or a Hugging Face/lmforge model folder"})
    max_iters: int | None = field(default=1000, metadata={
        "help": "optimizer steps; null: train for max_minutes, with the schedule planned on the time"})
    min_lr: float = field(default=1e-5, metadata={"help": "the learning rate at the end of the cosine decay"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decay of matrices and embeddings"})
    beta2: float = 0.98
    eval_interval: int = field(default=200, metadata={"help": "validation loss every this many steps"})
    data: PairDataConfig = field(default_factory=PairDataConfig)
    model: PairModelConfig = field(default_factory=PairModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    quantize: str | None = quantize_field()
    batch_tokens: int = field(default=4096, metadata={
        "help": "padded source + target tokens per batch (batches are grouped by length)"})
    max_batch_size: int = field(default=64, metadata={"help": "examples per batch at most"})
    label_smoothing: float = field(default=0.1, metadata={"help": "of the cross-entropy (padding never counts)"})
    copy_fraction: float = field(default=0.0, metadata={
        "help": "encoder-decoder only: this share of the training sources become copy examples ('copy: ' and "
                "8-32 of a source's tokens -> those tokens), trained in one pass before the task; they keep a "
                "model from scratch on long sources from ignoring its encoder; 0: off"})
    eval_examples: int = field(default=200, metadata={"help": "validation examples in each loss evaluation; 0: all"})
    gen_interval: int = field(default=0, metadata={
        "help": "generation metrics on a validation sample every this many steps (a multiple of eval_interval "
                "is best); 0: only at the end"})
    gen_examples: int = field(default=100, metadata={"help": "validation examples generated for the metrics"})
    metrics: str = field(default="rouge", metadata={"help": "generation metrics: rouge, bleu, chrf, ..."})
    num_beams: int = field(default=4, metadata={"help": "beam search width for generation (1: greedy)"})
    max_new_tokens: int = field(default=64, metadata={"help": "generated tokens at most"})
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    gen_batch_size: int = field(default=32, metadata={"help": "sources per generation batch"})

    RESUMABLE: ClassVar[frozenset[str]] = LoopConfig.RESUMABLE | {
        "eval_examples", "gen_interval", "gen_examples", "gen_batch_size", "metrics"}

    def checks(self) -> list[tuple[bool, str]]:
        d = self.data
        return super().checks() + [
            (self.batch_tokens >= 1 and self.max_batch_size >= 1, "batch_tokens and max_batch_size must be at least 1"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (0 <= self.copy_fraction <= 1, "copy_fraction must be in [0, 1]"),
            (self.gen_interval >= 0 and self.gen_examples >= 0 and self.eval_examples >= 0,
             "gen_interval, gen_examples and eval_examples must not be negative"),
            (self.num_beams >= 1 and self.max_new_tokens >= 1, "num_beams and max_new_tokens must be at least 1"),
            (0 <= self.model.dropout < 1, "model.dropout must be in [0, 1)"),
            (d.too_long in ("truncate", "drop", "error"), "data.too_long must be truncate, drop or error"),
            (d.max_source_length >= 2 and d.max_target_length >= 2,
             "data.max_source_length and data.max_target_length must be at least 2"),
            (self.best_metric in ("val_loss", "source_gain") or self.best_metric in self.generation_columns(),
             f"best_metric {self.best_metric!r} is neither val_loss, source_gain nor one of the generation metrics "
             f"({', '.join(self.generation_columns())}); add it to metrics or choose another"),
        ] + adapter_checks(self)

    def generation_columns(self) -> list[str]:
        names = [n.strip() for n in self.metrics.split(",") if n.strip()]
        return metric_columns([n for n in names if n in METRIC_COLUMNS])

    def generation_config(self) -> dict:
        """What the checkpoints' generation_config.json says (and evaluation uses by default)."""
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                "length_penalty": self.length_penalty, "no_repeat_ngram_size": self.no_repeat_ngram_size,
                "early_stopping": self.num_beams > 1}


def finetune(config: FinetuneConfig | dict | str | os.PathLike, *, resume: bool = False, quiet: bool = False,
             callback: Callable[[dict], None] | None = None) -> RunResult:
    """Fine-tune on pairs as `config` says (a FinetuneConfig, a mapping of dotted keys, a YAML file, or a run
    folder); `resume`, `quiet` and `callback` as for `lmforge.train.train`."""
    return train_task(PairTraining(FinetuneConfig.from_any(config)), resume=resume, quiet=quiet,
                      callback=callback)


def build_model(cfg: FinetuneConfig, tokenizer: Tokenizer) -> nn.Module:
    """A fresh model of `cfg.model.preset`, sized by the overrides, with the tokenizer's vocabulary and ids."""
    m, d = cfg.model, cfg.data
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if m.preset in ENCDEC_PRESETS:
        family = ENCDEC_PRESETS[m.preset]["family"]
        settings = dict(vocab_size=tokenizer.vocab_size, dropout=m.dropout, **ids,
                        bos_token_id=tokenizer.bos_token_id if family == "bart" else None,
                        decoder_start_token_id=tokenizer.eos_token_id if family == "bart" else tokenizer.pad_token_id,
                        forced_bos_token_id=None, forced_eos_token_id=None)
        for key, value in (("d_model", m.d_model), ("n_head", m.n_head), ("d_ff", m.d_ff),
                           ("n_encoder_layer", m.n_layer), ("n_decoder_layer", m.n_decoder_layer or m.n_layer),
                           ("tie_word_embeddings", m.tie_embeddings)):
            if value is not None:
                settings[key] = value
        if m.d_model or m.n_head:
            width = settings.get("d_model", ENCDEC_PRESETS[m.preset].get("d_model"))
            heads = settings.get("n_head", ENCDEC_PRESETS[m.preset].get("n_head"))
            settings["head_dim"] = width // heads
        if family == "bart":
            settings["max_position_embeddings"] = m.context or max(d.max_source_length, d.max_target_length)
        return EncoderDecoderLM(encdec_preset(m.preset, **settings))
    if m.preset in PRESETS:
        settings = dict(vocab_size=tokenizer.vocab_size, dropout=m.dropout, bos_token_id=tokenizer.bos_token_id, **ids,
                        block_size=m.context or d.max_source_length + d.max_target_length)
        for key, value in (("n_embd", m.d_model), ("n_head", m.n_head), ("intermediate_size", m.d_ff),
                           ("n_layer", m.n_layer), ("tie_word_embeddings", m.tie_embeddings)):
            if value is not None:
                settings[key] = value
        return DecoderLM(preset(m.preset, **settings))
    raise LmforgeError(f"unknown model preset {m.preset!r}; encoder-decoder: {', '.join(ENCDEC_PRESETS)}; "
                       f"decoder-only: {', '.join(PRESETS)}")


def copy_examples(sources: list[str], tokenizer: Tokenizer, encoder: PairEncoder, fraction: float,
                  seed: int) -> list[tuple[list[int], list[int]]]:
    """Copy examples from a random `fraction` of the training sources: the source is COPY_PROMPT and a
    random window of 8-32 of the source's tokens, the target is that window.

    Trained from scratch on long sources (dialogues of hundreds of tokens), an encoder-decoder collapses
    before it learns to read: while cross-attention is still uniform, every encoder position receives the
    same gradient, the encoder learns to output one constant vector, and the decoder becomes a language
    model of the targets (bench/README.md, Seq2seq). Short sources make the per-position signal strong
    enough to form the alignment first, and copying cannot be learned without reading the source."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(len(sources)), round(fraction * len(sources))))
    prompt = tokenizer.encode(COPY_PROMPT)
    specials = len(encoder.bos) + len(encoder.eos)
    room = min(encoder.max_target_length - specials, encoder.max_source_length - specials - len(prompt))
    if room < 1:
        raise LmforgeError("max_source_length/max_target_length leave no room for copy examples; "
                           "raise them or set copy_fraction to 0")
    out = []
    for toks in tokenizer.encode_batch([sources[i] for i in chosen]):
        if toks:
            length = min(room, rng.randint(*COPY_LENGTHS))
            start = rng.randrange(max(len(toks) - length, 0) + 1)
            window = toks[start:start + length]
            out.append((encoder.bos + prompt + window + encoder.eos, encoder.bos + window + encoder.eos))
    return out


def check_lengths(model: nn.Module, cfg: FinetuneConfig, source: str) -> None:
    c, d = model.config, cfg.data
    if model.is_encoder_decoder:
        if c.position == "learned" and max(d.max_source_length, d.max_target_length) > c.max_position_embeddings:
            raise LmforgeError(f"data.max_source_length ({d.max_source_length}) or data.max_target_length "
                               f"({d.max_target_length}) is longer than the positions of {source} "
                               f"({c.max_position_embeddings}); lower them")
        if c.position == "learned" and cfg.gen_examples and 1 + cfg.max_new_tokens > c.max_position_embeddings:
            raise LmforgeError(f"max_new_tokens ({cfg.max_new_tokens}) does not fit the decoder positions of {source} "
                               f"({c.max_position_embeddings}, one taken by the start token); lower max_new_tokens")
    else:
        # prefix and prompt tuning put their virtual tokens in front of every sequence, inside the context
        virtual = cfg.adapter.num_virtual_tokens if cfg.adapter.method in ("prefix", "prompt") else 0
        if d.max_source_length + d.max_target_length + virtual > c.block_size:
            raise LmforgeError(
                f"data.max_source_length + data.max_target_length ({d.max_source_length + d.max_target_length}"
                + (f") and the adapter's {virtual} virtual tokens" if virtual else ")")
                + f" are longer than the context of {source} ({c.block_size}); lower them")


Pairs = list[tuple[list[int], list[int]]]


class PairTraining:
    """Teacher-forced training on (source, target) token pairs: one pass over the copy examples (if any), then
    epochs over the task's pairs, each in batches of similar length in a seeded random order."""

    def __init__(self, config: FinetuneConfig):
        self.config = config
        self.metrics = parse_metrics(config.metrics)

    def setup(self, run: Run, resume_from: Path | None) -> None:
        cfg, d = self.config, self.config.data
        self.run = run
        train, val = self.load_data()
        self.model, self.tokenizer, generation = self.model_and_tokenizer(train, resume_from)
        origin = run.init_from if run.init_from != "scratch" else "the model"
        check_lengths(self.model, cfg, origin)
        self.model.to(run.device)
        self.encoder = encoder = PairEncoder(self.tokenizer, self.model.is_encoder_decoder, self.model.config.family,
                                             d.max_source_length, d.max_target_length, d.too_long)
        self.train_pairs, report = encoder.encode(train.prompts(d.template, d.prefix), train.targets, train.ids,
                                                  train.description)
        for text in report.notes(train.description):
            run.note(text)
        self.copies: Pairs = []
        if cfg.copy_fraction:
            if not self.model.is_encoder_decoder:
                raise LmforgeError("copy_fraction applies to encoder-decoder models only; set it to 0")
            self.copies = copy_examples(train.sources, self.tokenizer, encoder, cfg.copy_fraction, cfg.seed)
            run.note(f"{len(self.copies)} copy example(s) from {train.description} sources train first "
                     f"(copy_fraction {cfg.copy_fraction:g})")
        val_pairs, report = encoder.encode(val.prompts(d.template, d.prefix), val.targets, val.ids, val.description)
        for text in report.notes(val.description):
            run.note(text)
        self.generation = {**generation, **cfg.generation_config()}
        self.loss_pairs = val_pairs[:cfg.eval_examples] if cfg.eval_examples else val_pairs
        # Each target beside the next example's source: the loss gap to the real pairs is what the model
        # takes from the source (near zero when the decoder has become a plain language model of targets).
        self.swapped_pairs = [(self.loss_pairs[(i + 1) % len(self.loss_pairs)][0], target)
                              for i, (_, target) in enumerate(self.loss_pairs)]
        gen_count = min(cfg.gen_examples, len(val))
        sources = encoder.sources(val.prompts(d.template, d.prefix)[:gen_count], val.ids[:gen_count],
                                  LengthReport())  # counted above already
        kept = [i for i, s in enumerate(sources) if s is not None]
        self.gen_sources = [sources[i] for i in kept]
        self.gen_refs, self.gen_raw_sources = [val.targets[i] for i in kept], [val.sources[i] for i in kept]
        self.rng = random.Random(cfg.seed)
        self.epoch, self.copy_pass, self.batches, self.position = 0, bool(self.copies), [], 0
        self.pass_rng_state = self.rng.getstate()

    def load_data(self) -> tuple[PairSet, PairSet]:
        d, run = self.config.data, self.run
        train = load_pairs(d.train, "train", d.source_field, d.target_field)
        val = load_pairs(d.val, "validation", d.source_field, d.target_field)
        for pairs in (train, val):
            for text in pairs.notes:
                run.note(text)
        run.say(f"data: {len(train)} training pairs ({train.description}), {len(val)} validation pairs "
                f"({val.description}); source {train.source_field!r} -> target {train.target_field!r}")
        return train, val

    def model_and_tokenizer(self, train: PairSet, resume_from: Path | None) -> tuple[nn.Module, Tokenizer, dict]:
        cfg, run = self.config, self.run
        adapting = cfg.adapter.enabled  # the base as for a new run, then the adapter: new, or the last checkpoint's
        if resume_from is not None or cfg.init_from != "scratch":
            source = run.init_from if adapting else resume_from or cfg.init_from
            checkpoint = load_folder(source)
            if checkpoint.tokenizer is None:
                raise LmforgeError(f"{source} has no tokenizer (tokenizer.json); add the model's tokenizer")
            model, tokenizer = checkpoint.model, checkpoint.tokenizer
            prepare_training_base(model, cfg.quantize, adapting, str(source))
            if resume_from is None or adapting:  # a resumed model keeps the dropout its config.json records
                set_dropout(model, cfg.model.dropout)
                run.say(f"fine-tuning {source}: {model.config.family}, {model.num_parameters() / 1e6:.2f}M parameters")
            if adapting:
                run.say(prepare_training(model, cfg.adapter, source, tokenizer, cfg.seed, resume_from))
            return model, tokenizer, dict(checkpoint.generation_config)
        d = cfg.data
        if d.tokenizer == "bpe":
            tokenizer = Tokenizer.train_bpe(train.sources + train.targets, vocab_size=d.vocab_size,
                                            special_tokens=SPECIAL_TOKENS)
            run.say(f"trained a byte-level BPE tokenizer of {tokenizer.vocab_size} tokens on the training split")
        else:
            tokenizer = load_tokenizer(d.tokenizer)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tokenizer)
        kind = "encoder-decoder" if model.is_encoder_decoder else "decoder-only"
        run.say(f"model from scratch: {cfg.model.preset} ({kind}), {model.num_parameters() / 1e6:.2f}M parameters")
        return model, tokenizer, {}

    # ---- batches ---------------------------------------------------------------------------------

    def examples(self) -> Pairs:
        return self.copies if self.copy_pass else self.train_pairs

    def new_pass(self) -> None:
        """The batches of the next pass (the copy pass, or an epoch), in a new random order."""
        if self.batches:
            self.copy_pass, self.position = False, 0
        if not self.copy_pass:
            self.epoch += 1
        self.pass_rng_state = self.rng.getstate()
        self.batches = self.pass_batches()

    def pass_batches(self) -> list[list[int]]:
        cfg = self.config
        return length_batches([(len(s), len(t)) for s, t in self.examples()], cfg.batch_tokens, cfg.max_batch_size,
                              self.rng)

    def next_batch(self) -> dict:
        if self.position >= len(self.batches):
            self.new_pass()
        index = self.batches[self.position]
        self.position += 1
        dist = self.run.dist
        if dist.enabled:  # this process's rows of the batch (each process gets one, however small the batch)
            index = index[dist.rank::dist.world_size] or [index[dist.rank % len(index)]]
        pairs = [self.examples()[i] for i in index]
        return self.collate(pairs)

    def collate(self, pairs: Pairs) -> dict:
        batch = self.encoder.collate(pairs, self.run.device)
        if self.model.is_encoder_decoder:
            batch["decoder_input_ids"] = self.model.decoder_inputs_from_labels(batch["labels"])
        batch["tokens"] = sum(len(s) + len(t) for s, t in pairs)
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "copy_pass": self.copy_pass, "position": self.position,
                "started": bool(self.batches), "rng": self.pass_rng_state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.copy_pass, self.position = state["epoch"], state["copy_pass"], state["position"]
        self.rng.setstate(state["rng"])
        self.pass_rng_state = state["rng"]
        self.batches = self.pass_batches() if state["started"] else []

    # ---- what the loop calls ---------------------------------------------------------------------

    def describe(self) -> str:
        return f"about {self.config.batch_tokens:,} padded tokens per batch"

    def loss(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        loss, nll = cross_entropy(logits_of(module, batch), batch["labels"], self.config.label_smoothing)
        return loss, nll, batch["tokens"]

    def evaluate(self, step: int, final: bool) -> dict:
        cfg, run = self.config, self.run
        record = {"epoch": self.epoch, "val_loss": self.validation_loss(self.loss_pairs)}
        if len(self.loss_pairs) > 1:
            record["source_gain"] = self.validation_loss(self.swapped_pairs) - record["val_loss"]
        generate_now = cfg.gen_examples > 0 if final else bool(cfg.gen_interval) and step > 0 and \
            step % cfg.gen_interval == 0
        if generate_now and self.gen_sources:
            values = run.on_main(lambda model: self.generation_metrics(model, step))
            record.update(distributed.broadcast_object(run.dist, values))
        return record

    def validation_loss(self, pairs: Pairs) -> float:
        """Token-weighted mean cross-entropy (no smoothing) of the targets of `pairs` given their sources."""
        dist = self.run.dist
        mine = pairs[dist.rank::dist.world_size]
        total, count = 0.0, 0
        lengths = [(len(s), len(t)) for s, t in mine]
        for index in length_batches(lengths, self.config.batch_tokens, self.config.max_batch_size, None):
            batch = self.collate([mine[i] for i in index])
            nll, n = summed_nll(logits_of(self.model, batch), batch["labels"])
            total, count = total + nll.item(), count + n
        total = distributed.mean_over_ranks(dist, total, self.run.device) * dist.world_size
        count = distributed.sum_over_ranks(dist, count, self.run.device)
        return total / max(count, 1)

    def generation_metrics(self, model: nn.Module, step: int) -> dict:
        cfg, run = self.config, self.run
        # as defaults: a transformers generation_config.json may hold keys that are not generation parameters
        outputs = generate_texts(model, self.tokenizer, self.gen_sources, {}, cfg.gen_batch_size,
                                 defaults=self.generation, autocast=run.autocast)
        values, _ = score(outputs, self.gen_refs, self.gen_raw_sources, self.metrics)
        shown = "\n".join(f"[{i}] {o}\n    reference: {r}" for i, (o, r) in enumerate(zip(outputs[:3], self.gen_refs)))
        run.files.add_sample(step, shown)
        return values
