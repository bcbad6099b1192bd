import pytest
import torch

from trl_rpo.pairing import rank_pairs, select_timestep_indices


def test_best_worst_picks_the_highest_and_lowest_reward():
    pairs, ties = rank_pairs(torch.tensor([0.2, 0.9, -0.5, 0.1]))
    assert pairs == [(1, 2)] and ties == 0


def test_all_pairs_orders_every_pair_by_reward():
    pairs, ties = rank_pairs(torch.tensor([0.1, 0.3, 0.2]), mode="all")
    assert sorted(pairs) == sorted([(1, 0), (2, 0), (1, 2)]) and ties == 0


def test_ties_under_the_margin_are_skipped_and_counted():
    assert rank_pairs(torch.tensor([0.50, 0.52]), tie_margin=0.05) == ([], 1)
    pairs, ties = rank_pairs(torch.tensor([0.0, 0.01, 1.0]), mode="all", tie_margin=0.05)
    assert ties == 1 and sorted(pairs) == [(2, 0), (2, 1)]


def test_ranking_needs_two_candidates():
    with pytest.raises(ValueError, match="at least 2"):
        rank_pairs(torch.tensor([1.0]))


def test_timestep_selection_modes():
    assert select_timestep_indices(10, "all") == list(range(10))
    picked = select_timestep_indices(10, "random", 3, generator=torch.Generator().manual_seed(0))
    assert len(picked) == 3 and len(set(picked)) == 3 and all(0 <= i < 10 for i in picked)
    assert select_timestep_indices(10, "window", window=(0.5, 0.8)) == [5, 6, 7]
    assert select_timestep_indices(4, "random", 9) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="selection"):
        select_timestep_indices(4, "every-other")
