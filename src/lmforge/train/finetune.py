"""Fine-tuning on source/target pairs: seq2seq models, and decoder-only models on prompt->completion.

    data      pairs (data/pairs.py), tokenized once, batched by length with dynamic padding
    model     an EncoderDecoderLM or DecoderLM from a preset with a BPE tokenizer trained on the
              training split, or a Hugging Face/lmforge folder (init_from)
    loss      teacher forcing, label smoothing; padding (and a decoder-only prompt) never counts
    step      AdamW with decay/no-decay groups, warmup + cosine decay (planned on max_iters, or on
              max_minutes when max_iters is null), clipping, bf16 autocast on GPU
    every eval_interval   validation loss on a fixed sample; every gen_interval, and at the end,
              generation metrics (ROUGE, BLEU, ...) on a fixed validation sample
    keeps     best/ (by best_metric) and last/: model folders with trainer_state.json; metrics.jsonl,
              log.jsonl, samples.txt and loss.png in the run folder

The pieces of the training loop (optimizer, schedule, progress, run files, atomic checkpoints,
config overrides) are those of train/trainer.py; a fine-tuning run is not resumable.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmforge import __version__
from lmforge.config import ENCDEC_PRESETS, PRESETS, encdec_preset, preset
from lmforge.data.pairs import LengthReport, PairEncoder, PairSet, length_batches, load_pairs
from lmforge.errors import LmforgeError
from lmforge.evaluate.run import generate_texts, metric_columns, parse_metrics, score
from lmforge.fsutil import write_text_atomic
from lmforge.hub.hf import load_folder
from lmforge.models.decoder import DecoderLM
from lmforge.models.encdec import EncoderDecoderLM
from lmforge.tokenizer import Tokenizer
from lmforge.train.checkpoint import save_checkpoint
from lmforge.train.config import to_yaml
from lmforge.train.finetune_config import FinetuneConfig, load_finetune_config
from lmforge.train.optim import lr_at, make_optimizer
from lmforge.train.report import LOG, METRICS, Progress, RunFiles, format_duration
from lmforge.train.trainer import AUTOCAST, pick_device, pick_dtype, set_dropout

BEST, LAST, CONFIG = "best", "last", "config.yaml"
SPECIAL_TOKENS = ("<pad>", "</s>", "<s>")  # ids 0, 1, 2 of a trained tokenizer: pad, eos, bos
LOG_INTERVAL = 10
_TIME_STEPS = 1_000_000  # resolution of a schedule planned on the time budget


@dataclass
class FinetuneResult:
    run_dir: Path
    iters: int
    stopped: str  # max_iters | max_minutes | interrupted
    best_metric: str
    best_value: float | None
    best_iter: int | None
    last_eval: dict | None
    elapsed_s: float
    tokens_per_sec: float
    notes: list

    @property
    def best_dir(self) -> Path:
        return self.run_dir / BEST

    @property
    def last_dir(self) -> Path:
        return self.run_dir / LAST


def finetune(config: FinetuneConfig | dict | str | os.PathLike, *, quiet: bool = False,
             callback: Callable[[dict], None] | None = None) -> FinetuneResult:
    """Fine-tune as `config` says (a FinetuneConfig, a mapping of dotted keys, or a YAML file).

    `callback` receives every event as a dict: {"event": "step" | "eval" | "message", "iter": ..., ...}.
    """
    if isinstance(config, FinetuneConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = load_finetune_config(overrides=config)
    else:
        cfg = load_finetune_config(config)
    return Finetuner(cfg, quiet, callback).run()


def smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, ...]:
    """(label-smoothed loss, plain cross-entropy), both means over the labels that are not -100.

    Ignored positions are weighted by zero rather than selected out, which would copy the
    (tokens x vocabulary) log-probabilities forward and scatter them back in the backward pass.
    """
    logp = F.log_softmax(logits.flatten(0, 1).float(), dim=-1)
    labels = labels.flatten()
    keep = (labels != -100).to(logp.dtype)
    count = keep.sum().clamp(min=1)
    token_nll = -logp.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
    nll = (token_nll * keep).sum() / count
    if not smoothing:
        return nll, nll
    uniform = (-logp.mean(-1) * keep).sum() / count
    return (1 - smoothing) * nll + smoothing * uniform, nll.detach()


def batch_logits(model: nn.Module, batch: dict) -> torch.Tensor:
    if getattr(model, "is_encoder_decoder", False):
        return model(batch["input_ids"], batch["attention_mask"], model.decoder_inputs_from_labels(batch["labels"]))
    return model(batch["input_ids"])


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
        if ENCDEC_PRESETS[m.preset].get("family") == "bart":
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


COPY_PROMPT = "copy: "
COPY_LENGTHS = (8, 32)  # tokens of a copy window, drawn uniformly


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
    if getattr(model, "is_encoder_decoder", False):
        if c.position == "learned" and max(d.max_source_length, d.max_target_length) > c.max_position_embeddings:
            raise LmforgeError(f"data.max_source_length ({d.max_source_length}) or data.max_target_length "
                               f"({d.max_target_length}) is longer than the positions of {source} "
                               f"({c.max_position_embeddings}); lower them")
    elif d.max_source_length + d.max_target_length > c.block_size:
        raise LmforgeError(f"data.max_source_length + data.max_target_length ({d.max_source_length + d.max_target_length}"
                           f") is longer than the context of {source} ({c.block_size}); lower them")


class Finetuner:
    def __init__(self, cfg: FinetuneConfig, quiet: bool = False, callback: Callable[[dict], None] | None = None):
        self.cfg, self.callback = cfg, callback
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        if self.dtype == "float16" and self.device.type == "cpu":
            raise LmforgeError("dtype float16 needs a GPU; use float32 or bfloat16 on CPU")
        self.autocast = (torch.autocast(self.device.type, dtype=AUTOCAST[self.dtype]) if self.dtype in AUTOCAST
                         else contextlib.nullcontext())
        self.run_dir = Path(cfg.out_dir)
        self.files = RunFiles(self.run_dir)
        self.progress = Progress(enabled=not quiet)
        self.metrics = parse_metrics(cfg.metrics)
        columns = metric_columns(self.metrics)
        if cfg.best_metric != "val_loss" and cfg.best_metric not in columns:
            raise LmforgeError(f"best_metric {cfg.best_metric!r} is neither val_loss nor one of the generation "
                               f"metrics ({', '.join(columns)}); add it to metrics or choose another")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.notes: list[str] = []

    def emit(self, event: str, **fields) -> None:
        if self.callback is not None:
            self.callback({"event": event, **fields})

    def say(self, text: str) -> None:
        self.progress.message(text)
        self.emit("message", text=text)

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.say(text)

    # ---- setup -------------------------------------------------------------------------------

    def load_data(self) -> tuple[PairSet, PairSet]:
        d = self.cfg.data
        train = load_pairs(d.train, "train", d.source_field, d.target_field)
        val = load_pairs(d.val, "validation", d.source_field, d.target_field)
        for pairs in (train, val):
            for text in pairs.notes:
                self.note(text)
        self.say(f"data: {len(train)} training pairs ({train.description}), {len(val)} validation pairs "
                 f"({val.description}); source {train.source_field!r} -> target {train.target_field!r}")
        return train, val

    def model_and_tokenizer(self, train: PairSet) -> tuple[nn.Module, Tokenizer, dict]:
        cfg = self.cfg
        if cfg.init_from != "scratch":
            checkpoint = load_folder(cfg.init_from)
            if checkpoint.tokenizer is None:
                raise LmforgeError(f"{cfg.init_from} has no tokenizer (tokenizer.json); add the model's tokenizer")
            model, tokenizer = checkpoint.model, checkpoint.tokenizer
            set_dropout(model, cfg.model.dropout)
            self.say(f"fine-tuning {cfg.init_from}: {model.config.family}, "
                     f"{model.num_parameters() / 1e6:.2f}M parameters")
            return model, tokenizer, dict(checkpoint.generation_config)
        d = cfg.data
        if d.tokenizer == "bpe":
            tokenizer = Tokenizer.train_bpe(train.sources + train.targets, vocab_size=d.vocab_size,
                                            special_tokens=SPECIAL_TOKENS)
            self.say(f"trained a byte-level BPE tokenizer of {tokenizer.vocab_size} tokens on the training split")
        else:
            tokenizer = Tokenizer.from_pretrained(d.tokenizer)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tokenizer)
        kind = "encoder-decoder" if model.is_encoder_decoder else "decoder-only"
        self.say(f"model from scratch: {cfg.model.preset} ({kind}), {model.num_parameters() / 1e6:.2f}M parameters")
        return model, tokenizer, {}

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> FinetuneResult:
        try:
            return self._run()
        finally:
            self.progress.close()

    def _run(self) -> FinetuneResult:
        cfg, dev = self.cfg, self.device
        if (self.run_dir / LAST).exists() or (self.run_dir / BEST).exists():
            raise LmforgeError(f"{self.run_dir} already holds a run; delete it or choose another out_dir")
        train, val = self.load_data()
        model, tokenizer, generation = self.model_and_tokenizer(train)
        check_lengths(model, cfg, cfg.init_from if cfg.init_from != "scratch" else "the model")
        d = cfg.data
        encoder = PairEncoder(tokenizer, model.is_encoder_decoder, model.config.family, d.max_source_length,
                              d.max_target_length, d.too_long)
        train_ids, report = encoder.encode(train.prompts(d.template, d.prefix), train.targets, train.ids,
                                           train.description)
        for text in report.notes(train.description):
            self.note(text)
        copies = []
        if cfg.copy_fraction:
            if not model.is_encoder_decoder:
                raise LmforgeError("copy_fraction applies to encoder-decoder models only; set it to 0")
            copies = copy_examples(train.sources, tokenizer, encoder, cfg.copy_fraction, cfg.seed)
            self.note(f"{len(copies)} copy example(s) from {train.description} sources train first "
                      f"(copy_fraction {cfg.copy_fraction:g})")
        val_ids, report = encoder.encode(val.prompts(d.template, d.prefix), val.targets, val.ids, val.description)
        for text in report.notes(val.description):
            self.note(text)
        self.model, self.tokenizer, self.encoder = model.to(dev), tokenizer, encoder
        self.generation = {**generation, **cfg.generation_config()}
        self.loss_pairs = val_ids[:cfg.eval_examples] if cfg.eval_examples else val_ids
        # Each target beside the next example's source: the loss gap to the real pairs is what the model
        # takes from the source (near zero when the decoder has become a plain language model of targets).
        self.swapped_pairs = [(self.loss_pairs[(i + 1) % len(self.loss_pairs)][0], target)
                              for i, (_, target) in enumerate(self.loss_pairs)]
        gen_count = min(cfg.gen_examples, len(val))
        gen_prompts = val.prompts(d.template, d.prefix)[:gen_count]
        sources = encoder.sources(gen_prompts, val.ids[:gen_count], LengthReport())  # counted above already
        kept = [i for i, s in enumerate(sources) if s is not None]
        self.gen_sources = [sources[i] for i in kept]
        self.gen_refs, self.gen_raw_sources = [val.targets[i] for i in kept], [val.sources[i] for i in kept]

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in (METRICS, LOG, "samples.txt"):
            (self.run_dir / name).unlink(missing_ok=True)
        write_text_atomic(self.run_dir / CONFIG, to_yaml(cfg.to_dict()))
        optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), dev.type)
        scaler = torch.amp.GradScaler(dev.type, enabled=self.dtype == "float16")
        rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        plan = f"{cfg.max_iters} steps" if cfg.max_iters is not None else f"{cfg.max_minutes} minutes"
        self.say(f"fine-tuning {model.num_parameters() / 1e6:.2f}M parameters on {dev} ({self.dtype}, "
                 f"{torch.get_num_threads()} threads), about {cfg.batch_tokens:,} padded tokens per batch, {plan}")
        self.progress.start(cfg.max_iters or 0, 0)

        began = time.perf_counter()

        def elapsed() -> float:
            return time.perf_counter() - began

        step, tokens, epoch, window_loss, window_steps, window_tokens, window_time = 0, 0, 0, 0.0, 0, 0, 0.0
        warmup_end: float | None = None
        best_value, best_iter, last_eval, stopped, skipped = None, None, None, "max_iters", 0
        higher_is_better = cfg.best_metric != "val_loss"

        def learning_rate() -> float:
            nonlocal warmup_end
            if cfg.max_iters is not None:
                return lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
            if step < cfg.warmup_iters:
                return lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.warmup_iters + 1)
            if warmup_end is None:
                warmup_end = elapsed()
            fraction = (elapsed() - warmup_end) / max(cfg.max_minutes * 60 - warmup_end, 1e-9)
            virtual = cfg.warmup_iters + round(min(fraction, 1.0) * _TIME_STEPS)
            return lr_at(virtual, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.warmup_iters + _TIME_STEPS)

        def evaluate(with_generation: bool) -> None:
            nonlocal best_value, best_iter, last_eval, window_loss, window_steps
            record = {"iter": step, "epoch": epoch,
                      "train_loss": window_loss / window_steps if window_steps else None,
                      "val_loss": self.validation_loss(self.loss_pairs), "lr": lr, "elapsed_s": round(elapsed(), 2),
                      "tokens_per_sec": round(window_tokens / window_time, 1) if window_time else None}
            record["val_ppl"] = math.exp(min(record["val_loss"], 50))
            if len(self.loss_pairs) > 1:
                record["source_gain"] = self.validation_loss(self.swapped_pairs) - record["val_loss"]
            if record["train_loss"] is None:  # no step since the last evaluation (or none at all yet)
                record["train_loss"] = last_eval["train_loss"] if last_eval else record["val_loss"]
            if with_generation and self.gen_sources:
                record.update(self.generation_metrics(step))
            value = record.get(cfg.best_metric)
            improved = value is not None and step > 0 and (
                best_value is None or (value > best_value if higher_is_better else value < best_value))
            record["best"] = improved
            if improved:
                best_value, best_iter = value, step
                save_checkpoint(self.run_dir / BEST, model, tokenizer, state(), self.generation)
            last_eval = record
            self.files.append(METRICS, record)
            shown = ", ".join(f"{k} {record[k]:.2f}" for k in metric_columns(self.metrics) if k in record)
            gain = f", source gain {record['source_gain']:.3f}" if "source_gain" in record else ""
            self.say(f"eval iter {step}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
                     + gain + (f", {shown}" if shown else "") + ("  * best" if improved else ""))
            self.emit("eval", **record)
            self.files.plot()
            window_loss, window_steps = 0.0, 0

        def state(stopped_as: str | None = None) -> dict:
            return {"iter": step, "best_metric": cfg.best_metric, "best_value": best_value, "best_iter": best_iter,
                    "elapsed_s": round(elapsed(), 2), "tokens_seen": tokens, "stopped": stopped_as,
                    "lmforge_version": __version__, "kind": "finetune", "config": cfg.to_dict()}

        lr = learning_rate()
        evaluate(with_generation=False)
        copy_pass = bool(copies)
        try:
            while stopped == "max_iters" and (cfg.max_iters is None or step < cfg.max_iters):
                # one pass over the copy examples (if any) first, then epochs over the task's pairs
                examples, copy_pass = (copies if copy_pass else train_ids), False
                batches = length_batches([(len(s), len(t)) for s, t in examples], cfg.batch_tokens,
                                         cfg.max_batch_size, rng)
                epoch += examples is train_ids
                for batch_index in batches:
                    if cfg.max_iters is not None and step >= cfg.max_iters:
                        break
                    if cfg.max_minutes is not None and elapsed() > cfg.max_minutes * 60:
                        stopped = "max_minutes"
                        break
                    lr = learning_rate()
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    step_start = time.perf_counter()
                    batch = encoder.collate([examples[i] for i in batch_index], dev)
                    with self.autocast:
                        loss, nll = smoothed_cross_entropy(batch_logits(model, batch), batch["labels"],
                                                           cfg.label_smoothing)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                          cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                    finite = bool(torch.isfinite(norm))
                    if finite or scaler.is_enabled():  # a scaler skips a non-finite step by itself
                        scaler.step(optimizer)
                    skipped += not finite
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    n_tokens = sum(len(examples[i][0]) + len(examples[i][1]) for i in batch_index)
                    tokens += n_tokens
                    nll_value = nll.item()
                    if finite:
                        window_loss, window_steps = window_loss + nll_value, window_steps + 1
                    window_tokens += n_tokens
                    window_time += time.perf_counter() - step_start
                    if step % LOG_INTERVAL == 0:
                        tps = window_tokens / max(window_time, 1e-9)
                        if cfg.max_iters is not None:
                            eta = (cfg.max_iters - step) * window_time / max(window_steps, 1)
                        else:
                            eta = max(cfg.max_minutes * 60 - elapsed(), 0)
                            self.progress.total = round(step * cfg.max_minutes * 60 / max(elapsed(), 1e-9))
                        self.files.append(LOG, {"iter": step, "loss": nll_value, "lr": lr,
                                                "tokens_per_sec": round(tps, 1)})
                        self.progress.step(step, nll_value, lr, tps, eta)
                        self.emit("step", iter=step, loss=nll_value, lr=lr, tokens_per_sec=tps, eta_s=eta)
                    else:
                        self.progress.advance(step)
                    at_end = (cfg.max_iters is not None and step >= cfg.max_iters) or (
                        cfg.max_minutes is not None and elapsed() > cfg.max_minutes * 60)
                    if not at_end and step % cfg.eval_interval == 0:
                        evaluate(with_generation=bool(cfg.gen_interval) and step % cfg.gen_interval == 0)
                        window_tokens, window_time = 0, 0.0
                else:
                    continue
                break
        except KeyboardInterrupt:
            stopped = "interrupted"
            self.say(f"interrupted at iter {step}; saving {self.run_dir / LAST}")
        if skipped:
            self.note(f"skipped {skipped} step(s) whose loss or gradient was not finite (the weights were kept)")
        if stopped != "interrupted":
            evaluate(with_generation=cfg.gen_examples > 0)
        save_checkpoint(self.run_dir / LAST, model, tokenizer, state(stopped), self.generation)
        if best_value is None:  # nothing improved on the first evaluation (e.g. zero steps): last is best
            save_checkpoint(self.run_dir / BEST, model, tokenizer, state(stopped), self.generation)
        total = elapsed()
        self.say(f"done ({stopped}) at iter {step} in {format_duration(total)}; best {cfg.best_metric} "
                 f"{best_value if best_value is None else round(best_value, 4)} at iter {best_iter} -> "
                 f"{self.run_dir / BEST}")
        return FinetuneResult(self.run_dir, step, stopped, cfg.best_metric, best_value, best_iter, last_eval, total,
                              tokens / total if total else 0.0, self.notes)

    # ---- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def validation_loss(self, pairs: list[tuple[list[int], list[int]]]) -> float:
        """Token-weighted mean cross-entropy (no smoothing) of the targets of `pairs` given their sources."""
        model = self.model
        model.eval()
        total, count = 0.0, 0
        lengths = [(len(s), len(t)) for s, t in pairs]
        for index in length_batches(lengths, self.cfg.batch_tokens, self.cfg.max_batch_size, None):
            batch = self.encoder.collate([pairs[i] for i in index], self.device)
            with self.autocast:
                logits = batch_logits(model, batch)
            labels = batch["labels"]
            total += F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                     reduction="sum").item()
            count += int((labels != -100).sum())
        model.train()
        return total / max(count, 1)

    def generation_metrics(self, step: int) -> dict:
        outputs = generate_texts(self.model, self.tokenizer, self.gen_sources, self.generation,
                                 self.cfg.gen_batch_size, autocast=self.autocast)
        values, _ = score(outputs, self.gen_refs, self.gen_raw_sources, self.metrics)
        shown = "\n".join(f"[{i}] {o}\n    reference: {r}" for i, (o, r) in enumerate(zip(outputs[:3], self.gen_refs)))
        self.files.add_sample(step, shown)
        return values
