import math

import pytest
import torch
import torch.nn.functional as F

from trl_rpo import diffusion_dpo_loss

ERRS = dict(
    policy_chosen_err=torch.tensor([0.10, 0.30]),
    policy_rejected_err=torch.tensor([0.20, 0.25]),
    ref_chosen_err=torch.tensor([0.12, 0.28]),
    ref_rejected_err=torch.tensor([0.18, 0.27]),
)


def _margin(beta):
    e = ERRS
    chosen = -0.5 * beta * (e["policy_chosen_err"] - e["ref_chosen_err"])
    rejected = -0.5 * beta * (e["policy_rejected_err"] - e["ref_rejected_err"])
    return chosen, rejected, chosen - rejected


def test_sigmoid_loss_matches_the_diffusion_dpo_equation():
    losses, chosen, rejected = diffusion_dpo_loss(**ERRS, beta=50.0)
    exp_chosen, exp_rejected, margin = _margin(50.0)
    torch.testing.assert_close(chosen, exp_chosen)
    torch.testing.assert_close(rejected, exp_rejected)
    torch.testing.assert_close(losses, -F.logsigmoid(margin))


def test_sigmoid_loss_equals_reference_implementation_inside_term():
    # Diffusion-DPO train.py: inside = -0.5 * beta * ((pw - pl) - (rw - rl)).
    e = ERRS
    inside = (
        -0.5
        * 5000
        * ((e["policy_chosen_err"] - e["policy_rejected_err"]) - (e["ref_chosen_err"] - e["ref_rejected_err"]))
    )
    losses, _, _ = diffusion_dpo_loss(**ERRS)  # default beta 5000
    torch.testing.assert_close(losses, -F.logsigmoid(inside))


def test_loss_is_ln2_when_policy_equals_reference():
    err = torch.rand(4)
    other = torch.rand(4)
    losses, chosen, rejected = diffusion_dpo_loss(err, other, err.clone(), other.clone())
    torch.testing.assert_close(losses, torch.full((4,), math.log(2)))
    assert torch.all(chosen == 0) and torch.all(rejected == 0)


def test_hinge_loss_is_relu_of_one_minus_margin():
    losses, _, _ = diffusion_dpo_loss(**ERRS, beta=50.0, loss_type="hinge")
    torch.testing.assert_close(losses, torch.relu(1 - _margin(50.0)[2]))


def test_ipo_loss_regresses_margin_to_one_half():
    losses, _, _ = diffusion_dpo_loss(**ERRS, beta=50.0, loss_type="ipo")
    torch.testing.assert_close(losses, (_margin(50.0)[2] - 0.5) ** 2)


def test_sft_loss_is_the_chosen_denoising_error_and_needs_no_reference():
    losses, chosen, rejected = diffusion_dpo_loss(
        ERRS["policy_chosen_err"], ERRS["policy_rejected_err"], None, None, loss_type="sft"
    )
    torch.testing.assert_close(losses, ERRS["policy_chosen_err"])
    assert chosen is None and rejected is None


def test_combined_loss_is_the_weighted_sum_of_its_terms_with_the_first_terms_rewards():
    from trl_rpo import combined_diffusion_dpo_loss

    losses, chosen, rejected = combined_diffusion_dpo_loss(**ERRS, loss_types=["sigmoid", "sft"],
                                                           loss_weights=[1.0, 300.0], beta=50.0)  # fmt: skip
    exp_chosen, exp_rejected, margin = _margin(50.0)
    torch.testing.assert_close(losses, -F.logsigmoid(margin) + 300.0 * ERRS["policy_chosen_err"])
    torch.testing.assert_close(chosen, exp_chosen)
    torch.testing.assert_close(rejected, exp_rejected)


def test_combined_loss_weights_default_to_one_and_mapo_terms_use_mapo_beta():
    from trl_rpo import combined_diffusion_dpo_loss, mapo_loss

    losses, chosen, _ = combined_diffusion_dpo_loss(**ERRS, loss_types=["hinge", "mapo"], beta=50.0, mapo_beta=0.3)
    mapo, _, _ = mapo_loss(ERRS["policy_chosen_err"], ERRS["policy_rejected_err"], beta=0.3)
    torch.testing.assert_close(losses, torch.relu(1 - _margin(50.0)[2]) + mapo)
    torch.testing.assert_close(chosen, _margin(50.0)[0])  # the hinge term's rewards: it comes first


def test_combined_loss_of_one_type_is_that_loss():
    from trl_rpo import combined_diffusion_dpo_loss

    for loss_type in ("sigmoid", "ipo"):
        for a, b in zip(combined_diffusion_dpo_loss(**ERRS, loss_types=loss_type, beta=50.0),
                        diffusion_dpo_loss(**ERRS, beta=50.0, loss_type=loss_type)):  # fmt: skip
            torch.testing.assert_close(a, b)


