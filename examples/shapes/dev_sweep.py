"""Choose the demo's Diffusion-DPO recipe on dev prompts (never the final prompts the demo reports).

    python examples/shapes/dev_sweep.py --output-dir outputs/dev-sweep [--quick]
    python examples/shapes/dev_sweep.py --stage pairs --output-dir outputs/pair-sweep [--quick]
    python examples/shapes/dev_sweep.py --stage seeds --output-dir outputs/seed-sweep [--quick]
    python examples/shapes/dev_sweep.py --stage masked --output-dir outputs/masked-sweep [--quick]
    python examples/shapes/dev_sweep.py --stage sft --output-dir outputs/sft-sweep [--quick]
    python examples/shapes/dev_sweep.py --stage timesteps --output-dir outputs/timestep-sweep [--quick]
    python examples/shapes/dev_sweep.py --stage online --output-dir outputs/online-sweep [--quick]
    python examples/shapes/dev_sweep.py --stage online-recipes --output-dir outputs/online-recipes [--quick]
    python examples/shapes/dev_sweep.py --stage online-lr --output-dir outputs/online-lr [--quick]
    python examples/shapes/dev_sweep.py --stage arms --output-dir outputs/arm-sweep [--quick]

First chooses the guidance scale (5, 7.5 or 10) by the base model's dev alignment. Then builds the demo's two pair
sets once (RPO pairs refined by the base model, reward-labelled pairs; the same image budget), trains each recipe
of `trl_rpo.shapes.sweep.DEFAULT_RECIPES` on both, and prints a Markdown table of the paired dev gains over the
base model (also written to `sweep.md`, with everything in `sweep.json`). About 30 minutes on 2 CPU cores;
`--quick` is a smoke test.

`--stage pairs` then chooses the RPO pair builder's refinement strength (0.1, 0.2 or 0.3) with the chosen recipe:
pairs built at each strength, plain and masked Diffusion-DPO trained on them, paired dev gains over the base in
`pair_sweep.md` (about 20 minutes).

`--stage seeds` trains masked and plain Diffusion-DPO on the demo's RPO pairs with training seeds 0, 1 and 2 and
scores each on the dev prompts (60 x 3 seeds): one model's interval hides the spread between trainings, so the
demo's loss masking is chosen on the mean over seeds (`seed_sweep.md`, about 17 minutes).

`--stage masked` then varies the masked recipe one change at a time (beta 2500 or 10000, learning rate 1e-3, weight
0.2 outside the masks), each with the same three training seeds (`seed_sweep.md`, about 40 minutes).

`--stage sft` adds the denoising loss on the chosen images to masked Diffusion-DPO (`loss_type=["sigmoid", "sft"]`,
weights 1 and 250 or 1000), next to masked DPO alone, with the same three seeds (`seed_sweep.md`, about 25 minutes).

`--stage timesteps` trains masked Diffusion-DPO only on part of the noise schedule (t < 500, t < 250, t >= 500, with
`DiffusionDPOConfig`'s timestep bias), next to the uniform draw, with the same three seeds (about 35 minutes).

`--stage online` is a diagnosis, not a choice: TailorPO, its final-image baseline and GRPO trained for the demo's
40 steps and for 160, scored on the dev prompts (60 x 3 seeds), with the alignment of their rollouts early and
late in training (`online_sweep.md`, about 15 minutes).

`--stage online-recipes` chooses each online method's recipe (TailorPO, GRPO, DiffusionNFT;
`trl_rpo.shapes.sweep.ONLINE_RECIPES`) over training seeds 0, 1 and 2 on the dev prompts, by the rule fixed before
it ran: the recipe whose lowest dev gain over the seeds is highest (`online_recipes.md`, about 40 minutes).

`--stage online-batch` is the second online round (issue 28), on the base retrained for the final split: each online
method's demo recipe against the same recipe with twice the images per step
(`trl_rpo.shapes.sweep.ONLINE_BATCH_RECIPES`), training seeds 100-102, the same rule, the seconds of each run
reported (`online_recipes.md`, about 35 minutes).

`--stage online-tailorpo` is the third online round (issue 28), TailorPO only: the demo's 8 prompts per step against
16, at its learning rate and at twice it (`trl_rpo.shapes.sweep.TAILORPO_BATCH_RECIPES`), on fresh training seeds
200-202, the same rule (`online_recipes.md`, about 15 minutes).

`--stage online-window` is the fourth online round (issue 28), TailorPO only: the demo's 5 random steps against pairs
on steps 4-7 only, where `--stage step-rewards` found the step-wise rewards agreeing with the final ones
(`trl_rpo.shapes.sweep.TAILORPO_WINDOW_RECIPES`), fresh seeds 300-302, the same rule (about 12 minutes).

`--stage online-reward` is the fifth online round (issue 28), every online method: its demo recipe against the same
recipe optimizing `soft_alignment_score` (`DemoConfig.tailorpo_reward` etc.;
`trl_rpo.shapes.sweep.ONLINE_REWARD_RECIPES`), fresh seeds 400-402, the same rule (about 30 minutes).
`--online-reward soft_alignment_score` runs `--stage step-rewards` with the graded reward.

`--stage online-steps` is the sixth online round (issue 28): DiffusionNFT at 40, 80 and 120 steps and TailorPO at 40
and 80 (`trl_rpo.shapes.sweep.ONLINE_STEPS_RECIPES`), fresh seeds 500-502, the same rule, every run also scored on 60
train prompts (about 30 minutes).

`--stage online-lr` is the seventh online round (issue 28): DiffusionNFT at 120 steps with learning rate 3e-4 (the
demo's), 6e-4 and 1.2e-3 (`trl_rpo.shapes.sweep.NFT_LR_RECIPES`), fresh seeds 600-602, the same rule, every run also
scored on 60 train prompts; the first round scored with per-image noise (about 35 minutes).

`--stage online-lookahead` is the eighth online round (issue 28), TailorPO only: ranked by an ODE lookahead on steps
4-9 against the demo's one-step ranking on steps 6-9 (`trl_rpo.shapes.sweep.TAILORPO_LOOKAHEAD_RECIPES`), fresh seeds
700-702, the same rule, 60 train prompts scored, per-image noise (about 20 minutes).

`--stage online-nft-rollouts` is the ninth online round (issue 28), DiffusionNFT only: more rollouts in the demo's
seconds, each image trained at half or three of its ten timesteps (`trl_rpo.shapes.sweep.NFT_ROLLOUT_RECIPES`), fresh
seeds 800-802, the same rule, 60 train prompts scored, per-image noise (about 35 minutes).

`--stage online-nft-confirm` is the tenth online round (issue 28): the ninth round's choice, DiffusionNFT at 165 steps
on half the timesteps, on five fresh seeds 900-904 (`trl_rpo.shapes.sweep.NFT_CONFIRM_RECIPES`), 60 train prompts
scored, per-image noise: the gate to final declared in docs/shapes.md (about 17 minutes).

`--stage online-nft-power` is the eleventh online round (issue 28): the tenth's recipe on fresh seeds 1000-1004,
scored on the 60 dev and 120 dev2 prompts (`trl_rpo.shapes.sweep.NFT_POWER_SEEDS`), the gate to final declared in
docs/shapes.md (about 18 minutes).

`--stage online-nft-noises` is the twelfth online round (issue 28): the same recipe on fresh seeds 1100-1104, scored
on the 60 dev, 120 dev2 and 60 train prompts with eight noises each (`trl_rpo.shapes.sweep.NFT_NOISE_SEEDS`), the
gate to final declared in docs/shapes.md (about 27 minutes).

`--stage online-nft-cfg-free` is the thirteenth online round (issue 28): the demo's NFT recipe CFG-free (rollouts
and evaluation images at guidance 1, `trl_rpo.shapes.sweep.NFT_CFG_FREE_RECIPES`) on fresh seeds 1400-1404, scored as
the twelfth round against the base at the demo's guidance and at guidance 1; the reward-rise test and the gate to
final declared in docs/shapes.md (about 25 minutes).

`--stage online-nft-guidance-2` is the fourteenth online round (issue 28): the demo's NFT recipe with rollouts and
evaluation images at guidance 2 (`trl_rpo.shapes.sweep.NFT_GUIDANCE2_RECIPES`) on fresh seeds 1500-1504, scored as the
thirteenth round against the base at the demo's guidance and at guidance 2; the reward-rise test and the gate to
final declared in docs/shapes.md (about 30 minutes).

`--stage online-vbase` is the fifteenth online round (issue 28): every online method's demo recipe, unchanged
(`trl_rpo.shapes.sweep.VBASE_RECIPES`), on the base pretrained with v-prediction and a zero-terminal-SNR schedule,
at the demo's guidance, on fresh seeds 1600-1602, scored as the fourteenth round; each method's reward-rise test and
gate to final declared in docs/shapes.md (about 50 minutes).

`--stage online-tailorpo-final-vbase` is the sixteenth online round (issue 28): TailorPO's final-image baseline
(`pairing="final"`), the demo's recipe, on the new base, seeds 1700-1702, scored as the fifteenth.

`--stage online-lr-vbase` is the seventeenth online round (issue 28): TailorPO at lr 1e-3, its final-image baseline
at 2e-3 and DiffusionNFT at 1e-3 (`ONLINE_LR_VBASE_RECIPES`), the rest the demo's, on the new base, seeds
1800-1802, scored as the fifteenth; the gate (dev + dev2 only) is declared in docs/shapes.md (about 45 minutes).

`--stage ceiling` is the supervised ceiling (issue 28): the base fine-tuned on perfect renders of every dev2 scene
(the demo's LoRA, and the whole UNet; `trl_rpo.shapes.ceiling.CEILING_VARIANTS`), scored on 60 of those dev2
prompts at guidance 5 and 2 against the base sampled alike: how much room any method trained for that budget has
(`ceiling.md`, about 10 minutes; no dev or final prompt is scored). `--ceiling-split train` fits every train scene.

`--stage ceiling-transfer` is the transfer ceiling (issue 28): the whole UNet fine-tuned on perfect renders of the
54 `dev2_a` scenes (half a of the held-out pairs; `TRANSFER_CEILING_VARIANTS`), training seeds 0-2, scored on those
scenes and on the 90 scenes of half b (`dev_b` + `dev2_b`, pairs never fitted) at guidance 5 and 2 against the base
sampled alike: does even perfect supervision transfer to unseen (shape, color) pairs? (about 15 minutes)

`--stage online-room` is the eighteenth online round (issue 28): DiffusionNFT and TailorPO training the whole UNet
at lr 1e-4 and guidance 2, rolling out on the dev2 scenes (`ROOM_RECIPES`), seeds 1910-1912, scored on 60 dev prompts
x 8 noises (and their rise on 60 dev2 prompts); the gate is declared in docs/shapes.md.

`--stage online-room-nft` is the nineteenth online round (issue 28): the eighteenth's DiffusionNFT recipe, unchanged
(`ROOM_NFT_RECIPES`), on six fresh seeds 1920-1925, scored as the eighteenth (about 35 minutes).

`--stage online-transfer` is the twentieth online round (issue 28): the same NFT recipe rolling out on the dev2
scenes of half "a" of the held-out pairs (`online_prompt_split="dev2_a"`), seeds 1930-1932, scored on all 24 dev and
66 dev2 scenes of half "b" x 8 noises, pairs the runs never saw, and on the 54 scenes it rolls out on (about 20
minutes).

`--stage step-rewards` is a diagnosis of TailorPO's training signal (issue 28): on 128 train prompts, at every sampler
step, do the step-wise rewards of two children of one parent order them as the mean final reward of 8 completions of
each does? (`trl_rpo.shapes.step_reward_check`, `step_reward_check.md`, about 10 minutes; no held-out prompt is
scored).

`--stage words` asks whether the model sees each word of its prompt (issue 28): on 48 train prompts, each word
(background, color, shape, count, position) swapped for another value in the train split, the text encoder's
distance between the two prompts, and how the images of both differ when sampled from one noise
(`trl_rpo.shapes.word_check`, `word_check.md`, under a minute per model; `--trained RUN ...` checks trained models
too; no held-out prompt is sampled).

`--stage ranks` retrains the reward and RPO arms' chosen recipes at LoRA rank 4 and 16 on a finished arm sweep's own
pairs and seeds (`--arm-sweep`), beside its rank-8 runs: does the rank change the in-distribution drop?
(`trl_rpo.shapes.rank_check`, `rank_check.md`, about 20 minutes; a diagnosis, nothing is chosen).

`--stage arms` tunes every Diffusion-DPO row the same way (`trl_rpo.shapes.arm_sweep`): reward-labelled, best-of-4
and RPO pairs, each with the same four recipes and training seeds 100-102 (which also draw the pairs), chosen per
arm by the same rule (the highest lowest-seed dev gain); it resumes in the same folder after a kill
(`arm_sweep.md`, about 45 minutes). `--stage arms-vbase` is the second arm sweep, on the base shipped since
2026-12-07: reward-labelled, best-of-4 and RPO pairs with five recipes (`VBASE_ARM_RECIPES`) and fresh seeds
110-112, the same rule. `--stage arms-guidance` is the third: it first chooses the guidance among 5, 1, 2 and 3 by
the base's dev alignment (`GUIDANCE_ARM_SCALES`, `sweep.best_guidance`), then the same arms, candidates and rule at
it, seeds 120-122 (about 45 minutes).
"""

