"""Training: one loop (train/loop.py) for every task, one config system (train/config.py), checkpoints.

    from lmforge.train import TrainConfig, train
    result = train(TrainConfig.load("configs/shakespeare-char-cpu.yaml", {"max_iters": 500}))

    from lmforge.train import FinetuneConfig, finetune
    result = finetune(FinetuneConfig.load("configs/samsum-cpu.yaml", ["--max_minutes", "10"]))
"""

from lmforge.train.lm import DataConfig, ModelShape, TrainConfig, train
from lmforge.train.loop import RunResult
from lmforge.train.pairs import FinetuneConfig, finetune

__all__ = ["DataConfig", "FinetuneConfig", "ModelShape", "RunResult", "TrainConfig", "finetune", "train"]
