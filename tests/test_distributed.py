"""Several processes on CPU (gloo): DDP for the trainers, DeepSpeed ZeRO-2/3 for Diffusion-DPO on tiny SDXL and FLUX.

Each test launches `tests/distributed/train_check.py` with `accelerate launch`, reads what every rank wrote and
asserts the process count it ran with. CUDA/NCCL variants run the same script when a GPU is present.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed" / "train_check.py"
CONFIGS = ROOT / "examples" / "accelerate_configs"
pytestmark = pytest.mark.slow

# Each test runs on CPU processes (gloo) here and on GPUs (NCCL) where at least two are present.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL)")),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    # DeepSpeed JIT-compiles ops on first use: one build folder per test session keeps later runs fast.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "trl_rpo_torch_extensions"))
    env.update(extra)
    return env


def _kill_tree(pid: int) -> None:
    """Kill a launcher and its workers: torch's elastic agent starts each worker in a session of its own, so a
    hung run's workers would outlive the launcher (and keep its output pipes open)."""
    import psutil

    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def launch(tmp_path, *args, num_processes=2, config_file=None, cuda=False, suffix="", timeout=900):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
                "--main_process_port", str(_free_port())]  # fmt: skip
    extra = {}
    if config_file is not None:
        launcher += ["--config_file", str(config_file), "--mixed_precision", "no" if not cuda else "bf16"]
    else:
        launcher += ["--multi_gpu"]
    if not cuda and config_file is None:
        # DDP on CPU processes. (DeepSpeed picks its CPU accelerator by itself when there is no GPU; with
        # ACCELERATE_USE_CPU set, accelerate would drop DeepSpeed and run plain CPU DDP.)
        extra["ACCELERATE_USE_CPU"] = "true"
    out = tmp_path / "out"
    if cuda:
        args = (*args, "--cuda")
    process = subprocess.Popen(
        [*launcher, str(SCRIPT), "--output_dir", str(out), *args],
        env=_env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_tree(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"the {num_processes}-process run did not finish within {timeout} s (hung?):\n{stderr[-3000:]}")
    assert process.returncode == 0, stdout[-2000:] + stderr[-5000:]
    ranks = [json.loads((out / f"rank-{r}{suffix}.json").read_text()) for r in range(num_processes)]
    for r, record in enumerate(ranks):
        assert record["rank"] == r and record["num_processes"] == num_processes, record
    return ranks, out


def _assert_ddp_semantics(ranks, rows, per_device):
    a, b = ranks
    # Same weights on every rank after the optimizer steps.
    assert a["checksum"] == b["checksum"]
    # Effective batch = 2 x per-device: one epoch of `rows` rows takes rows / (2 * per_device) steps, and the
    # ranks see disjoint rows that together cover the dataset.
    assert a["global_step"] == b["global_step"] == rows // (2 * per_device)
    seen_a = [p for batch in a["seen_prompts"] for p in batch]
    seen_b = [p for batch in b["seen_prompts"] for p in batch]
    assert all(len(batch) == per_device for batch in a["seen_prompts"] + b["seen_prompts"])
    assert not set(seen_a) & set(seen_b)
    assert len(set(seen_a) | set(seen_b)) == rows
    # Logged metrics are the mean over both ranks of each rank's local value (logging every step).
    name = "rewards/margins"
    logged = [e[name] for e in a["log_history"] if name in e]
    expected = [(x + y) / 2 for x, y in zip(a["local_metrics"][name], b["local_metrics"][name])]
    assert logged == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert a["local_metrics"][name] != b["local_metrics"][name]  # the ranks really saw different data


DPO_DDP_ARGS = ("--trainer", "dpo", "--rows", "12", "--per_device_train_batch_size", "2", "--save_steps", "1",
                "--augment")  # fmt: skip


@pytest.fixture(scope="module")
def dpo_ddp_run(tmp_path_factory):
    """`run(device)`: one two-process DDP Diffusion-DPO epoch (12 rows of 64x40 images, random crops and flips, 2 per
    process, 3 steps, a checkpoint after each), launched once and shared by the DDP-semantics test, the noise-stream /
    resume test and the augmentation-stream test."""
    runs = {}

    def run(device: str = "cpu"):
        if device not in runs:
            runs[device] = launch(tmp_path_factory.mktemp(f"dpo-ddp-{device}"), *DPO_DDP_ARGS, "--max_steps", "3",
                                  cuda=device == "cuda")  # fmt: skip
        return runs[device]

    return run


@pytest.mark.parametrize("device", DEVICES)
def test_two_process_ddp_diffusion_dpo_keeps_ranks_identical_and_reduces_metrics(dpo_ddp_run, device):
    ranks, _ = dpo_ddp_run(device)
    _assert_ddp_semantics(ranks, rows=12, per_device=2)


@pytest.mark.parametrize("device", DEVICES)
def test_two_process_ddp_tailorpo_keeps_ranks_identical_and_reduces_metrics(tmp_path, device):
    ranks, _ = launch(tmp_path, "--trainer", "tailorpo", "--rows", "4", "--per_device_train_batch_size", "1",
                      cuda=device == "cuda")  # fmt: skip
    a, b = ranks
    assert a["checksum"] == b["checksum"]
    assert a["global_step"] == b["global_step"] == 2
    assert not {p for s in a["seen_prompts"] for p in s} & {p for s in b["seen_prompts"] for p in s}
    name = "rewards/brightness"
    logged = [e[f"{name}/mean"] for e in a["log_history"] if f"{name}/mean" in e]
    expected = [np.mean(x + y) for x, y in zip(a["pooled_values"][name], b["pooled_values"][name])]
    assert logged == pytest.approx(expected, rel=1e-4, abs=1e-7)


def test_two_process_dpo_ranks_draw_different_noise_and_timesteps_and_resume_continues_each_stream(
    tmp_path, dpo_ddp_run
):
    straight, first = dpo_ddp_run()
    a, b = straight
    assert len(a["draws"]) == len(b["draws"]) == 3
    for step_a, step_b in zip(a["draws"], b["draws"]):
        assert step_a["timesteps"] != step_b["timesteps"]
        assert step_a["noise"] != step_b["noise"]
    # Resume after step 2 (mid-epoch: 3 steps per epoch): step 3 draws what the uninterrupted run drew at step 3.
    out = tmp_path / "out"
    shutil.copytree(first, out)  # resumed in a copy: the shared run's files stay as it left them
    shutil.rmtree(out / "run" / "checkpoint-3")
    resumed, _ = launch(tmp_path, *DPO_DDP_ARGS, "--max_steps", "3", "--resume", suffix="-resumed")
    for record, uninterrupted in zip(resumed, straight):
        assert record["global_step"] == 3 and len(record["draws"]) == 1
        assert record["draws"][0] == uninterrupted["draws"][2]


def test_two_process_dpo_ranks_draw_their_own_crops_flips_and_vae_samples_without_precompute(dpo_ddp_run):
    # Python's `random` and the global torch RNG are seeded alike on every process: drawn from them, the crops, flips
    # and VAE posterior samples of the two processes would be the same at every step.
    (a, b), _ = dpo_ddp_run()
    assert len(a["augmentations"]) == len(b["augmentations"]) == 3
    for step_a, step_b in zip(a["augmentations"], b["augmentations"]):
        assert step_a["crops"] != step_b["crops"]
        # eps is recomputed from the latents of different images: equal draws still agree to about 1e-7
        assert not np.allclose(step_a["vae_eps"], step_b["vae_eps"], atol=1e-3)
    assert len({tuple(map(tuple, step["crops"])) for step in a["augmentations"]}) == 3  # the crops really move


@pytest.fixture(scope="module")
def tailorpo_with_ties_on_one_rank(tmp_path_factory):
    """Two TailorPO processes with a discrete reward that ties every candidate on process 1 (no pairs there).

    5 prompts, 2 per process and step: the second, last batch is uneven (1 prompt for 2 x 2 places), so accelerate
    fills it with repeated prompts and `gather_for_metrics` would keep 1 of the gathered values.
    """
    tmp_path = tmp_path_factory.mktemp("tailorpo-ties")
    ranks, _ = launch(tmp_path, "--trainer", "tailorpo", "--reward", "discrete_brightness", "--rows", "5",
                      "--per_device_train_batch_size", "2", timeout=300)  # fmt: skip
    return ranks


def test_two_process_tailorpo_finishes_when_one_rank_finds_no_pair(tailorpo_with_ties_on_one_rank):
    a, b = tailorpo_with_ties_on_one_rank
    assert a["global_step"] == b["global_step"] == 2
    assert b["local_metrics"]["pairs/count"] == [0.0, 0.0]
    assert all(count > 0 for count in a["local_metrics"]["pairs/count"])
    assert a["checksum"] == b["checksum"]  # process 1's zero-weight pass joined the gradient all-reduce
    assert a["checksum"] != a["initial_checksum"]  # and process 0's pairs trained the weights


def test_two_process_per_process_counts_and_times_are_averaged_over_all_ranks_on_an_uneven_last_batch(
    tailorpo_with_ties_on_one_rank,
):
    a, b = tailorpo_with_ties_on_one_rank
    for name in ("pairs/count", "time/sampling_s", "time/training_s"):
        logged = [e[name] for e in a["log_history"] if name in e]
        expected = [(x + y) / 2 for x, y in zip(a["local_metrics"][name], b["local_metrics"][name])]
        assert len(logged) == 2 and logged == pytest.approx(expected, rel=1e-4), name
    assert a["local_metrics"]["pairs/count"][-1] != b["local_metrics"]["pairs/count"][-1]  # the ranks differ


def test_two_process_tailorpo_pair_metrics_pool_the_pairs_of_all_ranks(tailorpo_sgd_step):
    # Process 1 finds pairs for one of its two prompts, process 0 for both: different, non-zero pair counts.
    (a, b), _ = tailorpo_sgd_step("half_tied_brightness", "ddp")
    name = "logps/chosen"  # (the implicit rewards are all 0 at the first step, policy == reference)
    (values_a,), (values_b,) = a["pooled_values"][name], b["pooled_values"][name]
    assert len(values_a) > len(values_b) > 0
    logged = [e[name] for e in a["log_history"] if name in e]
    pooled = np.mean(values_a + values_b)
    assert logged == pytest.approx([pooled], rel=1e-5)
    assert abs(pooled - (np.mean(values_a) + np.mean(values_b)) / 2) > 1e-3 * abs(pooled)  # not the mean of means


def test_two_process_tailorpo_reward_std_is_over_the_images_of_all_ranks(tailorpo_with_ties_on_one_rank):
    a, b = tailorpo_with_ties_on_one_rank
    name = "rewards/discrete_brightness"
    logged = [e[f"{name}/std"] for e in a["log_history"] if f"{name}/std" in e]
    expected = [np.std(x + y, ddof=1) for x, y in zip(a["pooled_values"][name], b["pooled_values"][name])]
    assert len(logged) == 2 and logged == pytest.approx(expected, rel=1e-4)


def test_two_process_tailorpo_ranks_roll_out_from_different_noise(tailorpo_with_ties_on_one_rank):
    a, b = tailorpo_with_ties_on_one_rank
    assert len(a["draws"]) == len(b["draws"]) == 2
    for step_a, step_b in zip(a["draws"], b["draws"]):
        assert step_a["start"] != step_b["start"]


def _zero2_without_clipping(tmp_path) -> Path:
    """The shipped ZeRO-2 config with gradient clipping off (it would hide the gradient's scale)."""
    import yaml

    config = yaml.safe_load((CONFIGS / "deepspeed_zero2.yaml").read_text())
    config["deepspeed_config"]["gradient_clipping"] = 0.0
    path = tmp_path / "zero2_no_clipping.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tailorpo_sgd_step(tmp_path_factory):
    """`run(reward, backend)`: one two-process TailorPO SGD step (4 prompts, 2 per process), launched once per reward
    and backend and shared by the update test and the pooled pair-metrics test."""
    runs = {}

    def run(reward: str, backend: str):
        if (reward, backend) not in runs:
            tmp_path = tmp_path_factory.mktemp(f"tailorpo-sgd-{reward}-{backend}")
            config = _zero2_without_clipping(tmp_path) if backend == "zero2" else None
            runs[reward, backend] = launch(tmp_path, "--trainer", "tailorpo", "--reward", reward, "--rows", "4",
                                           "--per_device_train_batch_size", "2", "--max_steps", "1", "--sgd",
                                           config_file=config, timeout=300)  # fmt: skip
        return runs[reward, backend]

    return run


@pytest.mark.parametrize(
    ("reward", "backend"),
    [("discrete_brightness", "ddp"), ("half_tied_brightness", "ddp"), ("half_tied_brightness", "zero2")],
)
def test_two_process_tailorpo_update_is_that_of_the_mean_over_the_pairs_of_all_ranks(
    tailorpo_sgd_step, reward, backend
):
    """One SGD step (learning rate 1, no clipping) when the processes find different numbers of pairs: process 1
    none (`discrete_brightness`) or pairs for one of its two prompts only (`half_tied_brightness`). DDP and
    DeepSpeed ZeRO-2 both average the gradients over processes.

    The update must be minus the gradient of the mean loss over the pairs of both processes, what one process
    holding all of them would compute: `-(S_0 + S_1) / (n_0 + n_1)`, with `S_p` the sum of process p's per-pair
    loss gradients (recomputed outside DDP at the initial weights). The mean of the per-process means (DDP's
    average of `losses.mean()`) gives `-(S_0 / n_0 + S_1 / n_1) / 2` instead, and half the update when n_1 = 0.
    """
    if backend == "zero2":
        pytest.importorskip("deepspeed")
    ranks, out = tailorpo_sgd_step(reward, backend)
    a, b = ranks
    assert a["global_step"] == b["global_step"] == 1
    assert a["is_deepspeed"] is (backend == "zero2")
    records = [torch.load(out / f"update-rank-{r}.pt") for r in range(2)]
    counts = [record["pairs"] for record in records]
    assert counts[0] > 0 and counts[0] != counts[1]  # the ranks really differ
    assert counts[1] == 0 if reward == "discrete_brightness" else counts[1] > 0
    expected = -(records[0]["gradient_sum"] + records[1]["gradient_sum"]) / sum(counts)
    assert expected.norm() > 0

    def relative_error(update):
        return float((update - expected).norm() / expected.norm())

    # float32 gradients summed in another order than the double-precision replay: about 3e-6 here.
    assert relative_error(records[0]["update"]) < 1e-4
    assert torch.equal(records[0]["update"], records[1]["update"])
    # The mean of per-process means is far off (before the fix the update was that, 0.5 and 0.4 from `expected`).
    mean_of_means = -sum(r["gradient_sum"] / max(n, 1) for r, n in zip(records, counts)) / 2
    assert relative_error(mean_of_means) > 0.1


def test_two_process_ddp_grpo_with_a_discrete_reward_tied_on_one_rank_finishes_in_sync(tmp_path):
    """GRPO under DDP: process 1's groups all tie (zero advantages, nothing to learn), process 0's do not."""
    ranks, _ = launch(tmp_path, "--trainer", "grpo", "--reward", "discrete_brightness", "--rows", "4",
                      "--per_device_train_batch_size", "2")  # fmt: skip
    a, b = ranks
    assert a["global_step"] == b["global_step"] == 2  # 4 prompts, 1 per process and step
    assert not {p for s in a["seen_prompts"] for p in s} & {p for s in b["seen_prompts"] for p in s}
    assert all(len(set(batch)) == 1 and len(batch) == 2 for batch in a["seen_prompts"] + b["seen_prompts"])
    assert b["pooled_values"]["frac_reward_zero_std"] == [[1.0], [1.0]]
    assert a["pooled_values"]["frac_reward_zero_std"] == [[0.0], [0.0]]
    logged = [e["frac_reward_zero_std"] for e in a["log_history"] if "frac_reward_zero_std" in e]
    assert logged == [0.5, 0.5]
    name = "rewards/discrete_brightness"
    logged_mean = [e[f"{name}/mean"] for e in a["log_history"] if f"{name}/mean" in e]
    expected = [np.mean(x + y) for x, y in zip(a["pooled_values"][name], b["pooled_values"][name])]
    assert logged_mean == pytest.approx(expected, rel=1e-4)
    assert a["checksum"] == b["checksum"]  # process 1's zero-advantage pass joined the gradient all-reduce
    assert a["checksum"] != a["initial_checksum"]  # and process 0's groups trained the weights
    for step_a, step_b in zip(a["draws"], b["draws"]):
        assert step_a["start"] != step_b["start"]  # each process rolls out from its own noise


def test_two_process_ddp_nft_pools_rewards_and_scales_advantages_by_the_std_of_every_process(tmp_path):
    """DiffusionNFT under DDP with `scale_rewards="batch"`: process 1's rewards all tie (zero), process 0's do not."""
    ranks, _ = launch(tmp_path, "--trainer", "nft", "--reward", "discrete_brightness", "--rows", "4",
                      "--per_device_train_batch_size", "2")  # fmt: skip
    a, b = ranks
    assert a["global_step"] == b["global_step"] == 2
    for step_a, step_b in zip(a["draws"], b["draws"]):
        assert step_a["start"] != step_b["start"]  # each process rolls out from its own noise
        rewards = np.array(step_a["rewards"] + step_b["rewards"])
        batch_std = rewards.std(ddof=1)  # over every process's images, as TRL after gathering
        expected = (np.array(step_a["rewards"]) - np.mean(step_a["rewards"])) / (batch_std + 1e-4)
        assert step_a["advantages"] == pytest.approx(expected.tolist(), rel=1e-4)
        assert step_b["advantages"] == [0.0, 0.0]
    logged = [e["reward_std"] for e in a["log_history"] if "reward_std" in e]
    expected_std = [np.std(x["rewards"] + y["rewards"], ddof=1) for x, y in zip(a["draws"], b["draws"])]
    assert logged == pytest.approx(expected_std, rel=1e-4)
    assert a["checksum"] == b["checksum"] and a["checksum"] != a["initial_checksum"]


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory):
    from trl_rpo.testing import tiny_sdxl_pipeline

    path = tmp_path_factory.mktemp("tiny-sdxl") / "pipe"
    tiny_sdxl_pipeline().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def zero_sdxl_run(tmp_path_factory, tiny_sdxl_dir):
    """`run(stage, device)`: one two-process Diffusion-DPO training of tiny SDXL under a ZeRO stage, 2 steps with a
    checkpoint after each and the model saved at the end, launched once and shared by the test of its saved LoRA,
    the test that resumes from its checkpoint and (ZeRO-3 on CPU, which also renders validation images at each
    step) the validation test; each launch costs 20-40 s of start-up on CPU."""
    runs = {}

    def run(stage: str, device: str = "cpu"):
        if (stage, device) not in runs:
            validation = ("--validation",) if (stage, device) == ("3", "cpu") else ()
            runs[stage, device] = launch(tmp_path_factory.mktemp(f"zero{stage}-{device}"), "--trainer", "dpo",
                                         "--model", "sdxl", "--model_path", str(tiny_sdxl_dir), "--max_steps", "2",
                                         "--save_steps", "1", "--save", *validation,
                                         config_file=CONFIGS / f"deepspeed_zero{stage}.yaml",
                                         cuda=device == "cuda", timeout=600)  # fmt: skip
        return runs[stage, device]

    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stage", ["2", "3", "3_offload"])
