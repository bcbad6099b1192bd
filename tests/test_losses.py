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
