"""The study's statistics on synthetic data with a known answer: coverage, null calibration, Holm."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from trl_rpo.statistics import hierarchical_bootstrap, holm_bonferroni, seed_prompt_differences

REPLICATES = 300
RESAMPLES = 1000
# Binomial tolerance of a rate estimated from REPLICATES independent replicates: 3 standard deviations
# (a correct method lands outside it with probability about 0.003).


def _tolerance(rate: float) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / REPLICATES)


def _crossed(rng, mean, seed_sd, prompt_sd, noise_sd, seeds=5, prompts=30, noises=2):
    """[seed, noise, prompt] gains: mean + seed effect + prompt effect (shared by the seeds) + image noise."""
    return (
        mean
        + seed_sd * rng.standard_normal((seeds, 1, 1))
        + prompt_sd * rng.standard_normal((1, 1, prompts))
        + noise_sd * rng.standard_normal((seeds, noises, prompts))
    )


def _coverage(mean, seed_sd, prompt_sd, noise_sd, seed=0):
    rng = np.random.default_rng(seed)
    hits = 0
    for k in range(REPLICATES):
        result = hierarchical_bootstrap(_crossed(rng, mean, seed_sd, prompt_sd, noise_sd), n_resamples=RESAMPLES,
                                        seed=k)  # fmt: skip
        hits += result.ci[0] <= mean <= result.ci[1]
    return hits / REPLICATES


@pytest.mark.parametrize(
    "seed_sd, prompt_sd",
    [(0.02, 0.0), (0.02, 0.02), (0.005, 0.05)],
    ids=["training-seed-effect-dominates", "seed-and-prompt-effects", "prompt-effect-dominates"],
)
def test_hierarchical_bootstrap_interval_covers_true_gain_at_nominal_rate(seed_sd, prompt_sd):
    coverage = _coverage(0.03, seed_sd, prompt_sd, noise_sd=0.07)
    assert abs(coverage - 0.95) <= _tolerance(0.95), coverage


def test_hierarchical_bootstrap_is_not_anticonservative_with_image_noise_only():
    coverage = _coverage(0.03, 0.0, 0.0, noise_sd=0.07, seed=1)
    assert coverage >= 0.95 - _tolerance(0.95), coverage


def test_hierarchical_bootstrap_pvalues_are_uniform_under_the_null():
    rng = np.random.default_rng(2)
    p = np.array([
        hierarchical_bootstrap(_crossed(rng, 0.0, 0.02, 0.01, 0.07), n_resamples=RESAMPLES, seed=k).p_value
        for k in range(REPLICATES)
    ])  # fmt: skip
    assert abs((p < 0.05).mean() - 0.05) <= _tolerance(0.05)
    assert stats.kstest(p, "uniform").pvalue > 0.001


def test_prompt_only_bootstrap_ignores_seed_variance_which_is_why_one_seed_is_not_enough():
    # With one training seed the interval is about that model: a seed effect it cannot see is missed.
    rng = np.random.default_rng(3)
    hits = sum(
        (r := hierarchical_bootstrap(_crossed(rng, 0.03, 0.03, 0.0, 0.07, seeds=1), n_resamples=RESAMPLES, seed=k))
        .ci[0] <= 0.03 <= r.ci[1]
        for k in range(100)
    )  # fmt: skip
    assert hits < 80


def test_hierarchical_bootstrap_pvalue_and_interval_agree():
    rng = np.random.default_rng(4)
    for k in range(40):
        result = hierarchical_bootstrap(_crossed(rng, 0.02, 0.01, 0.01, 0.05), n_resamples=500, seed=k)
        assert result.significant == (result.p_value < 0.05)


def test_hierarchical_bootstrap_gain_and_per_seed_means_are_exact():
    a = np.arange(24, dtype=float).reshape(2, 3, 4)  # [seed, noise, prompt]
    b = np.ones_like(a)
    result = hierarchical_bootstrap(a, b, n_resamples=200)
    assert result.gain == pytest.approx((a - b).mean())
    assert result.per_seed == pytest.approx((a - b).mean(axis=(1, 2)).tolist())
    assert (result.n_seeds, result.n_prompts) == (2, 4)


def test_hierarchical_bootstrap_is_reproducible_for_a_seed():
    d = _crossed(np.random.default_rng(5), 0.0, 0.02, 0.02, 0.05)
    assert hierarchical_bootstrap(d, seed=7).to_dict() == hierarchical_bootstrap(d, seed=7).to_dict()


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), "same shape"),
        (np.zeros(3), None, "seed, prompt"),
        (np.array([[0.0, np.nan]]), None, "non-finite"),
    ],
)
def test_seed_prompt_differences_rejects_bad_arrays(a, b, match):
    with pytest.raises(ValueError, match=match):
        seed_prompt_differences(a, b)


def test_hierarchical_bootstrap_needs_two_prompts():
    with pytest.raises(ValueError, match="at least 2 prompts"):
        hierarchical_bootstrap(np.zeros((3, 1)))


def test_holm_matches_hand_worked_example():
    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06 (monotone).
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_bonferroni({"primary": 0.01, "secondary": 0.5}) == pytest.approx({"primary": 0.02, "secondary": 0.5})
    assert holm_bonferroni([0.6, 0.7]) == [1.0, 1.0]


def test_holm_equals_closed_testing_with_bonferroni_local_tests():
    # Holm's procedure is the shortcut of closed testing with Bonferroni tests of each intersection hypothesis
    # (Marcus, Peritz & Gabriel, 1976): adjusted p_i = max over subsets I containing i of min(1, |I| min_I p).
    rng = np.random.default_rng(6)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=5).tolist()
        closed = [
            max(min(1.0, len(subset) * min(p[j] for j in subset))
                for r in range(1, 6) for subset in itertools.combinations(range(5), r) if i in subset)
            for i in range(5)
        ]  # fmt: skip
        assert holm_bonferroni(p) == pytest.approx(closed)


def test_holm_rejects_invalid_pvalues():
    with pytest.raises(ValueError, match="'b'"):
        holm_bonferroni({"a": 0.1, "b": 1.5})
    with pytest.raises(ValueError, match="at least one"):
        holm_bonferroni([])
