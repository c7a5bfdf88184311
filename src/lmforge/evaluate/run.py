"""Generate for every example of a pair data set, score the outputs, and write the reports.

    report = evaluate_pairs(lmforge.load("runs/samsum/best"), load_pairs("samsum:validation"),
                            metrics=["rouge", "length", "novelty"], generation={"num_beams": 4})
    write_reports(report, "runs/samsum/eval")   # outputs.jsonl, summary.json, summary.md

Several prompt templates can be run over the same data (`templates={"plain": None, "tldr": "{dialogue}\\nTL;DR:"}`);
the summary then tabulates their metrics side by side.

Metrics: BLEU and chrF are sacrebleu's corpus scores (its signature is reported); ROUGE comes from
rouge-score with the Porter stemmer, averaged over examples: `rougeL` is the LCS of the whole text
(sentence breaks ignored), `rougeLsum` the summary-level union LCS over sentences (split at newlines,
or at .!? when a text has none); on dialogue summaries the two differ by several points. `words` is
the mean output length in words (`ref_words` that of the references); `novel_1grams`/`novel_2grams`
are the share (%) of output word n-grams that do not occur in the source (lower-cased words), a
measure of how abstractive the outputs are.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.pairs import LengthReport, PairEncoder, PairSet
from lmforge.errors import LmforgeError
from lmforge.evaluate.text_metrics import bleu, chrf, novelty_vs_source, rouge
from lmforge.fsutil import write_text_atomic
from lmforge.generate.api import generate

METRIC_COLUMNS = {
    "rouge": ["rouge1", "rouge2", "rougeL", "rougeLsum"],
    "rouge1": ["rouge1"], "rouge2": ["rouge2"], "rougeL": ["rougeL"], "rougeLsum": ["rougeLsum"],
    "bleu": ["bleu"],
    "chrf": ["chrf"],
    "length": ["words", "ref_words"],
    "novelty": ["novel_1grams", "novel_2grams"],
}
ROUGE_NOTE = ("rougeL: longest common subsequence over the whole text (sentence breaks ignored); rougeLsum: "
              "summary-level union LCS over sentences (newlines, else split at .!?); rouge-score, Porter stemmer, "
              "F-measure x100 averaged over examples")
_WORD = re.compile(r"\w+")


def parse_metrics(names: str | list[str]) -> list[str]:
    """Metric names from "rouge,bleu" or a list; an unknown one is an error that lists the valid ones."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise LmforgeError(f"no metric given; choose from {', '.join(METRIC_COLUMNS)}")
    for name in items:
        if name not in METRIC_COLUMNS:
            raise LmforgeError(f"unknown metric {name!r}; valid metrics are: {', '.join(METRIC_COLUMNS)}")
    return list(dict.fromkeys(items))


def metric_columns(names: list[str]) -> list[str]:
    return list(dict.fromkeys(c for n in names for c in METRIC_COLUMNS[n]))


def score(outputs: list[str], references: list[str], sources: list[str], names: list[str]) -> tuple[dict, dict]:
    """(column -> value, metric -> sacrebleu signature) for the metrics `names`."""
    columns, values, signatures = metric_columns(names), {}, {}
    if any(c.startswith("rouge") for c in columns):
        values.update(rouge(outputs, references, use_stemmer=True))
    if "bleu" in columns:
        result = bleu(outputs, references)
        values["bleu"], signatures["bleu"] = result["score"], result["signature"]
    if "chrf" in columns:
        result = chrf(outputs, references)
        values["chrf"], signatures["chrf"] = result["score"], result["signature"]
    if "words" in columns:
        values["words"] = sum(len(o.split()) for o in outputs) / len(outputs)
        values["ref_words"] = sum(len(r.split()) for r in references) / len(references)
    if "novel_1grams" in columns:
        for n in (1, 2):
            shares = [novelty_vs_source(_words(o), _words(s), n) for o, s in zip(outputs, sources)]
            shares = [x for x in shares if x is not None]
            values[f"novel_{n}grams"] = 100.0 * sum(shares) / len(shares) if shares else 0.0
    return {c: values[c] for c in columns}, signatures


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def generate_texts(model, tokenizer, sources: list[list[int]], generation: dict, batch_size: int = 32,
                   defaults: dict | None = None, autocast=None,
                   progress: Callable[[int, int], None] | None = None) -> list[str]:
    """The generated text of every source (token ids), longest sources first in batches, returned in order."""
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    outputs: list[str] = [""] * len(sources)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            with autocast if autocast is not None else contextlib.nullcontext():
                result = generate(model, [sources[i] for i in chunk], tokenizer=tokenizer, defaults=defaults,
                                  **generation)
            for i, completions in zip(chunk, result.completions):
                outputs[i] = completions[0].text.strip()
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return outputs


def source_limit(model, max_new_tokens: int, configured: int | None) -> int:
    """The longest source (prompt) the model takes: the configured limit, within the model's positions
    (BART) or its context less the new tokens (decoder-only); 512 for T5 when nothing says otherwise."""
    c = model.config
    if not getattr(model, "is_encoder_decoder", False):
        room = c.block_size - max_new_tokens
        if room < 2:
            raise LmforgeError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's context "
                               f"({c.block_size} tokens); lower max_new_tokens")
        return min(configured, room) if configured else room
    positions = c.max_position_embeddings if c.position == "learned" else None
    if configured:
        return min(configured, positions) if positions else configured
    return positions or 512


@dataclass
class TemplateRun:
    name: str
    template: str | None
    ids: list[str]
    prompts: list[str]
    references: list[str]
    outputs: list[str]
    scores: dict
    lengths: dict
    seconds: float


