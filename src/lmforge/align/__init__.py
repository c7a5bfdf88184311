"""Alignment: reward models, DPO and PPO as tasks of the one training loop, and best-of-n sampling.

    from lmforge.align import train_reward, train_dpo, train_ppo, best_of_n, load_reward_model
"""

from lmforge.align.best_of_n import BestOfN, best_of_n
from lmforge.align.dpo import DPOConfig, dpo_loss, train_dpo
from lmforge.align.ppo import PPOConfig, train_ppo
from lmforge.align.reward import RewardConfig, train_reward
from lmforge.align.reward_model import ScalarHead, load_reward_model, save_reward_model

__all__ = ["BestOfN", "DPOConfig", "PPOConfig", "RewardConfig", "ScalarHead", "dpo_loss", "load_reward_model",
           "save_reward_model", "train_dpo", "train_ppo", "train_reward", "best_of_n"]
