"""The decoding lab: run several strategies on the same prompts, measure what comes out, write a report.

    results = compare_strategies(model, tokenizer, prompts, ["greedy", "beam", "nucleus"], train_index=index)
    write_report(results, "runs/lab")   # report.md, report.html, metrics.png, results.json

Per strategy: mean log-probability of the generated tokens under the model, repetition rate (share
of repeated token 3-grams within a text, so runs of newlines or punctuation count too), corpus
distinct-1/distinct-2 over words, mean length in tokens, tokens/s, and with a training-corpus n-gram
index the share of generated token 8-grams found verbatim in the training data.
"""

from __future__ import annotations

import html
import json
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.evaluate.text_metrics import distinct_n, repetition_rate
from lmforge.fsutil import atomic_path, write_text_atomic
from lmforge.generate.api import generate
from lmforge.generate.score import continuation_logprobs

PRESETS: dict[str, dict] = {
    "greedy": {},
    "beam": {"num_beams": 4},
    "beam-ngram": {"num_beams": 4, "no_repeat_ngram_size": 3},
    "diverse-beam": {"num_beams": 4, "num_beam_groups": 2, "diversity_penalty": 1.0},
    "contrastive": {"penalty_alpha": 0.6, "top_k": 4},
    "sample": {"do_sample": True, "top_k": 0},
    "top-k": {"do_sample": True, "top_k": 40},
    "nucleus": {"do_sample": True, "top_k": 0, "top_p": 0.9},
    "typical": {"do_sample": True, "top_k": 0, "typical_p": 0.9},
    "min-p": {"do_sample": True, "top_k": 0, "min_p": 0.1},
    "temperature-0.7": {"do_sample": True, "top_k": 0, "temperature": 0.7},
}
DEFAULT_STRATEGIES = ("greedy", "beam", "contrastive", "top-k", "nucleus", "typical")
METRICS = {  # key: (label, higher is "more" of what)
    "mean_logprob": "mean log-prob",
    "repetition_rate": "repetition (token 3-grams)",
    "distinct_1": "distinct-1",
    "distinct_2": "distinct-2",
    "mean_length": "length (tokens)",
    "tokens_per_s": "tokens/s",
    "train_8gram_share": "8-grams in training data",
}


@dataclass
class Strategy:
    name: str
    params: dict

    @classmethod
    def parse(cls, spec: str | Strategy) -> Strategy:
        """A preset name, or `name:key=value,key=value` (a preset's parameters overridden, or new ones):
        "beam:num_beams=8,length_penalty=1.2", "hot:do_sample=true,temperature=1.3"."""
        if isinstance(spec, Strategy):
            return spec
        name, _, rest = spec.partition(":")
        name = name.strip()
        if name not in PRESETS and not rest:
            raise LmforgeError(f"unknown strategy '{name}'; use one of {', '.join(PRESETS)} "
                               "or name:key=value,... with generation parameters")
        params = dict(PRESETS.get(name, {}))
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise LmforgeError(f"strategy '{spec}': '{item}' is not key=value")
            params[key.strip().replace("-", "_")] = _value(value.strip())
        return cls(name, params)


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "never":
        return "never"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class StrategyResult:
    name: str
    params: dict
    texts: list[str]
    token_ids: list[list[int]]
    metrics: dict