@dataclass
class EvalReport:
    model: str
    data: str
    metrics: list[str]
    generation: dict
    runs: list[TemplateRun]
    signatures: dict
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"model": self.model, "data": self.data, "metrics": metric_columns(self.metrics),
                "generation": self.generation, "notes": self.notes, "signatures": self.signatures,
                "rouge_note": ROUGE_NOTE if any(m.startswith("rouge") for m in self.metrics) else None,
                "results": [{"name": r.name, "template": r.template, "examples": len(r.outputs),
                             "seconds": round(r.seconds, 2), "lengths": r.lengths, **r.scores} for r in self.runs]}

    def table(self) -> str:
        """The metrics of every template as a Markdown table (one row each)."""
        columns = metric_columns(self.metrics)
        lines = ["| template | examples | " + " | ".join(columns) + " |",
                 "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |"]
        for r in self.runs:
            shown = r.name if r.template is None or r.name == r.template else f"{r.name}: `{_md(r.template)}`"
            lines.append(f"| {shown} | {len(r.outputs)} | " + " | ".join(f"{r.scores[c]:.2f}" for c in columns) + " |")
        return "\n".join(lines)

    def markdown(self) -> str:
        g = ", ".join(f"{k}={v}" for k, v in self.generation.items())
        parts = [f"# Evaluation of {self.model}", "", f"Data: {self.data}. Decoding: {g}.", "", self.table(), ""]
        if any(m.startswith("rouge") for m in self.metrics):
            parts += [f"ROUGE: {ROUGE_NOTE}.", ""]
        for name, signature in self.signatures.items():
            parts += [f"sacrebleu {name} signature: `{signature}`", ""]
        parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts).rstrip() + "\n"


def _md(text: str) -> str:
    return text.replace("\n", "\\n").replace("|", "\\|")


def evaluate_pairs(checkpoint, pairs: PairSet, metrics: list[str], generation: dict | None = None,
                   templates: dict[str, str | None] | None = None, prefix: str = "",
                   max_source_length: int | None = None, too_long: str = "truncate", batch_size: int = 32,
                   log: Callable[[str], None] | None = None) -> EvalReport:
    """Generate an output for every example (once per template) and score it against the targets.

    `checkpoint` is what `lmforge.load` returns; its generation_config.json gives the decoding defaults,
    which `generation` overrides. A source longer than `max_source_length` tokens (by default the
    model's limit) is truncated and counted, dropped, or an error, as `too_long` says.
    """
    model, tokenizer = checkpoint.model, checkpoint.tokenizer
    if tokenizer is None:
        raise LmforgeError(f"{checkpoint.path} has no tokenizer (tokenizer.json); save the model's tokenizer there")
    metrics = parse_metrics(metrics)
    defaults = dict(checkpoint.generation_config or {})
    generation = {k: v for k, v in (generation or {}).items() if v is not None}
    shown_generation = {k: v for k, v in {**defaults, **generation}.items()
                        if k in ("num_beams", "max_new_tokens", "max_length", "length_penalty", "do_sample",
                                 "no_repeat_ngram_size", "early_stopping", "top_p", "top_k", "temperature")}
    max_new = shown_generation.get("max_new_tokens") or 20
    limit = source_limit(model, max_new, max_source_length)
    encoder = PairEncoder(tokenizer, getattr(model, "is_encoder_decoder", False), model.config.family, limit,
                          max_target_length=10**9, too_long=too_long)
    say = log or (lambda _text: None)
    notes = list(pairs.notes)
    runs, signatures = [], {}
    templates = templates or {"default": None}
    several = len(templates) > 1
    for name, template in templates.items():
        prompts = pairs.prompts(template, prefix)
        report = LengthReport()
        sources = encoder.sources(prompts, pairs.ids, report)
        notes += report.notes(f"{pairs.description} ({name})" if several else pairs.description)
        kept = [i for i, s in enumerate(sources) if s is not None]
        if not kept:
            raise LmforgeError(f"every source of {pairs.description} is longer than {limit} tokens; raise "
                               "--max-source-length or use --too-long truncate")
        say(f"generating {len(kept)} outputs for {pairs.description}" + (f" with template {name!r}" if several else ""))
        began = time.perf_counter()
        outputs = generate_texts(model, tokenizer, [sources[i] for i in kept], generation, batch_size, defaults,
                                 progress=lambda done, total: say(f"  {done}/{total}"))
        seconds = time.perf_counter() - began
        references = [pairs.targets[i] for i in kept]
        values, sigs = score(outputs, references, [pairs.sources[i] for i in kept], metrics)
        signatures.update(sigs)
        runs.append(TemplateRun(name, template, [pairs.ids[i] for i in kept], [prompts[i] for i in kept],
                                references, outputs, values, report.to_dict(), seconds))
    return EvalReport(str(checkpoint.path), pairs.description, metrics, shown_generation, runs, signatures, notes)


def write_reports(report: EvalReport, out_dir: str | Path) -> dict[str, Path]:
    """outputs.jsonl (one line per example and template), summary.json and summary.md, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in report.runs:
        for example_id, prompt, reference, output in zip(r.ids, r.prompts, r.references, r.outputs):
            lines.append(json.dumps({"id": example_id, "template": r.name, "prompt": prompt, "reference": reference,
                                     "output": output}, ensure_ascii=False))
    paths = {"outputs": out / "outputs.jsonl", "json": out / "summary.json", "markdown": out / "summary.md"}
    write_text_atomic(paths["outputs"], "\n".join(lines) + "\n")
    write_text_atomic(paths["json"], json.dumps(report.summary(), indent=2, ensure_ascii=False) + "\n")
    write_text_atomic(paths["markdown"], report.markdown())
    return paths