def test_two_process_deepspeed_zero_dpo_on_tiny_sdxl_saves_a_lora_that_reloads(zero_sdxl_run, stage, device):
    pytest.importorskip("deepspeed")
    ranks, out = zero_sdxl_run(stage, device)
    a, b = ranks
    assert a["is_deepspeed"] and b["is_deepspeed"]
    assert a["final_loss"] is not None and torch.isfinite(torch.tensor(a["final_loss"]))
    assert a["checksum"] == b["checksum"]
    assert a["partitioned"] is (stage != "2") and b["partitioned"] is (stage != "2")
    # The frozen VAE and text encoders were loaded outside ZeRO-3 partitioning.
    assert a["frozen_modules_whole"] and b["frozen_modules_whole"]
    assert (out / "model" / "pytorch_lora_weights.safetensors").is_file()
    assert a["reload_difference"] < (1e-5 if device == "cpu" else 2e-2)  # bf16 on CUDA


@pytest.mark.parametrize("training", ["full", "lora"])
def test_two_process_zero3_renders_the_validation_images_of_the_whole_unet(
    tmp_path, tiny_sdxl_dir, zero_sdxl_run, training
):
    # Only the main process renders, while every UNet weight is sharded (persistence threshold 0): a forward on one
    # process alone would wait on, or pair with, the other process's collectives. A hang fails the timeout.
    pytest.importorskip("deepspeed")
    if training == "lora":
        ranks, out = zero_sdxl_run("3")  # the shared ZeRO-3 LoRA run renders validation images at each step
    else:
        ranks, out = launch(tmp_path, "--trainer", "dpo", "--model", "sdxl", "--model_path", str(tiny_sdxl_dir),
                            "--max_steps", "2", "--full", "--validation", config_file=CONFIGS / "deepspeed_zero3.yaml",
                            timeout=420)  # fmt: skip
    a, b = ranks
    assert a["partitioned"] and b["partitioned"]
    for step in (1, 2):
        assert len(list((out / "run" / "validation" / f"step-{step:06d}").glob("*.png"))) == 2
    # The final step's images equal what the gathered weights give in a fresh pipeline, outside DeepSpeed.
    assert a["validation_difference"] == 0


