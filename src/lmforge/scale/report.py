"""The lab's report: report.md and report.html with five plots, a table of every run, the fits beside the
published ones, and a plain-language reading."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from lmforge.fsutil import atomic_path, write_text_atomic
from lmforge.scale.fits import PUBLISHED
from lmforge.train.report import LOG, RunFiles

PLOTS = {"curves": "loss_curves.png", "frontier": "frontier.png", "isoflop": "isoflop.png",
         "optimal": "optimal_size.png", "prediction": "prediction.png"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)


def _size_colors(records):
    plt = _plt()
    sizes = sorted({r.plan.parameters for r in records})
    low, high = math.log(sizes[0]), math.log(sizes[-1])
    cmap = plt.get_cmap("viridis")
    return {n: cmap(0.9 * (math.log(n) - low) / max(high - low, 1e-9)) for n in sizes}


def plot_curves(result, path: Path) -> None:
    """Training loss against compute spent, every run, coloured by size; the final validation loss as a dot."""
    plt = _plt()
    done = [r for r in result.records if r.val_loss is not None]
    colors = _size_colors(done)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    labelled = set()
    for r in done:
        log = RunFiles(Path(r.folder)).read(LOG)
        per_step = 6.0 * r.plan.parameters * result.plan.tokens_per_step
        if log:
            loss = np.array([x["loss"] for x in log])
            smooth = np.convolve(loss, np.ones(5) / 5, mode="valid") if len(loss) > 10 else loss
            steps = np.array([x["iter"] for x in log])[len(loss) - len(smooth):]
            label = None if r.plan.parameters in labelled else f"{r.plan.parameters / 1e6:.3g} M"
            labelled.add(r.plan.parameters)
            ax.plot(steps * per_step, smooth, color=colors[r.plan.parameters], lw=1, alpha=0.8, label=label)
        ax.plot(r.plan.compute, r.val_loss, "o", color=colors[r.plan.parameters], ms=4, mec="black", mew=0.4)
    ax.set_xscale("log")
    ax.set_xlabel("compute spent, 6·N·D (FLOPs)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training curves coloured by model size (dots: final validation loss)")
    ax.grid(alpha=0.3, which="both")
    if labelled:
        ax.legend(title="parameters", fontsize=8)
    _save(fig, path)


def plot_frontier(result, path: Path) -> None:
    plt = _plt()
    done = [r for r in result.records if r.val_loss is not None]
    colors = _size_colors(done)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for r in done:
        ax.plot(r.plan.compute, r.val_loss, "o", color=colors[r.plan.parameters], ms=5)
    f, p = result.fits.frontier if result.fits else None, result.prediction
    if f is not None:
        top = p["compute"] if p else max(c for c, _ in f.points)
        grid = np.geomspace(min(c for c, _ in f.points) / 1.5, top * 1.5, 100)
        ax.plot(grid, f.loss(grid), "k-", lw=1.5, label=f"frontier L = {f.E:.3f} + ({f.C0:.3g}/C)^{f.a:.3f}")
        ax.plot([c for c, _ in f.points], [v for _, v in f.points], "k*", ms=10, label="best loss per budget")
    _prediction_marks(ax, p)
    ax.set_xscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("The compute-efficient frontier")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)


def _prediction_marks(ax, p) -> None:
    if not p or p.get("loss") is None:
        return
    interval = p.get("loss_interval")
    err = [[p["loss"] - interval[0]], [interval[1] - p["loss"]]] if interval else None
    ax.errorbar([p["compute"]], [p["loss"]], yerr=err, fmt="s", color="#d62728", capsize=4,
                label="predicted (95 % bootstrap interval)")
    if p.get("measured") is not None:
        ax.plot([p["compute"]], [p["measured"]], "D", color="#2ca02c", ms=7, label="measured")


def plot_isoflop(result, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    cmap = plt.get_cmap("plasma")
    parabolas = result.fits.isoflop.parabolas if result.fits else []
    budgets = sorted({r.plan.budget for r in result.records})
    for i, budget in enumerate(budgets):
        color = cmap(0.85 * i / max(len(budgets) - 1, 1))
        group = sorted((r for r in result.records if r.plan.budget == budget and r.val_loss is not None),
                       key=lambda r: r.plan.parameters)
        ax.plot([r.plan.parameters for r in group], [r.val_loss for r in group], "o", color=color,
                label=f"{budget:.2g} FLOPs")
        for par in parabolas:
            if par.budget == budget:
                grid = np.geomspace(min(par.sizes), max(par.sizes), 100)
                ax.plot(grid, par.loss(grid), "-", color=color, lw=1)
                if par.n_opt:
                    ax.plot(par.n_opt, par.loss_opt, "*", color=color, ms=14, mec="black", mew=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("final validation loss (nats/token)")
    ax.set_title("IsoFLOP curves: a parabola in log N per budget, its minimum a star")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="budget")
    _save(fig, path)


def plot_optimal(result, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    fits = result.fits
    minima = fits.isoflop.minima if fits else []
    budgets = [m[0] for m in minima] or sorted({r.plan.budget for r in result.records})
    top = result.prediction["compute"] if result.prediction else max(budgets)
    grid = np.geomspace(min(budgets) / 2, top * 2, 50)
    mid = math.sqrt(min(budgets) * top)
    for ax, which in zip(axes, ("N", "D")):
        if minima:
            ax.plot([m[0] for m in minima], [m[1] if which == "N" else m[2] for m in minima], "k*", ms=11,
                    label="IsoFLOP minima")
        iso = fits.isoflop if fits else None
        ours = None
        if iso is not None and iso.a is not None:
            ours = iso.n_opt if which == "N" else iso.d_opt
            exponent = iso.a if which == "N" else iso.b
            ax.plot(grid, [ours(c) for c in grid], "k-", label=f"fitted (IsoFLOP): ∝ C^{exponent:.2f}")
        if fits and fits.parametric:
            par = fits.parametric
            f = par.n_opt if which == "N" else par.d_opt
            ax.plot(grid, [f(c) for c in grid], "-", color="#1f77b4",
                    label=f"fitted (parametric): ∝ C^{par.a if which == 'N' else par.b:.2f}")
            ours = ours or f
        if ours is not None:  # the published exponents, drawn through our value in the middle of the range
            for key, style in (("kaplan", ":"), ("chinchilla", "--"), ("besiroglu", "-.")):
                e = PUBLISHED[key]["a" if which == "N" else "b"]
                ax.plot(grid, ours(mid) * (grid / mid) ** e, style, color="gray", lw=1,
                        label=f"{PUBLISHED[key]['label'].split(' (')[0]}: C^{e:.2f}")
        twenty = np.sqrt(grid / 120)  # Chinchilla's rule of thumb: D = 20 N, C = 6 N D
        ax.plot(grid, twenty if which == "N" else 20 * twenty, "-", color="#ff7f0e", lw=1, alpha=0.7,
                label="20 tokens per parameter")
        if result.prediction:
            p = result.prediction
            ax.plot(p["compute"], p["run"]["parameters"] if which == "N" else p["run"]["tokens"], "s",
                    color="#d62728", label="the predicted run")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(_plt().NullFormatter())
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("N_opt (parameters)" if which == "N" else "D_opt (tokens)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Compute-optimal size and data against compute (published lines: their exponents through ours)")
    _save(fig, path)


def plot_prediction(result, path: Path) -> None:
    plt = _plt()
    p = result.prediction
    fig, ax = plt.subplots(figsize=(5.5, 4))
    labels, values = ["parametric\nL(N, D)", "frontier\nL(C)"], [p.get("loss_parametric"), p.get("loss_frontier")]
    colors = ["#d62728", "#9467bd"]
    if p.get("measured") is not None:
        labels.append("measured")
        values.append(p["measured"])
        colors.append("#2ca02c")
    shown = [(lab, v, c) for lab, v, c in zip(labels, values, colors) if v is not None]
    for i, (_lab, v, c) in enumerate(shown):
        ax.plot(i, v, "o", color=c, ms=9)
        ax.annotate(f"{v:.4f}", (i, v), textcoords="offset points", xytext=(10, -3), fontsize=9)
    for i, (_lab, v, c) in enumerate(shown):
        kind = {"#d62728": "parametric", "#9467bd": "frontier"}.get(c)
        interval = p.get(f"loss_interval_{kind}") if kind else None
        if interval:
            ax.errorbar([i], [v], yerr=[[v - interval[0]], [interval[1] - v]], fmt="none", color=c, capsize=6)
    ax.set_xticks(range(len(shown)), [s[0] for s in shown])
    ax.set_xlim(-0.5, len(shown) - 0.3)
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(f"Prediction at {p['compute']:.3g} FLOPs")
    ax.grid(alpha=0.3, axis="y")
    _save(fig, path)


# ---- text ----------------------------------------------------------------------------------------


def _fmt_interval(fits, name: str) -> str:
    interval = fits.intervals.get(name) if fits else None
    return f" [{interval[0]:.3g}, {interval[1]:.3g}]" if interval else ""


def exponent_rows(fits) -> list[list[str]]:
    """(quantity, ours with interval, Kaplan, Chinchilla, Besiroglu)."""
    iso, par, fr = fits.isoflop, fits.parametric, fits.frontier
    k, c, b = PUBLISHED["kaplan"], PUBLISHED["chinchilla"], PUBLISHED["besiroglu"]

    def v(x):
        return "–" if x is None else f"{x:.3g}"

    rows = [
        ["a in N_opt ∝ C^a (IsoFLOP)", v(iso.a) + _fmt_interval(fits, "isoflop.a"), v(k["a"]), v(c["a"]), v(b["a"])],
        ["b in D_opt ∝ C^b (IsoFLOP)", v(iso.b) + _fmt_interval(fits, "isoflop.b"), v(k["b"]), v(c["b"]), v(b["b"])],
    ]
    if par:
        rows += [
            ["a = β/(α+β) (parametric)", v(par.a) + _fmt_interval(fits, "parametric.a"), "–", "0.46", v(b["a"])],
            ["α (parameters)", v(par.alpha) + _fmt_interval(fits, "parametric.alpha"), v(k["alpha_N"]), v(c["alpha"]),
             v(b["alpha"])],
            ["β (data)", v(par.beta) + _fmt_interval(fits, "parametric.beta"), v(k["alpha_D"]), v(c["beta"]),
             v(b["beta"])],
            ["E (irreducible loss, nats)", v(par.E) + _fmt_interval(fits, "parametric.E"), "–", v(c["E"]), v(b["E"])],
            ["A", v(par.A) + _fmt_interval(fits, "parametric.A"), "–", v(c["A"]), v(b["A"])],
            ["B", v(par.B) + _fmt_interval(fits, "parametric.B"), "–", v(c["B"]), v(b["B"])],
        ]
    if fr:
        rows.append(["frontier exponent in L = E + (C0/C)^a", v(fr.a) + _fmt_interval(fits, "frontier.a"),
                     v(k["frontier_a"]), "–", "–"])
    return rows


def run_rows(result) -> list[list[str]]:
    rows = []
    for r in result.records + ([result.check] if result.check else []):
        p = r.plan
        rows.append([p.name + (" (check)" if p.check else ""), f"{p.shape['n_layer']}×{p.shape['n_embd']}",
                     f"{p.parameters:,}", f"{p.tokens:,}", f"{p.compute:.3g}", f"{p.epochs:.2f}", f"{p.max_iters:,}",
                     "–" if r.train_loss is None else f"{r.train_loss:.4f}",
                     "–" if r.val_loss is None else f"{r.val_loss:.4f}",
                     r.status + (f": {r.error}" if r.error else "")])
    return rows


RUN_HEADER = ["run", "layers×width", "parameters", "tokens", "compute (FLOPs)", "epochs", "steps", "train loss",
              "val loss", "status"]
EXPONENT_HEADER = ["quantity", "ours [95 % bootstrap]", "Kaplan 2020", "Chinchilla 2022", "Besiroglu 2024"]


HEADLINE = {"frontier": "compute-efficient frontier L(C) (fitted to the best run of each budget, as the GPT-4 report "
                        "predicted its final loss from compute)",
            "parametric": "parametric fit L(N, D)"}


def data_text(result) -> str:
    d = result.data
    largest = max(result.records, key=lambda r: r.plan.tokens)
    most = max(result.records, key=lambda r: r.plan.epochs)
    source = {"stdlib": "the docstrings of this Python's standard library",
              "stdlib-source": "the source files of this Python's standard library"}.get(d["source"], d["source"])
    tok = d["tokenizer"]
    return (f"Corpus: {source} ({d['chars']:,} characters), a {tok['kind']} tokenizer of {tok['vocab_size']:,} tokens: "
            f"{d['train_tokens']:,} training and {d['val_tokens']:,} validation tokens. Each step trains on "
            f"{result.plan.tokens_per_step:,} tokens. The run with the most tokens ({largest.plan.name}) trains on "
            f"{largest.plan.tokens:,} tokens, so it sees each training token {largest.plan.epochs:.2f} times"
            + (f"; the most repeated run is {most.plan.name} at {most.plan.epochs:.2f} epochs" if most is not largest
               else "")
            + ". Muennighoff et al. (2023) found up to about 4 epochs of repeated data nearly as good as new data.")


def reading(result) -> str:
    p, fits = result.prediction, result.fits
    if not p:
        return "The grid is not complete enough to fit: " + " ".join(result.notes)
    run = p["run"]
    interval = p.get("loss_interval")
    parts = [f"At {p['compute'] / max(r.plan.budget for r in result.records):.3g}× the largest budget of this grid "
             f"({p['compute']:.3g} FLOPs), train a model of {run['parameters']:,} parameters ({run['shape']['n_layer']} "
             f"layer(s) × {run['shape']['n_embd']} wide) on {run['tokens']:,} tokens, about "
             f"{run['tokens'] / run['parameters']:.1f} tokens per parameter (Chinchilla: about 20). By the "
             f"{p['size_from']}, N_opt = {p['n_opt']:,.0f}; the shape is the one of the depth/width rule closest "
             f"to it. The {HEADLINE[p['loss_from']]} expects a validation loss of {p['loss']:.4f} nats"
             + (f" (95 % bootstrap interval {interval[0]:.4f} to {interval[1]:.4f})" if interval else "")
             + (f"; the parametric fit L(N, D) expects {p['loss_parametric']:.4f} of this run."
                if p["loss_from"] == "frontier" and p.get("loss_parametric") is not None else ".")]
    if p.get("measured") is not None:
        inside = interval and interval[0] <= p["measured"] <= interval[1]
        parts.append(f"Trained, it measured {p['measured']:.4f}: the prediction was off by {p['error']:+.4f} nats "
                     f"({'inside' if inside else 'outside'} the interval; the GPT-4 report's bar at our scale is "
                     f"0.03 nats, {'met' if abs(p['error']) <= 0.03 else 'missed'})"
                     + (f"; the parametric fit was off by {p['error_parametric']:+.4f}."
                        if p["loss_from"] == "frontier" and p.get("error_parametric") is not None else "."))
    if fits.isoflop.a is not None:
        parts.append(f"Loss-optimal size grows as C^{fits.isoflop.a:.2f} and data as C^{fits.isoflop.b:.2f} here; "
                     "Chinchilla found both near 0.5 (grow model and data alike), Kaplan et al. 0.73 and 0.27 "
                     "(mostly the model), a difference Hoffmann et al. traced to schedules not matched to run length "
                     "and Pearce and Song (2024) to counting parameters without embeddings at small scale.")
    parts.append("The intervals come from refitting on runs drawn with replacement: they measure how well the grid "
                 "pins the fit, not the noise of one training run (its seed), which adds to the error of a prediction.")
    return "\n\n".join(parts)


def _md_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows] + [""]


def _html_table(header, rows) -> str:
    e = html.escape
    return ("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1150px;
       padding: 2rem 1.5rem; color: #1f2933; line-height: 1.5; background: #fbfbfc; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #e4e7eb; }
table { border-collapse: collapse; font-size: .88rem; background: #fff; margin: .6rem 0 1.2rem; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #e4e7eb; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #e4e7eb; background: #fff; }
.note { color: #8a4b08; }
"""


