"""The scaling-law lab's sweep: a grid of model sizes × compute budgets, each run one run of the training loop.

    lab config   a YAML file: the corpus, the sizes (explicit shapes, or a parameter range spread log-uniformly
                 with a depth/width rule), the budgets in FLOPs, and a `train:` section of TrainConfig keys
                 that every run shares (batch size, context, learning rate, ...)
    plan         every (size, budget) pair becomes max_iters = budget / (6 N × tokens per step), rounded, so
                 that the cosine schedule ends exactly where the compute is spent (Hoffmann et al. 2022: a
                 schedule longer than the run biases the fit); compute C = 6 N D with N every parameter
                 (as Chinchilla counts them) and D the tokens the run trains on
    checks       before any training: a budget too small for the smallest model to take a step, a model that
                 does not fit memory; pairs that would take fewer than min_steps steps or see the corpus more
                 than max_epochs times are left out, and a budget left with fewer than 3 sizes is an error
    run          sequentially in this process (default) or as `workers` subprocesses sharing the cores; a
                 finished run is read back from its folder, an interrupted one resumed, a failed one reported
                 while the rest go on; Ctrl-C stops after saving the run in progress
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config import ModelConfig
from lmforge.errors import LmforgeError
from lmforge.fsutil import write_text_atomic
from lmforge.scale.costs import count_parameters, meta_model, parse_amount
from lmforge.train.config import read_yaml, to_yaml

DATA, RUNS, CHECK = "data", "runs", "check"
STDLIB = "stdlib"  # the docstrings of this Python's standard library (data/stdlib_corpus.py)
STDLIB_SOURCE = "stdlib-source"  # that library's source files themselves, about 6 times as much text


@dataclass
class ShapeRule:
    """How a parameter count becomes a shape: whole heads of head_dim, n_embd within a factor of 2 of
    aspect_ratio × n_layer (Kaplan et al. 2020 found the loss nearly independent of the aspect ratio between
    about 20 and 200); of those, the shape whose parameter count is closest (in log) to the target, and on a
    tie the one nearest the aspect ratio."""

    aspect_ratio: float = 32.0
    head_dim: int = 16
    max_layers: int = 48

    def shape(self, parameters: float, count) -> dict:
        best, best_key = None, (math.inf, math.inf)
        for n_layer in range(1, self.max_layers + 1):
            ideal = self.aspect_ratio * n_layer / self.head_dim  # heads at the aspect ratio
            smallest = None
            for heads in range(max(1, math.ceil(ideal / 2)), max(1, math.floor(ideal * 2)) + 1):
                shape = {"n_layer": n_layer, "n_embd": heads * self.head_dim, "n_head": heads}
                n = count(shape)
                smallest = n if smallest is None else smallest
                key = (round(abs(math.log(n / parameters)), 6), abs(math.log(heads / ideal)))
                if key < best_key:
                    best, best_key = shape, key
                if n > parameters:
                    break
            if smallest is not None and smallest > parameters:  # deeper models only grow
                break
        return best


@dataclass
class LabConfig:
    out_dir: str = "runs/scale"
    data: dict = field(default_factory=lambda: {"source": STDLIB, "tokenizer": "bpe", "vocab_size": 2048,
                                                "val_fraction": 0.05})
    sizes: list = field(default_factory=list)  # explicit shapes: {n_layer, n_embd, n_head}
    size_range: dict | None = None  # {min_parameters, max_parameters, count}
    shape_rule: dict = field(default_factory=dict)  # ShapeRule fields
    budgets: list = field(default_factory=list)  # training FLOPs of each run
    max_epochs: float = 4.0  # a run may see each training token at most this many times (Muennighoff et al. 2023)
    min_steps: int = 10  # pairs of a size and a budget that give fewer steps are left out of the grid
    warmup_fraction: float = 0.05
    evals_per_run: int = 4
    memory_fraction: float = 0.8  # of this machine's memory a run may plan to use
    workers: int = 1  # >1: runs as subprocesses sharing the cores
    predict: float | None = None  # compute of the prediction; null: 4 × the largest budget
    check: bool = False  # train the predicted model and compare
    seed: int = 1337
    train: dict = field(default_factory=dict)  # TrainConfig keys every run shares

    def rule(self) -> ShapeRule:
        return ShapeRule(**self.shape_rule)

    @functools.cached_property
    def base(self):
        """The TrainConfig every run starts from (before its own size and budget)."""
        return train_config(self, {})


LAB_KEYS = [f.name for f in dataclasses.fields(LabConfig)]
DATA_KEYS = ("source", "tokenizer", "vocab_size", "val_fraction", "text_field", "errors")
RANGE_KEYS = ("min_parameters", "max_parameters", "count")
SHAPE_KEYS = ("n_layer", "n_embd", "n_head")


def _unknown(key: str, known, where: str) -> LmforgeError:
    close = difflib.get_close_matches(key, list(known), n=1)
    return LmforgeError(f"unknown key {key!r} in {where}" + (f"; did you mean {close[0]}?" if close else
                                                             f"; valid keys: {', '.join(known)}"))


def load_lab_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> LabConfig:
    """The lab config of a YAML file (and a mapping of top-level overrides), every key and value checked."""
    raw = read_yaml(path) if path is not None else {}
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    where = str(path) if path else "the lab config"
    for key in raw:
        if key not in LAB_KEYS:
            raise _unknown(key, LAB_KEYS, where)
    cfg = LabConfig(**raw)
    cfg.data = {**LabConfig().data, **(cfg.data or {})}
    for key in cfg.data:
        if key not in DATA_KEYS:
            raise _unknown(key, DATA_KEYS, f"the data section of {where}")
    for key in cfg.shape_rule:
        if key not in {f.name for f in dataclasses.fields(ShapeRule)}:
            raise _unknown(key, [f.name for f in dataclasses.fields(ShapeRule)], f"the shape_rule section of {where}")
    if not isinstance(cfg.budgets, list) or not cfg.budgets:
        raise LmforgeError(f"{where} needs budgets: a list of training compute budgets in FLOPs (e.g. [1e12, 3e12])")
    cfg.budgets = sorted(parse_amount(b, "the budget") for b in cfg.budgets)
    if cfg.budgets[0] <= 0:
        raise LmforgeError("every budget must be a positive number of FLOPs")
    if bool(cfg.sizes) == bool(cfg.size_range):
        raise LmforgeError(f"{where} needs either sizes (a list of shapes with n_layer, n_embd, n_head) or "
                           "size_range (min_parameters, max_parameters, count), not both")
    for shape in cfg.sizes:
        if not isinstance(shape, dict) or set(shape) - set(SHAPE_KEYS) or "n_layer" not in shape or "n_embd" not in shape:
            raise LmforgeError(f"each entry of sizes needs n_layer and n_embd (and optionally n_head), not {shape!r}")
    if cfg.size_range:
        for key in cfg.size_range:
            if key not in RANGE_KEYS:
                raise _unknown(key, RANGE_KEYS, f"the size_range section of {where}")
        missing = [k for k in RANGE_KEYS if k not in cfg.size_range]
        if missing:
            raise LmforgeError(f"size_range needs {', '.join(missing)}")
    if cfg.predict is not None:
        cfg.predict = parse_amount(cfg.predict, "predict")
    if cfg.max_epochs <= 0 or cfg.workers < 1 or cfg.min_steps < 1 or cfg.evals_per_run < 1:
        raise LmforgeError("max_epochs must be positive, and workers, min_steps and evals_per_run at least 1")
    if not 0 <= cfg.warmup_fraction < 1:
        raise LmforgeError("warmup_fraction must be in [0, 1)")
    train_config(cfg, {})  # checks the train section's keys and values now
    return cfg


def train_config(lab: LabConfig, overrides: dict):
    """A TrainConfig: the lab's defaults for a short run, then its `train:` section, then `overrides`."""
    from lmforge.train.lm import TrainConfig

    defaults = {"model.block_size": 128, "batch_size": 16, "learning_rate": 2e-3, "min_lr": 2e-4,
                "weight_decay": 0.1, "eval_iters": 40, "sample_tokens": 0, "seed": lab.seed, "max_iters": 1}
    return TrainConfig.load(overrides={**defaults, **lab.train, **overrides})