@pytest.fixture(scope="module")
def tiny_flux_dir(tmp_path_factory):
    from trl_rpo.testing import tiny_flux_pipeline

    path = tmp_path_factory.mktemp("tiny-flux") / "pipe"
    tiny_flux_pipeline().save_pretrained(path)
    return path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", ["lora", "full"])
def test_two_process_zero3_flow_dpo_on_tiny_flux_saves_weights_that_reload(tmp_path, tiny_flux_dir, training, device):
    """FLUX under ZeRO-3 (every transformer weight sharded): packed latents, RoPE ids and the guidance embedding go
    through the partitioned transformer; the saved LoRA (`FluxPipeline.load_lora_weights`) or transformer folder
    gives the trained model's prediction in a fresh pipeline."""
    pytest.importorskip("deepspeed")
    full = ("--full",) if training == "full" else ()
    ranks, out = launch(tmp_path, "--trainer", "dpo", "--model", "flux", "--model_path", str(tiny_flux_dir),
                        "--max_steps", "2", "--save", *full, config_file=CONFIGS / "deepspeed_zero3.yaml",
                        cuda=device == "cuda", timeout=600)  # fmt: skip
    a, b = ranks
    assert a["is_deepspeed"] and b["is_deepspeed"]
    assert a["partitioned"] and b["partitioned"]
    assert a["frozen_modules_whole"] and b["frozen_modules_whole"]  # VAE, CLIP and T5 loaded outside zero.Init
    losses = [e["loss"] for e in a["log_history"] if "loss" in e]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # The ranks trained on disjoint rows, so their local values differ; the gathered weights agree and moved.
    assert not {p for s in a["seen_prompts"] for p in s} & {p for s in b["seen_prompts"] for p in s}
    assert a["local_metrics"]["mse/policy_chosen"] != b["local_metrics"]["mse/policy_chosen"]
    assert a["checksum"] == b["checksum"]
    assert a["checksum"] != a["initial_checksum"]
    saved = out / "model" / ("transformer" if training == "full" else "pytorch_lora_weights.safetensors")
    assert saved.exists()
    assert a["reload_difference"] < (1e-5 if device == "cpu" else 2e-2)  # bf16 on CUDA


