import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_rpo import TailorPOConfig, TailorPOTrainer
from trl_rpo.diffusion import ddim_step_with_logprob
from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline, tiny_sdxl_pipeline

from ._helpers import FAST_ARGS, brightness, fake_hub

PROMPTS = Dataset.from_dict({"prompt": ["a red square", "a blue circle", "a green triangle", "a yellow star"]})



class DifferentiableBrightness:
    """A scorer object with a differentiable tensor path, as TailorPO-G needs."""

    name = "diff_brightness"
    differentiable = True

    def __call__(self, images, prompts, **kwargs):
        return brightness(images, prompts)

    def score_tensor(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


def tailorpo_config(output_dir, **overrides):
    defaults = dict(FAST_ARGS, max_steps=1, num_inference_steps=4, guidance_scale=2.0, timestep_selection="all")
    return TailorPOConfig(output_dir=str(output_dir), **{**defaults, **overrides})


def make_trainer(output_dir, sdxl=False, reward_funcs=brightness, **overrides):
    pipe = tiny_sdxl_pipeline() if sdxl else tiny_sd_pipeline()
    return TailorPOTrainer(
        model=pipe,
        reward_funcs=reward_funcs,
        args=tailorpo_config(output_dir, **overrides),
        train_dataset=PROMPTS,
        peft_config=tiny_lora_config(),
    )


def _logs(trainer):
    return [e for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_training_runs_and_logs_reward_and_pair_metrics(tmp_path, sdxl):
    trainer = make_trainer(tmp_path, sdxl=sdxl, max_steps=2)
    trainer.train()
    first = _logs(trainer)[0]
    for key in (
        "rewards/brightness/mean",
        "rewards/brightness/std",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "pairs/count",
        "pairs/tie_fraction",
        "time/sampling_s",
        "time/training_s",
    ):
        assert key in first, key
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at the first step
    # 2 prompts x 4 selected steps, one best/worst pair each unless the candidates' (uint8-quantized) images tie.
    # The tiny SDXL's scheduler config (Euler) has no set_alpha_to_one, so its last DDIM step is deterministic and
    # not paired.
    steps = 3 if sdxl else 4
    assert first["pairs/count"] == pytest.approx(2 * steps * (1 - first["pairs/tie_fraction"]))
    assert first["pairs/count"] >= steps


def test_candidates_share_their_parent_and_were_drawn_from_it(tmp_path):
    trainer = make_trainer(tmp_path, num_candidates=3)
    torch.manual_seed(0)
    pairs = trainer.sample_pairs(["a red square", "a blue circle"])
    assert pairs.shared_parent and len(pairs) == 8
    assert torch.equal(pairs.parent_chosen, pairs.parent_rejected)
    assert not torch.allclose(pairs.chosen, pairs.rejected)
    cond, uncond = trainer.encode_conditioning(["a red square", "a blue circle"])
    c = {k: v[pairs.prompt_index] for k, v in cond.items()}
    u = {k: v[pairs.prompt_index] for k, v in uncond.items()}
    with torch.no_grad():
        eps = trainer.guided_prediction(trainer.model, pairs.parent_chosen, pairs.timesteps, c, u)
    _, _, mean, std = ddim_step_with_logprob(trainer.sample_scheduler, eps, pairs.timesteps, pairs.parent_chosen, 1.0)
    for child in (pairs.chosen, pairs.rejected):
        z = (child - mean) / std  # a draw from this parent's Gaussian is standard normal around its mean
        assert z.std().item() == pytest.approx(1.0, abs=0.15) and abs(z.mean().item()) < 0.15


def test_ranking_pairs_the_best_with_the_worst_candidate(tmp_path, monkeypatch):
    import trl_rpo.trainer.online as module  # where the sampler step of the online trainers lives

    trainer = make_trainer(tmp_path, num_candidates=4)
    drawn, real_step = [], module.ddim_step_with_logprob

    def recording_step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        drawn.append(out[0].clone())
        return out

    monkeypatch.setattr(module, "ddim_step_with_logprob", recording_step)
    fixed = torch.tensor([0.3, 0.9, 0.1, 0.5])  # candidate 1 is best, candidate 2 worst, at every step
    original = trainer.step_rewards

    def fixed_rewards(images, prompts):
        if images.shape[0] == 4:
            return fixed.clone(), {"fixed": fixed.clone()}
        return original(images, prompts)

    trainer.step_rewards = fixed_rewards
    pairs = trainer.sample_pairs(["a red square"])
    assert len(pairs) == 4 and len(drawn) == 4 * 4  # 4 steps, 4 candidates drawn at each
    for step in range(4):
        assert torch.equal(pairs.chosen[step], drawn[4 * step + 1][0])
        assert torch.equal(pairs.rejected[step], drawn[4 * step + 2][0])


def test_one_optimizer_step_raises_the_chosen_log_ratio_over_the_rejected(tmp_path):
    trainer = make_trainer(tmp_path, clip_range=None)
    prompts = ["a red square", "a blue circle"]
    torch.manual_seed(0)
    pairs = trainer.sample_pairs(prompts)
    cond, uncond = trainer.encode_conditioning(prompts)

    def margin():
        with torch.no_grad():
            pc, pr = trainer.step_log_probs(trainer.model, pairs, cond, uncond)
            with trainer.reference_model() as ref:
                rc, rr = trainer.step_log_probs(ref, pairs, cond, uncond)
        return ((pc - rc) - (pr - rr)).mean().item()

    before = margin()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-2)
    pc, pr = trainer.step_log_probs(trainer.model, pairs, cond, uncond)
    with torch.no_grad(), trainer.reference_model() as ref:
        rc, rr = trainer.step_log_probs(ref, pairs, cond, uncond)
    losses, _, _ = trainer.preference_loss(pc, pr, rc, rr)
    losses.mean().backward()
    optimizer.step()
    assert before == pytest.approx(0.0, abs=1e-6)
    assert margin() > before


def test_training_on_brightness_raises_mean_reward_on_held_out_seeds(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=12, learning_rate=3e-3, num_candidates=4, beta=50.0, clip_range=None)

    def held_out_brightness():
        gen = torch.Generator().manual_seed(1234)
        images = trainer.pipeline(
            ["a red square", "a blue circle"] * 2,
            num_inference_steps=4,
            guidance_scale=2.0,
            generator=gen,
            output_type="pil",
        ).images
        return float(np.mean(brightness(images, None)))

    before = held_out_brightness()
    trainer.train()
    after = held_out_brightness()
    assert after > before


def test_final_pairing_labels_whole_trajectories_by_their_final_reward(tmp_path):
    trainer = make_trainer(tmp_path, pairing="final", max_steps=1)
    torch.manual_seed(0)
    pairs = trainer.sample_pairs(["a red square", "a blue circle"])
    assert not pairs.shared_parent
    assert len(pairs) == 8  # 4 selected steps x 2 prompts: continuous brightness does not tie
    assert ((pairs.parent_chosen - pairs.parent_rejected).flatten(1).abs().amax(1) > 0).all()  # distinct parents
    final = pairs.final_rewards["brightness"]  # prompt j's two trajectories at j and j + 2
    for j in range(2):
        steps = (pairs.prompt_index == j).nonzero().flatten()
        steps = steps[pairs.timesteps[steps].argsort(descending=True)]  # in sampling order
        for k, n in zip(steps[:-1], steps[1:]):  # each side's child is its next parent: one whole trajectory each
            assert torch.equal(pairs.chosen[k], pairs.parent_chosen[n])
            assert torch.equal(pairs.rejected[k], pairs.parent_rejected[n])
        # ... and the chosen one ends in the brighter final image.
        last = steps[-1]
        ends = trainer.decode(torch.stack([pairs.chosen[last], pairs.rejected[last]]))
        chosen_end, rejected_end = trainer.step_rewards(ends, ["p", "p"])[0].tolist()
        high, low = max(final[j], final[j + 2]).item(), min(final[j], final[j + 2]).item()
        assert high - low > 1e-3  # (about 5e-3 here; the ends score exactly as the rollout's final images did)
        assert (chosen_end, rejected_end) == pytest.approx((high, low), abs=1e-4)
    trainer.train()
    assert math.isfinite(_logs(trainer)[0]["loss"])


def test_final_pairing_skips_the_deterministic_last_step_of_a_config_without_set_alpha_to_one(tmp_path):
    from diffusers import DDIMScheduler

    pipe = tiny_sd_pipeline()
    config = {k: v for k, v in pipe.scheduler.config.items() if k != "set_alpha_to_one"}
    pipe.scheduler = DDIMScheduler.from_config(config)  # DDIM's default then: final alpha 1, a zero-variance last step
    trainer = TailorPOTrainer(
        model=pipe,
        reward_funcs=brightness,
        args=tailorpo_config(tmp_path, pairing="final"),
        train_dataset=PROMPTS,
        peft_config=tiny_lora_config(),
    )
    assert trainer.sample_scheduler.final_alpha_cumprod == 1.0
    pairs = trainer.sample_pairs(["a red square", "a blue circle"])
    assert len(pairs) > 0
    assert int(trainer.sample_scheduler.timesteps[-1]) not in pairs.timesteps.tolist()
    trainer.train()
    first = _logs(trainer)[0]
    assert all(math.isfinite(first[key]) for key in ("loss", "logps/chosen", "logps/rejected"))


def test_all_ranked_pairs_and_windowed_timesteps(tmp_path):
    trainer = make_trainer(
        tmp_path,
        pairing="all",
        num_candidates=3,
        timestep_selection="window",
        timestep_window_start=0.5,
        timestep_window_end=1.0,
    )
    torch.manual_seed(0)
    pairs = trainer.sample_pairs(["a red square"])
    assert len(pairs) == 2 * 3  # 2 steps in the window x 3 ranked pairs of 3 candidates
    # The window [0.5, 1) of 4 steps is the last two, least noisy ones.
    assert sorted(set(pairs.timesteps.tolist())) == sorted(trainer.sample_scheduler.timesteps[2:].tolist())
    for t in pairs.timesteps.unique():
        at = pairs.timesteps == t
        assert (pairs.parent_chosen[at] == pairs.parent_chosen[at][0]).all()  # one parent per step
        # Every ranked pair of the 3 candidates: best > middle, best > worst, middle > worst.
        children = torch.cat([pairs.chosen[at], pairs.rejected[at]]).flatten(1)
        distinct = children.unique(dim=0)
        assert len(distinct) == 3
        wins = [int((pairs.chosen[at].flatten(1) == c).all(1).sum()) for c in distinct]
        losses = [int((pairs.rejected[at].flatten(1) == c).all(1).sum()) for c in distinct]
        assert sorted(zip(wins, losses)) == [(0, 2), (1, 1), (2, 0)]
    trainer.train()


def test_reward_guidance_moves_the_chosen_candidate_up_the_reward(tmp_path):
    from trl_rpo.pipelines import decode_latents

    scorer = DifferentiableBrightness()
    guided = make_trainer(tmp_path, reward_funcs=[scorer], reward_guidance_scale=50.0)
    plain = make_trainer(tmp_path / "plain", reward_funcs=[scorer])
    with_guidance = guided.sample_pairs(["a red square"])  # both from the same seed: the same rollout
    without = plain.sample_pairs(["a red square"])
    assert torch.equal(with_guidance.rejected, without.rejected)
    # At the last step the sample is the clean image itself, so its reward is the scorer's on its decoding.
    last = with_guidance.timesteps == guided.sample_scheduler.timesteps[-1]
    assert last.any()
    with torch.no_grad():
        up = scorer.score_tensor(decode_latents(guided.pipeline.vae, with_guidance.chosen[last]), None)
        before = scorer.score_tensor(decode_latents(guided.pipeline.vae, without.chosen[last]), None)
    assert (up > before).all()
    guided.train()


def test_guidance_requires_a_differentiable_reward(tmp_path):
    with pytest.raises(ValueError, match="differentiable"):
        make_trainer(tmp_path, reward_guidance_scale=1.0)


def test_all_ties_give_no_pairs_and_a_zero_loss(tmp_path):
    trainer = make_trainer(tmp_path, reward_funcs=lambda images, prompts, **k: [0.5] * len(images), max_steps=1)
    trainer.train()
    first = _logs(trainer)[0]
    assert first["pairs/count"] == 0 and first["pairs/tie_fraction"] == 1.0 and first["loss"] == 0.0


def test_reward_weights_must_match_reward_funcs(tmp_path):
    with pytest.raises(ValueError, match="reward_weights"):
        TailorPOTrainer(
            model=tiny_sd_pipeline(),
            reward_funcs=[brightness],
            reward_weights=[1.0, 2.0],
            args=tailorpo_config(tmp_path),
            train_dataset=PROMPTS,
            peft_config=tiny_lora_config(),
        )


def test_prompt_dataset_is_validated(tmp_path):
    from trl_rpo import InvalidRowError

    with pytest.raises(InvalidRowError, match="row 1, column 'prompt'"):
        TailorPOTrainer(
            model=tiny_sd_pipeline(),
            reward_funcs=brightness,
            args=tailorpo_config(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": ["ok", ""]}),
            peft_config=tiny_lora_config(),
        )


def test_config_rejects_bad_values():
    for bad in (
        dict(eta=0.0),
        dict(num_candidates=1),
        dict(pairing="pairs"),
        dict(timestep_window_start=0.9, timestep_window_end=0.1),
        dict(clip_range=1.5),
        dict(reward_guidance_scale=1.0, pairing="final"),
    ):
        with pytest.raises(ValueError):
            TailorPOConfig(output_dir="x", **bad)


def test_saved_lora_reloads_into_a_fresh_pipeline(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, learning_rate=5e-2)
    trainer.train()
    trainer.save_model()
    fresh = tiny_sd_pipeline()
    fresh.load_lora_weights(str(tmp_path))

    def render(pipe):
        return pipe(
            "a red square", num_inference_steps=3, output_type="np", generator=torch.Generator().manual_seed(0)
        ).images

    np.testing.assert_allclose(render(fresh), render(trainer.pipeline), atol=1e-5)
    assert "tailorpo" in (tmp_path / "README.md").read_text()


def test_rollout_images_are_saved_with_prompts_and_rewards_every_n_steps(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, log_samples_steps=2)
    trainer.train()
    assert not (tmp_path / "samples" / "step-000001").exists()
    folder = tmp_path / "samples" / "step-000002"
    assert len(list(folder.glob("*.png"))) == 2
    captions = json.loads((folder / "captions.json").read_text())
    assert captions[0].startswith("a ") and "brightness=" in captions[0]


def test_gradient_checkpointing_and_bf16_keep_lora_in_float32(tmp_path):
    trainer = make_trainer(tmp_path, activation_checkpointing=True, bf16=True, use_cpu=True, max_steps=1)
    assert trainer.model.is_gradient_checkpointing
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    assert math.isfinite(_logs(trainer)[0]["loss"])


def test_full_finetuning_with_a_frozen_copy_and_8bit_adamw(tmp_path):
    pytest.importorskip("bitsandbytes")
    trainer = TailorPOTrainer(
        model=tiny_sd_pipeline(),
        reward_funcs=brightness,
        args=tailorpo_config(tmp_path, optim="adamw_bnb_8bit", max_steps=1),
        train_dataset=PROMPTS,
    )
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    trainer.train()
    states = [t for state in trainer.optimizer.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    assert any(t.dtype == torch.uint8 for t in states)
    assert _logs(trainer)[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_resume_from_checkpoint_continues_the_run_exactly(tmp_path):
    # The checkpoint restores the RNG state too, so the resumed run samples the same rollout as a straight one.
    common = dict(max_steps=2, save_strategy="steps", save_steps=1, lr_scheduler_type="constant")
    straight = make_trainer(tmp_path / "a", **common)
    straight.train()
    interrupted = make_trainer(tmp_path / "b", **common)
    interrupted.args.max_steps = 1
    interrupted.train()
    assert (tmp_path / "b" / "checkpoint-1" / "pytorch_lora_weights.safetensors").is_file()
    resumed = make_trainer(tmp_path / "b", **common)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2
    expected = dict(straight.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, expected[name], msg=name, atol=1e-5, rtol=1e-4)


def test_a_subclass_can_reshape_the_step_rewards_in_a_few_lines(tmp_path):
    class DarknessTailorPO(TailorPOTrainer):
        def step_rewards(self, images, prompts):
            total, per_function = super().step_rewards(images, prompts)
            return -total, per_function

    trainer = DarknessTailorPO(
        model=tiny_sd_pipeline(), reward_funcs=brightness, args=tailorpo_config(tmp_path),
        train_dataset=PROMPTS, peft_config=tiny_lora_config(),
    )  # fmt: skip
    plain = make_trainer(tmp_path / "plain")
    prompts = ["a red square", "a blue circle"]
    darker, brighter = trainer.sample_pairs(prompts), plain.sample_pairs(prompts)  # same seeds: the same rollouts
    assert len(brighter) > 0
    # The reshaped reward ranks every step's candidates the other way round: best and worst trade places.
    assert torch.equal(darker.chosen, brighter.rejected) and torch.equal(darker.rejected, brighter.chosen)
    trainer.train()
    assert "rewards/brightness/mean" in _logs(trainer)[0]  # the reward functions' own values are still logged


def test_push_to_hub_uploads_lora_and_a_tailorpo_card_without_secrets(tmp_path, monkeypatch):
    hub = fake_hub(monkeypatch)
    trainer = make_trainer(tmp_path / "run", hub_model_id="me/sd-tailorpo", hub_token="hf_arg_secret_value")
    trainer.train()
    trainer.push_to_hub()
    ((repo_id, files),) = hub.uploads
    assert repo_id == "me/sd-tailorpo" and "pytorch_lora_weights.safetensors" in files
    card = files["README.md"].decode()
    assert "2502.01667" in card and "tailorpo" in card
    assert not any(b"hf_arg_secret" in data for data in files.values())


def test_chunked_vae_decoding_gives_the_same_pairs(tmp_path):
    whole = make_trainer(tmp_path / "a", num_candidates=3)
    chunked = make_trainer(tmp_path / "b", num_candidates=3, vae_decode_batch_size=1)
    torch.manual_seed(0)
    expected = whole.sample_pairs(["a red square", "a blue circle"])
    torch.manual_seed(0)
    got = chunked.sample_pairs(["a red square", "a blue circle"])
    torch.testing.assert_close(got.chosen, expected.chosen)
    torch.testing.assert_close(got.rejected, expected.rejected)


def test_a_training_step_encodes_its_prompts_once(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    calls = []
    original = trainer.encode_conditioning
    trainer.encode_conditioning = lambda prompts: calls.append(list(prompts)) or original(prompts)
    trainer.train()
    assert len(calls) == 1


def test_step_wise_ranking_skips_rewards_weighted_zero_and_still_logs_them_on_final_images(tmp_path):
    calls = []

    def logged(images, prompts, **kwargs):
        calls.append(len(images))
        return [0.5] * len(images)

    trainer = TailorPOTrainer(
        model=tiny_sd_pipeline(), reward_funcs=[brightness, logged], reward_weights=[1.0, 0.0],
        args=tailorpo_config(tmp_path), train_dataset=PROMPTS, peft_config=tiny_lora_config(),
    )  # fmt: skip
    plain = make_trainer(tmp_path / "plain")
    prompts = ["a red square", "a blue circle"]
    pairs, reference = trainer.sample_pairs(prompts), plain.sample_pairs(prompts)  # same seeds, same rollouts
    assert calls == [len(prompts)]  # once, on the final images: never while ranking the steps' candidates
    assert torch.equal(pairs.chosen, reference.chosen) and torch.equal(pairs.rejected, reference.rejected)
    assert set(pairs.final_rewards) == {"brightness", "logged"}


def test_ode_lookahead_scores_the_image_diffusers_ddim_reaches_at_eta_zero(tmp_path):
    trainer = make_trainer(tmp_path, step_reward_estimate="ode_lookahead")
    device = trainer.accelerator.device
    trainer._set_sampling_timesteps(device)
    unet, scheduler = trainer._unwrapped_unet(), trainer.sample_scheduler
    cond, uncond = trainer.encode_conditioning(["a red square", "a blue circle"])
    latents = trainer.initial_latents(2, torch.Generator().manual_seed(0))
    t = scheduler.timesteps[1].expand(2).to(device)  # from the second of 4 steps: three deterministic steps
    with torch.no_grad():
        output = trainer.guided_prediction(unet, latents, t, cond, uncond)
        got = trainer.ode_completion(unet, latents, output, t, cond, uncond)
        expected = latents
        for step_t in scheduler.timesteps[1:]:
            eps = trainer.guided_prediction(unet, expected, step_t.expand(2), cond, uncond)
            expected = scheduler.step(eps, step_t, expected, eta=0.0).prev_sample
    assert torch.allclose(got, expected.float(), atol=1e-5)
    assert not torch.allclose(got, trainer.predict_x0(output, latents, t), atol=1e-3)  # not the one-step estimate


def test_ode_lookahead_ranks_candidates_by_where_they_lead(tmp_path):
    scored = {}

    class Recording(TailorPOTrainer):
        def step_rewards(self, images, prompts):
            if getattr(self, "_ranking_only", False):
                scored.setdefault(self.args.step_reward_estimate, []).append(images.clone())
            return super().step_rewards(images, prompts)

    for estimate in ("x0", "ode_lookahead"):
        trainer = Recording(
            model=tiny_sd_pipeline(), reward_funcs=brightness,
            args=tailorpo_config(tmp_path / estimate, step_reward_estimate=estimate),
            train_dataset=PROMPTS, peft_config=tiny_lora_config(),
        )  # fmt: skip
        trainer.sample_pairs(["a red square", "a blue circle"])  # same seeds: the same candidates in both
    x0, lookahead = scored["x0"], scored["ode_lookahead"]
    assert len(x0) == len(lookahead) >= 2
    # The first step's candidates are scored on other images. One step before the end, the ODE step lands on the
    # predicted clean image itself (the schedule's final alpha is 1), so both score the same images there.
    assert not torch.allclose(x0[0], lookahead[0], atol=1e-3)
    assert torch.allclose(x0[-1], lookahead[-1])


def test_ode_lookahead_needs_candidates_of_a_shared_parent(tmp_path):
    with pytest.raises(ValueError, match="pairing='final' has none"):
        tailorpo_config(tmp_path, step_reward_estimate="ode_lookahead", pairing="final")
    with pytest.raises(ValueError, match="step_reward_estimate must be one of"):
        tailorpo_config(tmp_path, step_reward_estimate="rollout")
