"""Small functions of trl_rpo.trainer.base: per-process seeds and metrics pooled over processes."""

import numpy as np
import pytest
import torch

from trl_rpo.trainer.base import pooled_mean_and_std, process_seed


def test_process_seed_keeps_the_seed_on_process_0_and_differs_on_every_other():
    assert process_seed(42, 0) == 42
    seeds = {process_seed(42, rank) for rank in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**63 for s in seeds)


def test_pooled_mean_and_std_equal_those_of_all_values_together():
    parts = [np.array([1.0, 2.0, 4.0]), np.array([10.0]), np.array([])]  # processes of different sizes, one empty
    sums = [(p.sum(), (p**2).sum(), p.size) for p in parts]
    total, total_sq, count = (sum(s[i] for s in sums) for i in range(3))
    everything = np.concatenate(parts)
    assert pooled_mean_and_std(total, total_sq, count) == pytest.approx((everything.mean(), everything.std(ddof=1)))


def test_pooled_std_of_a_single_value_is_zero():
    assert pooled_mean_and_std(3.0, 9.0, 1) == (3.0, 0.0)


def test_record_pooled_logs_mean_and_std_and_skips_a_metric_no_process_has(tmp_path):
    from ._helpers import make_trainer

    trainer = make_trainer(tmp_path)
    trainer._record_pooled("train", "rewards/x", torch.tensor([1.0, 2.0, 6.0]), std=True)
    trainer._record_pooled("train", "margins", torch.zeros(0))
    metrics = trainer._metrics["train"]
    assert metrics["rewards/x/mean"] == [pytest.approx(3.0)]
    assert metrics["rewards/x/std"] == [pytest.approx(np.std([1.0, 2.0, 6.0], ddof=1))]
    assert "margins" not in metrics


def test_lora_initialization_depends_on_args_seed_not_on_what_the_process_drew_before(tmp_path):
    from trl_rpo.testing import tiny_sd_pipeline

    from ._helpers import make_trainer

    def lora_weights(seed, draws_before):
        pipe = tiny_sd_pipeline()  # seeds the process itself
        torch.rand(draws_before)  # another run, an evaluation, ... in the same process
        trainer = make_trainer(tmp_path / f"run{seed}-{draws_before}", pipe=pipe, seed=seed)
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora" in n}

    first, again, other = lora_weights(0, 0), lora_weights(0, 1000), lora_weights(1, 0)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