@pytest.mark.parametrize("stage", ["2", "3", "3_offload"])
def test_two_process_deepspeed_zero_training_resumes_from_its_checkpoint(
    tmp_path, tiny_sdxl_dir, zero_sdxl_run, stage
):
    pytest.importorskip("deepspeed")
    config = CONFIGS / f"deepspeed_zero{stage}.yaml"
    common = ("--trainer", "dpo", "--model", "sdxl", "--model_path", str(tiny_sdxl_dir), "--save_steps", "1")
    first_ranks, first = zero_sdxl_run(stage)  # the shared first run (2 steps, a checkpoint after each) ...
    out = tmp_path / "out"
    shutil.copytree(first, out)  # ... resumed in a copy, so the other test's files stay as that run left them
    assert (out / "run" / "checkpoint-2").is_dir()
    resumed, _ = launch(tmp_path, *common, "--max_steps", "3", "--resume", config_file=config, suffix="-resumed")
    for record, before in zip(resumed, first_ranks):
        assert record["is_deepspeed"] and record["global_step"] == 3
        assert len(record["seen_prompts"]) == 1  # only step 3 was trained; steps 1-2 came from the checkpoint
        assert record["steps_logged"] == [1, 2, 3]  # the log history of steps 1-2 is restored with it
        # Training resumed from the weights the first run ended with (checkpoint-2), not from a fresh start.
        assert record["start_checksum"] == pytest.approx(before["checksum"], rel=1e-6, abs=1e-9)
        assert before["checksum"] != pytest.approx(record["initial_checksum"], rel=1e-3)
    assert resumed[0]["checksum"] == resumed[1]["checksum"]


