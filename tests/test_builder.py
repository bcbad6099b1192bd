"""RichPreferenceDataBuilder: critique -> instructions -> edit -> verified pairs, resumable and shardable."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer, prepare_preference_dataset
from trl_rpo.data import (
    ChangeGuard,
    RewardMarginVerifier,
    RichPreferenceConfig,
    RichPreferenceDataBuilder,
)
from trl_rpo.data.schema import Critique, EditInstruction
from trl_rpo.shapes import Critic, Editor, ShapesGenerator, alignment_score, prompts
from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline

from ._helpers import FakeHubApi

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = prompts(8, seed=1)


def config(output_dir, **overrides) -> RichPreferenceConfig:
    values = dict(output_dir=str(output_dir), images_per_prompt=2, shard_size=2, batch_size=4, disable_tqdm=True)
    return RichPreferenceConfig(**{**values, **overrides})


def shapes_builder(output_dir, generator=None, critic=None, verifier=None, **overrides):
    """The realistic case: a generator that makes mistakes, the shapes critic and editor, a reward verifier."""
    return RichPreferenceDataBuilder(
        generator=generator or ShapesGenerator(),
        critic=critic or Critic(),
        editor=Editor(),
        verifier=[RewardMarginVerifier(alignment_score)] if verifier is None else verifier,
        args=config(output_dir, **overrides),
    )


def solid(color, size=16):
    return Image.new("RGB", (size, size), color)


def red_generator(prompts, seeds):
    return [solid("red") for _ in prompts]


def always_critic(images, prompts):
    return [
        {"critique": "too red", "instructions": [{"instruction": "make it blue", "kind": "recolor"}]} for _ in images
    ]


def blue_editor(images, instructions, prompts):
    return [solid("blue") for _ in images]


def keys(dataset):
    return [(p["prompt_index"], p["image_index"]) for p in dataset["provenance"]]


# ---------------------------------------------------------------- stages as callables


def test_plain_callables_build_a_dataset_in_the_trl_preference_format_with_rich_columns(tmp_path):
    builder = RichPreferenceDataBuilder(red_generator, always_critic, blue_editor, args=config(tmp_path / "out"))
    dataset = builder.build(["a blue square", "a blue circle"])
    assert dataset.column_names == [
        "prompt",
        "chosen",
        "rejected",
        "critique",
        "instructions",
        "edit_method",
        "scores",
        "provenance",
        "mask",
    ]
    assert len(dataset) == 4
    assert dataset[0]["mask"] is None  # a plain callable editor does not say where it edited
    row = dataset[0]
    assert row["chosen"].getpixel((0, 0)) == (0, 0, 255) and row["rejected"].getpixel((0, 0)) == (255, 0, 0)
    assert row["critique"] == "too red"
    assert row["instructions"][0]["instruction"] == "make it blue" and row["instructions"][0]["kind"] == "recolor"
    assert row["edit_method"] == "blue_editor"
    assert row["provenance"]["generator"] == "red_generator" and row["provenance"]["critic"] == "always_critic"


def test_critic_may_return_critique_objects_with_regions_and_params(tmp_path):
    def critic(images, prompts):
        instruction = EditInstruction("recolor", kind="recolor", region=(0, 0, 0.5, 0.5), params={"color": "blue"})
        return [Critique("bad color", [instruction]) for _ in images]

    dataset = RichPreferenceDataBuilder(red_generator, critic, blue_editor, args=config(tmp_path / "out")).build(["a"])
    cell = dataset[0]["instructions"][0]
    assert cell["region"] == [0.0, 0.0, 0.5, 0.5] and json.loads(cell["params"]) == {"color": "blue"}


def test_an_image_whose_critique_has_no_instructions_yields_no_pair_and_counts_as_already_good(tmp_path):
    def critic(images, prompts):
        return [{"critique": "perfect", "instructions": []} for _ in images]

    builder = RichPreferenceDataBuilder(red_generator, critic, blue_editor, args=config(tmp_path / "out"))
    dataset = builder.build(["a", "b"])
    assert len(dataset) == 0
    assert builder.stats["no_edit"] == 4 and builder.stats["kept"] == 0


def test_an_invalid_critique_is_counted_and_skipped_not_fatal(tmp_path):
    def critic(images, prompts):
        return [{"critique": "ok", "instructions": ["fix"]}, {"verdict": "no such field"}]

    builder = RichPreferenceDataBuilder(red_generator, critic, blue_editor, args=config(tmp_path / "out"))
    assert len(builder.build(["a"])) == 1
    assert builder.stats["invalid_critique"] == 1


def test_a_critic_returning_none_for_an_image_counts_it_as_an_invalid_critique(tmp_path):
    def critic(images, prompts):
        return [None, *always_critic(images[1:], prompts[1:])]

    builder = RichPreferenceDataBuilder(red_generator, critic, blue_editor, args=config(tmp_path / "out"))
    assert len(builder.build(["a"])) == 1
    assert builder.stats["invalid_critique"] == 1


def test_an_editor_naming_the_method_it_used_per_image_has_it_recorded(tmp_path):
    class Router:
        name = "router(a+b)"

        def __call__(self, images, instructions, prompts):
            self.last_methods = ["a" if i % 2 == 0 else "b" for i in range(len(images))]
            return [solid("blue") for _ in images]

    builder = RichPreferenceDataBuilder(red_generator, always_critic, Router(), args=config(tmp_path / "out"))
    assert builder.build(["a"])["edit_method"] == ["a", "b"]


def test_an_editor_returning_none_counts_as_a_failed_edit(tmp_path):
    def flaky_editor(images, instructions, prompts):
        return [solid("blue") if i % 2 == 0 else None for i in range(len(images))]

    builder = RichPreferenceDataBuilder(red_generator, always_critic, flaky_editor, args=config(tmp_path / "out"))
    assert len(builder.build(["a", "b"])) == 2
    assert builder.stats["edit_failed"] == 2


def test_a_list_of_editors_gives_each_image_to_the_first_editor_that_returns_one(tmp_path):
    seen_by_second = []

    def first(images, instructions, prompts):
        return [solid("blue") if i == 0 else None for i in range(len(images))]

    def second(images, instructions, prompts):
        seen_by_second.append(len(images))
        return [solid("green") for _ in images]

    builder = RichPreferenceDataBuilder(
        red_generator, always_critic, [first, second], args=config(tmp_path / "out", images_per_prompt=2)
    )
    dataset = builder.build(["a"])
    assert dataset["edit_method"] == ["first", "second"]
    assert seen_by_second == [1]


def test_editors_receive_each_images_list_of_edit_instructions(tmp_path):
    received = []

    def editor(images, instructions, prompts):
        received.extend(instructions)
        return [None for _ in images]

    RichPreferenceDataBuilder(red_generator, always_critic, editor, args=config(tmp_path / "out")).build(["a"])
    assert all(isinstance(items, list) and isinstance(items[0], EditInstruction) for items in received)


class HalfEditor:
    """Paints the left half blue and reports that region, as the editor protocol's `last_masks` allows."""

    name = "half_editor"

    def __call__(self, images, instructions, prompts):
        out, self.last_masks = [], []
        for image in images:
            edited = image.copy()
            edited.paste((0, 0, 255), (0, 0, image.width // 2, image.height))
            mask = Image.new("L", image.size, 0)
            mask.paste(255, (0, 0, image.width // 2, image.height))
            out.append(edited)
            self.last_masks.append(mask)
        return out


def test_an_editor_reporting_its_region_has_the_mask_stored_with_the_pair(tmp_path):
    builder = RichPreferenceDataBuilder(red_generator, always_critic, HalfEditor(), args=config(tmp_path / "out"))
    mask = builder.build(["a blue square"])[0]["mask"]
    assert np.asarray(mask.convert("L"))[:, :8].min() == 255 and np.asarray(mask.convert("L"))[:, 8:].max() == 0


def test_shapes_pairs_store_the_pixels_the_edit_changed_as_the_mask(tmp_path):
    dataset = shapes_builder(tmp_path / "out").build(PROMPTS[:4])
    assert len(dataset) > 0
    for row in dataset:
        changed = np.any(np.asarray(row["chosen"]) != np.asarray(row["rejected"]), axis=-1)
        np.testing.assert_array_equal(np.asarray(row["mask"].convert("L")) > 0, changed)


def test_a_refiner_runs_on_each_edit_with_its_prompt_and_mask_before_verification(tmp_path):
    seen = {}

    def green_refiner(images, prompts, masks):
        seen.update(prompts=list(prompts), masks=list(masks))
        return [solid("green") for _ in images]

    def saw_green(originals, edited, prompts):
        seen["verified"] = [image.getpixel((0, 0)) for image in edited]
        return [True] * len(edited)

    builder = RichPreferenceDataBuilder(
        red_generator, always_critic, HalfEditor(), verifier=saw_green,
        args=config(tmp_path / "out", images_per_prompt=1), refiner=green_refiner,
    )  # fmt: skip
    dataset = builder.build(["a blue square"])
    assert seen["prompts"] == ["a blue square"] and seen["masks"][0].size == (16, 16)
    assert seen["verified"] == [(0, 128, 0)] and dataset[0]["chosen"].getpixel((0, 0)) == (0, 128, 0)
    assert builder.stage_names()["refiner"] == "green_refiner"


def test_a_refiner_returning_none_drops_the_pair_as_refine_failed(tmp_path):
    builder = RichPreferenceDataBuilder(red_generator, always_critic, blue_editor, args=config(tmp_path / "out"),
                                        refiner=lambda images, prompts, masks: [None] * len(images))  # fmt: skip
    assert len(builder.build(["a blue square"])) == 0
    assert builder.stats["refine_failed"] == 2 and builder.stats["kept"] == 0


def test_a_build_without_refiner_keeps_the_fingerprint_of_older_output_folders(tmp_path):
    builder = RichPreferenceDataBuilder(red_generator, always_critic, blue_editor, args=config(tmp_path / "out"))
    assert "refiner" not in builder.fingerprint()["stages"]


def test_each_verifier_rejection_is_counted_under_its_name(tmp_path):
    def says_no(originals, edited, prompts):
        return [False for _ in originals]

    builder = RichPreferenceDataBuilder(
        red_generator,
        always_critic,
        blue_editor,
        verifier=[ChangeGuard(max_change=1.0), says_no],
        args=config(tmp_path / "out"),
    )
    assert len(builder.build(["a", "b"])) == 0
    assert builder.stats["rejected"] == 4 and builder.stats["rejected_by"] == {"says_no": 4}


def test_a_pair_rejected_by_one_verifier_is_not_shown_to_the_next(tmp_path):
    shown = []

    def recorder(originals, edited, prompts):
        shown.append(len(originals))
        return [True for _ in originals]

    unchanged_editor = lambda images, instructions, prompts: [image.copy() for image in images]  # noqa: E731
    builder = RichPreferenceDataBuilder(
        red_generator, always_critic, unchanged_editor, verifier=[ChangeGuard(), recorder], args=config(tmp_path / "o")
    )
    builder.build(["a"])
    assert shown == [] and builder.stats["rejected_by"] == {"change_guard": 2}


def test_a_generator_returning_the_wrong_number_of_images_is_named_in_the_error(tmp_path):
    def broken(prompts, seeds):
        return [solid("red")]

    builder = RichPreferenceDataBuilder(broken, always_critic, blue_editor, args=config(tmp_path / "out"))
    with pytest.raises(TypeError, match="generator 'broken' must return a list of 4 images, got 1 items"):
        builder.build(["a", "b"])


def test_an_editor_returning_something_else_than_an_image_is_named_in_the_error(tmp_path):
    def broken(images, instructions, prompts):
        return ["not an image" for _ in images]

    builder = RichPreferenceDataBuilder(red_generator, always_critic, broken, args=config(tmp_path / "out"))
    with pytest.raises(TypeError, match="editor 'broken' returned str for image 0"):
        builder.build(["a"])


def test_empty_or_non_string_prompts_are_refused_by_index(tmp_path):
    builder = RichPreferenceDataBuilder(red_generator, always_critic, blue_editor, args=config(tmp_path / "out"))
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty string"):
        builder.build(["a", "  "])


def test_prompts_may_come_as_a_dataset_with_a_prompt_column(tmp_path):
    builder = RichPreferenceDataBuilder(red_generator, always_critic, blue_editor, args=config(tmp_path / "out"))
    assert builder.build(Dataset.from_dict({"prompt": ["a", "b"]}))["prompt"] == ["a", "a", "b", "b"]


def test_seeds_depend_only_on_prompt_and_image_index(tmp_path):
    seen = {}

    def generator(prompts, seeds):
        seen.update(zip(seeds, prompts))
        return [solid("red") for _ in prompts]

    args = config(tmp_path / "out", seed=100, images_per_prompt=3, batch_size=2)
    dataset = RichPreferenceDataBuilder(generator, always_critic, blue_editor, args=args).build(["a", "b"])
    assert seen == {100: "a", 101: "a", 102: "a", 103: "b", 104: "b", 105: "b"}
    assert [p["seed"] for p in dataset["provenance"]] == [100, 101, 102, 103, 104, 105]


def test_overlapped_generation_builds_the_same_pairs(tmp_path):
    plain = shapes_builder(tmp_path / "plain").build(PROMPTS)
    overlapped = shapes_builder(tmp_path / "overlap", overlap_generation=True).build(PROMPTS)
    assert keys(overlapped) == keys(plain) and overlapped["critique"] == plain["critique"]


def test_overlapped_generation_makes_the_next_batch_while_the_current_one_is_critiqued(tmp_path):
    import time

    generated, critiqued = {}, []

    def generator(prompts, seeds):
        generated[seeds[0]] = time.perf_counter()
        return [solid("red") for _ in prompts]

    def slow_critic(images, prompts):
        time.sleep(0.3)  # a remote VLM: the generator should not wait for it
        critiqued.append(time.perf_counter())
        return always_critic(images, prompts)

    args = config(tmp_path / "out", batch_size=2, shard_size=4, overlap_generation=True)
    RichPreferenceDataBuilder(generator, slow_critic, blue_editor, args=args).build(["a", "b"])
    assert sorted(generated) == [0, 2]
    assert generated[2] < critiqued[0], "batch 2 was generated only after batch 1's critique finished"


def test_invalid_config_values_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="images_per_prompt must be a positive integer"):
        RichPreferenceConfig(images_per_prompt=0)
    with pytest.raises(ValueError, match="resolution must be a multiple of 8, got 20"):
        RichPreferenceConfig(resolution=20)
    with pytest.raises(ValueError, match="max_sequence_length must be a positive integer, got 0"):
        RichPreferenceConfig(max_sequence_length=0)


# ---------------------------------------------------------------- the shapes world


def test_shapes_world_pairs_prefer_the_edit_by_alignment_score(tmp_path):
    # No verifier: a reward-margin verifier would drop every pair where the edit did not help.
    dataset = shapes_builder(tmp_path / "out", verifier=[]).build(PROMPTS)
    assert len(dataset) > 0
    chosen = alignment_score(dataset["chosen"], dataset["prompt"])
    rejected = alignment_score(dataset["rejected"], dataset["prompt"])
    assert all(c > r for c, r in zip(chosen, rejected))


def test_shapes_world_pairs_record_the_verifiers_scores(tmp_path):
    dataset = shapes_builder(tmp_path / "out").build(PROMPTS)
    scores = {s["name"]: s["value"] for s in dataset[0]["scores"]}
    assert scores["alignment_score/chosen"] > scores["alignment_score/rejected"]


def test_stats_json_holds_the_counts_at_each_stage(tmp_path):
    builder = shapes_builder(tmp_path / "out")
    dataset = builder.build(PROMPTS)
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())["counts"]
    assert saved["prompts"] == 8 and saved["images"] == 16
    assert saved["kept"] == len(dataset)
    assert saved["kept"] + saved["no_edit"] + saved["edit_failed"] + saved["rejected"] == saved["images"]


def test_a_diffusers_pipeline_generator_is_seeded_and_uses_the_generation_settings(tmp_path):
    builder = RichPreferenceDataBuilder(
        tiny_sd_pipeline(),
        always_critic,
        blue_editor,
        args=config(tmp_path / "out", num_inference_steps=2, guidance_scale=3.0, resolution=24),
    )
    first = builder.generator(["a cat", "a dog"], [7, 8])
    again = builder.generator(["a dog"], [8])
    assert first[0].size == (24, 24)
    assert np.array_equal(np.asarray(first[1]), np.asarray(again[0]))
    assert len(builder.build(["a cat"])) == 2


def test_a_pipeline_folder_is_loaded_with_from_pretrained_on_first_use(tmp_path):
    tiny_sd_pipeline().save_pretrained(tmp_path / "pipe")
    args = config(tmp_path / "out", num_inference_steps=2)
    builder = RichPreferenceDataBuilder(str(tmp_path / "pipe"), always_critic, blue_editor, args=args)
    assert builder.generator._pipeline is None
    dataset = builder.build(["a cat"])
    assert dataset[0]["provenance"]["generator"] == str(tmp_path / "pipe")
    assert dataset[0]["rejected"].size == (32, 32)


def test_the_built_dataset_trains_one_diffusion_dpo_step_without_conversion(tmp_path):
    dataset = shapes_builder(tmp_path / "pairs").build(PROMPTS[:4])
    trainer = DiffusionDPOTrainer(
        model=tiny_sd_pipeline(),
        args=DiffusionDPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_steps=1,
            report_to=[],
            save_strategy="no",
            per_device_train_batch_size=2,
            resolution=32,
            disable_tqdm=True,
        ),
        train_dataset=dataset,
        peft_config=tiny_lora_config(),
    )
    trainer.train()
    assert trainer.state.global_step == 1


# ---------------------------------------------------------------- resumption


class CrashingCritic(Critic):
    """The shapes critic, killed (an exception) at its `crash_at`-th call."""

    def __init__(self, crash_at):
        self.calls, self.crash_at = 0, crash_at

    def __call__(self, images, prompts):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated kill")
        return super().__call__(images, prompts)


class RecordingGenerator(ShapesGenerator):
    """The shapes generator, remembering the seeds it was asked for."""

    def __init__(self):
        super().__init__()
        self.seeds = []

    def __call__(self, prompts, seeds):
        self.seeds.extend(seeds)
        return super().__call__(prompts, seeds)


def test_a_killed_run_resumes_without_losing_a_finished_shard_or_duplicating_rows(tmp_path):
    out = tmp_path / "out"
    # shard_size 2 prompts x 2 images, batch 4: one critic call per shard; the 3rd call dies.
    with pytest.raises(RuntimeError, match="simulated kill"):
        shapes_builder(out, critic=CrashingCritic(crash_at=3)).build(PROMPTS)
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000", "shard-00001"]
    finished = {p.name: (p / "rpo_shard.json").read_text() for p in out.glob("shard-*")}

    generator = RecordingGenerator()
    resumed = shapes_builder(out, generator=generator).build(PROMPTS)
    assert min(generator.seeds) == 2 * 2 * 2  # generation restarts at the first prompt of shard 2
    assert {p.name: (p / "rpo_shard.json").read_text() for p in out.glob("shard-0000[01]")} == finished
    assert len(set(keys(resumed))) == len(resumed)
    clean = shapes_builder(tmp_path / "clean").build(PROMPTS)
    assert keys(resumed) == keys(clean)


def test_rerunning_a_finished_build_does_no_work(tmp_path):
    shapes_builder(tmp_path / "out").build(PROMPTS)
    generator = RecordingGenerator()
    dataset = shapes_builder(tmp_path / "out", generator=generator).build(PROMPTS)
    assert generator.seeds == [] and len(dataset) > 0


def test_a_half_written_shard_is_discarded_and_rebuilt(tmp_path):
    out = tmp_path / "out"
    shapes_builder(out).build(PROMPTS[:2])
    leftover = out / ".shard-00001.tmp-12345"
    leftover.mkdir()
    (leftover / "data.arrow").write_bytes(b"partial")
    dataset = shapes_builder(out).build(PROMPTS[:4])
    assert not leftover.exists()
    assert sorted({k[0] for k in keys(dataset)}) <= [0, 1, 2, 3] and (out / "shard-00001").is_dir()


def test_a_different_config_on_the_same_output_dir_is_refused_naming_the_field(tmp_path):
    shapes_builder(tmp_path / "out").build(PROMPTS[:2])
    with pytest.raises(
        ValueError, match=r"(?s)different configuration.*config\.images_per_prompt: 2 \(on disk\) != 3"
    ):
        shapes_builder(tmp_path / "out", images_per_prompt=3).build(PROMPTS[:2])


def test_a_different_verifier_on_the_same_output_dir_is_refused(tmp_path):
    shapes_builder(tmp_path / "out").build(PROMPTS[:2])
    with pytest.raises(ValueError, match=r"stages\.verifiers"):
        shapes_builder(tmp_path / "out", verifier=[]).build(PROMPTS[:2])


def test_runtime_settings_may_change_between_runs(tmp_path):
    shapes_builder(tmp_path / "out").build(PROMPTS[:2])
    assert len(shapes_builder(tmp_path / "out", batch_size=1).build(PROMPTS[:2])) >= 0


def test_other_prompts_for_a_finished_shard_are_refused(tmp_path):
    shapes_builder(tmp_path / "out").build(PROMPTS[:2])
    with pytest.raises(ValueError, match="shard 0 .* was built from other prompts"):
        shapes_builder(tmp_path / "out").build(PROMPTS[2:4])


def test_a_non_empty_folder_that_is_not_a_builder_output_is_never_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="will not be overwritten"):
        shapes_builder(tmp_path / "mine").build(PROMPTS[:2])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


