"""The training loop: one for training from scratch, fine-tuning an imported checkpoint, and resuming.

    data      a prepared folder (tokenized once, memory-mapped), random windows per step
    model     DecoderLM from a family config, or a Hugging Face/lmforge folder
    step      gradient accumulation, clipping, AdamW, warmup + cosine schedule, autocast on GPU
    every eval_interval   train/validation loss, a sample, the best and the last checkpoint
    stop      max_iters, max_minutes, patience, or SIGINT (which saves first)

Under torchrun each process trains on its own rows of the global batch with DistributedDataParallel;
rank 0 alone logs and writes. On CPU in float32 a run is deterministic, and a resumed run ends with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmforge import __version__
from lmforge.config import ModelConfig
from lmforge.data.prepare import prepare
from lmforge.data.tokens import TokenData, WindowSampler, is_prepared
from lmforge.errors import LmforgeError
from lmforge.fsutil import write_text_atomic
from lmforge.hub.hf import load_folder
from lmforge.models.decoder import DecoderLM
from lmforge.train import distributed
from lmforge.train.checkpoint import load_resumable, read_trainer_state, save_checkpoint
from lmforge.train.config import RESUMABLE_CHANGES, TrainConfig, load_config, to_yaml
from lmforge.train.optim import lr_at, make_optimizer
from lmforge.train.report import LOG, METRICS, Progress, RunFiles, format_duration

LAST, BEST, DATA, CONFIG = "last", "best", "data", "config.yaml"
AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}
PLOT_EVERY_S = 30  # redraw loss.png at an evaluation at most this often (and always at the end)


@dataclass
class TrainResult:
    run_dir: Path
    iters: int
    stopped: str  # max_iters | max_minutes | patience | interrupted | already_done
    best_val_loss: float | None
    last_eval: dict | None
    elapsed_s: float
    tokens_per_sec: float

    @property
    def best_dir(self) -> Path:
        return self.run_dir / BEST

    @property
    def last_dir(self) -> Path:
        return self.run_dir / LAST


def train(config: TrainConfig | dict | str | os.PathLike, *, resume: bool = False, quiet: bool = False,
          callback: Callable[[dict], None] | None = None) -> TrainResult:
    """Train as `config` says and return where the run went and how it ended.

    `config` is a TrainConfig, a mapping of (dotted) keys, a YAML file, or a run folder (its config.yaml).
    `resume=True` continues the run in `out_dir`. `quiet` prints nothing; `callback` receives every event
    as a dict: {"event": "step" | "eval" | "sample" | "message", "iter": ..., ...}.
    """
    cfg = as_config(config)
    if resume:
        cfg.init_from = "resume"
    return Trainer(cfg, quiet=quiet, callback=callback).run()


def as_config(config: TrainConfig | dict | str | os.PathLike) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return load_config(overrides=config)
    path = Path(config)
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise LmforgeError(f"{path} is not a run folder (no {CONFIG}); pass a YAML config instead")
        return load_config(path / CONFIG, {"out_dir": str(path)})
    return load_config(path)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LmforgeError(f"device {name} was asked for but no CUDA GPU is available; use device cpu or auto")
    return device


def pick_dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def lm_loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch; `module` may be compiled or wrapped by DDP."""
    logits = module(x)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())


def set_dropout(model: nn.Module, p: float) -> None:
    """Give every dropout of the model (and its config) the probability `p`."""
    model.config.dropout = p
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p


