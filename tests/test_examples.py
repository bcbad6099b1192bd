"""The examples run as users run them: `accelerate launch` on a saved pipeline and a saved dataset."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trl_rpo import DiffusionDPOConfig, DiffusionModelConfig
from trl_rpo.testing import tiny_preference_dataset, tiny_sd_pipeline

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_diffusion_dpo_example_runs_under_accelerate_launch(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    tiny_preference_dataset(8).save_to_disk(tmp_path / "data")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--cpu",
        str(EXAMPLES / "diffusion_dpo.py"),
        "--model_name_or_path",
        str(tmp_path / "pipe"),
        "--dataset_name",
        str(tmp_path / "data"),
        "--output_dir",
        str(out),
        "--use_peft",
        "--lora_r",
        "4",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "README.md").is_file()
    pipe = tiny_sd_pipeline()
    pipe.load_lora_weights(str(out))
    assert pipe(
        "a", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images.shape == (1, 32, 32, 3)


def _launch(script, *args):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", str(script), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_tailorpo_example_runs_under_accelerate_launch_with_the_aesthetic_scorer(tmp_path):
    from safetensors.torch import save_file

    from trl_rpo.rewards import AestheticMLP
    from trl_rpo.testing import tiny_clip_model, tiny_clip_processor

    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    tiny_clip_model().save_pretrained(tmp_path / "clip")
    tiny_clip_processor().save_pretrained(tmp_path / "clip")
    save_file(AestheticMLP(32).state_dict(), tmp_path / "head.safetensors")
    out = tmp_path / "out"
    result = _launch(
        EXAMPLES / "tailorpo.py",
        "--model_name_or_path", str(tmp_path / "pipe"),
        "--prompts_name_or_path", str(EXAMPLES / "prompts" / "animals.txt"),
        "--reward_funcs", "aesthetic", "jpeg_compressibility",
        "--reward_weights", "1.0", "0.1",
        "--aesthetic_clip_model", str(tmp_path / "clip"),
        "--aesthetic_head", str(tmp_path / "head.safetensors"),
        "--output_dir", str(out),
        "--use_peft", "--lora_r", "4",
        "--num_inference_steps", "3", "--num_selected_timesteps", "2",
        "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rewards/aesthetic/mean" in result.stdout and "rewards/jpeg_compressibility/mean" in result.stdout
    assert (out / "pytorch_lora_weights.safetensors").is_file() and "tailorpo" in (out / "README.md").read_text()


def test_tailorpo_yaml_config_parses_into_every_dataclass():
    from trl import TrlParser

    from trl_rpo import TailorPOConfig

    example = _load_example("tailorpo")
    parser = TrlParser((example.ScriptArguments, TailorPOConfig, DiffusionModelConfig))
    script, training, model = parser.parse_args_and_config(
        ["--config", str(EXAMPLES / "configs" / "tailorpo_sd15_aesthetic.yaml"), "--bf16", "false"]
    )
    assert script.reward_funcs == ["aesthetic"] and training.num_inference_steps == 20 and training.eta == 1.0
    assert model.use_peft and model.lora_r == 4


def test_tailorpo_example_refuses_unknown_reward_names():
    example = _load_example("tailorpo")
    with pytest.raises(SystemExit, match="unknown reward"):
        example.build_rewards(example.ScriptArguments(prompts_name_or_path="x", reward_funcs=["beauty"]))


def test_example_yaml_config_parses_into_every_dataclass():
    from trl import TrlParser

    example = _load_example("diffusion_dpo")
    parser = TrlParser((example.ScriptArguments, DiffusionDPOConfig, DiffusionModelConfig))
    script, training, model = parser.parse_args_and_config(
        # command-line values override the file (bf16 needs a GPU or use_cpu)
        ["--config", str(EXAMPLES / "configs" / "diffusion_dpo_sd15_lora.yaml"), "--bf16", "false"]
    )
    assert not training.bf16
    assert script.dataset_name == "yuvalkirstain/pickapic_v2"
    assert training.beta == 5000 and training.precompute_latents and training.validation_prompts
    assert model.use_peft and model.lora_r == 8


def test_peft_config_from_command_line_arguments_targets_the_unet_attention():
    from trl_rpo import get_peft_config

    assert get_peft_config(DiffusionModelConfig(model_name_or_path="x")) is None
    config = get_peft_config(DiffusionModelConfig(model_name_or_path="x", use_peft=True, lora_r=4, lora_alpha=2))
    assert config.r == 4 and config.lora_alpha == 2 and config.task_type is None
    assert config.target_modules is None  # the trainer fills in its model family's default targets
    targeted = get_peft_config(DiffusionModelConfig(model_name_or_path="x", use_peft=True, lora_target_modules="to_q"))
    assert set(targeted.target_modules) == {"to_q"}


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "tiny_dpo_demo.py"), "--steps", "4", "--output-dir", str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Held-out pairs" in result.stdout and "max pixel difference 0.00e+00" in result.stdout


def _tiny_yaml(tmp_path, name, **overrides):
    """The example config `name` with its Hub ids and GPU-only settings replaced by tiny local ones."""
    import yaml

    values = yaml.safe_load((EXAMPLES / "configs" / name).read_text())
    values.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def _tiny_builder(name: str):
    import trl_rpo.testing as testing

    return getattr(testing, f"tiny_{name}_pipeline")


_TINY_BUILDERS = {name: _tiny_builder(name) for name in ("sd", "sdxl", "sd3", "flux", "qwen_image", "z_image",
                                                          "flux2_klein")}  # fmt: skip
_TINY_RUN = dict(max_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=1, resolution=32,
                 bf16=False, report_to="none", save_strategy="no", logging_steps=1,
                 validation_prompts=None)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "pipeline", "lora"),
    [
        ("diffusion_dpo_sd15_full.yaml", "sd", False),
        ("diffusion_dpo_sdxl_lora.yaml", "sdxl", True),
        ("diffusion_dpo_sd35_lora.yaml", "sd3", True),
        ("diffusion_dpo_sd35_large_full.yaml", "sd3", False),
        ("diffusion_dpo_flux_lora.yaml", "flux", True),
        ("diffusion_dpo_qwen_image_lora.yaml", "qwen_image", True),
        ("diffusion_dpo_z_image_turbo_lora.yaml", "z_image", True),
        ("diffusion_dpo_flux2_klein_lora.yaml", "flux2_klein", True),
    ],
)
def test_dpo_example_configs_train_tiny_pipelines_through_the_example_script(tmp_path, config, pipeline, lora):
    """Each YAML config through the example's own `run` (its parser and `main`), in this process: the configs
    differ in their values, not in how they launch, and `accelerate launch` of this script is tested above."""
    build = _TINY_BUILDERS
    build[pipeline]().save_pretrained(tmp_path / "pipe")
    tiny_preference_dataset(4).save_to_disk(tmp_path / "data")
    out = tmp_path / "out"
    overrides = dict(_TINY_RUN, model_name_or_path=str(tmp_path / "pipe"), dataset_name=str(tmp_path / "data"),
                     output_dir=str(out), vae_model_name_or_path=None)  # fmt: skip
    if pipeline != "sd" and pipeline != "sdxl":
        overrides["max_sequence_length"] = 16 if pipeline in ("sd3", "flux") else 32
    if config.endswith("full.yaml"):
        overrides["optim"] = "adamw_torch"  # 8-bit AdamW is covered by the trainer tests
    assert _load_example("diffusion_dpo").run(["--config", str(_tiny_yaml(tmp_path, config, **overrides))]) == 0
    if lora:
        assert (out / "pytorch_lora_weights.safetensors").is_file()
    else:
        denoiser = "unet" if pipeline in ("sd", "sdxl") else "transformer"
        assert (out / denoiser / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
def test_served_vlm_example_builds_pairs_with_instruct_pix2pix_and_pushes_them(tmp_path, monkeypatch):
    import huggingface_hub
    from datasets import Dataset

    from tests._helpers import FakeHubApi
    from tests.test_critics import GOOD_JSON, ChatServer
    from trl_rpo.testing import tiny_instruct_pix2pix_pipeline

    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    tiny_instruct_pix2pix_pipeline().save_pretrained(tmp_path / "ip2p")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    pushed = []
    FakeHubApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHubApi)
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, len(self))))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example-secret-key")
    example = _load_example("build_rpo_dataset")
    from trl import TrlParser

    from trl_rpo.cli import BuildDatasetArguments
    from trl_rpo.data import RichPreferenceConfig

    with ChatServer(default=GOOD_JSON) as server:
        config = _tiny_yaml(
            tmp_path, "build_rpo_served_vlm.yaml", prompts=str(tmp_path / "prompts.txt"),
            generator=str(tmp_path / "pipe"), torch_dtype=None, num_inference_steps=2,
            output_dir=str(tmp_path / "out"),
            critic_kwargs={"base_url": server.url, "model": "tiny-vlm", "max_concurrency": 2, "timeout": 30},
            editor_kwargs=[{"pipeline": str(tmp_path / "ip2p"), "num_inference_steps": 2}],
            critic_recheck=False, change_guard=False, hub_dataset_id="me/rpo-tiny",
        )  # fmt: skip
        parser = TrlParser((BuildDatasetArguments, RichPreferenceConfig))
        args = parser.parse_args_and_config(["--config", str(config)])
        example.main(*args)
        requests = list(server.requests)
    assert len(requests) >= 4 and all(r["body"]["model"] == "tiny-vlm" for r in requests)  # 2 prompts x 2 images
    assert requests[0]["headers"]["Authorization"] == "Bearer sk-example-secret-key"
    assert pushed and pushed[0][0] == "me/rpo-tiny" and pushed[0][1] > 0
    card = "".join(str(call) for api in FakeHubApi.instances for call in api.calls)
    assert "sk-example-secret-key" not in card


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("diffusion_dpo_sd15_mapo.yaml", {"loss_type": ["mapo"], "mapo_beta": 0.1, "mapo_snr_value": 0.5}),
        ("diffusion_dpo_rpo_masked.yaml", {"mask_weight_outside": 0.0, "mask_dilation": 1}),
        # the memory guide's SD3.5 Large full fine-tuning setting (docs/memory.md)
        ("diffusion_dpo_sd35_large_full.yaml", {"activation_checkpointing": True, "precompute_latents": True}),
    ],
)
def test_mapo_and_masked_dpo_example_configs_parse(config, expected):
    from trl import TrlParser

    example = _load_example("diffusion_dpo")
    parser = TrlParser((example.ScriptArguments, DiffusionDPOConfig, DiffusionModelConfig))
    _, training, _ = parser.parse_args_and_config(["--config", str(EXAMPLES / "configs" / config), "--bf16", "false"])
    for key, value in expected.items():
        assert getattr(training, key) == value, key


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "script", "pipeline"),
    [("grpo_qwen_image_aesthetic.yaml", "grpo", "qwen_image"), ("nft_z_image_turbo_aesthetic.yaml", "nft", "z_image")],
)
def test_online_example_configs_of_the_new_families_train_tiny_pipelines(tmp_path, config, script, pipeline):
    _TINY_BUILDERS[pipeline]().save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
    overrides = dict(_TINY_RUN, model_name_or_path=str(tmp_path / "pipe"), prompts_name_or_path=str(tmp_path /
                     "prompts.txt"), output_dir=str(tmp_path / "out"), reward_funcs=["jpeg_compressibility"],
                     max_sequence_length=32, num_generations=2, per_device_train_batch_size=2, num_inference_steps=2,
                     max_steps=1)  # fmt: skip
    overrides.pop("gradient_accumulation_steps")
    assert _load_example(script).run(["--config", str(_tiny_yaml(tmp_path, config, **overrides))]) == 0
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()


def test_grpo_yaml_config_parses_into_every_dataclass():
    from trl import TrlParser

    from trl_rpo import DiffusionGRPOConfig

    example = _load_example("grpo")
    parser = TrlParser((example.ScriptArguments, DiffusionGRPOConfig, DiffusionModelConfig))
    script, training, model = parser.parse_args_and_config(
        ["--config", str(EXAMPLES / "configs" / "grpo_sd15_aesthetic.yaml"), "--bf16", "false"]
    )
    assert script.reward_funcs == ["aesthetic"] and training.num_generations == 4 and training.timestep_fraction == 0.5
    assert model.use_peft and model.lora_r == 4


def test_nft_yaml_config_parses_into_every_dataclass():
    from trl import TrlParser

    from trl_rpo import DiffusionNFTConfig

    example = _load_example("nft")
    parser = TrlParser((example.ScriptArguments, DiffusionNFTConfig, DiffusionModelConfig))
    script, training, model = parser.parse_args_and_config(
        ["--config", str(EXAMPLES / "configs" / "nft_sd15_aesthetic.yaml"), "--bf16", "false"]
    )
    assert script.reward_funcs == ["aesthetic"] and training.sampler == "ode" and training.nft_beta == 1.0
    assert model.use_peft and model.lora_r == 4


def test_remote_reward_example_serves_and_scores_on_loopback():
    result = subprocess.run([sys.executable, str(EXAMPLES / "remote_reward.py")], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote:" in result.stdout and "'status': 'ok'" in result.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (EXAMPLES / "shapes").glob("*.py")))
def test_shapes_scripts_import_everything_they_name(script):
    spec = importlib.util.spec_from_file_location(f"shapes_{script[:-3]}", EXAMPLES / "shapes" / script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # a missing name fails here, before any run


def test_readme_table_script_splices_a_demo_results_file_into_the_readme(tmp_path):
    import json

    from trl_rpo.shapes.report import README_END, README_START

    results = {"rows": [{"method": "base", "alignment": 0.5, "pairs": 0, "seconds": 0.0}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{README_START}\nold\n{README_END}\nb\n")
    subprocess.run([sys.executable, str(EXAMPLES / "shapes" / "readme_table.py"), str(tmp_path / "results.json"),
                    "--write", str(readme)], check=True, env=_env(), capture_output=True)  # fmt: skip
    text = readme.read_text()
    assert "| `base` | 0.500 |" in text and "old" not in text and text.startswith("a\n") and text.endswith("b\n")