# ---------------------------------------------------------------- export and publishing


def test_pickapic_export_round_trips_through_prepare_preference_dataset(tmp_path):
    builder = shapes_builder(tmp_path / "out")
    dataset = builder.build(PROMPTS)
    pickapic = builder.export("pickapic")
    assert pickapic.column_names == ["caption", "jpg_0", "jpg_1", "label_0"]
    assert set(pickapic["label_0"]) == {0.0, 1.0}
    back = prepare_preference_dataset(pickapic)
    assert back["prompt"] == dataset["prompt"]
    for original, restored in zip(dataset, back):
        assert np.array_equal(np.asarray(original["chosen"]), np.asarray(restored["chosen"]))
        assert np.array_equal(np.asarray(original["rejected"]), np.asarray(restored["rejected"]))


def test_push_to_hub_uploads_the_dataset_and_a_card_describing_the_build(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_never_written")
    FakeHubApi.instances = []
    pushed = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHubApi)
    monkeypatch.setattr(Dataset, "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, len(self), kw)))

    builder = shapes_builder(tmp_path / "out", verifier=[RewardMarginVerifier(alignment_score), ChangeGuard(0, 0.9)])
    dataset = builder.build(PROMPTS)
    url = builder.push_to_hub("me/rpo-shapes", private=True)

    assert url == "https://huggingface.co/datasets/me/rpo-shapes"
    assert pushed == [
        (
            "me/rpo-shapes",
            len(dataset),
            {"private": True, "token": None, "commit_message": pushed[0][2]["commit_message"]},
        )
    ]
    (api,) = FakeHubApi.instances
    assert api.calls[0] == (
        "create_repo",
        "me/rpo-shapes",
        {"repo_type": "dataset", "private": True, "exist_ok": True},
    )
    _, repo, path, card, kwargs = api.calls[1]
    assert (repo, path, kwargs["repo_type"]) == ("me/rpo-shapes", "README.md", "dataset")
    stats = builder.stats
    assert "shapes_critic" in card and "shapes_editor" in card and "ShapesGenerator" in card
    assert f"| images generated | {stats['images']} |" in card
    assert f"| already good (no instructions) | {stats['no_edit']} |" in card
    assert f"| **pairs kept** | **{stats['kept']}** |" in card
    assert "| `images_per_prompt` | `2` |" in card
    assert dataset[0]["prompt"] in card  # an example pair
    assert "zhao2025rpo" in card and "task_categories" in card
    assert "hf_secret_token_never_written" not in card
    assert (tmp_path / "out" / "README.md").read_text() == card


def test_export_refuses_an_unknown_format(tmp_path):
    builder = shapes_builder(tmp_path / "out")
    builder.build(PROMPTS[:2])
    with pytest.raises(ValueError, match="unknown export format 'parquet'"):
        builder.export("parquet")


def test_load_returns_the_pairs_of_a_previous_build(tmp_path):
    built = shapes_builder(tmp_path / "out").build(PROMPTS[:4])
    assert keys(shapes_builder(tmp_path / "out").load()) == keys(built)


# ---------------------------------------------------------------- several processes

TWO_PROCESS_SCRIPT = """
import json, sys
from accelerate import PartialState
from trl_rpo.data import RichPreferenceConfig, RichPreferenceDataBuilder
from trl_rpo.shapes import Critic, Editor, ShapesGenerator, prompts

out = sys.argv[1]
builder = RichPreferenceDataBuilder(ShapesGenerator(), Critic(), Editor(),
    args=RichPreferenceConfig(output_dir=out, images_per_prompt=2, shard_size=2, batch_size=4, disable_tqdm=True))
dataset = builder.build(prompts(8, seed=1))
state = PartialState()
keys = [(p["prompt_index"], p["image_index"]) for p in dataset["provenance"]]
with open(f"{out}.{state.process_index}.json", "w") as handle:
    json.dump({"keys": keys, "stats": builder.stats}, handle)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_split_the_prompts_without_duplicates_and_merge_the_shards(tmp_path):
    script = tmp_path / "build.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        str(script),
        str(out),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    by_process = {json.loads((tmp_path / f"out.{i}.json").read_text())["keys"].__len__() for i in (0, 1)}
    main = json.loads((tmp_path / "out.0.json").read_text())
    keys_ = [tuple(k) for k in main["keys"]]
    assert len(keys_) == len(set(keys_)) == main["stats"]["kept"] and len(by_process) == 1
    writers = {json.loads((p / "rpo_shard.json").read_text())["process_index"] for p in out.glob("shard-*")}
    assert writers == {0, 1}
    assert len(list(out.glob("shard-*"))) == 4
    clean = shapes_builder(tmp_path / "single", verifier=[]).build(PROMPTS)
    assert keys_ == keys(clean)


def test_every_config_field_is_documented_in_the_docstring_and_on_the_docs_page():
    import dataclasses

    page = (ROOT / "docs" / "rich_preference_builder.md").read_text()
    for f in dataclasses.fields(RichPreferenceConfig):
        assert f"`{f.name}`" in page, f"docs/rich_preference_builder.md does not document {f.name}"
        assert f"{f.name} (`" in RichPreferenceConfig.__doc__, f"the docstring does not list {f.name}"
        assert f.metadata.get("help"), f"{f.name} has no help"