def flat_config(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_difference(saved: dict, current: dict) -> str | None:
    """The first setting that differs between two configs and makes them different runs, in words."""
    old, new = flat_config(saved), flat_config(current)
    for key in new:
        if key.split(".")[0] in RESUMABLE_CHANGES or key in RESUMABLE_CHANGES:
            continue
        if old.get(key) != new[key]:
            return f"{key} is {old.get(key)!r} there and {new[key]!r} here"
    return None


@torch.no_grad()
def sample_text(model: DecoderLM, tokenizer, prompt: str, n_tokens: int, temperature: float, top_k: int,
                generator: torch.Generator, context: int) -> str:
    """Sample `n_tokens` with temperature and top-k over a KV cache; when the context is full, restart the
    cache from the last half of it."""
    device = next(model.parameters()).device
    try:
        prompt_ids = tokenizer.encode(prompt) if prompt else []
    except LmforgeError:
        prompt_ids = []
    if not prompt_ids:
        prompt_ids = [next((i for i in (tokenizer.eos_token_id, tokenizer.bos_token_id) if i is not None), 0)]
    ids = prompt_ids[-context:]
    cache, pending = model.new_cache(1, context), ids
    for _ in range(n_tokens):
        if cache.length + len(pending) > context:
            cache, pending = model.new_cache(1, context), ids[-(context // 2):]
        logits = model(torch.tensor([pending], device=device), cache=cache, last_only=True)[0, -1].float().cpu()
        logits = logits[:tokenizer.vocab_size]  # a model may have more rows than its tokenizer has tokens
        if temperature <= 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if 0 < top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, -math.inf)
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        ids.append(token)
        pending = [token]
    return tokenizer.decode(ids[len(prompt_ids[-context:]):])


class Trainer:
    def __init__(self, cfg: TrainConfig, quiet: bool = False, callback: Callable[[dict], None] | None = None):
        self.cfg = cfg
        self.callback = callback
        device = pick_device(cfg.device)
        self.dist = distributed.setup(device.type)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.dtype = pick_dtype(cfg.dtype, device)
        if self.dtype == "float16" and device.type == "cpu":
            raise LmforgeError("dtype float16 needs a GPU; use float32 or bfloat16 on CPU")
        self.run_dir = Path(cfg.out_dir)
        self.files = RunFiles(self.run_dir)
        self.main = self.dist.is_main
        self.progress = Progress(enabled=self.main and not quiet)
        self.interrupted = False
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    # ---- events ------------------------------------------------------------------------------

    def emit(self, event: str, **fields) -> None:
        if self.callback is not None and self.main:
            self.callback({"event": event, **fields})

    def say(self, text: str) -> None:
        if self.main:
            self.progress.message(text)
            self.emit("message", text=text)

    # ---- setup -------------------------------------------------------------------------------

    def resume_state(self) -> dict | None:
        cfg = self.cfg
        last = self.run_dir / LAST
        if cfg.init_from != "resume":
            if last.exists():
                raise LmforgeError(f"{self.run_dir} already holds a run; resume it with --resume, delete it, "
                                   "or choose another out_dir")
            return None
        state = read_trainer_state(last) if last.exists() else None
        if state is None:
            raise LmforgeError(f"there is no run to resume in {self.run_dir} (no {LAST}/ checkpoint); "
                               "train without --resume to start one")
        diff = config_difference(state["config"], cfg.to_dict())
        if diff:
            raise LmforgeError(f"the run in {self.run_dir} was made with a different config ({diff}); resume with "
                               "the same settings or train into a new out_dir")
        if state["world_size"] != self.dist.world_size:
            raise LmforgeError(f"the run in {self.run_dir} was trained by {state['world_size']} process(es), not "
                               f"{self.dist.world_size}; resume it with the same number of processes")
        return state

    def fine_tune_source(self, state: dict | None) -> str | None:
        init = state["config"]["init_from"] if state else self.cfg.init_from
        return None if init in ("scratch", "resume") else init

    def load_data(self, init_folder: str | None) -> TokenData:
        """The prepared corpus: `data.source` when it is prepared already, else tokenized into the run folder."""
        d = self.cfg.data
        if is_prepared(d.source):
            return TokenData.open(d.source)
        tokenizer = d.tokenizer
        if tokenizer == "auto":
            tokenizer = init_folder or "char"
        folder = self.run_dir / DATA
        request = {"source": d.source, "tokenizer": tokenizer, "vocab_size": d.vocab_size,
                   "val_fraction": d.val_fraction, "text_field": d.text_field, "errors": d.errors}
        if self.main:
            current = TokenData.open(folder).manifest.get("request") if is_prepared(folder) else None
            if current != request:
                prepare(log=self.say, **request, out_dir=folder)
        distributed.barrier(self.dist)
        return TokenData.open(folder)

    def build_model(self, data: TokenData, init_folder: str | None, resuming: bool) -> tuple[DecoderLM, dict]:
        cfg, shape = self.cfg, self.cfg.model
        tok = data.tokenizer
        generation = {"do_sample": True, "temperature": cfg.temperature, "top_k": cfg.top_k}
        if resuming or init_folder:
            source = self.run_dir / LAST if resuming else Path(init_folder)
            checkpoint = load_folder(source)
            model = checkpoint.model
            generation = {**checkpoint.generation_config, **generation}
            if init_folder and not resuming:
                self.check_tokenizer(tok, checkpoint.tokenizer, init_folder)
                self.say(f"fine-tuning {init_folder}: {model.config.family}, {model.config.n_layer} layers, "
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
                               f"{model.config.vocab_size}; "
                               "prepare the data with the model's tokenizer")
        for split in ("train", "val"):
            n = len(data.split(split))
            if n <= shape.block_size:
                raise LmforgeError(f"model.block_size ({shape.block_size}) is larger than the {split} split "
                                   f"({n} tokens); lower model.block_size or use a bigger corpus or val_fraction")
        model.train()
        return model.to(self.device), {k: v for k, v in generation.items() if v is not None}

    @staticmethod
    def check_tokenizer(data_tok, model_tok, folder: str) -> None:
        if model_tok is None:
            raise LmforgeError(f"{folder} has no tokenizer (tokenizer.json); add the model's tokenizer to the folder")
        if data_tok.backend.get_vocab() != model_tok.backend.get_vocab():
            raise LmforgeError(f"the prepared data was tokenized with another tokenizer than {folder}'s; "
                               "prepare it with the model's tokenizer (--tokenizer " + folder + ")")

    # ---- the run -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        clean = False
        try:
            result = self._run()
            clean = True
            return result
        finally:
            self.progress.close()
            distributed.teardown(self.dist, clean)

    def _run(self) -> TrainResult:
        cfg, dev = self.cfg, self.device
        state = self.resume_state()
        init_folder = self.fine_tune_source(state)
        # a resumed run keeps recording how it began (scratch or the fine-tuned folder)
        saved_config = {**cfg.to_dict(), "init_from": state["config"]["init_from"] if state else cfg.init_from}
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if state is None:  # leftovers of a run that died before its first checkpoint
                self.files.clear()
                shutil.rmtree(self.run_dir / BEST, ignore_errors=True)
        data = self.load_data(init_folder)
        model, generation = self.build_model(data, init_folder, resuming=state is not None)
        self.model, self.tokenizer, self.generation = model, data.tokenizer, generation
        torch.manual_seed(cfg.seed + self.dist.rank)  # dropout differs per rank

        optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), dev.type)
        scaler = torch.amp.GradScaler(dev.type, enabled=self.dtype == "float16")
        sampler = WindowSampler(data.train, cfg.model.block_size, cfg.batch_size, cfg.seed,
                                self.dist.rank, self.dist.world_size)
        iter_num, best, best_iter, since_best, elapsed_before, tokens_seen = 0, math.inf, None, 0, 0.0, 0
        if state is not None:
            opt_state, train_state = load_resumable(self.run_dir / LAST, dev)
            optimizer.load_state_dict(opt_state)
            sampler.load_state_dict(train_state["sampler"])
            scaler.load_state_dict(train_state["scaler"])
            rng = train_state["rng"][self.dist.rank]
            torch.set_rng_state(rng["cpu"])
            if rng.get("cuda") is not None and dev.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], dev)
            iter_num, elapsed_before, tokens_seen = state["iter"], state["elapsed_s"], state["tokens_seen"]
            best = state["best_val_loss"] if state["best_val_loss"] is not None else math.inf
            best_iter, since_best = state["best_iter"], state["evals_since_best"]
            if self.main:
                self.files.truncate_after(iter_num)
            self.say(f"resuming {self.run_dir} at iter {iter_num}")
        if self.main:
            write_text_atomic(self.run_dir / CONFIG, to_yaml(saved_config))

        train_module: nn.Module = torch.compile(model) if cfg.compile else model
        if self.dist.enabled:
            train_module = DistributedDataParallel(train_module, device_ids=[dev.index] if dev.type == "cuda" else None)
        autocast = (torch.autocast(dev.type, dtype=AUTOCAST[self.dtype]) if self.dtype in AUTOCAST
                    else contextlib.nullcontext())
        self.autocast = autocast
        accum = cfg.gradient_accumulation_steps
        tokens_per_iter = cfg.batch_size * accum * self.dist.world_size * cfg.model.block_size
        if self.main:
            n_params = model.num_parameters()
            self.say(f"training {n_params / 1e6:.2f}M parameters on {dev} ({self.dtype}"
                     f"{', compiled' if cfg.compile else ''}, {self.dist.world_size} process(es), "
                     f"{torch.get_num_threads()} threads): {tokens_per_iter:,} tokens per step, "
                     f"{cfg.max_iters} steps")
        self.progress.start(cfg.max_iters, iter_num)

        def snapshot(stopped: str | None = None) -> dict:
            return {"iter": iter_num, "best_val_loss": None if best == math.inf else best, "best_iter": best_iter,
                    "evals_since_best": since_best, "elapsed_s": elapsed(), "tokens_seen": tokens_seen,
                    "world_size": self.dist.world_size, "stopped": stopped, "lmforge_version": __version__,
                    "config": saved_config}

        session_start = time.perf_counter()

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - session_start

        def save_last(stopped: str | None = None) -> None:
            rng = {"cpu": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
            rngs = distributed.gather_objects(self.dist, rng)
            if self.main:
                save_checkpoint(self.run_dir / LAST, model, self.tokenizer, snapshot(stopped), self.generation,
                                optimizer, {"rng": rngs, "sampler": sampler.state_dict(),
                                            "scaler": scaler.state_dict()})

        last_eval: dict | None = None
        last_plot = [time.perf_counter()]
        window_iters, train_time, tps = 0, 0.0, 0.0
        stopped = "max_iters"

        def evaluate_and_save() -> None:
            nonlocal best, best_iter, since_best, last_eval
            losses = self.estimate_loss(model, data)  # uncompiled: no second compilation for no_grad
            improved = losses["val"] < best
            if improved:
                best, best_iter, since_best = losses["val"], iter_num, 0
            elif iter_num > 0:
                since_best += 1
            last_eval = {"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"],
                         "train_ppl": math.exp(min(losses["train"], 50)), "val_ppl": math.exp(min(losses["val"], 50)),
                         "lr": lr_at(max(iter_num - 1, 0), cfg.learning_rate, cfg.min_lr, cfg.warmup_iters,
                                     cfg.decay_iters, cfg.decay_lr),
                         "tokens_per_sec": round(tps, 1), "elapsed_s": round(elapsed(), 3),
                         "tokens": tokens_seen, "best": improved}
            if self.main:
                self.files.append(METRICS, last_eval)
                self.say(f"eval iter {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                         f"(perplexity {last_eval['val_ppl']:.2f}){'  * best' if improved else ''}")
                self.emit("eval", **last_eval)
                if cfg.sample_tokens > 0 and iter_num > 0:
                    self.sample(iter_num)
                if iter_num > 0 and improved:
                    save_checkpoint(self.run_dir / BEST, model, self.tokenizer, snapshot(), self.generation)
                if time.perf_counter() - last_plot[0] > PLOT_EVERY_S:
                    self.files.plot()
                    last_plot[0] = time.perf_counter()
            if iter_num > 0:
                save_last()

        previous_handler = self.install_sigint()
        try:
            if state is None:
                evaluate_and_save()
            if iter_num >= cfg.max_iters:
                stopped = "already_done" if state is not None else "max_iters"
            while iter_num < cfg.max_iters:
                lr = lr_at(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters, cfg.decay_lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_start = time.perf_counter()
                loss_sum = torch.zeros((), device=dev)
                for micro in range(accum):
                    x, y = sampler.next_batch(dev)
                    sync = micro == accum - 1 or not self.dist.enabled
                    with contextlib.nullcontext() if sync else train_module.no_sync():
                        with autocast:
                            loss = lm_loss(train_module, x, y) / accum
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                iter_num += 1
                tokens_seen += tokens_per_iter
                window_iters += 1
                train_time += time.perf_counter() - step_start

                if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
                    loss_value = distributed.mean_over_ranks(self.dist, loss_sum.item(), dev)
                    tps = window_iters * tokens_per_iter / max(train_time, 1e-9)
                    eta = (cfg.max_iters - iter_num) * train_time / window_iters
                    if cfg.max_minutes is not None:
                        eta = min(eta, max(cfg.max_minutes * 60 - elapsed(), 0))
                    if self.main:
                        self.files.append(LOG, {"iter": iter_num, "loss": loss_value, "lr": lr,
                                                "tokens_per_sec": round(tps, 1)})
                        self.progress.step(iter_num, loss_value, lr, tps, eta)
                        self.emit("step", iter=iter_num, loss=loss_value, lr=lr, tokens_per_sec=tps, eta_s=eta,
                                  elapsed_s=elapsed())
                else:
                    self.progress.advance(iter_num)
                over_time = cfg.max_minutes is not None and elapsed() > cfg.max_minutes * 60
                interrupted, over_time = distributed.any_rank(self.dist, [self.interrupted, over_time], dev)
                if interrupted:
                    stopped = "interrupted"
                    save_last(stopped)
                    self.say(f"interrupted at iter {iter_num}; the checkpoint is saved in {self.run_dir / LAST}, "
                             "continue with --resume")
                    break
                at_end = iter_num == cfg.max_iters or over_time
                if iter_num % cfg.eval_interval == 0 or at_end:
                    evaluate_and_save()
                    window_iters, train_time = 0, 0.0
                    if cfg.patience and since_best >= cfg.patience:
                        stopped = "patience"
                        self.say(f"stopping early: no better validation loss in {cfg.patience} evaluations "
                                 f"(best {best:.4f} at iter {best_iter})")
                        break
                if over_time:
                    stopped = "max_minutes"
                    self.say(f"stopping at iter {iter_num}: the time budget of {cfg.max_minutes} minutes is spent")
                    break
        finally:
            self.restore_sigint(previous_handler)
        if self.main:
            self.files.plot()
        total = elapsed()
        result = TrainResult(self.run_dir, iter_num, stopped, None if best == math.inf else best, last_eval,
                             total, tokens_seen / total if total else 0.0)
        self.say(f"done ({stopped}) at iter {iter_num} in {format_duration(total)}; best val loss "
                 f"{result.best_val_loss if result.best_val_loss is None else round(result.best_val_loss, 4)}"
                 f" -> {self.run_dir / BEST}")
        return result

    @torch.no_grad()
    def estimate_loss(self, module: nn.Module, data: TokenData) -> dict[str, float]:
        """Mean loss over `eval_iters` batches per split; the same windows at every evaluation."""
        cfg = self.cfg
        self.model.eval()
        out = {}
        for offset, split in enumerate(("train", "val")):
            sampler = WindowSampler(data.split(split), cfg.model.block_size, cfg.batch_size, cfg.seed + 1 + offset,
                                    self.dist.rank, self.dist.world_size)
            total = torch.zeros((), dtype=torch.float64, device=self.device)
            for _ in range(cfg.eval_iters):
                x, y = sampler.next_batch(self.device)
                with self.autocast:
                    total += lm_loss(module, x, y).double()
            out[split] = distributed.mean_over_ranks(self.dist, total.item() / cfg.eval_iters, self.device)
        self.model.train()
        return out

    def sample(self, iter_num: int) -> None:
        cfg = self.cfg
        self.model.eval()
        generator = torch.Generator().manual_seed(cfg.seed + iter_num)
        with self.autocast:
            text = sample_text(self.model, self.tokenizer, cfg.sample_prompt, cfg.sample_tokens, cfg.temperature,
                               cfg.top_k, generator, cfg.model.block_size)
        self.model.train()
        self.files.add_sample(iter_num, text)
        self.progress.message(f"sample at iter {iter_num}:\n{text}\n")
        self.emit("sample", iter=iter_num, text=text)

    # ---- SIGINT ------------------------------------------------------------------------------

    def install_sigint(self):
        """The first Ctrl-C asks the loop to save and stop at the end of the step; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)

        previous = signal.signal(signal.SIGINT, handler)
        return previous

    def restore_sigint(self, previous) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
