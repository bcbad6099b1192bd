"""Groups of rollouts per prompt, what GRPO and DiffusionNFT share on top of the online base.

:class:`GroupRolloutTrainer`: each prompt sampled `num_generations` times in a row (:class:`GroupRepeatSampler`), the
rollout (:class:`Rollout`), group-normalised advantages, and the rollout buffer of `num_iterations`, saved in
checkpoints so that a resume continues a rollout's iterations.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Sampler

from ..diffusion import ddim_step_variance
from ..losses import group_advantages
from ..pipelines import tensor_to_pil
from .online import OnlineDiffusionTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "GroupRepeatSampler",
    "GroupRolloutTrainer",
    "RewardQueue",
    "Rollout",
    "select_sde_window",
    "select_train_steps",
]

class GroupRepeatSampler(Sampler[int]):
    """Dataset indices in groups: each prompt `group_size` times in a row, each chunk of prompts `repeat_count` times.

    `chunk_size` distinct prompts (shuffled with `seed` + the epoch) form one chunk: the prompts of one optimizer step
    on every process (`per_device_prompts * num_processes * gradient_accumulation_steps`). The chunk is emitted
    `repeat_count` (= `num_iterations`) times, so each process meets the same prompts in the same order for that
    many optimizer steps, and reuses its rollouts. Incomplete last chunks are dropped (TRL's `RepeatSampler`).
    The order depends on the epoch only (`set_epoch`, which `Trainer` calls, as for a `DistributedSampler`), so a run
    resumed in a later epoch sees that epoch's order, not epoch 0's again.
    """

    def __init__(self, num_rows: int, group_size: int, chunk_size: int, repeat_count: int = 1, shuffle: bool = True,
                 seed: int = 0):  # fmt: skip
        if num_rows < chunk_size:
            raise ValueError(
                f"the dataset has {num_rows} prompts, fewer than one optimizer step needs ({chunk_size} = prompts per "
                "device x processes x gradient_accumulation_steps)"
            )
        self.num_rows, self.group_size, self.chunk_size = num_rows, group_size, chunk_size
        self.repeat_count, self.shuffle, self.seed = repeat_count, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_rows)
        order = order.tolist()
        for start in range(0, self.num_rows - self.chunk_size + 1, self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.group_size
        self.epoch += 1  # a sampler iterated again without set_epoch still moves on

    def __len__(self) -> int:
        return (self.num_rows // self.chunk_size) * self.chunk_size * self.group_size * self.repeat_count


def select_train_steps(
    trainable: list[int], fraction: float, generator: torch.Generator | None = None, sampling: str = "random"
) -> list[int]:
    """`max(1, round(fraction * len(trainable)))` of the trainable step indices, in order.

    DDPO's `timestep_fraction`: train on part of each trajectory, drawn at random (`sampling="random"`), or its
    first, noisiest steps (`"first"`, Flow-GRPO's); all of it at `fraction = 1`.
    """
    if not trainable:
        raise ValueError("no denoising step has a log-probability (all are deterministic)")
    count = max(1, round(fraction * len(trainable)))
    if count >= len(trainable):
        return list(trainable)
    if sampling == "first":
        return list(trainable[:count])
    pick = torch.randperm(len(trainable), generator=generator)[:count].sort().values.tolist()
    return [trainable[i] for i in pick]


def select_sde_window(
    size: int, window_range: tuple[int, int], generator: torch.Generator | None = None
) -> list[int]:
    """The `size` consecutive step indices sampled with the SDE, starting uniformly in `[first, end - size]`.

    Flow-GRPO-Fast (Flow-GRPO's `sample.sde_window_size` / `sde_window_range`) and MixGRPO: the other steps take the
    deterministic ODE step, and only the window's steps are trained.
    """
    first, end = int(window_range[0]), int(window_range[1])
    if size < 1 or end - first < size:
        raise ValueError(f"an SDE window of {size} steps does not fit in steps [{first}, {end})")
    start = first + int(torch.randint(end - first - size + 1, (1,), generator=generator))
    return list(range(start, start + size))


class RewardQueue:
    """Score a rollout's chunks in order: inline, or on one background thread while the next chunk samples.

    `work(images, prompts) -> (total, per_func)`. With `background`, at most `max_pending` chunks wait to be
    scored (each holds its decoded images): submitting one more first collects the oldest. Flow-GRPO scores each
    sampling batch on a thread pool the same way, so a remote reward model (`RemoteReward`, `trl-rpo serve-reward`)
    answers while the GPU keeps sampling. `wait_seconds` is how long the sampling thread waited for scores.
    """

    def __init__(self, work: Callable, background: bool = False, max_pending: int = 2):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._work, self._max_pending = work, max_pending
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewards") if background else None
        self._pending: deque[Future] = deque()
        self._done: list = []
        self.wait_seconds = 0.0

    def _collect_oldest(self) -> None:
        start = time.perf_counter()
        self._done.append(self._pending.popleft().result())
        self.wait_seconds += time.perf_counter() - start

    def submit(self, images: torch.Tensor, prompts: list[str]) -> None:
        if self._executor is None:
            self._done.append(self._work(images, prompts))
            return
        while len(self._pending) >= self._max_pending:
            self._collect_oldest()
        self._pending.append(self._executor.submit(self._work, images, prompts))

    def results(self) -> list:
        """Every chunk's `(total, per_func)`, in submission order (waits for the pending ones)."""
        try:
            while self._pending:
                self._collect_oldest()
        finally:
            if self._executor is not None:
                for future in self._pending:  # an earlier chunk failed: drop the rest
                    future.cancel()
                self._executor.shutdown(wait=True)
        return self._done


# The tensors of a Rollout that a checkpoint keeps (the images are for logging only).
_ROLLOUT_TENSORS = ("prompt_index", "latents", "log_probs", "timesteps", "rewards", "advantages", "group_std",
                    "old_log_probs")  # fmt: skip


@dataclass
class Rollout:
    """Trajectories of one micro-batch sampled with the policy, scored and turned into advantages.

    Image `i` is the `i % G`-th sample of prompt `prompt_index[i]` (groups are consecutive). `latents[:, s]` is
    the sample before step `s` (`latents[:, 0]` the initial noise, `latents[:, -1]` the final latents).
    """

    prompts: list[str]
    prompt_index: torch.Tensor  # [N]
    latents: torch.Tensor  # [N, S + 1, C, h, w]
    log_probs: torch.Tensor  # [N, S], under the sampling policy (NaN at deterministic steps)
    timesteps: torch.Tensor  # [S]
    train_steps: list[int]
    rewards: torch.Tensor  # [N], weighted total
    rewards_per_func: dict[str, torch.Tensor]
    advantages: torch.Tensor  # [N]
    group_std: torch.Tensor  # [N / G]
    images: list = field(default_factory=list)
    old_log_probs: torch.Tensor | None = None  # [K, N], filled on the rollout's first iteration

    def __len__(self) -> int:
        return int(self.prompt_index.numel())

    def captions(self) -> list[str]:
        """One caption per image: its prompt and its rewards (for the saved rollout images)."""
        captions = []
        for i, prompt_i in enumerate(self.prompt_index.tolist()):
            scores = ", ".join(f"{n}={v[i].item():.4g}" for n, v in self.rewards_per_func.items())
            captions.append(f"{self.prompts[prompt_i]} | {scores}")
        return captions

    def state_dict(self) -> dict[str, Any]:
        """Tensors, prompts and step indices (no images): what `torch.load(..., weights_only=True)` reads back."""
        state = {k: getattr(self, k).cpu() for k in _ROLLOUT_TENSORS if getattr(self, k) is not None}
        state.update(prompts=list(self.prompts), train_steps=list(self.train_steps),
                     rewards_per_func={k: v.cpu() for k, v in self.rewards_per_func.items()})  # fmt: skip
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device=None) -> Rollout:
        tensors = {k: (state[k].to(device) if k in state else None) for k in _ROLLOUT_TENSORS}
        return cls(prompts=list(state["prompts"]), train_steps=list(state["train_steps"]),
                   rewards_per_func={k: v.to(device) for k, v in state["rewards_per_func"].items()},
                   **tensors)  # fmt: skip


class GroupRolloutTrainer(OnlineDiffusionTrainer):
    """Online trainers that sample `num_generations` images per prompt and normalise rewards per group (GRPO, NFT).

    Each micro-step's batch holds each prompt `num_generations` times in a row ([`GroupRepeatSampler`]). A training
    rollout is reused for `num_iterations` optimizer steps; the buffer of rollouts and the micro-step counter are
    saved with each checkpoint, so a resume between two iterations of one rollout continues it exactly.
    """

    # Sample rollouts with the stochastic sampler and its log-probabilities (GRPO); False: any deterministic solver.
    stochastic_rollouts = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.eval_dataset is not None and self.args.per_device_eval_batch_size % self.args.num_generations:
            raise ValueError(
                f"per_device_eval_batch_size ({self.args.per_device_eval_batch_size}) counts images and must be a "
                f"multiple of num_generations ({self.args.num_generations})"
            )
        self._micro_step = 0
        self._buffer: dict[int, Rollout] = {}

    @property
    def needs_reference(self) -> bool:
        """A reference serves the KL term only (`beta`): with `beta = 0` full fine-tuning keeps no copy (LoRA's
        adapters-off reference costs nothing)."""
        return self._config_for_reference.beta > 0

    # -- data --------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, train_dataset=None) -> Sampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        args = self.args
        prompts_per_step = (args.per_device_train_batch_size // args.num_generations) * args.world_size
        return GroupRepeatSampler(
            len(dataset),
            args.num_generations,
            chunk_size=prompts_per_step * args.gradient_accumulation_steps,
            repeat_count=args.num_iterations,
            shuffle=True,
            seed=args.seed,
        )

    def _get_eval_sampler(self, eval_dataset) -> Sampler:
        args = self.args
        prompts = (args.per_device_eval_batch_size // args.num_generations) * args.world_size
        return GroupRepeatSampler(len(eval_dataset), args.num_generations, chunk_size=min(prompts, len(eval_dataset)),
                                  shuffle=False)  # fmt: skip

    def _group_prompts(self, prompts: list[str]) -> list[str]:
        """The distinct prompts of a batch made of consecutive groups of `num_generations` copies."""
        g = self.args.num_generations
        if len(prompts) % g or any(len(set(prompts[i : i + g])) != 1 for i in range(0, len(prompts), g)):
            raise ValueError(
                f"a batch must hold each prompt num_generations ({g}) times in a row (the trainer's sampler does "
                f"this); got {len(prompts)} prompts: {prompts[: 2 * g]}"
            )
        return prompts[::g]

    # -- sampling ------------------------------------------------------------------------------------------------

    def trainable_steps(self) -> list[int]:
        """Indices of the sampling steps with a log-probability (positive DDIM variance; every flow SDE step).

        With `set_alpha_to_one=True` the last DDIM step is deterministic: it is sampled but never trained on. The
        flow SDE's last step (to sigma 0) keeps a positive variance, so all of its steps are trained.
        """
        scheduler = self.sample_scheduler
        if self.is_flow:
            return list(range(len(scheduler.timesteps)))
        variance = ddim_step_variance(scheduler, scheduler.timesteps.cpu())
        return [i for i, v in enumerate(variance.tolist()) if v > 0]

    @torch.no_grad()
    def rollout(
        self,
        prompts: list[str],
        conditioning: tuple[dict, dict] | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Sample `num_generations` trajectories for each of `prompts` with the current policy and score them.

        Starting noise, step noise and the trained steps come from `generator` (this process's `rank_generator`
        by default); with `same_latent` a group shares its starting noise.
        """
        args, device = self.args, self.accelerator.device
        generator = generator if generator is not None else self.rank_generator
        self._set_sampling_timesteps(device)
        g = args.num_generations
        cond, uncond = conditioning if conditioning is not None else self.encode_conditioning(prompts)
        prompt_index = torch.arange(len(prompts), device=device).repeat_interleave(g)
        flat_prompts = [prompts[i] for i in prompt_index.tolist()]
        window = self.sde_window(generator)
        # `rollout_chunk_size` images at a time; each chunk is decoded and scored (on a background thread with
        # `async_rewards`) while the next one samples.
        per_chunk = max(1, (args.rollout_chunk_size or len(flat_prompts)) // g)
        queue = RewardQueue(self._score_images, args.async_rewards, args.max_pending_rewards)
        trajectories, log_probs, decoded = [], [], []
        for first in range(0, len(prompts), per_chunk):
            chunk = torch.arange(first, min(first + per_chunk, len(prompts)), device=device)
            trajectory, log_prob = self._sample_groups(
                {k: v[chunk] for k, v in cond.items()}, {k: v[chunk] for k, v in uncond.items()}, window, generator
            )
            # Decoding stays on this thread, with the denoiser (one compute stream); only the scoring, a remote
            # reward's wait for its server, goes to the background.
            decoded.append(self.decode(trajectory[:, -1]))
            queue.submit(decoded[-1], flat_prompts[first * g : (first + len(chunk)) * g])
            trajectories.append(trajectory)
            log_probs.append(log_prob)
        scored = queue.results()
        self._timing["reward_wait"] = queue.wait_seconds
        images = torch.cat(decoded)
        total = torch.cat([part[0] for part in scored]).to(device)
        per_func = {name: torch.cat([part[1][name] for part in scored]) for name in scored[0][1]}
        advantages, group_std = self.compute_advantages(total)
        if window is None:
            train_steps = select_train_steps(
                self.trainable_steps(), args.timestep_fraction, generator, args.timestep_sampling
            )
        else:
            train_steps = [s for s in window if s in set(self.trainable_steps())]
            if not train_steps:
                raise ValueError(f"the SDE window {window} holds no step with a log-probability (all deterministic)")
        return Rollout(
            prompts=list(prompts),
            prompt_index=prompt_index,
            latents=torch.cat(trajectories),
            log_probs=torch.cat(log_probs),
            timesteps=self.sample_scheduler.timesteps.clone(),
            train_steps=train_steps,
            rewards=total,
            rewards_per_func=per_func,
            advantages=advantages,
            group_std=group_std,
            images=tensor_to_pil(images),
        )

    @torch.no_grad()
    def _score_images(self, images: torch.Tensor, prompts: list[str]):
        """A chunk's decoded images -> `(total, per_func)` (run by `RewardQueue`, maybe on its thread)."""
        return self.step_rewards(images, prompts)

    def _sample_groups(self, cond, uncond, window, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`num_generations` trajectories per prompt of `cond`: latents `[N, S + 1, ...]`, log-probabilities `[N, S]`.

        With a shared start and an SDE window, a group's images stay identical until the window (ODE steps draw no
        noise): those steps run once per prompt and are copied to the group when the window opens.
        """
        args, device, g = self.args, self.accelerator.device, self.args.num_generations
        unet = self._unwrapped_unet()
        num_prompts = next(iter(cond.values())).shape[0]
        index = torch.arange(num_prompts, device=device).repeat_interleave(g)
        cond_all = {k: v[index] for k, v in cond.items()}
        uncond_all = {k: v[index] for k, v in uncond.items()}
        shared = args.same_latent and window is not None and window[0] > 0
        if args.same_latent:
            latents = self.initial_latents(num_prompts, generator)
            if not shared:
                latents = latents.repeat_interleave(g, dim=0)
        else:
            latents = self.initial_latents(len(index), generator)
        trajectory, log_probs = [latents], []
        for step, t in enumerate(self.sample_scheduler.timesteps):
            if shared and step == window[0]:
                trajectory = [x.repeat_interleave(g, dim=0) for x in trajectory]
                latents, shared = trajectory[-1], False
            c, u = (cond, uncond) if shared else (cond_all, uncond_all)
            timesteps = t.expand(len(latents)).to(device)
            output = self.guided_prediction(unet, latents, timesteps, c, u)
            if self.stochastic_rollouts and (window is None or step in window):
                latents, log_prob = self.step_with_logprob(output, timesteps, latents, generator=generator)
            else:
                latents = self.ode_step(output, timesteps, latents)
                log_prob = torch.full((len(index),), float("nan"), device=device)
            trajectory.append(latents)
            log_probs.append(log_prob)
        if shared:  # a window never opened (not reachable with a valid config), keep shapes right anyway
            trajectory = [x.repeat_interleave(g, dim=0) for x in trajectory]
        return torch.stack(trajectory, dim=1), torch.stack(log_probs, dim=1)

    def sde_window(self, generator: torch.Generator | None = None) -> list[int] | None:
        """This rollout's SDE steps (`sde_window_size`, drawn in `sde_window_range`), or None: every step is SDE."""
        size = int(getattr(self.args, "sde_window_size", 0) or 0)
        if not size or not self.stochastic_rollouts:
            return None
        window_range = getattr(self.args, "sde_window_range", None) or (0, self.args.num_inference_steps)
        return select_sde_window(size, window_range, generator)

    def compute_advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group-normalised advantages (see [`group_advantages`]) and each group's reward standard deviation.

        `scale_rewards="batch"` divides by the standard deviation of the rewards of every process (TRL computes it
        after gathering the whole batch), not of this process's share.
        """
        g = self.args.num_generations
        grouped = rewards.float().reshape(-1, g)
        batch_std = None
        if self.args.scale_rewards == "batch":
            batch_std = self._pooled_moments(rewards)[1]
        return group_advantages(rewards, g, self.args.scale_rewards, batch_std=batch_std), grouped.std(dim=1)

    def _step_rollout(self, inputs, mode: str) -> tuple[dict, dict, Rollout, bool]:
        """A micro-step's conditioning and rollout (`fresh`: sampled now, not reused), its reward metrics, timing and
        saved images recorded once per rollout."""
        prompts = self._group_prompts(list(inputs["prompt"]))
        start = time.perf_counter()
        cond, uncond = self.encode_conditioning(prompts)
        rollout, fresh = self._get_rollout(prompts, cond, uncond, mode)
        self._timing["sampling"] = time.perf_counter() - start if fresh else 0.0
        if fresh:
            self._record_reward_metrics(mode, rollout.rewards, rollout.rewards_per_func, rollout.group_std)
            self._record_metric(mode, "time/sampling_s", torch.tensor(self._timing["sampling"]))
            if self.args.async_rewards:  # how long sampling waited for the background scorer
                self._record_metric(mode, "time/reward_wait_s", torch.tensor(self._timing["reward_wait"]))
            if mode == "train":
                self._maybe_log_samples(rollout.images, rollout.captions())
        return cond, uncond, rollout, fresh

    def _get_rollout(self, prompts: list[str], cond, uncond, mode: str) -> tuple[Rollout, bool]:
        """A new rollout, or (iterations after the first of a training rollout) the buffered one for this slot."""
        if mode != "train":
            return self.rollout(prompts, (cond, uncond)), True
        args = self.args
        slot = self._micro_step % args.gradient_accumulation_steps
        first = (self._micro_step // args.gradient_accumulation_steps) % args.num_iterations == 0
        self._micro_step += 1
        if first or slot not in self._buffer:
            rollout = self.rollout(prompts, (cond, uncond))
            if args.num_iterations > 1:
                self._buffer[slot] = rollout
            return rollout, True
        rollout = self._buffer[slot]
        if self.sample_scheduler.num_inference_steps is None:  # resumed from a checkpoint: no rollout sampled yet
            self._set_sampling_timesteps(self.accelerator.device)
        if rollout.prompts != prompts:
            raise RuntimeError(
                f"num_iterations reuses rollouts, but this micro-step's prompts {prompts[:2]} differ from the "
                f"buffered rollout's {rollout.prompts[:2]}: the sampler's order was changed"
            )
        return rollout, False

    # -- checkpoints: the rollout buffer travels with the random streams -----------------------------------------

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        state = {"micro_step": self._micro_step, "buffer": {s: r.state_dict() for s, r in self._buffer.items()}}
        torch.save(state, os.path.join(output_dir, f"rollout_buffer_{self.accelerator.process_index}.pt"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, f"rollout_buffer_{self.accelerator.process_index}.pt")
        if not os.path.isfile(path):
            if self.args.num_iterations > 1:
                logger.warning(f"{path} is missing: rollouts restart at the resumed step instead of being reused")
            self._micro_step = self.state.global_step * self.args.gradient_accumulation_steps
            return
        state = torch.load(path, weights_only=True)
        self._micro_step = int(state["micro_step"])
        device = self.accelerator.device
        self._buffer = {int(s): Rollout.from_state_dict(r, device) for s, r in state["buffer"].items()}