@dataclass
class LabResults:
    prompts: list[str]
    max_new_tokens: int
    seed: int
    strategies: list[StrategyResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def compare_strategies(model, tokenizer, prompts: Sequence[str], strategies: Sequence[str | Strategy] = DEFAULT_STRATEGIES,
                       train_index=None, max_new_tokens: int = 64, seed: int = 0, defaults: dict | None = None,
                       **generate_kwargs) -> LabResults:
    """Generate one continuation per prompt with each strategy (the prompts as one left-padded batch)
    and measure it. `train_index` is an `NGramIndex` of the training corpus' token ids, or None."""
    if hasattr(model, "model") and not hasattr(model, "forward"):  # a Checkpoint
        tokenizer = tokenizer or model.tokenizer
        defaults = defaults if defaults is not None else model.generation_config
        model = model.model
    if tokenizer is None:
        raise LmforgeError("the decoding lab needs a tokenizer to read prompts and show texts")
    prompts = list(prompts)
    if not prompts:
        raise LmforgeError("the decoding lab got no prompts; give at least one")
    results = LabResults(prompts, max_new_tokens, seed)
    for spec in strategies:
        strategy = Strategy.parse(spec)
        out = generate(model, prompts, tokenizer=tokenizer, defaults=defaults, max_new_tokens=max_new_tokens,
                       seed=seed, **{**generate_kwargs, **strategy.params})
        completions = [group[0] for group in out.completions]
        texts = [c.text for c in completions]
        ids = [c.token_ids for c in completions]
        logprobs = [lp for prompt_ids, c in zip(out.prompt_token_ids, completions)
                    for lp in continuation_logprobs(model, prompt_ids, c.token_ids)]
        metrics = {
            "mean_logprob": statistics.fmean(logprobs) if logprobs else None,
            "repetition_rate": statistics.fmean(repetition_rate(i, 3) for i in ids),
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "mean_length": statistics.fmean(len(i) for i in ids),
            "tokens_per_s": out.new_tokens / out.seconds if out.seconds > 0 else None,
            "train_8gram_share": train_ngram_share(train_index, ids),
        }
        results.strategies.append(StrategyResult(strategy.name, strategy.params, texts, ids, metrics))
    return results


def train_ngram_share(index, token_lists: list[list[int]]) -> float | None:
    """Share of all generated n-grams (over every text) found in the index; None without one."""
    if index is None:
        return None
    found = total = 0
    for ids in token_lists:
        share = index.share_found(ids)
        if share is not None:
            count = len(ids) - index.n + 1
            found += share * count
            total += count
    return found / total if total else None


@dataclass
class ReportSection:
    """Extra material placed before the lab's tables: a title, paragraphs, an optional image file."""

    title: str
    text: str = ""
    image: str | Path | None = None


def write_report(results: LabResults, out_dir: str | Path, title: str = "Decoding lab",
                 extra_sections: Sequence[ReportSection] = ()) -> dict[str, Path]:
    """Write report.md, report.html, metrics.png and results.json into `out_dir` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "html": out / "report.html", "plot": out / "metrics.png",
             "json": out / "results.json"}
    for section in extra_sections:
        if section.image and Path(section.image).resolve().parent != out.resolve():
            shutil.copyfile(section.image, out / Path(section.image).name)
    plot_metrics(results, paths["plot"])
    write_text_atomic(paths["json"], json.dumps(results.to_dict(), indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths["markdown"], render_markdown(results, title, extra_sections, paths["plot"].name))
    write_text_atomic(paths["html"], render_html(results, title, extra_sections, paths["plot"].name))
    return paths


def _shown_metrics(results: LabResults) -> list[str]:
    return [k for k in METRICS if any(s.metrics.get(k) is not None for s in results.strategies)]


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults (greedy)"


def plot_metrics(results: LabResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = _shown_metrics(results)
    names = [s.name for s in results.strategies]
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, key in zip(axes.flat, keys):
        values = [s.metrics.get(key) or 0.0 for s in results.strategies]
        ax.bar(range(len(names)), values, color=[colors[i % 10] for i in range(len(names))])
        ax.set_title(METRICS[key], fontsize=10)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("Decoding strategies compared", fontsize=12)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def render_markdown(results: LabResults, title: str, extra_sections: Sequence[ReportSection] = (),
                    plot_name: str = "metrics.png") -> str:
    keys = _shown_metrics(results)
    lines = [f"# {title}", "",
             f"{len(results.prompts)} prompt(s), up to {results.max_new_tokens} new tokens, seed {results.seed}.", ""]
    for section in extra_sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.image:
            lines += [f"![{section.title}]({Path(section.image).name})", ""]
    lines += ["## Metrics", "", "| strategy | parameters | " + " | ".join(METRICS[k] for k in keys) + " |",
              "|---|---|" + "---:|" * len(keys)]
    for s in results.strategies:
        lines.append(f"| {s.name} | {_params(s.params)} | " + " | ".join(_fmt(s.metrics.get(k)) for k in keys) + " |")
    lines += ["", f"![metrics]({plot_name})", "", "## Samples", ""]
    for i, prompt in enumerate(results.prompts):
        lines += [f"### Prompt {i + 1}", "", "> " + prompt.replace("\n", "\n> "), "",
                  "| strategy | continuation |", "|---|---|"]
        for s in results.strategies:
            text = s.texts[i].replace("|", "\\|").replace("\n", "<br>")
            lines.append(f"| {s.name} | {text} |")
        lines.append("")
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 2rem 1.5rem; color: #1f2933; line-height: 1.5; background: #fbfbfc; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #e4e7eb; }
.meta { color: #616e7c; }
table.metrics { border-collapse: collapse; width: 100%; font-size: .92rem; background: #fff; }
table.metrics th, table.metrics td { padding: .45rem .7rem; border-bottom: 1px solid #e4e7eb; text-align: right; }
table.metrics th:first-child, table.metrics td:first-child,
table.metrics th:nth-child(2), table.metrics td:nth-child(2) { text-align: left; }
table.metrics td.params { color: #616e7c; font-size: .82rem; }
img { max-width: 100%; border: 1px solid #e4e7eb; background: #fff; }
.prompt { background: #eef2f7; border-left: 4px solid #3e7cb1; padding: .6rem .9rem; white-space: pre-wrap;
          font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .9rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: .9rem; margin: .8rem 0 1.6rem; }
.card { background: #fff; border: 1px solid #e4e7eb; border-radius: 6px; padding: .7rem .9rem; }
.card h4 { margin: 0 0 .4rem; font-size: .95rem; color: #3e7cb1; }
.card pre { margin: 0; white-space: pre-wrap; word-wrap: break-word; font-size: .88rem; max-width: 70ch;
            font-family: ui-monospace, Menlo, Consolas, monospace; }
"""


def render_html(results: LabResults, title: str, extra_sections: Sequence[ReportSection] = (),
                plot_name: str = "metrics.png") -> str:
    e = html.escape
    keys = _shown_metrics(results)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>",
             (f"<h1>{e(title)}</h1><p class='meta'>{len(results.prompts)} prompt(s), up to "
              f"{results.max_new_tokens} new tokens, seed {results.seed}.</p>")]
    for section in extra_sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        parts += [f"<p>{e(p)}</p>" for p in section.text.split("\n\n") if p.strip()]
        if section.image:
            parts.append(f"<img src='{e(Path(section.image).name)}' alt='{e(section.title)}'>")
    parts.append("<h2>Metrics</h2><table class='metrics'><tr><th>strategy</th><th>parameters</th>"
                 + "".join(f"<th>{e(METRICS[k])}</th>" for k in keys) + "</tr>")
    for s in results.strategies:
        parts.append(f"<tr><td><b>{e(s.name)}</b></td><td class='params'>{e(_params(s.params))}</td>"
                     + "".join(f"<td>{_fmt(s.metrics.get(k))}</td>" for k in keys) + "</tr>")
    parts.append(f"</table><p><img src='{e(plot_name)}' alt='metrics per strategy'></p><h2>Samples</h2>")
    for i, prompt in enumerate(results.prompts):
        parts.append(f"<h3>Prompt {i + 1}</h3><div class='prompt'>{e(prompt)}</div><div class='grid'>")
        for s in results.strategies:
            parts.append(f"<div class='card'><h4>{e(s.name)}</h4><pre>{e(s.texts[i])}</pre></div>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
