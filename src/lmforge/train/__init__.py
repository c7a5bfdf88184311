"""Training: the config, the loop (scratch, fine-tuning, resume, torchrun), checkpoints.

    from lmforge.train import TrainConfig, load_config, train
    result = train(load_config("configs/shakespeare-char-cpu.yaml", {"max_iters": 500}))
"""

from lmforge.train.config import DataConfig, ModelShape, TrainConfig, load_config
from lmforge.train.trainer import TrainResult, train

__all__ = ["DataConfig", "ModelShape", "TrainConfig", "TrainResult", "load_config", "train"]