# ---- the plan ----------------------------------------------------------------------------------


@dataclass
class PlannedRun:
    name: str
    shape: dict
    parameters: int
    budget: float
    max_iters: int
    tokens: int
    compute: float
    epochs: float
    check: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Plan:
    runs: list[PlannedRun]
    skipped: list[str]
    tokens_per_step: int
    train_tokens: int
    vocab_size: int


def model_config(lab: LabConfig, shape: dict, vocab_size: int) -> ModelConfig:
    base = lab.base.model
    n_embd = shape["n_embd"]
    n_head = shape.get("n_head") or max(1, n_embd // lab.rule().head_dim)
    return ModelConfig.for_family(base.family, vocab_size=vocab_size, n_layer=shape["n_layer"], n_head=n_head,
                                  n_embd=n_embd, block_size=base.block_size, intermediate_size=base.intermediate_size,
                                  bias=base.bias)


@functools.lru_cache(maxsize=4096)
def _count(config_items: tuple) -> int:
    return count_parameters(meta_model(ModelConfig(**dict(config_items))))


def parameters_of(lab: LabConfig, shape: dict, vocab_size: int) -> int:
    cfg = model_config(lab, shape, vocab_size).to_dict()
    cfg.pop("extra")
    return _count(tuple(sorted(cfg.items())))


def sizes(lab: LabConfig, vocab_size: int) -> list[dict]:
    """The shapes of the grid, smallest first (with n_head filled in)."""
    def count(shape):
        return parameters_of(lab, shape, vocab_size)

    if lab.sizes:
        shapes = [{**s, "n_head": s.get("n_head") or max(1, s["n_embd"] // lab.rule().head_dim)} for s in lab.sizes]
    else:
        r = lab.size_range
        low, high, n = parse_amount(r["min_parameters"], "min_parameters"), \
            parse_amount(r["max_parameters"], "max_parameters"), int(r["count"])
        if not 0 < low < high or n < 2:
            raise LmforgeError("size_range needs 0 < min_parameters < max_parameters and a count of at least 2")
        targets = [low * (high / low) ** (i / (n - 1)) for i in range(n)]
        shapes = []
        for target in targets:
            shape = lab.rule().shape(target, count)
            if shape not in shapes:
                shapes.append(shape)
    return sorted(shapes, key=count)


def run_name(shape: dict, budget: float) -> str:
    return f"L{shape['n_layer']}-E{shape['n_embd']}-C{budget:.2e}".replace("+", "")


def available_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def training_memory(parameters: int, cfg: ModelConfig, batch: int, context: int) -> int:
    """Bytes one float32 training step needs: weights, gradients and AdamW's two moments (16 bytes a
    parameter), activations as Korthikanti et al. 2022 count them (34·s·b·h + 5·a·s²·b bytes a layer in 16-bit,
    doubled for float32) and the logits with their gradient."""
    s, b, h, a = context, batch, cfg.n_embd, cfg.n_head
    activations = 2 * cfg.n_layer * (34 * s * b * h + 5 * a * s * s * b)
    logits = 3 * 4 * b * s * cfg.vocab_size
    return 16 * parameters + activations + logits


def make_plan(lab: LabConfig, train_tokens: int, vocab_size: int) -> Plan:
    """Every run of the grid, checked before any training."""
    t = lab.base
    tokens_per_step = t.batch_size * t.gradient_accumulation_steps * t.model.block_size
    shapes = sizes(lab, vocab_size)
    limit = lab.memory_fraction * available_memory()
    runs, skipped = [], []
    for shape in shapes:
        n = parameters_of(lab, shape, vocab_size)
        need = training_memory(n, model_config(lab, shape, vocab_size), t.batch_size, t.model.block_size)
        if need > limit:
            raise LmforgeError(f"the model {shape} ({n:,} parameters) needs about {need / 2**30:.1f} GiB to train "
                               f"and this machine allows {limit / 2**30:.1f} GiB; drop it or lower train.batch_size")
    smallest = parameters_of(lab, shapes[0], vocab_size)
    if lab.budgets[0] < 6 * smallest * tokens_per_step:
        raise LmforgeError(f"the budget {lab.budgets[0]:.3g} FLOPs is too small for the smallest model "
                           f"({smallest:,} parameters) to take one step of {tokens_per_step:,} tokens "
                           f"({6 * smallest * tokens_per_step:.3g} FLOPs); raise the budgets or shrink the model")
    for budget in lab.budgets:
        kept, reasons = 0, []
        for shape in shapes:
            n = parameters_of(lab, shape, vocab_size)
            iters = round(budget / (6 * n * tokens_per_step))
            tokens = iters * tokens_per_step
            name = run_name(shape, budget)
            if iters < lab.min_steps:
                reasons.append(f"{name}: {iters} step(s), fewer than min_steps {lab.min_steps}")
            elif tokens > lab.max_epochs * train_tokens:
                reasons.append(f"{name}: would see the corpus {tokens / train_tokens:.1f} times, more than "
                               f"max_epochs {lab.max_epochs:g}")
            else:
                runs.append(PlannedRun(name, shape, n, budget, iters, tokens, 6.0 * n * tokens, tokens / train_tokens))
                kept += 1
        skipped += reasons
        if kept < 3:
            repeated = [r for r in reasons if "max_epochs" in r]
            why = (f"the corpus ({train_tokens:,} training tokens) is too small for the repetition limit"
                   if repeated else "the budget is too small for the larger models")
            raise LmforgeError(f"only {kept} size(s) of the budget {budget:.3g} FLOPs can be trained and an IsoFLOP "
                               f"curve needs 3: {why} ({(repeated or reasons)[0]}); change the budgets or sizes"
                               + (" or use a bigger corpus" if repeated else ""))
    return Plan(runs, skipped, tokens_per_step, train_tokens, vocab_size)


# ---- data --------------------------------------------------------------------------------------


def prepare_data(lab: LabConfig, log) -> Path:
    """The lab's corpus, tokenized once into out_dir/data (reused while its request is unchanged)."""
    from lmforge.data.prepare import prepare
    from lmforge.data.tokens import TokenData, is_prepared

    d = lab.data
    source = str(d["source"])
    if is_prepared(source):
        return Path(source)
    out = Path(lab.out_dir)
    if source in (STDLIB, STDLIB_SOURCE):
        from lmforge.data.stdlib_corpus import build_stdlib_corpus, build_stdlib_source_corpus

        corpus = out / ("corpus.txt" if source == STDLIB else "corpus-source.txt")
        if not corpus.is_file():
            build, what = ((build_stdlib_corpus, "the docstrings of") if source == STDLIB
                           else (build_stdlib_source_corpus, "the source files of"))
            stats = build(corpus, separator="\n\n<|endoftext|>\n\n")
            log(f"corpus: {what} this Python's standard library, {stats.n_docs:,} documents, "
                f"{stats.n_chars:,} characters")
        source = str(corpus)
    folder = out / DATA
    request = {"source": source, "tokenizer": d.get("tokenizer", "bpe"), "vocab_size": int(d.get("vocab_size", 2048)),
               "val_fraction": float(d.get("val_fraction", 0.05)), "text_field": d.get("text_field", "text"),
               "errors": d.get("errors", "strict")}
    if not (is_prepared(folder) and TokenData.open(folder).manifest.get("request") == request):
        # runs trained on another corpus must be neither read back nor resumed: they move aside, kept
        for stale in (out / RUNS, out / CHECK):
            if stale.is_dir() and any(stale.iterdir()):
                aside = stale.with_name(f"{stale.name}-before-{time.strftime('%Y%m%d-%H%M%S')}")
                stale.rename(aside)
                log(f"the corpus changed: the runs of the previous one moved to {aside}")
        prepare(log=log, **request, out_dir=folder)
    return folder


# ---- running -----------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """A run of the grid and how it ended: status trained | read back | failed | interrupted | pending."""

    plan: PlannedRun
    status: str = "pending"
    val_loss: float | None = None
    train_loss: float | None = None
    elapsed_s: float | None = None
    tokens_per_sec: float | None = None
    error: str | None = None
    folder: str = ""

    def to_dict(self) -> dict:
        return {**self.plan.to_dict(), **{k: v for k, v in dataclasses.asdict(self).items() if k != "plan"}}


def run_overrides(lab: LabConfig, run: PlannedRun, folder: Path, data: Path, threads: int = 0) -> dict:
    warmup = round(lab.warmup_fraction * run.max_iters)
    return {"out_dir": str(folder), "data.source": str(data), "model.n_layer": run.shape["n_layer"],
            "model.n_embd": run.shape["n_embd"], "model.n_head": run.shape["n_head"], "max_iters": run.max_iters,
            "max_minutes": None, "lr_decay_iters": None, "decay_lr": True, "warmup_iters": warmup,
            "eval_interval": max(1, run.max_iters // lab.evals_per_run), "log_interval": max(1, run.max_iters // 100),
            "patience": 0, "threads": threads, "init_from": "scratch"}


def read_finished(folder: Path, max_iters: int, config=None) -> dict | None:
    """The final evaluation of a run that reached max_iters (with the same settings as `config`, a
    TrainConfig, when given), or None."""
    from lmforge.train.config import config_difference
    from lmforge.train.report import METRICS, RunFiles

    state_path = folder / "last" / "trainer_state.json"
    if not state_path.is_file():
        return None
    state = json.loads(state_path.read_text(encoding="utf-8"))
    if state.get("iter") != max_iters:
        return None
    if config is not None and config_difference(type(config), state["config"], config.to_dict()):
        return None
    final = [r for r in RunFiles(folder).read(METRICS) if r["iter"] == max_iters]
    if not final:
        return None
    return {**final[-1], "elapsed_s": state.get("elapsed_s")}


def finish_record(record: RunRecord, final: dict, status: str) -> RunRecord:
    record.status, record.val_loss, record.train_loss = status, final["val_loss"], final["train_loss"]
    record.elapsed_s = final.get("elapsed_s")
    record.tokens_per_sec = record.plan.tokens / record.elapsed_s if record.elapsed_s else None
    return record


def run_in_process(lab: LabConfig, record: RunRecord, data: Path, quiet: bool) -> RunRecord:
    from lmforge.train.lm import LanguageModelling
    from lmforge.train.loop import train_task

    folder = Path(record.folder)
    cfg = train_config(lab, run_overrides(lab, record.plan, folder, data))
    result = train_task(LanguageModelling(cfg), resume=(folder / "last").exists(), quiet=quiet)
    if result.stopped == "interrupted":
        record.status = "interrupted"
        return record
    final = read_finished(folder, record.plan.max_iters)
    if final is None:
        raise LmforgeError(f"the run stopped at iter {result.iters} ({result.stopped}) before its budget")
    return finish_record(record, final, "trained")


def run_as_subprocess(lab: LabConfig, record: RunRecord, data: Path, threads: int) -> RunRecord:
    folder = Path(record.folder)
    cfg = train_config(lab, run_overrides(lab, record.plan, folder, data, threads))
    config_path = folder.parent / f"{folder.name}.yaml"
    write_text_atomic(config_path, to_yaml(cfg))
    command = [sys.executable, "-m", "lmforge.cli.main", "train", "--config", str(config_path), "--quiet"]
    if (folder / "last").exists():
        command.append("--resume")
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 130:
        record.status = "interrupted"
        return record
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise LmforgeError(lines[-1] if lines else f"the run's process exited with status {done.returncode}")
    final = read_finished(folder, record.plan.max_iters)
    if final is None:
        raise LmforgeError("the run's process ended before its budget")
    return finish_record(record, final, "trained")


def run_grid(lab: LabConfig, runs: list[PlannedRun], data: Path, log, quiet: bool = True,
             folder: str = RUNS) -> tuple[list[RunRecord], bool]:
    """Train every planned run not finished yet; (the records, whether the sweep was interrupted)."""
    records = [RunRecord(r, folder=str(Path(lab.out_dir) / folder / r.name)) for r in runs]
    todo = []
    for record in records:
        expected = train_config(lab, run_overrides(lab, record.plan, Path(record.folder), data))
        final = read_finished(Path(record.folder), record.plan.max_iters, expected)
        if final is not None:
            finish_record(record, final, "read back")
        else:
            todo.append(record)
    if len(todo) < len(records):
        log(f"{len(records) - len(todo)} finished run(s) read back from {Path(lab.out_dir) / folder}")
    interrupted = False

    def one(record: RunRecord, index: int, threads: int) -> RunRecord:
        began = time.perf_counter()
        p = record.plan
        log(f"[{index}/{len(todo)}] {p.name}: {p.parameters:,} parameters, {p.max_iters:,} steps, "
            f"{p.tokens:,} tokens ({p.epochs:.2f} epochs), {p.compute:.3g} FLOPs")
        try:
            if lab.workers > 1:
                run_as_subprocess(lab, record, data, threads)
            else:
                run_in_process(lab, record, data, quiet)
        except LmforgeError as exc:
            record.status, record.error = "failed", str(exc)
        except Exception as exc:  # one failed run is reported; the rest of the grid goes on
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        if record.status == "failed":
            log(f"  {p.name} failed: {record.error}")
        elif record.status == "trained":
            log(f"  {p.name}: val loss {record.val_loss:.4f} in {time.perf_counter() - began:.0f} s")
        return record

    if lab.workers == 1:
        for i, record in enumerate(todo, 1):
            one(record, i, 0)
            if record.status == "interrupted":
                interrupted = True
                break
    else:
        threads = max(1, (os.cpu_count() or 1) // lab.workers)
        with ThreadPoolExecutor(lab.workers) as pool:
            futures = [pool.submit(one, record, i, threads) for i, record in enumerate(todo, 1)]
            try:
                for future in futures:
                    future.result()
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                interrupted = True
        interrupted = interrupted or any(r.status == "interrupted" for r in records)
    return records, interrupted
