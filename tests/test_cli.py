"""The `trl-rpo` command line and the build-dataset example."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trl_rpo.cli import COMMANDS, BuildDatasetArguments, load_prompts, main, resolve_stage
from trl_rpo.data import RichPreferenceConfig
from trl_rpo.testing import tiny_preference_dataset, tiny_sd_pipeline

ROOT = Path(__file__).resolve().parents[1]
SHAPES_YAML = ROOT / "examples" / "configs" / "build_rpo_shapes.yaml"


def test_build_dataset_help_lists_stage_and_config_options():
    result = subprocess.run(
        [sys.executable, "-m", "trl_rpo.cli", "build-dataset", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for option in ("--prompts", "--generator", "--critic", "--editor", "--images_per_prompt", "--shard_size"):
        assert option in result.stdout
    assert result.stdout.startswith("usage: trl-rpo build-dataset")


def test_no_command_prints_the_list_of_commands_and_fails(capsys):
    assert main([]) == 2
    assert "build-dataset" in capsys.readouterr().out


def test_commands_mute_the_bitsandbytes_cpu_kernel_notice_only(capsys, monkeypatch):
    import logging

    notice = logging.getLogger("bitsandbytes.backends.cpu.ops")
    monkeypatch.setattr(notice, "level", logging.NOTSET)
    main([])
    assert notice.getEffectiveLevel() == logging.ERROR  # the optional-kernel warning is muted, errors are not
    assert logging.getLogger("bitsandbytes").level == logging.NOTSET


def test_an_unknown_command_is_refused_naming_the_known_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-everything"])
    assert exit_info.value.code == 2
    assert "unknown command 'train-everything'; choose from build-dataset" in capsys.readouterr().err


def test_commands_are_registered_in_one_table_so_new_ones_are_one_entry():
    assert list(COMMANDS)[:7] == ["build-dataset", "dpo", "tailorpo", "eval", "grpo", "nft", "serve-reward"]
    assert "demo" in COMMANDS
    assert all(callable(command.run) and command.help for command in COMMANDS.values())


def test_build_dataset_runs_the_offline_shapes_config_with_command_line_overrides(tmp_path, capsys):
    out = tmp_path / "pairs"
    code = main(
        ["build-dataset", "--config", str(SHAPES_YAML), "--prompts", "shapes:4", "--output_dir", str(out)]
        + ["--disable_tqdm", "true"]
    )
    assert code == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["counts"]["prompts"] == 4  # the command line beat the file's shapes:32
    assert stats["config"]["shard_size"] == 8  # the file's value
    assert len(stats["stages"]["verifiers"]) == 3  # reward margin, critic re-check, change guard
    assert f"pair(s) in {out}" in capsys.readouterr().out


def test_build_dataset_resumes_when_run_again(tmp_path):
    args = ["build-dataset", "--config", str(SHAPES_YAML), "--prompts", "shapes:4", "--output_dir", str(tmp_path)]
    args += ["--disable_tqdm", "true"]
    assert main(args) == 0
    manifest = (tmp_path / "manifest.json").read_text()
    assert main(args) == 0
    assert (tmp_path / "manifest.json").read_text() == manifest


def test_the_console_script_points_at_main():
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="console_scripts", name="trl-rpo") or [None]
    if entry is None:
        pytest.skip("trl-rpo is not installed as a console script (run `pip install -e .`)")
    assert entry.value == "trl_rpo.cli:main"
    assert shutil.which("trl-rpo", path=str(Path(sys.executable).parent))


def test_stages_resolve_from_the_shapes_alias_and_import_paths():
    from trl_rpo.shapes import Critic, alignment_score

    assert isinstance(resolve_stage("shapes", "critic"), Critic)
    assert isinstance(resolve_stage("trl_rpo.shapes:Critic", "critic"), Critic)  # a class is instantiated
    assert resolve_stage("trl_rpo.shapes:alignment_score", "reward") is alignment_score  # a function is not


def test_a_stage_that_cannot_be_resolved_is_named_in_the_error():
    with pytest.raises(ValueError, match="critic 'trl_rpo.shapes:NoSuchCritic' cannot be imported"):
        resolve_stage("trl_rpo.shapes:NoSuchCritic", "critic")
    with pytest.raises(ValueError, match="editor 'gpt': expected 'shapes', one of .*'inpaint'"):
        resolve_stage("gpt", "editor")


def test_built_in_backends_are_built_with_their_keyword_arguments():
    critic = resolve_stage("openai", "critic", {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "k"})
    assert type(critic).__name__ == "OpenAICompatibleCritic"
    with pytest.raises(ValueError, match="critic 'trl_rpo.data.critics:OpenAICompatibleCritic' could not be built"):
        resolve_stage("openai", "critic", {"no_such_argument": 1})
    with pytest.raises(ValueError, match="takes no arguments"):
        resolve_stage("shapes", "critic", {"x": 1})


def test_stage_arguments_come_as_json_or_yaml_mappings_one_per_editor():
    from trl_rpo.cli import BuildDatasetArguments

    args = BuildDatasetArguments(
        prompts="shapes:2", generator="shapes", critic="openai", critic_kwargs='{"model": "m"}',
        editor=["inpaint", "img2img"], editor_kwargs=[{"strength": 0.5}, {}],
    )  # fmt: skip
    assert args.critic_kwargs == {"model": "m"} and args.editor_kwargs == [{"strength": 0.5}, {}]
    with pytest.raises(ValueError, match="editor_kwargs has 1 entries for 2 editors"):
        BuildDatasetArguments(prompts="p", generator="g", editor=["a", "b"], editor_kwargs='[{"x": 1}]')
    with pytest.raises(ValueError, match="critic_kwargs is not valid JSON"):
        BuildDatasetArguments(prompts="p", generator="g", critic_kwargs="{model: m}")


def test_prompts_load_from_a_text_file_and_from_the_shapes_world(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat\n\na dog\n")
    assert load_prompts(str(path)) == ["a cat", "a dog"]
    assert len(load_prompts("shapes:5", limit=3)) == 3
    with pytest.raises(ValueError, match="expected 'shapes:N'"):
        load_prompts("shapes:many")


def test_push_to_hub_needs_a_repository_id():
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_dataset_id"):
        BuildDatasetArguments(prompts="shapes:2", generator="shapes", push_to_hub=True)


def test_the_example_script_builds_the_shapes_dataset(tmp_path):
    spec = importlib.util.spec_from_file_location("build_rpo_dataset", ROOT / "examples" / "build_rpo_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = BuildDatasetArguments(prompts="shapes:4", generator="shapes", reward_funcs=["shapes"], change_guard=True)
    config = RichPreferenceConfig(output_dir=str(tmp_path / "out"), shard_size=2, disable_tqdm=True)
    module.main(args, config)
    assert (tmp_path / "out" / "shard-00001").is_dir()


def test_stage_arguments_may_be_yaml_mappings(tmp_path):
    from trl import TrlParser

    from trl_rpo.cli import BuildDatasetArguments
    from trl_rpo.data.builder import RichPreferenceConfig

    path = tmp_path / "rpo.yaml"
    path.write_text(
        "prompts: shapes:2\ngenerator: shapes\ncritic: openai\n"
        "critic_kwargs: {base_url: 'http://127.0.0.1:9/v1', model: m, max_concurrency: 8}\n"
        "editor: [inpaint]\neditor_kwargs: [{pipeline: some/inpaint-model}]\n"
    )
    args, _ = TrlParser((BuildDatasetArguments, RichPreferenceConfig)).parse_args_and_config(["--config", str(path)])
    assert args.critic_kwargs == {"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_concurrency": 8}
    assert args.editor_kwargs == [{"pipeline": "some/inpaint-model"}]
    assert resolve_stage(args.critic, "critic", args.critic_kwargs).max_concurrency == 8


@pytest.mark.parametrize(
    ("command", "config_class"),
    [("dpo", "DiffusionDPOConfig"), ("tailorpo", "TailorPOConfig"), ("grpo", "DiffusionGRPOConfig"),
     ("nft", "DiffusionNFTConfig")],  # fmt: skip
)
def test_trainer_command_help_lists_every_config_field_and_the_lora_flags(command, config_class, capsys):
    import dataclasses

    import trl_rpo
    from trl_rpo.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    fields = [f.name for f in dataclasses.fields(getattr(trl_rpo, config_class)) if f.init]
    missing = [name for name in fields if f"--{name}" not in text]
    assert not missing
    for flag in ("--model_name_or_path", "--use_peft", "--lora_r", "--lora_alpha", "--lora_target_modules"):
        assert flag in text


def test_trainer_command_reports_a_bad_value_before_loading_anything(tmp_path, capsys):
    from trl_rpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["dpo", "--dataset_name", str(tmp_path / "none"), "--model_name_or_path", str(tmp_path / "none"),
              "--output_dir", str(tmp_path / "out"), "--beta", "-1"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "beta must be positive" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_trl_rpo_dpo_trains_from_a_yaml_config_with_command_line_overrides(tmp_path):
    import yaml

    from trl_rpo.cli import main

    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    tiny_preference_dataset(4).save_to_disk(tmp_path / "data")
    config = tmp_path / "dpo.yaml"
    values = {"model_name_or_path": str(tmp_path / "pipe"), "dataset_name": str(tmp_path / "data"),
              "output_dir": str(tmp_path / "out"), "max_steps": 5, "use_peft": True, "lora_r": 4, "report_to": "none",
              "save_strategy": "no", "per_device_train_batch_size": 2}  # fmt: skip
    config.write_text(yaml.safe_dump(values))
    assert main(["dpo", "--config", str(config), "--max_steps", "1"]) == 0
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.parametrize(
    ("argument", "expected"),
    [("--dataset_name", "Dataset.save_to_disk"), ("--model_name_or_path", "pipeline.save_pretrained")],
)
def test_a_missing_folder_is_one_line_naming_argument_value_and_expectation(tmp_path, capsys, argument, expected):
    from trl_rpo.cli import main

    pipeline, dataset = tmp_path / "pipe", tmp_path / "data"
    pipeline.mkdir()
    dataset.mkdir()
    values = {"--dataset_name": str(dataset), "--model_name_or_path": str(pipeline)}
    values[argument] = str(tmp_path / "missing")
    with pytest.raises(SystemExit) as exit_info:
        main(["dpo", *[item for pair in values.items() for item in pair], "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{argument} {tmp_path / 'missing'}: no such file or folder; expected" in err and expected in err
    assert not (tmp_path / "out").exists()


def test_hub_ids_are_not_mistaken_for_missing_folders():
    from trl_rpo.cli import looks_local

    assert not looks_local("stabilityai/stable-diffusion-xl-base-1.0")
    assert not looks_local("pickapic_v2")
    assert looks_local("./data") and looks_local("/abs/data") and looks_local("a/b/c") and looks_local("p.txt")
@pytest.mark.parametrize("script", ["grpo", "tailorpo"])
def test_the_online_scripts_take_reward_names_and_reward_server_urls(script):
    from trl_rpo.rewards.remote import RemoteReward
    from trl_rpo.scripts import grpo, tailorpo

    assert grpo.REWARDS is tailorpo.REWARDS
    args = tailorpo.ScriptArguments(
        prompts_name_or_path="p.txt",
        reward_funcs=["jpeg_compressibility", "http://127.0.0.1:8000", "shapes_alignment"],
    )
    funcs = (grpo.build_grpo_rewards if script == "grpo" else tailorpo.build_rewards)(args)
    assert funcs[0].__name__ == "jpeg_compressibility" and funcs[2].__name__ == "alignment_score"
    assert isinstance(funcs[1], RemoteReward) and funcs[1].url == "http://127.0.0.1:8000"
    with pytest.raises(SystemExit, match="unknown reward"):
        grpo.build_grpo_rewards(tailorpo.ScriptArguments(prompts_name_or_path="p.txt", reward_funcs=["nope"]))


def test_grpo_reports_a_bad_value_before_loading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["grpo", "--prompts_name_or_path", str(tmp_path / "none"), "--model_name_or_path", str(tmp_path / "none"),
              "--output_dir", str(tmp_path / "out"), "--num_generations", "3",
              "--per_device_train_batch_size", "4"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "multiple of num_generations" in capsys.readouterr().err


def test_serve_reward_serves_a_named_reward_over_loopback(monkeypatch):
    import threading

    from PIL import Image

    import trl_rpo.rewards.remote as remote
    from trl_rpo import RemoteReward
    from trl_rpo.rewards import jpeg_compressibility

    started = {}

    def serve_in_thread(scorer, host, port, max_batch_size):
        server = remote.make_reward_server(scorer, host, 0, max_batch_size)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.update(server=server, url=f"http://{host}:{server.server_address[1]}", max_batch_size=max_batch_size)

    monkeypatch.setattr(remote, "serve_reward", serve_in_thread)
    assert main(["serve-reward", "--reward", "jpeg_compressibility", "--max_batch_size", "4"]) == 0
    try:
        images = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(3)]
        client = RemoteReward(started["url"])
        assert client.health()["name"] == "jpeg_compressibility"
        assert client(images, ["a"] * 3) == pytest.approx(jpeg_compressibility(images))
        assert started["max_batch_size"] == 4
    finally:
        started["server"].shutdown()
        started["server"].server_close()


def test_serve_reward_refuses_an_unknown_reward(capsys):
    with pytest.raises(SystemExit):
        main(["serve-reward", "--reward", "nope"])
    assert "choose among" in capsys.readouterr().err


@pytest.mark.slow
def test_trl_rpo_nft_trains_a_tiny_pipeline(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
    assert main(["nft", "--model_name_or_path", str(tmp_path / "pipe"), "--prompts_name_or_path",
                 str(tmp_path / "prompts.txt"), "--reward_funcs", "jpeg_compressibility", "--output_dir",
                 str(tmp_path / "out"), "--max_steps", "1", "--use_peft", "--lora_r", "4", "--report_to", "none",
                 "--save_strategy", "no", "--num_generations", "2", "--per_device_train_batch_size", "2",
                 "--num_inference_steps", "2", "--nft_beta", "0.5"]) == 0  # fmt: skip
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
    assert "| nft_beta | 0.5 |" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.slow
def test_trl_rpo_grpo_trains_a_tiny_pipeline(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red square\na blue circle\n")
    assert main(["grpo", "--model_name_or_path", str(tmp_path / "pipe"), "--prompts_name_or_path",
                 str(tmp_path / "prompts.txt"), "--reward_funcs", "jpeg_compressibility", "--output_dir",
                 str(tmp_path / "out"), "--max_steps", "1", "--use_peft", "--lora_r", "4", "--report_to", "none",
                 "--save_strategy", "no", "--num_generations", "2", "--per_device_train_batch_size", "2",
                 "--num_inference_steps", "2"]) == 0  # fmt: skip
    assert (tmp_path / "out" / "pytorch_lora_weights.safetensors").is_file()
