r"""`trl-rpo study`: the demo's methods over several training seeds, with comparisons declared before it runs.

    trl-rpo study [--quick] [--output_dir DIR] [--training_seeds 0 1 2 3 4] [--split final] [DemoConfig overrides]

`trl-rpo demo` trains each method once; its intervals resample prompts and say how sure we are about *that trained
model*. A recipe's gain also moves with the training seed, so a claim about the *method* needs several training
runs. The study:

1. writes `study_config.json` before anything runs: the recipe, the training seeds, the evaluation prompts and
   noise, and the family of comparisons with its primary endpoint (by default `dpo_rpo_pairs vs dpo_reward_pairs`;
   secondary: each method vs base, and `tailorpo vs tailorpo_final`). A resumed run whose config differs stops
   with an error naming the fields, rather than mixing results;
2. renders and scores the base model once (`base.json`), every image with its own noise
   (`generate_images(per_image_noise=True)`: seed x prompt, not one noise per seed), and once more at each
   guidance G a comparison names as `base@G` (`base@G.json`);
3. for each training seed: builds the demo's pair sets, trains every method with the demo's recipe
   (`trl_rpo.shapes.stages`), scores each on the same images' prompts and noise, and writes
   `seeds/seed-S.json` atomically (write, then rename) when the seed is finished. A killed study resumes at the
   first unfinished seed: finished seeds are read back, never retrained;
4. analyses every image's score: per comparison, the gain with the two-level bootstrap over training seeds and
   prompts (`trl_rpo.statistics.hierarchical_bootstrap`, interval and p-value from the same resamples), Holm's
   correction over the declared family (`holm_bonferroni`), for three endpoints: `alignment_score` (primary),
   the independent judge's alignment (`trl_rpo.shapes.judge`) and GenEval-style strict accuracy by the judge;
   the agreement of the two judges on the base images; and writes `study.json` (every image's score and both
   judges' attribute verdicts, so any statistic can be recomputed) with `per_seed_gains.png` and `forest.png`.

Each seed's trained models stay in `work/seed-S/runs/METHOD` (LoRA folders, `trl-rpo eval`-ready).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .compute import study_gain_per_minute
from .demo import METHODS, DemoConfig, quick_dpo_recipes
from .study_report import ENDPOINTS, format_summary, write_figures

__all__ = [
    "ENDPOINTS",
    "StudyConfig",
    "StudyConfigMismatch",
    "analyse",
    "base_guidance",
    "format_summary",
    "run_study",
    "score_pipeline",
    "train_method",
]

# DemoConfig fields the study sets itself (per training seed, or from its own evaluation protocol).
_MANAGED = ("seed", "eval_prompts", "eval_seeds", "in_distribution_prompts", "grid_prompts")
# The --quick preset's recipe: tiny budgets, a smoke test of every stage (not a result); `StudyConfig.quick` adds the
# reward-labelled rows' recipes at its `dpo_steps` (`quick_dpo_recipes`).
QUICK_RECIPE: dict[str, Any] = dict(
    num_inference_steps=4, image_budget=8, refine_strength=0.25, dpo_steps=2, dpo_batch_size=2, tailorpo_steps=1,
    nft_steps=1, tailorpo_batch_size=1, tailorpo_num_inference_steps=4, num_candidates=2, grpo_num_generations=2,
    grpo_batch_size=2, nft_batch_size=2,
)  # fmt: skip


def _default_secondary() -> tuple[str, ...]:
    # The stronger reward baseline, the data-vs-recipe ablation, each method vs base, TailorPO vs its final-image
    # baseline.
    return ("dpo_rpo_pairs vs dpo_best_of_4", "dpo_rpo_pairs_reward_recipe vs dpo_reward_pairs",
            *(f"{m} vs base" for m in METHODS[1:]), "tailorpo vs tailorpo_final")  # fmt: skip


class StudyConfigMismatch(ValueError):
    """A study folder holds results made with another config: resuming would mix them."""


@dataclass
class StudyConfig:
    """What a study trains, how it evaluates, and its family of comparisons, fixed before it runs.

    `recipe` holds `DemoConfig` overrides (budgets, learning rates, the base model folder); every training seed
    trains `DemoConfig(**recipe, seed=S)`, so the recipe is the demo's unless overridden.
    """

    training_seeds: tuple[int, ...] = field(
        default=(0, 1, 2, 3, 4), metadata={"help": "Training seeds: each trains every method once (pairs, LoRAs)."}
    )
    methods: tuple[str, ...] = field(
        default=METHODS[1:], metadata={"help": f"Methods trained per seed, among {list(METHODS[1:])}."}
    )
    split: str = field(
        default="final",
        metadata={"help": "Evaluation split (trl_rpo.shapes.world.SPLITS): 'final', where no recipe was chosen."},
    )
    eval_prompts: int = field(default=180, metadata={"help": "Evaluation prompts (distinct scenes of the split)."})
    prompt_seed: int = field(default=0, metadata={"help": "Seed of the evaluation prompts' order."})
    eval_seeds: tuple[int, ...] = field(
        default=(0, 1),
        metadata={"help": "Evaluation noise seeds; every image gets its own noise from (seed, prompt)."},
    )
    primary: str = field(
        default="dpo_rpo_pairs vs dpo_reward_pairs", metadata={"help": "The primary comparison, 'A vs B' (A - B)."}
    )
    secondary: tuple[str, ...] = field(
        default_factory=_default_secondary,
        metadata={"help": "Secondary comparisons, 'A vs B' each ('base' allowed, and 'base@G': the base sampled at "
                  "guidance G)."},
    )
    confidence_level: float = field(default=0.95, metadata={"help": "Level of every interval."})
    alpha: float = field(default=0.05, metadata={"help": "Family-wise error rate of the Holm correction."})
    n_resamples: int = field(default=10_000, metadata={"help": "Bootstrap resamples per comparison."})
    recipe: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "DemoConfig overrides (budgets, learning rates, model folder)."}
    )

    def __post_init__(self):
        from .world import SPLITS, all_scenes

        self.training_seeds = tuple(int(s) for s in self.training_seeds)
        self.methods = tuple(self.methods)
        self.eval_seeds = tuple(int(s) for s in self.eval_seeds)
        self.secondary = tuple(self.secondary)
        self.recipe = dict(self.recipe)
        if not self.training_seeds or len(set(self.training_seeds)) != len(self.training_seeds):
            raise ValueError(f"training_seeds must be distinct and at least one, got {list(self.training_seeds)}")
        if not self.eval_seeds or len(set(self.eval_seeds)) != len(self.eval_seeds):
            raise ValueError(f"eval_seeds must be distinct and at least one, got {list(self.eval_seeds)}")
        unknown = [m for m in self.methods if m not in METHODS[1:]]
        if unknown or not self.methods:
            raise ValueError(f"methods {unknown or '()'}: choose among {list(METHODS[1:])}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        size = len(all_scenes(self.split))
        if not 2 <= self.eval_prompts <= size:
            raise ValueError(
                f"eval_prompts must be 2-{size} (the {self.split} split's scenes), got {self.eval_prompts}"
            )
        if not 0 < self.confidence_level < 1 or not 0 < self.alpha < 1:
            raise ValueError(
                f"confidence_level and alpha must be in (0, 1), got {self.confidence_level}, {self.alpha}"
            )
        managed = sorted(set(self.recipe) & set(_MANAGED))
        if managed:
            raise ValueError(f"recipe may not set {managed}: the study sets them (training_seeds, eval_prompts, ...)")
        names = {f.name for f in dataclasses.fields(DemoConfig)}
        if set(self.recipe) - names:
            raise ValueError(f"recipe fields {sorted(set(self.recipe) - names)} are not DemoConfig fields")
        self.demo_config(self.training_seeds[0])  # the recipe's own checks, now rather than after hours
        comparisons = self.comparisons
        if len(set(comparisons)) != len(comparisons):
            raise ValueError(f"the family lists a comparison twice: {[f'{a} vs {b}' for a, b in comparisons]}")
        for a, b in comparisons:
            for name in (a, b):
                if name != "base" and base_guidance(name) is None and name not in self.methods:
                    raise ValueError(f"comparison '{a} vs {b}': {name!r} is not a trained method "
                                     f"{list(self.methods)}, 'base' or 'base@G'")  # fmt: skip
        for method in self.methods:
            trainer_for(method)

    @property
    def comparisons(self) -> list[tuple[str, str]]:
        """The declared family, primary first: `(a, b)` means `a - b`."""
        return [_parse_comparison(text) for text in (self.primary, *self.secondary)]

    def demo_config(self, seed: int) -> DemoConfig:
        """The demo's config for one training seed (the study's evaluation is its own; these fields are unused)."""
        return DemoConfig(**{**self.recipe, "seed": seed, "in_distribution_prompts": 0})

    def to_json(self) -> dict[str, Any]:
        """The config as written in `study_config.json` (with the full recipe each seed trains)."""
        out = dataclasses.asdict(self)
        out["demo_config"] = {k: v for k, v in dataclasses.asdict(self.demo_config(0)).items() if k not in _MANAGED}
        return json.loads(json.dumps(out))

    @classmethod
    def quick(cls, **overrides: Any) -> StudyConfig:
        """The `--quick` preset: 2 seeds, 8 prompts, 1 noise, tiny budgets; a smoke test of every stage."""
        given = overrides.pop("recipe", {})
        recipe = {**QUICK_RECIPE, **quick_dpo_recipes(given.get("dpo_steps", QUICK_RECIPE["dpo_steps"])), **given}
        values = dict(training_seeds=(0, 1), eval_prompts=8, eval_seeds=(0,), n_resamples=1000, recipe=recipe)
        values.update(overrides)
        return cls(**values)


def _parse_comparison(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in str(text).split(" vs ")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise ValueError(f"comparison {text!r}: expected 'A vs B' with two different method names")
    return parts[0], parts[1]


def base_guidance(name: str) -> float | None:
    """The guidance scale G of a comparison name `base@G` (the base model sampled at guidance G rather than at the
    recipe's `guidance_scale`); None for any other name.

    A row trained and sampled at another guidance (`DemoConfig.online_guidance_scale`) is compared with the base as
    users sample it (`base`) and, through `base@G`, with the base sampled as the row is: so a gain that only the
    change of guidance gives is told apart from one the training gives.

    Raises:
        ValueError: `base@` followed by something that is not a guidance scale >= 1.
    """
    if not name.startswith("base@"):
        return None
    try:
        guidance = float(name[len("base@"):])
    except ValueError:
        guidance = float("nan")
    if not guidance >= 1.0:
        raise ValueError(f"{name!r}: expected 'base@G' with G a guidance scale >= 1, such as 'base@2'")
    return guidance


def trainer_for(method: str) -> Callable:
    """The function of `trl_rpo.shapes.stages` that trains `method` (the demo's trainers, by name).

    `DPO_ARMS` rows -> `train_dpo_arm`; the `TAILORPO_PAIRINGS` rows -> `train_tailorpo`; any other name ->
    `train_<name>` (so a method added to the demo with its `train_<name>(config, output_dir, name)` joins the study).

    Raises:
        ValueError: when stages has no trainer for the name.
    """
    from . import stages

    if method in stages.DPO_ARMS:
        return stages.train_dpo_arm
    if method in stages.TAILORPO_PAIRINGS:
        return stages.train_tailorpo
    function = getattr(stages, f"train_{method}", None)
    if function is None:
        raise ValueError(f"method {method!r} has no trainer: trl_rpo.shapes.stages defines no train_{method}")
    return function


def train_method(method: str, config: DemoConfig, pair_sets: dict[str, Any] | None, output_dir: Path):
    """Train one of the demo's methods with the demo's recipe; returns `(pipeline, info)`.

    As in `run_demo`: each Diffusion-DPO row trains its pair set with its arm's recipe (`stages.DPO_ARMS`); a pair
    set with no pairs reports the base model (`info["note"]`).
    """
    from . import stages

    trainer_fn = trainer_for(method)
    info: dict[str, Any] = {}
    if method in stages.DPO_ARMS:
        info["pairs"] = len(pair_sets[stages.DPO_ARMS[method][0]])
        trainer = trainer_fn(config, pair_sets, output_dir, method)
        if trainer is None:
            from .model import load_pipeline

            return load_pipeline(config.model), {**info, "note": "no pairs were built: the base model is reported"}
    elif method in stages.TAILORPO_PAIRINGS:
        trainer = trainer_fn(config, output_dir, method, pairing=stages.TAILORPO_PAIRINGS[method])
    else:
        trainer = trainer_fn(config, output_dir, method)
    info["steps"] = int(trainer.state.global_step)
    return trainer.pipeline, info


def score_pipeline(pipeline, prompts: Sequence[str], eval_seeds: Sequence[int], config: DemoConfig,
                   guidance_scale: float | None = None) -> dict[str, Any]:
    """Render `eval_seeds x prompts` images, each with its own noise, and score each by both judges.

    Returns `[noise][prompt]` lists: `alignment_score`, `judge_alignment`, `judge_strict`, and the attribute
    verdicts of both (`detector_bits`, `judge_bits`: `trl_rpo.shapes.judge.attribute_bits` strings).
    """
    from ..evaluation import generate_images
    from .analysis import analyze
    from .evaluate import check_attributes
    from .judge import attribute_bits, bits_score, judge_attributes
    from .stages import _sampling, prepare_for_scoring
    from .world import parse_prompt

    prepare_for_scoring(pipeline)
    out: dict[str, list[list[Any]]] = {
        k: [] for k in ("alignment_score", *ENDPOINTS[1:], "detector_bits", "judge_bits")
    }
    scenes = [parse_prompt(p) for p in prompts]
    sampling = _sampling(config, guidance_scale)  # another guidance: a CFG-free online row (online_guidance_scale)
    for seed in eval_seeds:
        images = generate_images(pipeline, prompts, seed, batch_size=64, per_image_noise=True, **sampling)
        detector = [attribute_bits(check_attributes(analyze(image), scene)) for image, scene in zip(images, scenes)]
        judge = [attribute_bits(v) for v in judge_attributes(images, prompts)]
        out["alignment_score"].append([bits_score(b) for b in detector])
        out["judge_alignment"].append([bits_score(b) for b in judge])
        out["judge_strict"].append([float(b.count("0") == 0) for b in judge])
        out["detector_bits"].append(detector)
        out["judge_bits"].append(judge)
    return out


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temporary file in the same folder, then `os.replace` (a kill leaves no half file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it was not written by a finished study step") from err


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the keys whose values differ between two JSON objects (nested objects are descended)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix or "(the whole file)"] if a != b else []
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        out += _differences(a.get(key), b.get(key), f"{prefix}{key}.") if key in a and key in b else [prefix + key]
    return [k.rstrip(".") for k in out]


def _fingerprints(config: StudyConfig) -> dict[str, str]:
    """SHA-256 of the weights the study depends on: the base model's UNet and the independent judge."""
    import hashlib

    from .judge import JUDGE_PATH
    from .model import CHECKPOINT_DIR

    folder = Path(config.recipe["model"]) if config.recipe.get("model") else CHECKPOINT_DIR
    files = {"base_unet": folder / "unet" / "diffusion_pytorch_model.safetensors", "judge": JUDGE_PATH}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
            for name, path in files.items()}  # fmt: skip


def _check_config(output_dir: Path, declared: dict[str, Any]) -> None:
    """Write `study_config.json`, or check that the one there equals `declared` (StudyConfigMismatch if not)."""
    path = output_dir / "study_config.json"
    if not path.exists():
        if output_dir.exists() and any(p.name != "study_config.json" for p in output_dir.iterdir()):
            raise FileExistsError(f"{output_dir} holds files but no study_config.json: not a study folder; use a "
                                  "new folder")  # fmt: skip
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(path, declared)
        return
    existing = _read_json(path)
    if existing != declared:
        keys = _differences(existing, declared)
        raise StudyConfigMismatch(
            f"{path} was written with another config (differs in {keys}); resuming would mix results. Rerun with "
            "the same options, or use a new --output_dir"
        )


def run_study(
    config: StudyConfig,
    output_dir: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
    train: Callable = train_method,
) -> dict[str, Any]:
    """Run (or resume) a study in `output_dir`; write `study.json` and the figures; return the study's record.

    Finished seeds (`seeds/seed-S.json`) are read back and not retrained; an unfinished seed's work folder is
    cleared and that seed starts over. `train` is `train_method` (tests pass a counting stand-in).

    Raises:
        StudyConfigMismatch: the folder's `study_config.json` differs from `config`.
        FileExistsError: the folder holds other files and no `study_config.json`.
    """
    import torch
    from tqdm.auto import tqdm

    from .model import load_pipeline
    from .stages import _quiet_libraries, build_pair_sets, evaluation_guidance
    from .world import prompts as shape_prompts

    output_dir = Path(output_dir)
    prompts = shape_prompts(config.eval_prompts, seed=config.prompt_seed, split=config.split)
    declared = {"config": config.to_json(), "eval_prompts": prompts,
                "family": [f"{a} vs {b}" for a, b in config.comparisons], "endpoints": list(ENDPOINTS),
                "weights_sha256": _fingerprints(config)}  # fmt: skip
    _check_config(output_dir, declared)
    _quiet_libraries()
    (output_dir / "seeds").mkdir(exist_ok=True)
    done = {s for s in config.training_seeds if (output_dir / "seeds" / f"seed-{s}.json").exists()}
    todo = [s for s in config.training_seeds if s not in done]
    other_bases = sorted({n for pair in config.comparisons for n in pair if base_guidance(n) is not None})
    bar = tqdm(total=1 + len(other_bases) + len(todo) * (1 + len(config.methods)), desc="study",
               disable=not progress, unit="stage")  # fmt: skip
    if done:
        log(f"resuming: seeds {sorted(done)} finished, {todo or 'none'} to train")

    for name in ("base", *other_bases):  # the base, and at each other guidance the family names: scored once
        path = output_dir / f"{name}.json"
        if not path.exists():
            bar.set_description(name)
            start = time.perf_counter()
            scores = score_pipeline(load_pipeline(config.demo_config(0).model), prompts, config.eval_seeds,
                                    config.demo_config(0), base_guidance(name))  # fmt: skip
            _write_json(path, {**scores, "seconds": round(time.perf_counter() - start, 1)})
        bar.update(1)

    for seed in todo:
        demo_config = config.demo_config(seed)
        work = output_dir / "work" / f"seed-{seed}"
        if work.exists():  # an unfinished seed from a killed run: start it over
            shutil.rmtree(work)
        work.mkdir(parents=True)
        torch.manual_seed(seed)
        seed_start = time.perf_counter()
        record: dict[str, Any] = {"seed": seed, "methods": {}}
        pair_sets = None
        if any(m.startswith("dpo_") for m in config.methods):
            bar.set_description(f"seed {seed}: pairs")
            start = time.perf_counter()
            pair_sets = build_pair_sets(demo_config, load_pipeline(demo_config.model), work)
            record["pair_seconds"] = round(time.perf_counter() - start, 1)
            record["pairs"] = {name: len(pair_sets[name]) for name in ("rpo_pairs", "reward_pairs", "best_of_4_pairs")}
            record["pair_set_seconds"] = {name: round(s, 1) for name, s in pair_sets["seconds"].items()}
        bar.update(1)
        for method in config.methods:
            bar.set_description(f"seed {seed}: {method}")
            start = time.perf_counter()
            pipeline, info = train(method, demo_config, pair_sets, work)
            train_seconds = time.perf_counter() - start
            guidance = evaluation_guidance(demo_config, method)
            scores = score_pipeline(pipeline, prompts, config.eval_seeds, demo_config, guidance)
            record["methods"][method] = {**info, "train_seconds": round(train_seconds, 1),
                                         "eval_seconds": round(time.perf_counter() - start - train_seconds, 1),
                                         "scores": scores}  # fmt: skip
            del pipeline
            bar.update(1)
        record["seconds"] = round(time.perf_counter() - seed_start, 1)
        _write_json(output_dir / "seeds" / f"seed-{seed}.json", record)
        log(f"seed {seed} finished in {record['seconds']:.0f} s")
    bar.close()

    base, *others = (_read_json(output_dir / f"{name}.json") for name in ("base", *other_bases))
    seeds = {s: _read_json(output_dir / "seeds" / f"seed-{s}.json") for s in config.training_seeds}
    study = analyse(config, prompts, base, seeds, dict(zip(other_bases, others)))
    _write_json(output_dir / "study.json", study)
    write_figures(study, output_dir)
    log(format_summary(study))
    return study


def _pair_set_of(methods: Sequence[str]) -> dict[str, str]:
    from .stages import DPO_ARMS

    return {m: DPO_ARMS[m][0] for m in methods if m in DPO_ARMS}


def _scores(bases: dict[str, Any], seeds: dict[int, Any], method: str, endpoint: str):
    """`[training seed, noise, prompt]` scores of a method (a base's, `bases[name]`, are the same for every training
    seed)."""
    import numpy as np

    if method in bases:
        return np.repeat(np.asarray(bases[method][endpoint], dtype=float)[None], len(seeds), axis=0)
    return np.asarray([seeds[s]["methods"][method]["scores"][endpoint] for s in seeds], dtype=float)


def analyse(config: StudyConfig, prompts: list[str], base: dict[str, Any], seeds: dict[int, Any],
            other_bases: dict[str, Any] | None = None) -> dict[str, Any]:
    """The study's statistics from its per-image scores: each declared comparison on each endpoint, with the
    two-level bootstrap (interval, p) and Holm's correction over the family, per-seed gains, both judges'
    agreement on base images, and every score. `other_bases` holds the scores of each `base@G` the family names."""
    from ..statistics import hierarchical_bootstrap, holm_bonferroni
    from .judge import agreement

    bases = {"base": base, **(other_bases or {})}
    results: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        rows = []
        for a, b in config.comparisons:
            result = hierarchical_bootstrap(_scores(bases, seeds, a, endpoint), _scores(bases, seeds, b, endpoint),
                                            confidence_level=config.confidence_level,
                                            n_resamples=config.n_resamples, seed=0)  # fmt: skip
            rows.append({"comparison": f"{a} vs {b}", "a": a, "b": b, **result.to_dict(digits=None)})
        adjusted = holm_bonferroni([row["p_value"] for row in rows])
        for k, (row, p) in enumerate(zip(rows, adjusted)):
            row["role"] = "primary" if k == 0 else "secondary"
            row["p_holm"] = p
            row["reject_holm"] = bool(p < config.alpha)
        results[endpoint] = rows
    for rows_judge, rows_detector in zip(results["judge_alignment"], results["alignment_score"]):
        rows_judge["one_judge_only"] = rows_detector["one_judge_only"] = (
            rows_judge["reject_holm"] != rows_detector["reject_holm"]
        )
    means = {m: {e: round(float(_scores(bases, seeds, m, e).mean()), 5) for e in ENDPOINTS}
             for m in (*bases, *config.methods)}  # fmt: skip
    flat = [bit for row in base["judge_bits"] for bit in row]
    return {
        "config": config.to_json(),
        "family": [f"{a} vs {b}" for a, b in config.comparisons],
        "primary": config.primary,
        "endpoints": {"primary": ENDPOINTS[0], "secondary": list(ENDPOINTS[1:])},
        "comparisons": results,
        "means": means,
        "agreement_on_base_images": agreement(flat, [bit for row in base["detector_bits"] for bit in row]),
        "eval_prompts": prompts,
        "eval_seeds": list(config.eval_seeds),
        "noise": "per image: torch.Generator().manual_seed(trl_rpo.evaluation.image_seed(eval_seed, prompt_index))",
        "seconds": {str(s): record.get("seconds") for s, record in seeds.items()},
        "gain_per_minute": study_gain_per_minute(base[ENDPOINTS[0]], {str(s): r for s, r in seeds.items()},
                                                 config.methods, ENDPOINTS[0], _pair_set_of(config.methods)),
        "statistics": "gain: mean over training seeds x noise x prompts of a - b; ci and p_value: "
        "trl_rpo.statistics.hierarchical_bootstrap (two-level crossed bootstrap over training seeds and prompts, t "
        "quantile with Welch-Satterthwaite df; p from the same resamples); p_holm: Holm over the family, per endpoint",
        "base": base,
        "other_bases": other_bases or {},
        "seeds": {str(s): record for s, record in seeds.items()},
    }


def study_arguments_class() -> type:
    """`trl-rpo study`'s options: `--quick`, `--output_dir`, every `StudyConfig` field and every `DemoConfig`
    recipe field, all defaulting to None ("the preset's value")."""
    from dataclasses import fields, make_dataclass

    from ..cli import OPTION_KINDS as kinds

    full, quick = StudyConfig(), StudyConfig.quick()
    specs: list[tuple[str, Any, Any]] = [
        ("quick", bool, field(default=False, metadata={"help": "Tiny budgets, 2 seeds: a smoke test, not a result."})),
        ("output_dir", str | None, field(default=None, metadata={
            "help": "Study folder: new, or one to resume (same options); default: outputs/study/run-<time>."})),
    ]  # fmt: skip
    for f in fields(StudyConfig):
        if f.name == "recipe":
            continue
        default, quick_default = getattr(full, f.name), getattr(quick, f.name)
        preset = f"preset: {default!r}" + ("" if quick_default == default else f"; {quick_default!r} with --quick")
        specs.append(
            (f.name, kinds[f.type], field(default=None, metadata={"help": f"{f.metadata['help']} ({preset})"}))
        )
    demo = DemoConfig()
    for f in fields(DemoConfig):
        if f.name in _MANAGED:
            continue
        preset = f"demo: {getattr(demo, f.name)!r}"
        if f.name in quick.recipe:
            preset += f"; {quick.recipe[f.name]!r} with --quick"
        specs.append(
            (f.name, kinds[f.type], field(default=None, metadata={"help": f"Recipe: {f.metadata['help']} ({preset})"}))
        )
    return make_dataclass("StudyArguments", specs)


def main(argv: Sequence[str]) -> int:
    """`trl-rpo study [options]`: parse, run (or resume) the study, print where its files are."""
    from dataclasses import asdict, fields

    from trl import TrlParser

    parser = TrlParser(
        (study_arguments_class(),),
        prog="trl-rpo study",
        description="The demo's methods over several training seeds on one evaluation split, with the family of "
        "comparisons declared before the run, a two-level bootstrap and Holm's correction (docs/study.md). Resumes "
        "in the same --output_dir. Options may come from --config FILE.yaml; the command line overrides it.",
    )
    (args,) = parser.parse_args_and_config(args=list(argv))
    values = {k: v for k, v in asdict(args).items() if k not in ("quick", "output_dir") and v is not None}
    study_fields = {f.name for f in fields(StudyConfig)}
    recipe = {k: v for k, v in values.items() if k not in study_fields}
    options = {k: v for k, v in values.items() if k in study_fields}
    try:
        config = StudyConfig.quick(recipe=recipe, **options) if args.quick else StudyConfig(recipe=recipe, **options)
    except ValueError as err:
        parser.error(str(err))
    output_dir = args.output_dir or f"outputs/study/run-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    try:
        run_study(config, output_dir)
    except (StudyConfigMismatch, FileExistsError) as err:
        parser.exit(2, f"trl-rpo study: error: {err}\n")
    print(f"study.json, per_seed_gains.png and forest.png in {output_dir} ({time.perf_counter() - start:.0f} s)")
    return 0