def test_combined_loss_refuses_weights_that_do_not_match_the_types():
    from trl_rpo import combined_diffusion_dpo_loss

    with pytest.raises(ValueError, match="2 loss types"):
        combined_diffusion_dpo_loss(**ERRS, loss_types=["sigmoid", "sft"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="empty"):
        combined_diffusion_dpo_loss(**ERRS, loss_types=[])


def test_rewards_are_detached_and_loss_has_gradient():
    policy = ERRS["policy_chosen_err"].clone().requires_grad_(True)
    losses, chosen, _ = diffusion_dpo_loss(
        policy, ERRS["policy_rejected_err"], ERRS["ref_chosen_err"], ERRS["ref_rejected_err"]
    )
    losses.sum().backward()
    assert policy.grad is not None and not chosen.requires_grad
    # Lowering the chosen error must lower the loss: the gradient is positive.
    assert torch.all(policy.grad > 0)


def test_unknown_loss_type_is_rejected():
    with pytest.raises(ValueError, match="unknown loss_type"):
        diffusion_dpo_loss(**ERRS, loss_type="nope")


def test_preference_losses_require_reference_errors():
    with pytest.raises(ValueError, match="needs the reference"):
        diffusion_dpo_loss(ERRS["policy_chosen_err"], ERRS["policy_rejected_err"], None, None, loss_type="sigmoid")


def test_stepwise_loss_matches_its_equation_inside_the_clip_range():
    from trl_rpo.losses import stepwise_dpo_loss

    pw, pl = torch.tensor([-1.00, -2.0]), torch.tensor([-1.05, -2.0])
    rw, rl = torch.tensor([-1.02, -2.0]), torch.tensor([-1.00, -2.01])
    losses, chosen, rejected = stepwise_dpo_loss(pw, pl, rw, rl, beta=10.0, clip_range=0.1)
    torch.testing.assert_close(chosen, 10 * (pw - rw))
    torch.testing.assert_close(rejected, 10 * (pl - rl))
    torch.testing.assert_close(losses, -F.logsigmoid(10 * ((pw - rw) - (pl - rl))))


def test_stepwise_loss_clips_ratios_and_stops_their_gradient():
    from trl_rpo.losses import stepwise_dpo_loss

    policy = torch.tensor([0.5, 0.01], requires_grad=True)  # log-ratios 0.5 (clipped) and 0.01 (not)
    losses, chosen, _ = stepwise_dpo_loss(policy, torch.zeros(2), torch.zeros(2), torch.zeros(2), beta=1.0)
    torch.testing.assert_close(chosen[0], torch.tensor(math.log(1.1)))
    losses.sum().backward()
    assert policy.grad[0] == 0 and policy.grad[1] < 0


def test_stepwise_loss_is_ln2_when_policy_equals_reference():
    from trl_rpo.losses import stepwise_dpo_loss

    logp = torch.randn(3)
    losses, _, _ = stepwise_dpo_loss(logp, logp + 1, logp.clone(), logp + 1)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2)))


# -- MaPO ------------------------------------------------------------------------------------------------------


def test_mapo_matches_hand_computed_values():
    from trl_rpo.losses import mapo_loss

    chosen_err, rejected_err = torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.3])
    g, beta, T = 0.5, 0.1, 1000
    # By hand for pair 0: s(0.2) = 0.1 / (e^0.1 - 1), s(0.4) = 0.2 / (e^0.2 - 1).
    s_w0, s_l0 = 0.1 / (math.exp(0.1) - 1), 0.2 / (math.exp(0.2) - 1)
    s_w1, s_l1 = 0.25 / (math.exp(0.25) - 1), 0.15 / (math.exp(0.15) - 1)
    expected = [
        0.2 - beta * math.log(1 / (1 + math.exp(-T * (s_w0 - s_l0)))),
        0.5 - beta * math.log(1 / (1 + math.exp(-T * (s_w1 - s_l1)))),
    ]
    losses, chosen, rejected = mapo_loss(chosen_err, rejected_err, beta=beta, snr_value=g, num_train_timesteps=T)
    assert losses.tolist() == pytest.approx(expected, rel=1e-5)
    assert chosen.tolist() == pytest.approx([T * s_w0, T * s_w1], rel=1e-5)
    assert rejected.tolist() == pytest.approx([T * s_l0, T * s_l1], rel=1e-5)
    # The batch mean is MaPO's `model_losses_w.mean() - beta_mapo * ratio.mean()`.
    ratio = F.logsigmoid(T * (chosen - rejected) / T)
    assert losses.mean().item() == pytest.approx((chosen_err.mean() - beta * ratio.mean()).item(), rel=1e-5)


