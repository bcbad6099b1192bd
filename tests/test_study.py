"""`trl-rpo study`: per-image noise, the declared family, Holm, study.json, resume after a kill, config refusal."""

import json
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trl_rpo.evaluation import generate_images, image_seed
from trl_rpo.shapes import stages
from trl_rpo.shapes import study as study_module
from trl_rpo.shapes.demo import METHODS
from trl_rpo.shapes.study import ENDPOINTS, StudyConfig, StudyConfigMismatch, run_study
from trl_rpo.statistics import holm_bonferroni


class _NoisePipeline:
    """Records each image's starting noise seed (the first value its generator draws identifies the seed)."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, generator, output_type, **kwargs):
        from PIL import Image

        firsts = [int(g.initial_seed()) for g in generator]
        self.calls.append(firsts)
        return SimpleNamespace(images=[Image.new("RGB", (4, 4)) for _ in prompts])


def _noise(per_image, batch_size=2, seed=3):
    pipeline = _NoisePipeline()
    generate_images(pipeline, ["a", "b", "c", "d", "e"], seed, batch_size=batch_size, per_image_noise=per_image)
    return [s for call in pipeline.calls for s in call]


def test_generate_images_default_noise_is_one_per_seed():
    assert _noise(per_image=False) == [3] * 5


def test_per_image_noise_differs_per_prompt_and_not_per_batch():
    seeds = _noise(per_image=True)
    assert len(set(seeds)) == 5 and 3 not in seeds
    assert seeds == _noise(per_image=True, batch_size=4) == [image_seed(3, i) for i in range(5)]
    assert set(seeds).isdisjoint(_noise(per_image=True, seed=4))


def test_study_declares_primary_first_and_every_method_vs_base():
    config = StudyConfig()
    assert config.comparisons[0] == ("dpo_rpo_pairs", "dpo_reward_pairs")
    assert {(m, "base") for m in METHODS[1:]} <= set(config.comparisons)
    assert ("tailorpo", "tailorpo_final") in config.comparisons
    assert config.training_seeds == (0, 1, 2, 3, 4) and config.methods == METHODS[1:]
    # The stronger reward baseline and the data-vs-recipe ablation are declared, and the study reads "final".
    assert {("dpo_rpo_pairs", "dpo_best_of_4"), ("dpo_rpo_pairs_reward_recipe", "dpo_reward_pairs")} <= set(
        config.comparisons
    )
    assert config.split == "final" and config.eval_prompts == 180


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"methods": ("dpo_rpo_pairs", "nope")}, "nope"),
        ({"primary": "dpo_rpo_pairs vs grpo", "methods": ("dpo_rpo_pairs", "dpo_reward_pairs")}, "grpo"),
        ({"training_seeds": (1, 1)}, "distinct"),
        ({"recipe": {"seed": 3}}, "may not set"),
        ({"recipe": {"dpo_stepz": 3}}, "dpo_stepz"),
        ({"eval_prompts": 500}, "eval_prompts"),
        ({"primary": "dpo_rpo_pairs"}, "A vs B"),
        ({"primary": "nft vs base@0.5", "methods": ("nft",), "secondary": ()}, "base@0.5"),
        ({"primary": "nft vs base@two", "methods": ("nft",), "secondary": ()}, "base@two"),
    ],
)
def test_study_config_rejects_bad_values_naming_them(overrides, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**overrides)


class _Fakes:
    """Stand-ins for pair building, training and rendering: synthetic scores with a known structure."""

    def __init__(self, monkeypatch, kill_at=None):
        self.trained: list[tuple[str, int]] = []
        self.guidance: dict[str, float | None] = {}  # method -> the guidance it was last scored at (None: config's)
        self.calls: list[tuple[str, float | None]] = []  # every (method, guidance) scored, in order
        self.kill_at = kill_at
        monkeypatch.setattr(stages, "build_pair_sets", lambda config, base, out: {
            "rpo_pairs": [0] * 3, "reward_pairs": [0] * 2, "best_of_4_pairs": [0],
            "seconds": {"rpo_pairs": 1.0, "reward_pairs": 1.0, "best_of_4_pairs": 1.0}})  # fmt: skip
        monkeypatch.setattr("trl_rpo.shapes.model.load_pipeline", lambda *a, **k: ("base", 0))
        monkeypatch.setattr(study_module, "score_pipeline", self.score)

    def train(self, method, config, pair_sets, output_dir):
        if (method, config.seed) == self.kill_at:
            raise KeyboardInterrupt  # a kill in the middle of a seed
        self.trained.append((method, config.seed))
        return (method, config.seed), {"steps": 1}

    def score(self, pipeline, prompts, eval_seeds, config, guidance_scale=None):
        method, seed = pipeline
        self.guidance[method] = guidance_scale
        self.calls.append((method, guidance_scale))
        offset = {"base": 0.0, "dpo_rpo_pairs": 0.35, "dpo_reward_pairs": 0.1}.get(method, 0.0)
        sampled = "" if guidance_scale is None else f"@{guidance_scale}"  # another guidance: other images
        rng = np.random.default_rng(zlib.crc32(f"{method}:{seed}{sampled}".encode()))
        bits = [["".join("1" if rng.random() < 0.5 + offset else "0" for _ in range(6)) for _ in prompts]
                for _ in eval_seeds]  # fmt: skip
        score = [[b.count("1") / 6 for b in row] for row in bits]
        strict = [[float(b == "111111") for b in row] for row in bits]
        return {"alignment_score": score, "judge_alignment": score, "judge_strict": strict, "detector_bits": bits,
                "judge_bits": bits}  # fmt: skip


def _config(**overrides):
    return StudyConfig.quick(**{"training_seeds": (0, 1, 2), "eval_seeds": (0, 1), **overrides})


def test_study_resumes_after_a_kill_without_retraining_finished_seeds(monkeypatch, tmp_path):
    fakes = _Fakes(monkeypatch, kill_at=("tailorpo", 1))
    config = _config()
    with pytest.raises(KeyboardInterrupt):
        run_study(config, tmp_path, progress=False, log=lambda m: None, train=fakes.train)
    assert (tmp_path / "seeds" / "seed-0.json").exists() and not (tmp_path / "seeds" / "seed-1.json").exists()
    assert not (tmp_path / "study.json").exists()
    finished = (tmp_path / "seeds" / "seed-0.json").stat().st_mtime_ns
    time.sleep(0.01)

    resumed = _Fakes(monkeypatch)
    run_study(config, tmp_path, progress=False, log=lambda m: None, train=resumed.train)
    assert sorted({seed for _, seed in resumed.trained}) == [1, 2]  # seed 0 was not retrained
    assert len(resumed.trained) == 2 * len(config.methods)
    assert (tmp_path / "seeds" / "seed-0.json").stat().st_mtime_ns == finished
    assert not list(tmp_path.rglob(".*.tmp"))  # atomic writes leave no temporary file


@pytest.mark.parametrize("online_guidance_scale", [None, 1.0])
def test_study_samples_the_online_methods_at_the_recipes_online_guidance(monkeypatch, tmp_path, online_guidance_scale):
    fakes = _Fakes(monkeypatch)
    config = _config(training_seeds=(0,), methods=("dpo_rpo_pairs", "nft"), primary="nft vs base", secondary=(),
                     recipe={"online_guidance_scale": online_guidance_scale})  # fmt: skip
    run_study(config, tmp_path, progress=False, log=lambda m: None, train=fakes.train)
    assert fakes.guidance == {"base": None, "dpo_rpo_pairs": None,
                              "nft": None if online_guidance_scale is None else 1.0}  # fmt: skip


def test_study_compares_a_row_with_the_base_sampled_at_its_guidance(monkeypatch, tmp_path):
    fakes = _Fakes(monkeypatch)
    config = _config(methods=("nft",), primary="nft vs base", secondary=("nft vs base@2",),
                     recipe={"online_guidance_scale": 2.0})  # fmt: skip
    run_study(config, tmp_path, progress=False, log=lambda m: None, train=fakes.train)
    assert [c for c in fakes.calls if c[0] == "base"] == [("base", None), ("base", 2.0)]  # each base scored once
    study = json.loads((tmp_path / "study.json").read_text())
    at_2 = np.asarray(study["other_bases"]["base@2"]["alignment_score"])
    nft = np.asarray([study["seeds"][s]["methods"]["nft"]["scores"]["alignment_score"] for s in ("0", "1", "2")])
    base = np.asarray(study["base"]["alignment_score"])
    assert not np.array_equal(at_2, base)
    rows = {r["comparison"]: r for r in study["comparisons"]["alignment_score"]}
    assert rows["nft vs base@2"]["gain"] == pytest.approx((nft - at_2).mean(), abs=1e-9)
    assert rows["nft vs base"]["gain"] == pytest.approx((nft - base).mean(), abs=1e-9)
    assert study["means"]["base@2"]["alignment_score"] == pytest.approx(at_2.mean(), abs=1e-5)

    resumed = _Fakes(monkeypatch)  # a rerun in the same folder scores neither base again
    run_study(config, tmp_path, progress=False, log=lambda m: None, train=resumed.train)
    assert resumed.calls == []


def test_study_refuses_to_resume_with_another_config(monkeypatch, tmp_path):
    fakes = _Fakes(monkeypatch)
    run_study(_config(training_seeds=(0,)), tmp_path, progress=False, log=lambda m: None, train=fakes.train)
    before = (tmp_path / "study.json").read_bytes()
    with pytest.raises(StudyConfigMismatch, match=r"config\.eval_prompts"):
        run_study(_config(training_seeds=(0,), eval_prompts=6), tmp_path, progress=False, log=lambda m: None,
                  train=fakes.train)  # fmt: skip
    with pytest.raises(StudyConfigMismatch, match=r"config\.recipe\.dpo_steps"):
        run_study(_config(training_seeds=(0,), recipe={"dpo_steps": 3}), tmp_path, progress=False,
                  log=lambda m: None, train=fakes.train)  # fmt: skip
    other_judge = tmp_path.parent / f"{tmp_path.name}-judge.safetensors"  # retrained judge weights
    other_judge.write_bytes(b"other weights")
    monkeypatch.setattr("trl_rpo.shapes.judge.JUDGE_PATH", other_judge)
    with pytest.raises(StudyConfigMismatch, match=r"weights_sha256\.judge"):
        run_study(_config(training_seeds=(0,)), tmp_path, progress=False, log=lambda m: None, train=fakes.train)
    assert (tmp_path / "study.json").read_bytes() == before


def test_study_refuses_a_folder_that_is_not_a_study(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="not a study folder"):
        run_study(_config(), tmp_path, progress=False, log=lambda m: None)


def test_study_json_keeps_every_score_and_applies_holm_to_the_declared_family(monkeypatch, tmp_path):
    fakes = _Fakes(monkeypatch)
    config = _config()
    run_study(config, tmp_path, progress=False, log=lambda m: None, train=fakes.train)
    study = json.loads((tmp_path / "study.json").read_text())
    assert study["family"] == [f"{a} vs {b}" for a, b in config.comparisons]
    assert study["family"][0] == study["primary"] == "dpo_rpo_pairs vs dpo_reward_pairs"
    n_prompts = config.eval_prompts
    for seed in ("0", "1", "2"):
        for method in config.methods:
            scores = study["seeds"][seed]["methods"][method]["scores"]
            assert set(ENDPOINTS) <= set(scores)
            assert np.asarray(scores["alignment_score"]).shape == (2, n_prompts)
    assert np.asarray(study["base"]["judge_bits"]).shape == (2, n_prompts)
    for endpoint in ENDPOINTS:
        rows = study["comparisons"][endpoint]
        assert [r["comparison"] for r in rows] == study["family"]
        expected = holm_bonferroni([r["p_value"] for r in rows])
        assert [r["p_holm"] for r in rows] == pytest.approx(expected, abs=1e-5)
        assert [r["role"] for r in rows] == ["primary"] + ["secondary"] * (len(rows) - 1)
    primary = study["comparisons"]["alignment_score"][0]
    assert primary["gain"] > 0.1 and primary["n_seeds"] == 3 and primary["n_prompts"] == n_prompts
    assert (tmp_path / "per_seed_gains.png").stat().st_size > 0 and (tmp_path / "forest.png").stat().st_size > 0
    declared = json.loads((tmp_path / "study_config.json").read_text())
    assert declared["family"] == study["family"]


def test_study_reports_each_methods_gain_per_training_minute_pair_building_included(monkeypatch, tmp_path):
    fakes = _Fakes(monkeypatch)
    config = _config()
    run_study(config, tmp_path, progress=False, log=lambda m: None, train=fakes.train)
    study = json.loads((tmp_path / "study.json").read_text())
    assert set(study["gain_per_minute"]) == set(config.methods)
    for method in config.methods:
        entry = study["gain_per_minute"][method]
        records = [study["seeds"][s] for s in ("0", "1", "2")]
        minutes = [(r["methods"][method]["train_seconds"] + (1.0 if method.startswith("dpo_") else 0.0)) / 60
                   for r in records]  # the fake pair sets took 1 s each to build  # fmt: skip
        base = np.mean(study["base"]["alignment_score"])
        gains = [np.mean(r["methods"][method]["scores"]["alignment_score"]) - base for r in records]
        expected = [g / m for g, m in zip(gains, minutes) if m > 0]  # the fakes train in no measurable time
        assert entry["per_seed"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
        assert method.startswith("dpo_") == (len(expected) == 3)


def test_the_quick_study_trains_every_dpo_row_at_its_dpo_steps():
    from trl_rpo.shapes.stages import DPO_ARMS, arm_config

    for recipe, steps in (({}, 2), ({"dpo_steps": 3}, 3)):
        config = StudyConfig.quick(recipe=recipe).demo_config(0)
        assert {arm: arm_config(config, arm).dpo_steps for arm in DPO_ARMS} == dict.fromkeys(DPO_ARMS, steps)


def test_quick_study_runs_its_stages_for_real(tmp_path):
    # One training seed of the --quick preset with the real pair builders, two real trainers (the offline DPO path
    # and an online one), renderer and both judges; the fakes above cover the rest of the bookkeeping.
    torch.set_num_threads(2)
    config = StudyConfig.quick(training_seeds=(0,), methods=("dpo_rpo_pairs", "tailorpo"),
                               primary="dpo_rpo_pairs vs base", secondary=("tailorpo vs base",))  # fmt: skip
    study = run_study(config, tmp_path, progress=False, log=lambda m: None)
    record = json.loads((tmp_path / "seeds" / "seed-0.json").read_text())
    assert set(record["methods"]) == set(config.methods)
    assert all(np.asarray(record["methods"][m]["scores"]["alignment_score"]).shape == (1, 8) for m in config.methods)
    assert len(study["comparisons"]["alignment_score"]) == len(config.comparisons)
    assert 0.0 <= study["agreement_on_base_images"]["same_score"] <= 1.0
    assert (Path(tmp_path) / "work" / "seed-0" / "runs" / "dpo_rpo_pairs").is_dir()


def test_demo_scorer_reports_both_judges_and_their_agreement_on_base_images():
    from trl_rpo.shapes.demo import DemoConfig
    from trl_rpo.shapes.model import load_pipeline
    from trl_rpo.shapes.stages import _Scorer
    from trl_rpo.shapes.world import prompts

    config = DemoConfig.quick(eval_seeds=(0, 1), num_inference_steps=4, refine_strength=0.0)
    test = prompts(6, 0, "final")
    scorer = _Scorer(config, {"final": (test, (0, 1))})
    scorer("base", load_pipeline())
    scorer("copy", load_pipeline())  # the same model again: every image and verdict repeats
    report = scorer.judge_report("final")
    assert np.asarray(scorer.judge_bits["base"]["final"]).shape == (2, 6)
    base, copy = report["methods"]["base"], report["methods"]["copy"]
    assert base["alignment_score"] == pytest.approx(scorer.mean("base", "final"), abs=1e-4)
    assert copy["judge_alignment"] == base["judge_alignment"] and copy["judge_gain"] == 0.0
    assert copy["one_judge_only"] is False
    assert report["agreement_on_base_images"]["images"] == 12


def test_study_help_lists_every_study_and_recipe_field(capsys):
    import dataclasses

    from trl_rpo.cli import main
    from trl_rpo.shapes.demo import DemoConfig

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(StudyConfig):
        assert f.name == "recipe" or f"--{f.name}" in text, f.name
    for f in dataclasses.fields(DemoConfig):
        assert f.name in study_module._MANAGED or f"--{f.name}" in text, f.name
    for managed in ("--seed ", "--in_distribution_prompts", "--grid_prompts"):  # the study sets these itself
        assert managed not in text


def test_study_command_refuses_bad_values_before_any_model_loads(tmp_path, capsys):
    from trl_rpo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--quick", "--methods", "dpo_rpo_pairs", "nope", "--output_dir", str(tmp_path / "s")])
    assert exit_info.value.code == 2 and "nope" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_study_command_reports_a_changed_config_as_an_error(monkeypatch, tmp_path, capsys):
    from trl_rpo.cli import main

    (tmp_path / "study_config.json").write_text(json.dumps({"config": {"training_seeds": [9]}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--quick", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "another config" in capsys.readouterr().err


def test_demo_and_study_give_a_model_the_same_score_on_every_image():
    from trl_rpo.shapes.demo import DemoConfig
    from trl_rpo.shapes.model import load_pipeline
    from trl_rpo.shapes.stages import _Scorer
    from trl_rpo.shapes.study import score_pipeline
    from trl_rpo.shapes.world import prompts

    config = DemoConfig.quick(num_inference_steps=4, refine_strength=0.0)
    test = prompts(8, 0, "final")
    scorer = _Scorer(config, {"final": (test, (0, 1))})
    scorer("base", load_pipeline())
    study = score_pipeline(load_pipeline(), test, (0, 1), config)
    # Same noise per image (seed x prompt), so a demo row and a study seed of one model are the same numbers.
    assert np.asarray(scorer.scores["base"]["final"]) == pytest.approx(np.asarray(study["alignment_score"]), abs=1e-6)
