"""Reward functions for online training: `f(images, prompts, **kwargs) -> list[float]` callables and scorers."""

from .base import RewardScorer, combine_rewards, images_to_tensor, reward_name
from .clip import AestheticMLP, AestheticScorer, CLIPScorer, PickScoreScorer, load_state_dict_file
from .compression import jpeg_compressibility, jpeg_incompressibility, jpeg_size_kb

__all__ = [
    "AestheticMLP",
    "AestheticScorer",
    "CLIPScorer",
    "PickScoreScorer",
    "RewardScorer",
    "combine_rewards",
    "images_to_tensor",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "jpeg_size_kb",
    "load_state_dict_file",
    "reward_name",
]