def test_mapo_needs_no_reference_and_is_reachable_through_diffusion_dpo_loss():
    from trl_rpo.losses import REFERENCE_FREE_LOSS_TYPES, mapo_loss

    chosen_err, rejected_err = torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.3])
    direct = mapo_loss(chosen_err, rejected_err, beta=0.3, snr_value=0.7, num_train_timesteps=500)
    via = diffusion_dpo_loss(chosen_err, rejected_err, None, None, beta=0.3, loss_type="mapo", mapo_snr_value=0.7,
                             num_train_timesteps=500)  # fmt: skip
    for a, b in zip(direct, via):
        torch.testing.assert_close(a, b)
    assert "mapo" in REFERENCE_FREE_LOSS_TYPES


def test_mapo_score_is_one_at_zero_error_and_decreasing():
    from trl_rpo.losses import mapo_score

    scores = mapo_score(torch.tensor([0.0, 1e-9, 0.1, 1.0, 10.0]))
    assert scores[0].item() == pytest.approx(1.0) and scores[1].item() == pytest.approx(1.0)
    assert torch.all(scores[1:] <= scores[:-1]) and scores[-1] < scores[2] < scores[1]
    assert torch.isfinite(scores).all()


def test_mapo_gradient_lowers_the_chosen_error_and_raises_the_rejected_one():
    from trl_rpo.losses import mapo_loss

    chosen_err = torch.tensor([0.3], requires_grad=True)
    rejected_err = torch.tensor([0.3], requires_grad=True)
    mapo_loss(chosen_err, rejected_err)[0].sum().backward()
    assert chosen_err.grad.item() > 0 and rejected_err.grad.item() < 0


# -- GRPO ------------------------------------------------------------------------------------------------------


def test_group_advantages_by_hand():
    from trl_rpo.losses import group_advantages

    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0])  # two groups of 2: (1, 3) and a tie (5, 5)
    std = math.sqrt(2.0)  # unbiased std of (1, 3)
    adv = group_advantages(rewards, 2, "group", eps=0.0 + 1e-4)
    assert adv.tolist() == pytest.approx([-1 / (std + 1e-4), 1 / (std + 1e-4), 0.0, 0.0], rel=1e-6)
    assert group_advantages(rewards, 2, "none").tolist() == [-1.0, 1.0, 0.0, 0.0]
    batch_std = rewards.std().item()
    assert group_advantages(rewards, 2, "batch", batch_std=2.0).tolist() == pytest.approx(
        [-1 / 2.0001, 1 / 2.0001, 0.0, 0.0], rel=1e-6
    )  # the whole batch's std over every process, when the caller has it
    assert group_advantages(rewards, 2, "batch").tolist() == pytest.approx(
        [-1 / (batch_std + 1e-4), 1 / (batch_std + 1e-4), 0.0, 0.0], rel=1e-6
    )
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(rewards, 3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(rewards, 2, "rank")


def test_grpo_loss_on_policy_is_minus_the_advantage_with_no_clipping():
    from trl_rpo.losses import grpo_clipped_loss

    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    losses, low, high = grpo_clipped_loss(logp, logp.detach(), adv, epsilon=0.2, kl=torch.zeros(3), beta=0.1)
    assert losses.tolist() == pytest.approx((-adv).tolist())
    assert low.tolist() == [0.0, 0.0, 0.0] and high.tolist() == [0.0, 0.0, 0.0]
    losses.sum().backward()
    assert logp.grad.tolist() == pytest.approx((-adv).tolist())  # d(-rho A)/dlogp = -A at rho = 1


def test_grpo_loss_clips_by_hand_and_flags_trl_low_and_high_clips():
    from trl_rpo.losses import grpo_clipped_loss

    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1]))  # ratios
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    losses, low, high = grpo_clipped_loss(logp, old, adv, epsilon=0.2)
    # ratio 1.5, A>0: min(1.5, 1.2) = 1.2 (clipped high); A<0: min(-1.5, -1.2) = -1.5 (not clipped)
    # ratio 0.5, A<0: min(-0.5, -0.8) = -0.8 (clipped low); ratio 1.1 inside the range.
    assert losses.tolist() == pytest.approx([-1.2, 1.5, 0.8, -1.1], rel=1e-6)
    assert high.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert low.tolist() == [0.0, 0.0, 1.0, 0.0]