import argparse
from typing import NamedTuple

from trl_rpo.shapes.arm_sweep import (
    ARM_RECIPES,
    GUIDANCE_ARM_SCALES,
    GUIDANCE_ARM_SEEDS,
    VBASE_ARM_RECIPES,
    VBASE_ARM_SEEDS,
    VBASE_ARMS,
    run_arm_sweep,
)
from trl_rpo.shapes.demo import ONLINE_PROMPT_SPLITS, DemoConfig
from trl_rpo.shapes.online_rounds import (
    ROOM_NFT_RECIPES,
    ROOM_NFT_SEEDS,
    ROOM_RECIPES,
    ROOM_SEEDS,
    TRANSFER_RECIPES,
    TRANSFER_SEEDS,
)
from trl_rpo.shapes.sweep import (
    DEFAULT_RECIPES,
    DEFAULT_SEED_VARIANTS,
    MASKED_RECIPE_VARIANTS,
    NFT_CFG_FREE_RECIPES,
    NFT_CFG_FREE_SEEDS,
    NFT_CONFIRM_RECIPES,
    NFT_CONFIRM_SEEDS,
    NFT_GUIDANCE2_RECIPES,
    NFT_GUIDANCE2_SEEDS,
    NFT_LR_RECIPES,
    NFT_LR_SEEDS,
    NFT_NOISE_PER_PROMPT,
    NFT_NOISE_RECIPES,
    NFT_NOISE_SEEDS,
    NFT_POWER_RECIPES,
    NFT_POWER_SEEDS,
    NFT_ROLLOUT_RECIPES,
    NFT_ROLLOUT_SEEDS,
    ONLINE_BATCH_RECIPES,
    ONLINE_BATCH_SEEDS,
    ONLINE_LR_VBASE_RECIPES,
    ONLINE_LR_VBASE_SEEDS,
    ONLINE_RECIPES,
    ONLINE_REWARD_RECIPES,
    ONLINE_REWARD_SEEDS,
    ONLINE_STEPS_RECIPES,
    ONLINE_STEPS_SEEDS,
    SFT_VARIANTS,
    TAILORPO_BATCH_RECIPES,
    TAILORPO_BATCH_SEEDS,
    TAILORPO_FINAL_VBASE_RECIPES,
    TAILORPO_FINAL_VBASE_SEEDS,
    TAILORPO_LOOKAHEAD_RECIPES,
    TAILORPO_LOOKAHEAD_SEEDS,
    TAILORPO_WINDOW_RECIPES,
    TAILORPO_WINDOW_SEEDS,
    TIMESTEP_VARIANTS,
    VBASE_RECIPES,
    VBASE_SEEDS,
    as_declared,
    run_dev_sweep,
    run_online_recipe_sweep,
    run_online_sweep,
    run_pair_sweep,
    run_seed_sweep,
)
from trl_rpo.shapes.world import SPLIT_SIZES


