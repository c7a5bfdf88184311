import json

import pytest

from lmforge.train import TrainConfig, train


@pytest.mark.slow
def test_shakespeare_char_cpu_recipe_beats_nanogpt_quality(tmp_path, shared_data, monkeypatch):
    """The full recipe (2000 steps, a few minutes on 2 cores): below the 1.86 target (1.68 measured)."""
    monkeypatch.setenv("LMFORGE_DATA", str(shared_data))
    cfg = TrainConfig.load("configs/shakespeare-char-cpu.yaml", {"out_dir": str(tmp_path / "run"), "sample_tokens": 0})
    result = train(cfg, quiet=True)
    assert result.iters == 2000 and result.stopped == "max_iters"
    final = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["val_loss"] <= 1.86
    assert (result.best_dir / "tokenizer.json").is_file()
