"""The fine-tuning configuration: dataclasses (the defaults), YAML files with `data:` and `model:` sections,
and command-line overrides in the syntax of train/config.py (`--model.preset tiny-bart`, `--max_iters=10`)."""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError
from lmforge.train.config import coerce, field_types, flatten, load_yaml, parse_overrides


@dataclass
class PairDataConfig:
    train: str = field(default="samsum:train", metadata={
        "help": "training pairs: a named data set (samsum, multi30k, optionally :split), a .jsonl/.csv/.tsv file, "
                "or two parallel text files joined by a comma"})
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
class FinetuneConfig:
    out_dir: str = field(default="runs/finetune", metadata={"help": "the run folder"})
    init_from: str = field(default="scratch", metadata={
        "help": "scratch (model.preset + a trained tokenizer) or a Hugging Face/lmforge model folder"})
    data: PairDataConfig = field(default_factory=PairDataConfig)
    model: PairModelConfig = field(default_factory=PairModelConfig)
    batch_tokens: int = field(default=4096, metadata={
        "help": "padded source + target tokens per batch (batches are grouped by length)"})
    max_batch_size: int = field(default=64, metadata={"help": "examples per batch at most"})
    max_iters: int | None = field(default=1000, metadata={
        "help": "optimizer steps; null: train for max_minutes, with the schedule planned on the time"})
    max_minutes: float | None = field(default=None, metadata={"help": "stop after this much wall time"})
    learning_rate: float = 1e-3
    min_lr: float = field(default=1e-5, metadata={"help": "the learning rate at the end of the cosine decay"})
    warmup_iters: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm; 0: off"})
    label_smoothing: float = field(default=0.1, metadata={"help": "of the cross-entropy (padding never counts)"})
    copy_fraction: float = field(default=0.0, metadata={
        "help": "encoder-decoder only: this share of the training sources become copy examples ('copy: ' and "
                "8-32 of a source's tokens -> those tokens), trained in one pass before the task; they keep a "
                "model from scratch on long sources from ignoring its encoder; 0: off"})
    eval_interval: int = field(default=200, metadata={"help": "validation loss every this many steps"})
    eval_examples: int = field(default=200, metadata={"help": "validation examples in each loss evaluation; 0: all"})
    gen_interval: int = field(default=0, metadata={
        "help": "generation metrics on a validation sample every this many steps (a multiple of eval_interval "
                "is best); 0: only at the end"})
    gen_examples: int = field(default=100, metadata={"help": "validation examples generated for the metrics"})
    metrics: str = field(default="rouge", metadata={"help": "generation metrics: rouge, bleu, chrf, ..."})
    best_metric: str = field(default="val_loss", metadata={
        "help": "what picks the best checkpoint: val_loss (lower is better) or a generation metric such as "
                "rouge1, rougeL, bleu, chrf (higher is better)"})
    num_beams: int = field(default=4, metadata={"help": "beam search width for generation (1: greedy)"})
    max_new_tokens: int = field(default=64, metadata={"help": "generated tokens at most"})
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    gen_batch_size: int = field(default=32, metadata={"help": "sources per generation batch"})
    seed: int = 1337
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    dtype: str = field(default="auto", metadata={
        "help": "float32 or bfloat16/float16 autocast; auto: float32 on CPU, bfloat16 on GPU"})
    threads: int = field(default=0, metadata={"help": "CPU threads for torch; 0: torch's default"})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def generation_config(self) -> dict:
        """What the checkpoints' generation_config.json says (and evaluation uses by default)."""
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                "length_penalty": self.length_penalty, "no_repeat_ngram_size": self.no_repeat_ngram_size,
                "early_stopping": self.num_beams > 1}


def config_keys() -> dict:
    """Every leaf field of FinetuneConfig as a dotted key -> (type, field)."""
    return field_types(FinetuneConfig)


def apply(values: dict, where: str, base: FinetuneConfig) -> FinetuneConfig:
    """Set dotted key -> value pairs on `base`, checking every key and value."""
    keys = config_keys()
    for key, value in values.items():
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else "; see `lmforge finetune --help` for the valid keys"
            raise LmforgeError(f"unknown config key {key!r} in {where}{hint}")
        target = base
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, coerce(key, value, keys[key][0]))
    validate(base)
    return base


def load_finetune_config(path: str | os.PathLike | None = None,
                         overrides: dict | list[str] | None = None) -> FinetuneConfig:
    """Defaults, then the YAML file, then the overrides (a (dotted-key) mapping or command-line items)."""
    config = FinetuneConfig()
    if path is not None:
        config = apply(load_yaml(path), str(path), config)
    if overrides:
        flat = parse_overrides(overrides) if isinstance(overrides, list) else flatten(overrides)
        config = apply(flat, "the overrides", config)
    return validate(config)


def validate(c: FinetuneConfig) -> FinetuneConfig:
    checks = [
        (c.batch_tokens >= 1 and c.max_batch_size >= 1, "batch_tokens and max_batch_size must be at least 1"),
        (c.max_iters is not None or c.max_minutes is not None, "set max_iters, max_minutes, or both"),
        (c.max_iters is None or c.max_iters >= 0, "max_iters must not be negative"),
        (c.max_minutes is None or c.max_minutes > 0, "max_minutes must be positive (or null for no limit)"),
        (c.learning_rate > 0 and 0 <= c.min_lr <= c.learning_rate, "need learning_rate > 0 and 0 <= min_lr <= it"),
        (c.warmup_iters >= 0, "warmup_iters must not be negative"),
        (0 <= c.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
        (0 <= c.copy_fraction <= 1, "copy_fraction must be in [0, 1]"),
        (c.eval_interval >= 1, "eval_interval must be at least 1"),
        (c.gen_interval >= 0 and c.gen_examples >= 0 and c.eval_examples >= 0,
         "gen_interval, gen_examples and eval_examples must not be negative"),
        (c.num_beams >= 1 and c.max_new_tokens >= 1, "num_beams and max_new_tokens must be at least 1"),
        (0 <= c.model.dropout < 1, "model.dropout must be in [0, 1)"),
        (c.data.too_long in ("truncate", "drop", "error"), "data.too_long must be truncate, drop or error"),
        (c.data.max_source_length >= 2 and c.data.max_target_length >= 2,
         "data.max_source_length and data.max_target_length must be at least 2"),
        (c.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype must be auto, float32, bfloat16 or float16"),
        (c.threads >= 0, "threads must not be negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise LmforgeError(message)
    return c
