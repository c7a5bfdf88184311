"""Summarize from feedback on SAMSum (Stiennon et al. 2020, at this machine's scale): SFT, a scripted labeler's
rankings, a reward model, then PPO, DPO and best-of-4, all reported on the validation split.

    LMFORGE_DATA=../shared/data flock /tmp/lmforge-bench.lock python bench/bench_align_samsum.py \\
        --sft runs/samsum-cpu/best --dialogues 2000 --minutes 20

    sft       the SAMSum recipe's seq2seq model (configs/samsum-cpu.yaml; --sft FOLDER reuses a trained one, else
              it is trained here for --sft-minutes)
    rankings  K = 4 sampled summaries (top_p 0.9) for each of --dialogues training dialogues, ranked by the
              scripted labeler, ROUGE-L F against the reference summary -> rankings.jsonl (prompt + responses,
              best first: K(K-1)/2 weighted pairs each); the last 10 % of the dialogues are held out
    reward    a reward model started from the SFT model, trained on the rankings; accuracy on the held-out pairs
    dpo       DPO from the SFT model on the same pairs
    ppo       PPO from the SFT model against the reward model on the training dialogues, in --segments segments;
              after each, the labeler's score (ROUGE-L of samples against the references) and the KL to SFT on
              validation dialogues: the curve of the true score against KL (where optimizing the proxy stops
              helping)
    report    ROUGE-1/2/L on --val-examples validation dialogues (beam 4) of SFT, best-of-4 (sampled, picked by the
              reward model), DPO and PPO, and each policy's KL to SFT (a Monte Carlo estimate on its own samples)

Writes bench/results/align_samsum_cpu.json and align_samsum_cpu_kl.png. Each stage's budget is --minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
root = here.parent
sys.path.insert(0, str(root / "src"))
sys.path.insert(0, str(here))

import torch
from machine_info import cpu_flags, cpu_name

TEMPLATE = "summarize: {dialogue}"
K = 4
SAMPLING = {"do_sample": True, "top_p": 0.9, "max_new_tokens": 60, "truncate": "left"}
BEAM = {"num_beams": 4, "max_new_tokens": 60, "length_penalty": 2.0, "no_repeat_ngram_size": 3}


def rouge_l(prediction: str, reference: str) -> float:
    from lmforge.evaluate.text_metrics import rouge

    return rouge([prediction], [reference])["rougeL"]


def samples(model, tokenizer, prompts: list[str], n: int, seed: int) -> list[list[str]]:
    from lmforge.generate.api import generate

    out = []
    for start in range(0, len(prompts), 16):
        result = generate(model, prompts[start:start + 16], tokenizer=tokenizer, num_return_sequences=n, seed=seed + start,
                          **SAMPLING)
        out += [[c.text.strip() for c in comps] for comps in result.completions]
    return out


def kl_to_sft(policy, sft, tokenizer, prompts: list[str], seed: int) -> float:
    """Mean over prompts of log pi(y|x) - log sft(y|x) for y sampled from pi: a Monte Carlo KL(pi || sft)."""
    from lmforge.data.pairs import PairEncoder
    from lmforge.losses import sequence_logprobs

    responses = [s[0] for s in samples(policy, tokenizer, prompts, 1, seed)]
    encoder = PairEncoder(tokenizer, True, policy.config.family, 320, 80)
    pairs, _ = encoder.encode(prompts, [r or "." for r in responses], [str(i) for i in range(len(prompts))], "kl")
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(pairs), 16):
            batch = encoder.collate(pairs[start:start + 16])
            batch["decoder_input_ids"] = policy.decoder_inputs_from_labels(batch["labels"])
            total += (sequence_logprobs(policy, batch) - sequence_logprobs(sft, batch)).sum().item()
    return total / len(pairs)


def rouge_of(policy, tokenizer, prompts: list[str], references: list[str]) -> dict:
    from lmforge.data.pairs import LengthReport, PairEncoder
    from lmforge.evaluate.run import generate_texts
    from lmforge.evaluate.text_metrics import rouge

    encoder = PairEncoder(tokenizer, True, policy.config.family, 320, 80)
    sources = encoder.sources(prompts, [str(i) for i in range(len(prompts))], LengthReport())
    outputs = generate_texts(policy, tokenizer, sources, BEAM, batch_size=16)
    return rouge(outputs, references)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", help="a trained SAMSum model folder (else one is trained here)")
    parser.add_argument("--sft-minutes", type=float, default=60)
    parser.add_argument("--dialogues", type=int, default=2000)
    parser.add_argument("--val-examples", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=20, help="budget of the reward, DPO and PPO stages each")
    parser.add_argument("--segments", type=int, default=5, help="PPO evaluations for the score-against-KL curve")
    parser.add_argument("--work", default="runs/align-samsum")
    args = parser.parse_args()
    if not os.environ.get("LMFORGE_DATA"):
        raise SystemExit("LMFORGE_DATA is not set to the folder of public data sets (e.g. ../shared/data)")
    from lmforge.align import best_of_n, train_dpo, train_ppo, train_reward
    from lmforge.align.reward import evaluate_reward_model
    from lmforge.align.reward_model import load_reward_model
    from lmforge.data.pairs import load_pairs
    from lmforge.hub.hf import load_folder
    from lmforge.train.pairs import finetune

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    began, load_before = time.time(), os.getloadavg()
    record: dict = {"command": "python bench/bench_align_samsum.py " + " ".join(sys.argv[1:])}
    sft_dir = Path(args.sft) if args.sft else None
    if sft_dir is None:
        shutil.rmtree(work / "sft", ignore_errors=True)
        sft_dir = finetune({**yaml_config(root / "configs" / "samsum-cpu.yaml"), "out_dir": str(work / "sft"),
                            "max_minutes": args.sft_minutes}, quiet=True).best_dir
    sft_model, tokenizer = load_folder(sft_dir)
    train = load_pairs("samsum:train").head(args.dialogues)
    val = load_pairs("samsum:validation").head(args.val_examples)
    train_prompts, val_prompts = train.prompts(TEMPLATE), val.prompts(TEMPLATE)

    # the scripted labeler's rankings
    rankings = work / "rankings.jsonl"
    drawn = samples(sft_model, tokenizer, train_prompts, K, seed=0)
    rows = []
    for prompt, reference, candidates in zip(train_prompts, train.targets, drawn):
        ranked = sorted(dict.fromkeys(c for c in candidates if c), key=lambda c: -rouge_l(c, reference))
        if len(ranked) >= 2:
            rows.append({"prompt": prompt, "responses": ranked})
    held = max(1, len(rows) // 10)
    rankings.write_text("".join(json.dumps(r) + "\n" for r in rows[:-held]), encoding="utf-8")
    (work / "rankings-held-out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-held:]), encoding="utf-8")
    record["rankings"] = {"dialogues": len(rows), "held_out": held}

    for stage in ("reward", "dpo"):
        shutil.rmtree(work / stage, ignore_errors=True)
    common = {"max_length": 320, "max_response_length": 80, "batch_size": 8, "max_iters": None,
              "max_minutes": args.minutes, "device": "cpu"}
    rm = train_reward({**common, "out_dir": str(work / "reward"), "init_from": str(sft_dir),
                       "data.train": str(rankings), "data.val": str(work / "rankings-held-out.jsonl"),
                       "learning_rate": 3e-5, "eval_interval": 100}, quiet=True)
    rm_model, rm_tok = load_reward_model(rm.best_dir)
    record["reward"] = {"held_out": evaluate_reward_model(rm_model, rm_tok, str(work / "rankings-held-out.jsonl"),
                                                          320, 80), "steps": rm.iters}
    dpo = train_dpo({**common, "out_dir": str(work / "dpo"), "init_from": str(sft_dir), "data.train": str(rankings),
                     "data.val": str(work / "rankings-held-out.jsonl"), "learning_rate": 1e-5, "beta": 0.1,
                     "eval_interval": 100}, quiet=True)
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in train_prompts), encoding="utf-8")
    curve = []
    ppo_dir = work / "ppo"
    shutil.rmtree(ppo_dir, ignore_errors=True)
    steps_per_segment = None
    for segment in range(args.segments):
        settings = {"out_dir": str(ppo_dir), "init_from": str(sft_dir), "reward_model": str(rm.best_dir),
                    "prompts": str(prompts_file), "rollout_batch_size": 16, "ppo_epochs": 2, "num_minibatches": 2,
                    "max_new_tokens": 60, "top_p": 0.9, "learning_rate": 1e-5, "kl_coef": 0.05, "device": "cpu",
                    "max_iters": None, "max_minutes": args.minutes * (segment + 1) / args.segments}
        result = train_ppo(settings, resume=segment > 0, quiet=True)
        steps_per_segment = result.iters
        policy = load_folder(result.last_dir).model
        labeler = [rouge_l(s[0], r) for s, r in zip(samples(policy, tokenizer, val_prompts, 1, seed=1), val.targets)]
        curve.append({"iter": result.iters, "kl": kl_to_sft(policy, sft_model, tokenizer, val_prompts, seed=2),
                      "labeler_rougeL": sum(labeler) / len(labeler)})
    record["ppo_curve"], record["ppo_steps"] = curve, steps_per_segment

    report = {}
    for name, folder in (("sft", sft_dir), ("dpo", dpo.best_dir), ("ppo", ppo_dir / "last")):
        policy = load_folder(folder).model
        report[name] = {"rouge": rouge_of(policy, tokenizer, val_prompts, val.targets),
                        "kl_to_sft": 0.0 if name == "sft" else kl_to_sft(policy, sft_model, tokenizer, val_prompts, 3)}
    picks = best_of_n(load_folder(sft_dir), rm_model, val_prompts, n=K, reward_tokenizer=rm_tok, seed=4, **SAMPLING)
    from lmforge.evaluate.text_metrics import rouge

    report["best_of_4"] = {"rouge": rouge([p.best.text.strip() for p in picks], val.targets)}
    record["validation"] = report
    record["machine"] = {"cpu": cpu_name(), "flags": cpu_flags(), "torch": torch.__version__,
                         "load_average_before": load_before, "load_average_after": os.getloadavg()}
    record["elapsed_s"] = round(time.time() - began, 1)
    (here / "results" / "align_samsum_cpu.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    plot(curve, here / "results" / "align_samsum_cpu_kl.png")
    print(json.dumps(report, indent=2))


def yaml_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def plot(curve: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([c["kl"] for c in curve], [c["labeler_rougeL"] for c in curve], marker="o")
    ax.set_xlabel("KL(PPO policy || SFT), nats per summary")
    ax.set_ylabel("labeler score (ROUGE-L F)")
    ax.set_title("SAMSum: the true score against KL over PPO")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