PRECOMPUTE_SCRIPT = ROOT / "tests" / "distributed" / "precompute_check.py"


def _precompute(tmp_path, num_processes):
    out = tmp_path / f"precompute-{num_processes}"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
                "--main_process_port", str(_free_port()), *(["--multi_gpu"] if num_processes > 1 else [])]  # fmt: skip
    result = subprocess.run([*launcher, str(PRECOMPUTE_SCRIPT), "--output_dir", str(out), "--cache_dir",
                             str(out / "cache")], env=_env(ACCELERATE_USE_CPU="true"), capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    records = [json.loads((out / f"rank-{r}.json").read_text()) for r in range(num_processes)]
    assert [(r["rank"], r["num_processes"]) for r in records] == [(r, num_processes) for r in range(num_processes)]
    return records, [dict(np.load(out / f"rank-{r}.npz")) for r in range(num_processes)]


def test_two_process_precompute_encodes_one_shard_each_and_gives_the_one_process_cache(tmp_path):
    (single,), (expected,) = _precompute(tmp_path, 1)
    ranks, caches = _precompute(tmp_path, 2)
    assert single["encoded_rows"] == list(range(6))
    # Each process encoded its own half of the rows, not all of them (and not rank 0 alone) ...
    assert [r["encoded_rows"] for r in ranks] == [[0, 1, 2], [3, 4, 5]]
    # ... and each reads the whole dataset, equal to the one-process cache: same crops (in time_ids), same VAE
    # samples and embeddings (up to float rounding, since the VAE runs on other batch compositions).
    for record, cache in zip(ranks, caches):
        assert record["prompts"] == single["prompts"]
        np.testing.assert_array_equal(cache["chosen_time_ids"], expected["chosen_time_ids"])
        for key, value in expected.items():
            np.testing.assert_allclose(cache[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def launch_cli(tmp_path, *args, config_file=None, timeout=300) -> str:
    """`accelerate launch` of `trl-rpo` (the CLI as users run it) on two CPU processes; returns its stdout.

    DDP by default (gloo, as `launch` does); with a DeepSpeed `config_file`, gloo is named by `--ddp_backend`, since on
    CPU processes transformers would otherwise set up a one-process state next to DeepSpeed's two.
    """
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
                "--main_process_port", str(_free_port())]  # fmt: skip
    if config_file is None:
        launcher, extra = [*launcher, "--multi_gpu"], {"ACCELERATE_USE_CPU": "true"}
    else:
        launcher, extra = [*launcher, "--config_file", str(config_file), "--mixed_precision", "no"], {}
        args = (*args, "--ddp_backend", "gloo")
    common = ("--output_dir", str(tmp_path / "out"), "--report_to", "none", "--save_strategy", "no",
              "--logging_steps", "1", "--use_peft", "--lora_r", "4")  # fmt: skip
    result = subprocess.run([*launcher, "-m", "trl_rpo.cli", *args, *common], env=_env(**extra), capture_output=True,
                            text=True, timeout=timeout)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    return result.stdout


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    from trl_rpo.testing import tiny_sd_pipeline

    path = tmp_path_factory.mktemp("tiny-sd") / "pipe"
    tiny_sd_pipeline().save_pretrained(path)
    return path


def test_two_process_dpo_precompute_finishes_when_a_process_gets_no_rows(tmp_path, tiny_sd_dir):
    """One row, two processes: process 1's shard is empty (`datasets.map` writes no cache file for it), so the cache
    holds process 0's shard only, and both processes train on it."""
    from trl_rpo.testing import tiny_preference_dataset

    tiny_preference_dataset(1).save_to_disk(tmp_path / "data")
    stdout = launch_cli(tmp_path, "dpo", "--model_name_or_path", str(tiny_sd_dir), "--dataset_name",
                        str(tmp_path / "data"), "--precompute_latents", "true", "--precompute_cache_dir",
                        str(tmp_path / "cache"), "--max_steps", "1", "--per_device_train_batch_size", "1")  # fmt: skip
    assert "'train_loss'" in stdout
    assert [p.name for p in (tmp_path / "cache").glob("*/*.arrow")] == ["train-00000-of-00002.arrow"]


@pytest.mark.parametrize("command", ["tailorpo", "grpo"])
def test_two_process_zero3_online_commands_score_with_a_whole_clip_model(tmp_path, tiny_sd_dir, command):
    """`zero3_init_flag: true` switches on transformers' ZeRO-3 loading before the scorers are built: a CLIP scorer
    loaded then is partitioned across the processes with no engine to gather it: loading it fails."""
    pytest.importorskip("deepspeed")
    from trl_rpo.testing import tiny_clip_model, tiny_clip_processor

    tiny_clip_model().save_pretrained(tmp_path / "clip")
    tiny_clip_processor().save_pretrained(tmp_path / "clip")
    sizes = ("--num_selected_timesteps", "2", "--per_device_train_batch_size", "1") if command == "tailorpo" else (
        "--num_generations", "2", "--per_device_train_batch_size", "2")  # fmt: skip
    stdout = launch_cli(tmp_path, command, "--model_name_or_path", str(tiny_sd_dir), "--prompts_name_or_path",
                        str(ROOT / "examples" / "prompts" / "animals.txt"), "--reward_funcs", "clip_score",
                        "--clip_model", str(tmp_path / "clip"), "--num_inference_steps", "3", "--max_steps", "1",
                        *sizes, config_file=CONFIGS / "deepspeed_zero3.yaml")  # fmt: skip
    assert "'rewards/clip_score/mean'" in stdout