def test_grpo_epsilon_high_decouples_the_upper_clip():
    from trl_rpo.losses import grpo_clipped_loss

    logp = torch.log(torch.tensor([1.25, 0.75]))
    adv = torch.tensor([1.0, -1.0])
    losses, low, high = grpo_clipped_loss(logp, torch.zeros(2), adv, epsilon=0.2, epsilon_high=0.28)
    assert losses.tolist() == pytest.approx([-1.25, 0.8], rel=1e-6)  # 1.25 < 1.28: not clipped; 0.75 < 0.8: clipped
    assert high.tolist() == [0.0, 0.0] and low.tolist() == [0.0, 1.0]


def test_grpo_adds_beta_times_the_given_kl():
    from trl_rpo.losses import grpo_clipped_loss

    logp = torch.tensor([-1.0, -2.0])
    kl = torch.tensor([0.3, 0.05])
    losses, _, _ = grpo_clipped_loss(logp, logp, torch.zeros(2), kl=kl, beta=2.0)
    assert losses.tolist() == pytest.approx([0.6, 0.1], rel=1e-6)
    assert grpo_clipped_loss(logp, logp, torch.zeros(2), kl=kl, beta=0.0)[0].tolist() == [0.0, 0.0]


def test_gaussian_kl_is_the_exact_kl_per_dimension_of_equal_variance_steps():
    from torch.distributions import Normal, kl_divergence

    from trl_rpo.diffusion import gaussian_kl

    generator = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, generator=generator)
    std = torch.tensor([0.5, 0.1, 2.0]).reshape(3, 1, 1, 1)
    exact = kl_divergence(Normal(mean, std.expand_as(mean)), Normal(ref, std.expand_as(ref))).sum(dim=(1, 2, 3))
    assert gaussian_kl(mean, ref, std).tolist() == pytest.approx((exact / 32).tolist(), rel=1e-5)
    assert gaussian_kl(mean, mean, std).tolist() == [0.0, 0.0, 0.0]


def test_gaussian_kl_is_not_the_k3_estimator_of_a_mean_log_ratio_which_is_d_times_smaller():
    # The review's fault: k3 on per-dimension-mean log-probabilities makes the KL term about D times too weak.
    from trl_rpo.diffusion import gaussian_kl, gaussian_log_prob

    generator = torch.Generator().manual_seed(1)
    d = 4096
    mean, std = torch.zeros(1, d), torch.ones(1, 1)
    ref = mean + 0.1 * torch.randn(1, d, generator=generator)
    x = mean + std * torch.randn(64, d, generator=generator)  # samples of the policy
    delta = gaussian_log_prob(x, ref, std) - gaussian_log_prob(x, mean, std)
    k3 = (torch.exp(delta) - delta - 1).mean()
    analytic = gaussian_kl(mean, ref, std).item()
    assert analytic == pytest.approx(0.005, rel=0.1)  # 0.1^2 / 2 per dimension
    assert k3.item() < analytic / 100


def test_pooled_mean_loss_makes_the_process_average_the_gradient_of_the_mean_over_all_items():
    from trl_rpo.losses import pooled_mean_loss

    weight = torch.tensor([0.3, -0.7, 1.1], requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    # Three processes with 5, 1 and 0 items; the one with none runs a placeholder item weighted zero.
    items = [torch.randn(n, 3, generator=generator) for n in (5, 1, 1)]
    weights = [1.0, 1.0, 0.0]
    total = 6

    def losses_of(x):
        return (weight * x).sum(dim=-1) ** 2  # any per-item loss of a shared parameter

    def ddp_gradient(reduce):  # DDP: the average over processes of each process's own gradient
        grads = [torch.autograd.grad(reduce(losses_of(x) * w), weight)[0] for x, w in zip(items, weights)]
        return torch.stack(grads).mean(0)

    (one_process,) = torch.autograd.grad(losses_of(torch.cat(items[:2])).mean(), weight)
    pooled = ddp_gradient(lambda losses: pooled_mean_loss(losses, total, num_processes=3))
    torch.testing.assert_close(pooled, one_process)
    # The plain local mean averages per-process means instead: the lone item weighs as much as the five, and the
    # process without items divides everyone's gradient by 3 / 2.
    naive = ddp_gradient(torch.mean)
    assert not torch.allclose(naive, one_process, rtol=1e-2)


def test_pooled_mean_loss_by_hand_and_with_one_process_or_no_item():
    from trl_rpo.losses import pooled_mean_loss

    losses = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    # 3 local items of 12 over 4 processes: sum 9 x 4 / 12.
    assert pooled_mean_loss(losses, 12, 4).item() == pytest.approx(3.0)
    assert pooled_mean_loss(losses, 3, 1).item() == pytest.approx(losses.mean().item())
    nothing = pooled_mean_loss(losses, 0, 2)  # no process has an item: zero, still differentiable
    assert nothing.item() == 0.0
    nothing.backward()
    assert losses.grad.tolist() == [0.0, 0.0, 0.0]
