"""The scaling-law lab end to end: prepare the corpus, plan and train the grid, fit, predict a bigger run,
train it when asked (`check`), and write scale.json and the report into the lab's folder."""

from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.fsutil import first_missing, write_text_atomic
from lmforge.scale.fits import Fits, Point, fit_all
from lmforge.scale.sweep import (
    CHECK,
    LabConfig,
    Plan,
    PlannedRun,
    RunRecord,
    make_plan,
    parameters_of,
    prepare_data,
    run_grid,
    run_name,
)

SCALE_JSON = "scale.json"


@dataclass
class LabResult:
    out_dir: Path
    plan: Plan
    records: list[RunRecord]
    fits: Fits | None
    prediction: dict | None
    check: RunRecord | None
    data: dict
    interrupted: bool = False
    notes: list = field(default_factory=list)
    report: Path | None = None

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "tokens_per_step": self.plan.tokens_per_step,
            "runs": [r.to_dict() for r in self.records],
            "skipped": self.plan.skipped,
            "fits": self.fits.to_dict() if self.fits else None,
            "prediction": self.prediction,
            "check": self.check.to_dict() if self.check else None,
            "largest_run_epochs": max((r.plan.epochs for r in self.records), default=None),
            "interrupted": self.interrupted,
            "notes": self.notes,
            "machine": {"torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
                        "processor": platform.processor() or platform.machine()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def points_of(records: list[RunRecord]) -> list[Point]:
    return [Point(r.plan.parameters, r.plan.tokens, r.val_loss, r.plan.budget) for r in records
            if r.val_loss is not None]


def predict(lab: LabConfig, plan: Plan, fits: Fits, compute: float) -> tuple[PlannedRun, dict]:
    """The compute-optimal run at `compute` by the fits (IsoFLOP minima where they give a law, else the
    parametric fit), as a shape of the lab's depth/width rule, and the loss the fits expect of it."""
    iso, par = fits.isoflop, fits.parametric
    if iso.a is not None:
        n_opt, source = iso.n_opt(compute), "IsoFLOP minima (approach 2)"
    elif par is not None:
        n_opt, source = par.n_opt(compute), "parametric fit (approach 3)"
    else:
        raise LmforgeError("the grid gave no fit to predict from; add sizes or budgets")
    shape = lab.rule().shape(n_opt, lambda s: parameters_of(lab, s, plan.vocab_size))
    n = parameters_of(lab, shape, plan.vocab_size)
    iters = max(1, round(compute / (6 * n * plan.tokens_per_step)))
    tokens = iters * plan.tokens_per_step
    run = PlannedRun(run_name(shape, compute), shape, n, compute, iters, tokens, 6.0 * n * tokens,
                     tokens / plan.train_tokens, check=True)
    prediction = {
        "compute": compute, "n_opt": n_opt, "d_opt": compute / (6 * n_opt), "size_from": source,
        "n_opt_parametric": par.n_opt(compute) if par else None,
        "n_opt_isoflop": iso.n_opt(compute) if iso.a is not None else None,
        "run": run.to_dict(),
        "loss_parametric": float(par.loss(n, tokens)) if par else None,
        "loss_frontier": float(fits.frontier.loss(compute)) if fits.frontier else None,
    }
    # The headline is the frontier L(C), fitted to the best run of each budget, as the GPT-4 report predicted its
    # final loss from compute alone; the check run is the compute-optimal one it describes. The parametric
    # L(N, D) is reported beside it (its E often runs to its bound on a small grid, see bench/README.md Scaling).
    prediction["loss_from"] = "frontier" if prediction["loss_frontier"] is not None else "parametric"
    prediction["loss"] = prediction[f"loss_{prediction['loss_from']}"]
    return run, prediction


def run_lab(lab: LabConfig, *, check: bool | None = None, predict_compute: float | None = None,
            bootstrap: int = 100, quiet: bool = False, log=None) -> LabResult:
    log = log or (lambda text: None if quiet else print(text, flush=True))
    out = Path(lab.out_dir)
    made = first_missing(out)  # a lab that fails before its grid starts leaves no folder it made
    out.mkdir(parents=True, exist_ok=True)
    try:
        data_folder = prepare_data(lab, log)
        from lmforge.data.tokens import TokenData

        tokens = TokenData.open(data_folder)
        manifest = tokens.manifest
        plan = make_plan(lab, len(tokens.train), tokens.tokenizer.vocab_size)
    except BaseException:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise
    data = {"folder": str(data_folder), "source": str(lab.data.get("source")), "files": manifest.get("files"),
            "chars": manifest.get("chars"), "tokenizer": manifest["tokenizer"], "train_tokens": len(tokens.train),
            "val_tokens": len(tokens.val)}
    log(f"the grid: {len(plan.runs)} runs ({len({r.parameters for r in plan.runs})} sizes × {len(lab.budgets)} "
        f"budgets), {sum(r.compute for r in plan.runs):.3g} FLOPs in all; the largest run sees the corpus "
        f"{max(r.epochs for r in plan.runs):.2f} times" + (f"; left out: {len(plan.skipped)}" if plan.skipped else ""))
    records, interrupted = run_grid(lab, plan.runs, data_folder, log, quiet=True)
    result = LabResult(out, plan, records, None, None, None, data, interrupted)
    failed = [r for r in records if r.status == "failed"]
    if failed:
        result.notes.append(f"{len(failed)} run(s) failed: " + "; ".join(f"{r.plan.name}: {r.error}" for r in failed))
    if interrupted:
        result.notes.append("the sweep was interrupted; the finished runs are kept, run it again to continue")
        write_outputs(result, log)
        return result
    points = points_of(records)
    if len(points) < 5:
        result.notes.append("fewer than 5 finished runs: nothing to fit")
        write_outputs(result, log)
        return result
    compute = predict_compute or lab.predict or 4 * max(lab.budgets)
    first = fit_all(points, bootstrap=0)
    check_run, prediction = predict(lab, plan, first, compute)
    n, d = check_run.parameters, check_run.tokens
    log(f"fitting (with {bootstrap} bootstrap samples)")
    result.fits = fit_all(points, bootstrap=bootstrap, seed=lab.seed,
                          extra={"prediction.loss_parametric": lambda iso, par, fr: float(par.loss(n, d)),
                                 "prediction.loss_frontier": lambda iso, par, fr: float(fr.loss(compute))})
    for kind in ("parametric", "frontier"):
        prediction[f"loss_interval_{kind}"] = result.fits.intervals.get(f"prediction.loss_{kind}")
    prediction["loss_interval"] = prediction[f"loss_interval_{prediction['loss_from']}"]
    result.prediction = prediction
    result.notes += result.fits.notes
    log(f"prediction at {compute:.3g} FLOPs: {check_run.parameters:,} parameters ({check_run.shape}) on "
        f"{check_run.tokens:,} tokens, val loss {prediction['loss']:.4f}")
    if check if check is not None else lab.check:
        if check_run.epochs > lab.max_epochs:
            result.notes.append(f"the check run was not trained: it would see the corpus {check_run.epochs:.1f} "
                                f"times (max_epochs {lab.max_epochs:g}); use a bigger corpus")
        else:
            checked, interrupted = run_grid(lab, [check_run], data_folder, log, quiet=True, folder=CHECK)
            result.check, result.interrupted = checked[0], interrupted
            if checked[0].val_loss is not None:
                error = checked[0].val_loss - prediction["loss"]
                prediction.update(measured=checked[0].val_loss, error=error)
                for kind in ("parametric", "frontier"):
                    if prediction[f"loss_{kind}"] is not None:
                        prediction[f"error_{kind}"] = checked[0].val_loss - prediction[f"loss_{kind}"]
                log(f"check: measured {checked[0].val_loss:.4f}, predicted {prediction['loss']:.4f} "
                    f"(error {error:+.4f} nats)")
    write_outputs(result, log)
    return result


def write_outputs(result: LabResult, log) -> None:
    from lmforge.scale.report import write_report

    write_text_atomic(result.out_dir / SCALE_JSON, json.dumps(result.to_dict(), indent=2) + "\n")
    result.report = write_report(result)
    log(f"report: {result.report} (and report.md, {SCALE_JSON})")