def sections(result) -> list[tuple[str, str, str | None, tuple | None]]:
    """(title, text, image, table) in the report's order."""
    out = [("The data", data_text(result), None, None)]
    if result.prediction:
        out.append(("What the lab says", reading(result), None, None))
    out.append(("Training curves", "Each curve is one run's training loss against the compute it has spent so far, "
                "coloured by model size. A curve is only a valid point where it ends: before that its learning "
                "rate had not yet decayed (the schedule is planned on the whole budget).", PLOTS["curves"], None))
    if result.fits:
        out += [
            ("The compute-efficient frontier", "The best loss reached at each budget (the minimum of its IsoFLOP "
             "parabola where it has one) and the power law L(C) = E + (C0/C)^a through them, extended to the "
             "predicted run.", PLOTS["frontier"], None),
            ("IsoFLOP curves", "For each budget, models of different sizes trade parameters for tokens (D = C/6N). "
             "The loss falls, then rises: too small a model underfits, too large a model sees too few tokens. "
             "Each parabola's minimum is that budget's compute-optimal size.", PLOTS["isoflop"], None),
            ("Compute-optimal size and data", "The minima against compute on log-log axes, the fitted power laws, "
             "and the published exponents drawn through our line at the middle of the range (their absolute values "
             "belong to other data and tokenizers).", PLOTS["optimal"], None),
            ("Fitted exponents beside the published ones", "", None, (EXPONENT_HEADER, exponent_rows(result.fits))),
        ]
    if result.prediction:
        out.append(("Prediction against measurement", "", PLOTS["prediction"], None))
    out.append(("Every run", "Compute C = 6·N·D, N every parameter (embeddings included, as Chinchilla counts "
                "them), D the tokens trained on; epochs: passes over the training tokens.", None,
                (RUN_HEADER, run_rows(result))))
    if result.notes or result.plan.skipped:
        out.append(("Notes", "\n\n".join(result.notes + [f"left out of the grid: {s}" for s in result.plan.skipped]),
                    None, None))
    return out


