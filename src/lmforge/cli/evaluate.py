"""`lmforge evaluate MODEL --data SPEC --metrics rouge,bleu,...`: generate for every example and score.

Writes outputs.jsonl (one line per example and template), summary.json and summary.md to --out. A
model made by `lmforge finetune` brings its data settings (template, prefix, fields, source length) in
trainer_state.json; flags override them. `--templates FILE` (YAML: a mapping name -> template, or a
list) runs several prompt templates over the same data and tabulates them side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmforge.cli.generate import add_decoding_arguments, add_model_argument, decoding_kwargs, load_checkpoint
from lmforge.errors import LmforgeError

DEFAULT_METRICS = "rouge,bleu,chrf,length,novelty"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    d = parser.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="SPEC",
                   help="a named data set (samsum, multi30k; :split), a .jsonl/.csv/.tsv file, or two parallel "
                        "text files joined by a comma")
    d.add_argument("--split", default="validation", help="split of a named data set given without one")
    d.add_argument("--source-field", help="source field (default: the training run's, else the data set's)")
    d.add_argument("--target-field", help="target (reference) field")
    d.add_argument("--template", help="prompt template over the fields, e.g. 'summarize: {dialogue}'")
    d.add_argument("--templates", metavar="FILE", help="YAML file of several templates (name: template) to compare")
    d.add_argument("--prefix", help="task prefix before every prompt")
    d.add_argument("--limit", type=int, help="evaluate the first N examples only")
    d.add_argument("--max-source-length", type=int, help="tokens of a source (default: the model's limit)")
    d.add_argument("--too-long", choices=["truncate", "drop", "error"], default="truncate",
                   help="a longer source: truncate it, drop the example, or stop with an error (default truncate)")
    parser.add_argument("--metrics", default=DEFAULT_METRICS,
                        help=f"comma-separated: rouge (rouge1,rouge2,rougeL,rougeLsum), bleu, chrf, length, novelty "
                             f"(default {DEFAULT_METRICS})")
    parser.add_argument("--batch-size", type=int, default=32, help="sources per generation batch")
    parser.add_argument("--out", default="runs/evaluate", help="folder for outputs.jsonl and summary.{json,md}")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_decoding_arguments(parser)


def run_settings(model_folder: str) -> dict:
    """The data settings of the `lmforge finetune` run that made the model, if it did."""
    path = Path(model_folder) / "trainer_state.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return {}
    data = config.get("data", {}) if isinstance(config, dict) else {}
    return data if isinstance(data, dict) else {}


def read_templates(path: str) -> dict[str, str | None]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"templates file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LmforgeError(f"{p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(data, list):
        data = {str(t) if t is not None else "source": t for t in data}
    if not isinstance(data, dict) or not data or not all(v is None or isinstance(v, str) for v in data.values()):
        raise LmforgeError(f"{p} should hold a mapping of names to templates (or a list of templates), "
                           "e.g. plain: '{dialogue}'")
    return {str(k): v for k, v in data.items()}


def run(args: argparse.Namespace) -> int:
    from lmforge.data.pairs import load_pairs
    from lmforge.evaluate.run import evaluate_pairs, parse_metrics, write_reports

    metrics = parse_metrics(args.metrics)
    if args.template is not None and args.templates:
        raise LmforgeError("give either --template or --templates, not both")
    if args.limit is not None and args.limit < 1:
        raise LmforgeError(f"--limit must be at least 1, not {args.limit}")
    trained = run_settings(args.adapter or args.model)
    templates = read_templates(args.templates) if args.templates else None
    template = args.template if args.template is not None else trained.get("template")
    pairs = load_pairs(args.data, args.split, args.source_field or trained.get("source_field"),
                       args.target_field or trained.get("target_field")).head(args.limit)
    ckpt = load_checkpoint(args)
    generation = dict(decoding_kwargs(args), seed=args.seed, ignore_eos=args.ignore_eos or None)
    log = (lambda text: print(text, file=sys.stderr, flush=True)) if not args.json else None
    report = evaluate_pairs(ckpt, pairs, metrics, generation, templates or {"default": template},
                            prefix=args.prefix if args.prefix is not None else trained.get("prefix") or "",
                            max_source_length=args.max_source_length or trained.get("max_source_length"),
                            too_long=args.too_long, batch_size=args.batch_size, log=log)
    paths = write_reports(report, args.out)
    if args.json:
        print(json.dumps(report.summary(), ensure_ascii=False))
        return 0
    print(report.markdown())
    print(f"wrote {paths['outputs']}, {paths['json']}, {paths['markdown']}")
    return 0