class OnlineRound(NamedTuple):
    """An online round as it ran: its recipes (with the demo defaults of its time, `as_declared`), training seeds and
    evaluation: one noise per evaluation seed for all prompts (before the seventh round) or one per image, whether 60
    train prompts were scored, how many dev2 prompts joined dev's, the evaluation seeds (noises per prompt), the split
    the runs roll out on and how many dev prompts were scored (60; the twentieth round's half of dev holds 24)."""

    recipes: dict
    seeds: tuple[int, ...]
    per_image_noise: bool = True
    train_prompts: int = 60
    dev2_prompts: int = 0
    eval_seeds: tuple[int, ...] = (0, 1, 2)
    prompt_split: str = "train"
    dev_prompts: int = 60


_EARLY = {"per_image_noise": False, "train_prompts": 0}  # the first five rounds
ONLINE_ROUNDS = {
    stage: OnlineRound(as_declared(recipes, number), seeds, **evaluation)
    for number, (stage, recipes, seeds, evaluation) in enumerate([
        ("online-recipes", ONLINE_RECIPES, (0, 1, 2), _EARLY),
        ("online-batch", ONLINE_BATCH_RECIPES, ONLINE_BATCH_SEEDS, _EARLY),
        ("online-tailorpo", TAILORPO_BATCH_RECIPES, TAILORPO_BATCH_SEEDS, _EARLY),
        ("online-window", TAILORPO_WINDOW_RECIPES, TAILORPO_WINDOW_SEEDS, _EARLY),
        ("online-reward", ONLINE_REWARD_RECIPES, ONLINE_REWARD_SEEDS, _EARLY),
        ("online-steps", ONLINE_STEPS_RECIPES, ONLINE_STEPS_SEEDS, {"per_image_noise": False}),
        ("online-lr", NFT_LR_RECIPES, NFT_LR_SEEDS, {}),
        ("online-lookahead", TAILORPO_LOOKAHEAD_RECIPES, TAILORPO_LOOKAHEAD_SEEDS, {}),
        ("online-nft-rollouts", NFT_ROLLOUT_RECIPES, NFT_ROLLOUT_SEEDS, {}),
        ("online-nft-confirm", NFT_CONFIRM_RECIPES, NFT_CONFIRM_SEEDS, {}),
        ("online-nft-power", NFT_POWER_RECIPES, NFT_POWER_SEEDS, {"dev2_prompts": 120}),
        ("online-nft-noises", NFT_NOISE_RECIPES, NFT_NOISE_SEEDS,
         {"dev2_prompts": 120, "eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT))}),
        ("online-nft-cfg-free", NFT_CFG_FREE_RECIPES, NFT_CFG_FREE_SEEDS,
         {"dev2_prompts": 120, "eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT))}),
        ("online-nft-guidance-2", NFT_GUIDANCE2_RECIPES, NFT_GUIDANCE2_SEEDS,
         {"dev2_prompts": 120, "eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT))}),
        ("online-vbase", VBASE_RECIPES, VBASE_SEEDS,
         {"dev2_prompts": 120, "eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT))}),
        ("online-tailorpo-final-vbase", TAILORPO_FINAL_VBASE_RECIPES, TAILORPO_FINAL_VBASE_SEEDS,
         {"dev2_prompts": 120, "eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT))}),
        ("online-lr-vbase", ONLINE_LR_VBASE_RECIPES, ONLINE_LR_VBASE_SEEDS,
         {"dev2_prompts": 120, "eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT))}),
        ("online-room", ROOM_RECIPES, ROOM_SEEDS,
         {"eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT)), "prompt_split": "dev2"}),
        ("online-room-nft", ROOM_NFT_RECIPES, ROOM_NFT_SEEDS,
         {"eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT)), "prompt_split": "dev2"}),
        ("online-transfer", TRANSFER_RECIPES, TRANSFER_SEEDS,
         {"eval_seeds": tuple(range(NFT_NOISE_PER_PROMPT)), "prompt_split": "dev2_a",
          "dev_prompts": SPLIT_SIZES["dev_b"], "dev2_prompts": SPLIT_SIZES["dev2_b"],
          "train_prompts": SPLIT_SIZES["dev2_a"]}),
    ], start=1)
}  # fmt: skip


# The demo's guidance and Diffusion-DPO recipes when every stage here was declared (it moved on 2026-12-08 to the
# guidance and recipes the third arm sweep chose on dev): each stage is pinned to them, so that its replay does not
# follow the demo's defaults.
STAGE_DEFAULTS = {"guidance_scale": 5.0, "dpo_learning_rate": 1e-3, "dpo_steps": 300,
                  "reward_pairs_recipe": "lr=2e-3 beta=5000 steps=150 t=all"}  # fmt: skip


def stage_config(quick: bool, **fields) -> DemoConfig:
    """The `DemoConfig` (`DemoConfig.quick` with `quick`) a stage runs with: `fields`, over `STAGE_DEFAULTS` (the
    quick preset's own budgets win over the pinned DPO steps)."""
    pinned = dict(STAGE_DEFAULTS)
    if quick:
        pinned.pop("dpo_steps")
    fields = {**pinned, **fields}
    return DemoConfig.quick(**fields) if quick else DemoConfig(**fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="new folder for sweep.json, sweep.md and the runs")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped shapes base model)")
    parser.add_argument("--arm-sweep", default="outputs/arm-sweep",
                        help="ranks: the finished arm sweep whose pairs, seeds and chosen recipes are retrained")
    parser.add_argument("--trained", nargs="*", default=[],
                        help="words: trained models (run folders: a LoRA or a UNet, on --model) checked after it")
    parser.add_argument("--quick", action="store_true", help="small budgets and two recipes: a smoke test")
    parser.add_argument("--online-reward", default="alignment_score",
                        choices=["alignment_score", "soft_alignment_score"],
                        help="step-rewards: the reward TailorPO ranks children by (DemoConfig.online_reward)")
    parser.add_argument("--stage", default="recipes",
                        choices=["recipes", "pairs", "seeds", "masked", "sft", "timesteps", "online",
                                 *ONLINE_ROUNDS, "step-rewards", "words", "arms", "arms-vbase", "arms-guidance",
                                 "ranks",
                                 "ceiling", "ceiling-transfer"],
                        help="recipes: guidance and DPO recipe; pairs: the RPO refinement strength; seeds: masked "
                             "or plain DPO over training seeds; masked: the masked recipe over seeds; sft: masked "
                             "DPO plus an SFT term over seeds; timesteps: masked DPO on part of the noise "
                             "schedule over seeds; online: TailorPO, its final-image baseline and GRPO at 40 "
                             "and 160 steps; arms: every DPO row's recipe by one sweep and rule; arms-vbase: the "
                             "same on the base shipped since 2026-12-07")  # fmt: skip
    parser.add_argument("--ceiling-split", default="dev2", choices=sorted(ONLINE_PROMPT_SPLITS),
                        help="ceiling: the split whose renders the base is fine-tuned on and scored on")
    args = parser.parse_args()
    # Every stage before the seventh online round scored dev with one noise per evaluation seed, shared by all
    # prompts; they replay as they ran. Later stages use per-image noise (DemoConfig.per_image_noise).
    online = ONLINE_ROUNDS.get(args.stage)
    noise = {} if online and online.per_image_noise else {"per_image_noise": False}
    # The stages before `timesteps` drew t uniformly (as their tables in docs/shapes.md did); `timesteps` sets it
    # per variant.
    uniform = {} if args.stage == "timesteps" else {"dpo_timestep_bias_strategy": "none"}
    if args.stage in ("seeds", "masked", "sft", "timesteps"):
        # Three dev seeds, as in the tables of docs/shapes.md (the demo's test evaluation uses four).
        config = (stage_config(True, model=args.model, **noise, **uniform) if args.quick
                  else stage_config(False, model=args.model, **noise, eval_seeds=(0, 1, 2), **uniform))  # fmt: skip
        variants = {"seeds": DEFAULT_SEED_VARIANTS, "masked": MASKED_RECIPE_VARIANTS, "sft": SFT_VARIANTS,
                    "timesteps": TIMESTEP_VARIANTS}[args.stage]  # fmt: skip
        run_seed_sweep(config, args.output_dir, variants=variants, seeds=(0, 1) if args.quick else (0, 1, 2),
                       dev_prompts=8 if args.quick else 60)  # fmt: skip
        return
    if args.stage == "online":
        config = (stage_config(True, model=args.model, **noise) if args.quick
                  else stage_config(False, model=args.model, **noise, eval_seeds=(0, 1, 2)))  # fmt: skip
        run_online_sweep(config, args.output_dir, steps=(1, 2) if args.quick else (40, 160),
                         dev_prompts=8 if args.quick else 60)  # fmt: skip
        return
    if online:
        if args.quick:  # one recipe per method, tiny budgets: a smoke test of the stage
            first = {m: dict(list(v.items())[:1]) for m, v in online.recipes.items()}
            quick = stage_config(True, model=args.model, **noise, online_prompt_split=online.prompt_split)
            run_online_recipe_sweep(quick, args.output_dir, recipes=first,
                                    seeds=online.seeds[:2], dev_prompts=8)  # fmt: skip
        else:
            run_online_recipe_sweep(stage_config(False, model=args.model, **noise, eval_seeds=online.eval_seeds,
                                               online_prompt_split=online.prompt_split),
                                    args.output_dir, recipes=online.recipes, seeds=online.seeds,
                                    train_prompts=online.train_prompts, dev2_prompts=online.dev2_prompts,
                                    dev_prompts=online.dev_prompts)  # fmt: skip
        return
    if args.stage == "ceiling":
        from trl_rpo.shapes.ceiling import CEILING_VARIANTS, CeilingVariant, run_supervised_ceiling

        if args.quick:
            run_supervised_ceiling(stage_config(True, model=args.model, eval_seeds=(0,)), args.output_dir,
                                   split=args.ceiling_split, scored_prompts=4, images_per_scene=1,
                                   variants={"LoRA, 2 steps": CeilingVariant(2, 3e-4)})  # fmt: skip
        else:
            run_supervised_ceiling(stage_config(False, model=args.model, eval_seeds=(0, 1, 2, 3)), args.output_dir,
                                   split=args.ceiling_split, variants=CEILING_VARIANTS)  # fmt: skip
        return
    if args.stage == "ceiling-transfer":
        from trl_rpo.shapes import ceiling

        if args.quick:
            config, kwargs = stage_config(True, model=args.model, eval_seeds=(0,)), dict(
                scored_prompts=4, images_per_scene=1, training_seeds=(0, 1),
                variants={"full UNet, 2 steps": ceiling.CeilingVariant(2, 1e-4, "full")})  # fmt: skip
        else:
            config, kwargs = stage_config(False, model=args.model, eval_seeds=(0, 1, 2, 3)), dict(
                scored_prompts=54, variants=ceiling.TRANSFER_CEILING_VARIANTS,
                training_seeds=ceiling.TRANSFER_CEILING_SEEDS)  # fmt: skip
        ceiling.run_supervised_ceiling(config, args.output_dir, split="dev2_a", **kwargs)
        return
    if args.stage == "step-rewards":
        from trl_rpo.shapes.step_reward_check import run_step_reward_check

        config = (stage_config(True, model=args.model, **noise, tailorpo_reward=args.online_reward) if args.quick
                  else stage_config(False, model=args.model, **noise, tailorpo_reward=args.online_reward))  # fmt: skip
        run_step_reward_check(config, args.output_dir, num_prompts=4 if args.quick else 128,
                              continuations=2 if args.quick else 8)  # fmt: skip
        return
    if args.stage == "words":
        from pathlib import Path

        from trl_rpo.evaluation import load_trained_pipeline
        from trl_rpo.shapes.model import load_pipeline
        from trl_rpo.shapes.word_check import run_word_check

        prompts = 4 if args.quick else 48
        base = load_pipeline(args.model)  # each trained model is applied to its own copy of the base's denoiser
        run_word_check(base, Path(args.output_dir) / "base", num_prompts=prompts)
        for run in args.trained:
            trained = load_trained_pipeline(run, base=base)
            run_word_check(trained, Path(args.output_dir) / Path(run).name, num_prompts=prompts)
        return
    if args.stage == "ranks":
        from trl_rpo.shapes.rank_check import run_rank_check

        run_rank_check(args.arm_sweep, args.output_dir)
        return
    if args.stage == "arms":
        if args.quick:
            run_arm_sweep(stage_config(True, model=args.model, **noise), args.output_dir, recipes=ARM_RECIPES[:2],
                          seeds=(100, 101), dev_prompts=8)  # fmt: skip
        else:
            run_arm_sweep(stage_config(False, model=args.model, **noise), args.output_dir)
        return
    if args.stage == "arms-vbase":  # per-image noise, as the demo and study score
        if args.quick:
            run_arm_sweep(stage_config(True, model=args.model), args.output_dir, arms=VBASE_ARMS[:1],
                          recipes=VBASE_ARM_RECIPES[3:], seeds=VBASE_ARM_SEEDS[:2], dev_prompts=8)  # fmt: skip
        else:
            run_arm_sweep(stage_config(False, model=args.model), args.output_dir, arms=VBASE_ARMS,
                          recipes=VBASE_ARM_RECIPES, seeds=VBASE_ARM_SEEDS)  # fmt: skip
        return
    if args.stage == "arms-guidance":  # the guidance first (the base's dev alignment), then the recipes at it
        if args.quick:
            run_arm_sweep(stage_config(True, model=args.model), args.output_dir, arms=VBASE_ARMS[:1],
                          recipes=VBASE_ARM_RECIPES[3:], seeds=GUIDANCE_ARM_SEEDS[:2], dev_prompts=8,
                          guidance_scales=GUIDANCE_ARM_SCALES[:2])  # fmt: skip
        else:
            run_arm_sweep(stage_config(False, model=args.model), args.output_dir, arms=VBASE_ARMS,
                          recipes=VBASE_ARM_RECIPES, seeds=GUIDANCE_ARM_SEEDS,
                          guidance_scales=GUIDANCE_ARM_SCALES)  # fmt: skip
        return
    if args.stage == "pairs":
        config = (stage_config(True, model=args.model, **noise, **uniform) if args.quick
                  else stage_config(False, model=args.model, **noise, eval_seeds=(0, 1), **uniform))  # fmt: skip
        run_pair_sweep(config, args.output_dir, dev_prompts=8 if args.quick else 60)
        return
    if args.quick:
        config = stage_config(True, model=args.model, **noise, **uniform)
        recipes = [{**recipe, "max_steps": 4} for recipe in DEFAULT_RECIPES[:2]]
        run_dev_sweep(config, args.output_dir, recipes=recipes, dev_prompts=8)
    else:
        run_dev_sweep(
            stage_config(False, model=args.model, **noise, eval_seeds=(0, 1), **uniform), args.output_dir,
            guidance_scales=(5.0, 7.5, 10.0),
        )


if __name__ == "__main__":
    main()