def write_report(result) -> Path:
    out = result.out_dir
    if any(r.val_loss is not None for r in result.records):
        plot_curves(result, out / PLOTS["curves"])
    if result.fits:
        plot_frontier(result, out / PLOTS["frontier"])
        plot_isoflop(result, out / PLOTS["isoflop"])
        plot_optimal(result, out / PLOTS["optimal"])
    if result.prediction:
        plot_prediction(result, out / PLOTS["prediction"])
    title = "Scaling-law lab"
    md, e = [f"# {title}", ""], html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>",
             f"<h1>{title}</h1>"]
    for heading, text, image, table in sections(result):
        md += [f"## {heading}", ""]
        parts.append(f"<h2>{e(heading)}</h2>")
        if text:
            md += [text, ""]
            parts += [f"<p>{e(p)}</p>" for p in text.split("\n\n")]
        if image and (out / image).is_file():
            md += [f"![{heading}]({image})", ""]
            parts.append(f"<p><img src='{e(image)}' alt='{e(heading)}'></p>")
        if table:
            md += _md_table(*table)
            parts.append(_html_table(*table))
    parts.append("</body></html>\n")
    write_text_atomic(out / "report.md", "\n".join(md))
    write_text_atomic(out / "report.html", "\n".join(parts))
    return out / "report.html"
