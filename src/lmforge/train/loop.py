"""The training loop: one loop for every task.

A task (train/lm.py: language modelling on a token corpus; train/pairs.py: seq2seq and prompt->completion
pairs; later reward models and preference objectives) supplies a model, batches, a loss for a batch and
its evaluation metrics. The loop does everything else, the same way for every task:

    budget     max_iters steps, or max_minutes of wall time, with warmup + cosine decay planned on the
               steps or, when max_iters is null, on the time
    step       gradient accumulation, clipping (a step whose gradient is not finite is skipped; max_nonfinite_steps
               of them in a row stop the run), AdamW,
               bf16/fp16 autocast on GPU, torch.compile, DDP or FSDP under torchrun
    evaluate   every eval_interval steps (or eval_minutes): the task's metrics, the best and the last
               checkpoint as Hugging Face folders, patience on best_metric
    record     metrics.jsonl, log.jsonl, loss.png and samples in the run folder; a progress bar on a
               terminal, plain lines otherwise; every event to an optional callback
    stop       at the budget, on patience, or on Ctrl-C (which saves first and exits 130); a resumed
               run (after Ctrl-C or SIGKILL) continues bit for bit on CPU in float32

Under torchrun each process trains on its own rows of the global batch; rank 0 alone logs and writes.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from lmforge import __version__, memory
from lmforge.errors import LmforgeError
from lmforge.fsutil import atomic_path, empty_folder, folder_lock, recover_folder, write_text_atomic
from lmforge.tokenizer import Tokenizer
from lmforge.train import distributed
from lmforge.train.checkpoint import load_resumable, read_trainer_state, save_checkpoint
from lmforge.train.config import RUN_CONFIG, LoopConfig, config_difference, to_yaml
from lmforge.train.optim import lr_at, make_optimizer
from lmforge.train.report import LOG, METRICS, Progress, RunFiles, format_duration

LAST, BEST = "last", "best"
AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}
PLOT_EVERY_S = 30  # redraw loss.png at an evaluation at most this often (and always at the end)
TIME_STEPS = 1_000_000  # resolution of a schedule planned on the time budget


class Task(Protocol):
    """What a run trains. The loop calls `setup` once, then `next_batch` and `loss` every micro-step,
    `evaluate` at every evaluation (on every rank), and `state_dict`/`load_state_dict` for its data position."""

    config: LoopConfig
    model: nn.Module  # set by setup: the plain model, on the run's device
    tokenizer: Tokenizer
    generation: dict  # what the checkpoints' generation_config.json says

    def setup(self, run: Run, resume_from: Path | None) -> None:
        """Load the data and build the model (from `resume_from`, the last checkpoint, when resuming)."""

    def describe(self) -> str:
        """What one step trains on, for the opening line (e.g. '768 tokens per step')."""

    def next_batch(self) -> dict:
        """This process's next micro-batch, on the run's device."""

    def loss(self, module: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(the loss to minimise, the loss to log (detached), tokens in the batch) through `module`, the model
        as wrapped for training (compiled, DDP)."""

    def evaluate(self, step: int, final: bool) -> dict:
        """Metrics of the model now (val_loss at least); `final` at the end of the run."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class RunResult:
    run_dir: Path
    iters: int
    stopped: str  # max_iters | max_minutes | patience | interrupted | already_done
    best_metric: str
    best_value: float | None
    best_iter: int | None
    last_eval: dict | None
    elapsed_s: float
    tokens_per_sec: float
    notes: list = field(default_factory=list)

    @property
    def best_dir(self) -> Path:
        return self.run_dir / BEST

    @property
    def last_dir(self) -> Path:
        return self.run_dir / LAST

    @property
    def best_val_loss(self) -> float | None:
        return self.best_value if self.best_metric == "val_loss" else None


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


def set_dropout(model: nn.Module, p: float) -> None:
    """Give every dropout of the model (and its config) the probability `p`."""
    model.config.dropout = p
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        elif hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p


def shard(model: nn.Module) -> None:
    """FSDP: every block (an element of a ModuleList) is a unit whose parameters are gathered for its own
    forward and backward only; the root holds the rest (embeddings, final norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(model)


class Run:
    """One run of a task: the loop, and what a task may use of it (device, precision, processes, messages)."""

    def __init__(self, task: Task, resume: bool = False, quiet: bool = False,
                 callback: Callable[[dict], None] | None = None):
        self.task, self.cfg, self.resume, self.callback = task, task.config, resume, callback
        cfg = self.cfg
        device = pick_device(cfg.device)
        self.dist = distributed.setup(device.type)
        if device.type == "cuda" and self.dist.enabled:
            device = torch.device("cuda", self.dist.local_rank)
        self.device = device
        self.dtype = pick_dtype(cfg.dtype, device)
        if self.dtype == "float16" and device.type == "cpu":
            raise LmforgeError("dtype float16 needs a GPU; use float32 or bfloat16 on CPU")
        self.autocast = (torch.autocast(device.type, dtype=AUTOCAST[self.dtype]) if self.dtype in AUTOCAST
                         else contextlib.nullcontext())
        self.fsdp = self.dist.enabled and cfg.distributed == "fsdp"
        self.run_dir = Path(cfg.out_dir)
        self.files = RunFiles(self.run_dir)
        self.main = self.dist.is_main
        self.progress = Progress(enabled=self.main and not quiet)
        self.interrupted = False
        self.notes: list[str] = []
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    # ---- what tasks use ------------------------------------------------------------------------

    def emit(self, event: str, **fields) -> None:
        if self.callback is not None and self.main:
            self.callback({"event": event, **fields})

    def say(self, text: str) -> None:
        if self.main:
            self.progress.message(text)
            self.emit("message", text=text)

    def note(self, text: str) -> None:
        """A message worth keeping in the result (what the data or the limits changed)."""
        self.notes.append(text)
        self.say(text)

    def on_main(self, work: Callable[[nn.Module], object]):
        """`work(model)` on rank 0 with the whole model (gathered from the shards under FSDP), the result
        on rank 0 and None elsewhere; every process waits for it. For generation during training."""
        model = self.gathered_model() if self.fsdp else self.task.model
        result = work(model) if self.main else None
        distributed.barrier(self.dist)
        return result

    def gathered_model(self) -> nn.Module | None:
        """Under FSDP: an ordinary copy of the model with the full weights, on rank 0 (None elsewhere)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(self.task.model, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))
        if not self.main:
            return None
        from torch.distributed.fsdp import FSDPModule

        model = self.task.model
        plain = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # FSDP made a subclass
        with torch.device("meta"):
            copy = plain(model.config)
        copy.load_state_dict(state, assign=True)
        copy.tie_weights()
        for module in copy.modules():  # non-persistent buffers are still on the meta device
            if hasattr(module, "reset_buffers"):
                module.reset_buffers()
        return copy.to(self.device).train(model.training)

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> RunResult:
        clean = False
        try:
            with folder_lock(self.run_dir) if self.main else contextlib.nullcontext(False) as created:  # one writer
                try:
                    result = self._run()
                except BaseException:
                    if created and not (self.run_dir / LAST).exists():  # failed before its first checkpoint:
                        empty_folder(self.run_dir)  # leave no folder behind
                    raise
            clean = True
            return result
        finally:
            self.progress.close()
            distributed.teardown(self.dist, clean)

    def resume_state(self, resume: bool) -> dict | None:
        last = self.run_dir / LAST
        if self.main:  # what a crash in the middle of a save left behind
            for name in (LAST, BEST):
                recover_folder(self.run_dir / name)
        if not resume:
            if last.exists():
                raise LmforgeError(f"{self.run_dir} already holds a run; resume it with --resume, delete it, "
                                   "or choose another out_dir")
            return None
        if not last.exists():
            raise LmforgeError(f"there is no run to resume in {self.run_dir} (no {LAST}/ checkpoint); "
                               "train without --resume to start one")
        state = read_trainer_state(last)
        diff = config_difference(type(self.cfg), state["config"], self.cfg.to_dict())
        if diff:
            raise LmforgeError(f"the run in {self.run_dir} was made with a different config ({diff}); resume with "
                               "the same settings or train into a new out_dir")
        if state["world_size"] != self.dist.world_size:
            raise LmforgeError(f"the run in {self.run_dir} was trained by {state['world_size']} process(es), not "
                               f"{self.dist.world_size}; resume it with the same number of processes")
        return state

    def _run(self) -> RunResult:
        cfg, dev, task = self.cfg, self.device, self.task
        state = self.resume_state(self.resume)
        # a resumed run keeps recording how it began (scratch or the fine-tuned folder)
        self.init_from = state["config"]["init_from"] if state else cfg.init_from
        saved_config = {**cfg.to_dict(), "init_from": self.init_from}
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if state is None:  # leftovers of a run that died before its first checkpoint
                self.files.clear()
                shutil.rmtree(self.run_dir / BEST, ignore_errors=True)
        distributed.barrier(self.dist)
        task.setup(self, self.run_dir / LAST if state else None)
        model = task.model
        self.check_memory(model)
        model.train()
        torch.manual_seed(cfg.seed + self.dist.rank)  # dropout differs per rank

        if self.fsdp:
            shard(model)
        optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, (cfg.beta1, cfg.beta2), dev.type,
                                   fused=not self.fsdp)
        scaler = torch.amp.GradScaler(dev.type, enabled=self.dtype == "float16")
        step, best, best_iter, since_best, elapsed_before, tokens_seen, warmup_end = 0, None, None, 0, 0.0, 0, None
        if state is not None:
            opt_state, train_state = load_resumable(self.run_dir / LAST, dev)
            self.load_optimizer(optimizer, opt_state)
            task.load_state_dict(train_state["data"])
            scaler.load_state_dict(train_state["scaler"])
            rng = train_state["rng"][self.dist.rank]
            torch.set_rng_state(rng["cpu"])
            if rng.get("cuda") is not None and dev.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], dev)
            step, elapsed_before, tokens_seen = state["iter"], state["elapsed_s"], state["tokens_seen"]
            best, best_iter, since_best = state["best_value"], state["best_iter"], state["evals_since_best"]
            warmup_end = state.get("warmup_end_s")
            if self.main:
                self.files.truncate_after(step)
            self.say(f"resuming {self.run_dir} at iter {step}")
        if self.main:
            write_text_atomic(self.run_dir / RUN_CONFIG, to_yaml(saved_config))

        module: nn.Module = torch.compile(model) if cfg.compile else model
        if self.dist.enabled and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)
        accum = cfg.gradient_accumulation_steps
        budget = f"{cfg.max_iters} steps" if cfg.max_iters is not None else f"{cfg.max_minutes:g} minutes"
        mode = f"{self.dist.world_size} process(es){', FSDP' if self.fsdp else ''}"
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        size = f"{total / 1e6:.2f}M" if trainable == total else f"{trainable / 1e6:.3f}M of {total / 1e6:.2f}M"
        self.say(f"training {size} parameters on {dev} ({self.dtype}"
                 f"{', compiled' if cfg.compile else ''}, {mode}, {torch.get_num_threads()} threads): "
                 f"{task.describe()}, {budget}")
        self.progress.start(cfg.max_iters or 0, step)
        higher_is_better = not cfg.best_metric.endswith("loss")
        session_start = time.perf_counter()
        agreed_elapsed = elapsed_before  # the run's time as all processes agree on it (at the last step's end)

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - session_start

        def learning_rate() -> float:
            nonlocal warmup_end
            if cfg.max_iters is not None:
                return lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.decay_iters, cfg.decay_lr)
            if step < cfg.warmup_iters:  # the warmup in steps, then the cosine over the time that is left
                return lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.warmup_iters + 1)
            if warmup_end is None:
                warmup_end = agreed_elapsed
            fraction = (agreed_elapsed - warmup_end) / max(cfg.max_minutes * 60 - warmup_end, 1e-9)
            virtual = cfg.warmup_iters + round(min(fraction, 1.0) * TIME_STEPS)
            return lr_at(virtual, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.warmup_iters + TIME_STEPS,
                         cfg.decay_lr)

        def snapshot(stopped: str | None = None) -> dict:
            return {"iter": step, "best_metric": cfg.best_metric, "best_value": best, "best_iter": best_iter,
                    "evals_since_best": since_best, "elapsed_s": elapsed(), "tokens_seen": tokens_seen,
                    "warmup_end_s": warmup_end, "world_size": self.dist.world_size, "stopped": stopped,
                    "lmforge_version": __version__, "config": saved_config}

        def save(folder: str, stopped: str | None = None, resumable: bool = True) -> None:
            rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None}
            rngs = distributed.gather_objects(self.dist, rng)
            data_state = task.state_dict()
            weights = self.gathered_model() if self.fsdp else model
            opt_state = self.optimizer_state(optimizer) if resumable else None
            if self.main:
                save_checkpoint(self.run_dir / folder, weights, task.tokenizer, snapshot(stopped), task.generation,
                                opt_state, {"rng": rngs, "data": data_state, "scaler": scaler.state_dict()}
                                if resumable else None)
            distributed.barrier(self.dist)

        last_eval: dict | None = None
        last_plot = time.perf_counter()
        window_loss, window_steps, window_tokens, train_time, skipped, in_a_row = 0.0, 0, 0, 0.0, 0, 0
        next_eval_at = (elapsed_before // 60 // cfg.eval_minutes + 1) * cfg.eval_minutes * 60 if cfg.eval_minutes else 0

        def evaluate(final: bool = False) -> None:
            nonlocal best, best_iter, since_best, last_eval, last_plot, window_loss, window_steps, window_tokens
            nonlocal train_time
            began = time.perf_counter()
            model.eval()
            with torch.no_grad(), self.autocast:
                metrics = task.evaluate(step, final)
            model.train()
            eval_s = time.perf_counter() - began
            if "train_loss" not in metrics:  # the mean training loss since the last evaluation
                metrics["train_loss"] = distributed.mean_over_ranks(self.dist, float(window_loss) / window_steps, dev) \
                    if window_steps else last_eval["train_loss"] if last_eval else metrics["val_loss"]
            record = {"iter": step, **metrics}
            for split in ("train", "val"):
                record[f"{split}_ppl"] = math.exp(min(record[f"{split}_loss"], 50))
            record.update(lr=learning_rate(), tokens_per_sec=round(window_tokens / train_time, 1) if train_time else None,
                          elapsed_s=round(elapsed(), 3), eval_s=round(eval_s, 3), tokens=tokens_seen)
            value = record.get(cfg.best_metric)
            improved = value is not None and (best is None or (value > best if higher_is_better else value < best))
            if improved:
                best, best_iter, since_best = value, step, 0
            elif step > 0:
                since_best += 1
            record["best"] = improved
            last_eval = record
            if self.main:
                self.files.append(METRICS, record)
                self.say(eval_line(record, task_columns(metrics), improved))
                self.emit("eval", **record)
            if step > 0 and improved:
                save(BEST, resumable=False)
            if step > 0:
                save(LAST)
            if self.main and (final or time.perf_counter() - last_plot > PLOT_EVERY_S):
                self.files.plot()
                last_plot = time.perf_counter()
            window_loss, window_steps, window_tokens, train_time = 0.0, 0, 0, 0.0

        stopped = "max_iters"
        previous_handler = self.install_sigint()
        try:
            if state is None:
                evaluate()
            elif cfg.max_iters is not None and step >= cfg.max_iters:
                stopped = "already_done"
            while cfg.max_iters is None or step < cfg.max_iters:
                lr = learning_rate()
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step_start = time.perf_counter()
                loss_sum, step_tokens = torch.zeros((), device=dev), 0
                for micro in range(accum):
                    batch = task.next_batch()
                    sync = micro == accum - 1 or not self.dist.enabled or self.fsdp
                    with contextlib.nullcontext() if sync else module.no_sync():
                        with self.autocast:
                            loss, logged, tokens = task.loss(module, batch)
                        scaler.scale(loss / accum).backward()
                    loss_sum += logged / accum
                    step_tokens += tokens
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
                finite = bool(torch.isfinite(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
                if finite or scaler.is_enabled():  # a scaler skips a non-finite step by itself
                    scaler.step(optimizer)
                skipped += not finite
                # the scaler of float16 skips overflowing steps on its own while it finds its scale
                diverged = not finite and (not scaler.is_enabled() or scaler.get_scale() < 1)
                in_a_row = in_a_row + 1 if diverged else 0
                if cfg.max_nonfinite_steps and in_a_row >= cfg.max_nonfinite_steps:
                    last = self.run_dir / LAST
                    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was saved yet"
                    raise LmforgeError(f"stopping at iter {step + 1}: {in_a_row} steps in a row had a loss or gradient "
                                       f"that is not finite (lower learning_rate, check the data, or use float32); "
                                       f"{kept}")
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_tokens = distributed.sum_over_ranks(self.dist, step_tokens, dev)
                tokens_seen += step_tokens
                train_time += time.perf_counter() - step_start
                window_tokens += step_tokens

                at_log = step % cfg.log_interval == 0 or step == cfg.max_iters
                if finite:
                    window_loss, window_steps = window_loss + loss_sum, window_steps + 1
                if at_log:
                    loss_value = distributed.mean_over_ranks(self.dist, loss_sum.item(), dev)
                    tps = window_tokens / max(train_time, 1e-9)
                    self.log_step(step, loss_value, lr, tps, train_time, window_steps, elapsed())
                else:
                    self.progress.advance(step)
                over_time = cfg.max_minutes is not None and elapsed() > cfg.max_minutes * 60
                interrupted, over_time, agreed_elapsed = distributed.agree(self.dist, self.interrupted, over_time,
                                                                           elapsed(), dev)
                if interrupted:
                    stopped = "interrupted"
                    save(LAST, stopped)
                    self.say(f"interrupted at iter {step}; the checkpoint is saved in {self.run_dir / LAST}, "
                             "continue with --resume")
                    break
                at_end = step == cfg.max_iters or over_time
                due = (agreed_elapsed >= next_eval_at) if cfg.eval_minutes else step % cfg.eval_interval == 0
                if due or at_end:
                    if cfg.eval_minutes:
                        next_eval_at = (agreed_elapsed // 60 // cfg.eval_minutes + 1) * cfg.eval_minutes * 60
                    evaluate(final=at_end)
                    if cfg.patience and since_best >= cfg.patience and not at_end:
                        stopped = "patience"
                        self.say(f"stopping early: no better {cfg.best_metric} in {cfg.patience} evaluations "
                                 f"(best {best:.4f} at iter {best_iter})")
                        break
                if over_time:
                    stopped = "max_minutes"
                    self.say(f"stopping at iter {step}: the time budget of {cfg.max_minutes:g} minutes is spent")
                    break
        finally:
            self.restore_sigint(previous_handler)
        if skipped:
            self.note(f"skipped {skipped} step(s) whose loss or gradient was not finite (the weights were kept)")
        if not (self.run_dir / BEST).exists() and (self.run_dir / LAST).exists() and self.main:
            with atomic_path(self.run_dir / BEST, is_dir=True) as tmp:  # nothing beat the first evaluation
                shutil.copytree(self.run_dir / LAST, tmp, dirs_exist_ok=True)
        if self.main:
            self.files.plot()
        total = elapsed()
        shown = "n/a" if best is None else f"{best:.4f}"
        self.say(f"done ({stopped}) at iter {step} in {format_duration(total)}; best {cfg.best_metric} {shown}"
                 f"{f' at iter {best_iter}' if best_iter is not None else ''} -> {self.run_dir / BEST}")
        return RunResult(self.run_dir, step, stopped, cfg.best_metric, best, best_iter, last_eval, total,
                         tokens_seen / total if total else 0.0, self.notes)

    # ---- helpers of the loop ---------------------------------------------------------------------

    def check_memory(self, model: nn.Module) -> None:
        """Refuse a run whose gradients, optimizer state and activations cannot fit, before they are allocated."""
        rows, length = memory.training_batch(self.cfg, model)
        parts = memory.training_parts(model, rows, length, self.dtype)
        if self.fsdp:  # each process holds its shard of the weights, gradients and optimizer state
            parts.update({k: parts[k] / self.dist.world_size for k in ("weights", "gradients", "optimizer")})
        memory.check(parts, self.cfg.max_memory, self.device, f"training with micro-batches of {rows} x {length} tokens",
                     "lower batch_size (gradient_accumulation_steps keeps the batch), the context or the model, or set "
                     "max_memory if the estimate is wrong")

    def log_step(self, step: int, loss: float, lr: float, tokens_per_sec: float, train_time: float, steps: int,
                 elapsed: float) -> None:
        cfg = self.cfg
        eta = ((cfg.max_iters - step) * train_time / max(steps, 1)) if cfg.max_iters is not None else math.inf
        if cfg.max_minutes is not None:
            eta = min(eta, max(cfg.max_minutes * 60 - elapsed, 0))
            if cfg.max_iters is None:  # the bar's length: the steps that fit the time budget at this pace
                self.progress.total = round(step * cfg.max_minutes * 60 / max(elapsed, 1e-9))
        if self.main:
            self.files.append(LOG, {"iter": step, "loss": loss, "lr": lr, "tokens_per_sec": round(tokens_per_sec, 1)})
            self.progress.step(step, loss, lr, tokens_per_sec, eta)
            self.emit("step", iter=step, loss=loss, lr=lr, tokens_per_sec=tokens_per_sec, eta_s=eta, elapsed_s=elapsed)

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict | None:
        """The optimizer's state to save (gathered whole on rank 0 under FSDP; None elsewhere)."""
        if not self.fsdp:
            return optimizer.state_dict() if self.main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        state = get_optimizer_state_dict(self.task.model, optimizer,
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.main else None

    def load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.task.model, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))

    def install_sigint(self):
        """The first Ctrl-C asks the loop to save and stop at the end of the step; a second one aborts."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)

        previous = signal.signal(signal.SIGINT, handler)
        return previous

    @staticmethod
    def restore_sigint(previous) -> None:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


LOSS_KEYS = ("iter", "train_loss", "val_loss", "train_ppl", "val_ppl")


def task_columns(metrics: dict) -> list[str]:
    """The task's own metrics shown in the evaluation line, beyond the losses."""
    return [k for k, v in metrics.items() if k not in LOSS_KEYS and isinstance(v, float)]


def eval_line(record: dict, columns: list[str], improved: bool) -> str:
    extra = "".join(f", {k.replace('_', ' ')} {record[k]:.4g}" for k in columns)
    return (f"eval iter {record['iter']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f} "
            f"(perplexity {record['val_ppl']:.2f}){extra}{'  * best' if improved else ''}")


def train_task(task: Task, *, resume: bool = False, quiet: bool = False,
               callback: Callable[[dict], None] | None = None) -> RunResult:
    """Run `task` to its end (or continue its run in out_dir with `resume`); where it went and how it ended."""
    return Run(task, resume, quiet, callback).run()
