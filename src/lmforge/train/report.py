"""What a run shows and leaves behind: progress (a bar on a terminal, plain lines otherwise), metrics as
JSON Lines, samples, and the loss curve as a PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lmforge.fsutil import atomic_path

METRICS = "metrics.jsonl"  # one object per evaluation
LOG = "log.jsonl"  # training loss every log_interval steps
SAMPLES = "samples.txt"
PLOT = "loss.png"


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """A tqdm bar with loss, tokens/s and ETA when stderr is a terminal; plain log lines when it is not."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.total = 0

    def start(self, total: int, initial: int) -> None:
        self.total = total
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=sys.stderr)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, flush=True)

    def advance(self, iter_num: int) -> None:
        if self.bar is not None:
            self.bar.update(iter_num - self.bar.n)

    def step(self, iter_num: int, loss: float, lr: float, tokens_per_sec: float, eta_s: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.4f}, lr {lr:.2e}, {tokens_per_sec:,.0f} tok/s", refresh=False)
            self.advance(iter_num)
        else:
            print(f"iter {iter_num}/{self.total}: loss {loss:.4f}, lr {lr:.2e}, {tokens_per_sec:,.0f} tok/s, "
                  f"ETA {format_duration(eta_s)}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunFiles:
    """The run folder's metrics, log, samples and loss curve (written by rank 0 only)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def append(self, name: str, record: dict) -> None:
        with open(self.run_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read(self, name: str) -> list[dict]:
        path = self.run_dir / name
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # blank, or the torn end of a write that a crash or a full disk cut short
                continue
        return records

    def clear(self) -> None:
        for name in (METRICS, LOG, SAMPLES, PLOT):
            (self.run_dir / name).unlink(missing_ok=True)

    def truncate_after(self, iter_num: int) -> None:
        """Drop the records past `iter_num` (written after the checkpoint a resumed run starts from) and any line
        a crash cut short."""
        for name in (METRICS, LOG):
            if not (self.run_dir / name).is_file():
                continue
            kept = [r for r in self.read(name) if r["iter"] <= iter_num]
            with atomic_path(self.run_dir / name) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def add_sample(self, iter_num: int, text: str) -> None:
        with open(self.run_dir / SAMPLES, "a", encoding="utf-8") as f:
            f.write(f"--- iter {iter_num} ---\n{text}\n\n")

    def plot(self) -> None:
        """Training loss (every log interval) and train/validation loss at each evaluation, against steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        log, metrics = self.read(LOG), self.read(METRICS)
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        if log:
            ax.plot([r["iter"] for r in log], [r["loss"] for r in log], color="#bbbbbb", lw=0.8,
                    label="training batch")
        if metrics:
            iters = [r["iter"] for r in metrics]
            ax.plot(iters, [r["train_loss"] for r in metrics], "o-", color="#1f77b4", label="train (eval)")
            ax.plot(iters, [r["val_loss"] for r in metrics], "o-", color="#d62728", label="validation")
            best = min(metrics, key=lambda r: r["val_loss"])
            ax.annotate(f"best {best['val_loss']:.3f}", (best["iter"], best["val_loss"]),
                        textcoords="offset points", xytext=(-10, 12), fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(self.run_dir.name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.run_dir / PLOT) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
