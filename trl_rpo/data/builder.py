"""Rich preference data: generate -> critique -> edit -> verify, written as resumable shards (RPO, arXiv 2503.11720).

    prompts ──> generator ──> critic ──> editor(s) ──> [refiner] ──> verifier(s) ──> (prompt, chosen, rejected)
                 (seeded)      │ no instructions: "no edit"  │ None: "edit failed"    │ False: "rejected"

Each stage is a plain callable, so any model (or rule) can stand in:

- generator: `generator(prompts, seeds) -> list[PIL.Image]`, or a diffusers pipeline (object, Hub id or folder);
- critic: `critic(images, prompts) -> list[Critique | dict]`;
- editor: `editor(images, instructions, prompts) -> list[PIL.Image | None]` (None: the edit failed); a list of
  editors is tried in order, the first image returned wins;
- refiner (optional): `refiner(edited, prompts, masks) -> list[PIL.Image | None]`, e.g. `Img2ImgRefiner` with the
  generator's own pipeline, so the chosen image lies on the model's manifold (see `trl_rpo.data.refiners`);
- verifier: `verifier(originals, edited, prompts) -> list[bool]` (several allowed, see `trl_rpo.data.verifiers`).

The output is a `datasets.Dataset` in TRL's preference format (`prompt`, `chosen`, `rejected`) that
`DiffusionDPOTrainer` takes as is, plus the rich columns `critique`, `instructions`, `edit_method`, `scores`,
`provenance` and `mask` (the edit's region, 255 = edited, when the editor reports it: see
`trl_rpo.data.editors.edit_masks`; None otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, List, Value, concatenate_datasets, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image

from ..rewards.base import reward_name
from .editors import edit_masks
from .masks import union_masks
from .schema import Critique, InvalidCritiqueError

logger = logging.getLogger(__name__)

__all__ = [
    "BUILDER_FEATURES",
    "PipelineGenerator",
    "RichPreferenceConfig",
    "RichPreferenceDataBuilder",
    "ShapesGenerator",
]

MANIFEST = "manifest.json"
STATS = "stats.json"
SHARD_META = "rpo_shard.json"
MANIFEST_VERSION = 1

BUILDER_FEATURES = Features(
    {
        "prompt": Value("string"),
        "chosen": ImageFeature(),
        "rejected": ImageFeature(),
        "critique": Value("string"),
        "instructions": List(
            {
                "instruction": Value("string"),
                "kind": Value("string"),
                "target": Value("string"),
                "region": List(Value("float32")),
                "params": Value("string"),  # JSON: editors' parameters have no fixed schema
            }
        ),
        "edit_method": Value("string"),
        "scores": List({"name": Value("string"), "value": Value("float64")}),
        "provenance": {
            "generator": Value("string"),
            "critic": Value("string"),
            "editors": List(Value("string")),
            "verifiers": List(Value("string")),
            "seed": Value("int64"),
            "prompt_index": Value("int64"),
            "image_index": Value("int32"),
        },
        "mask": ImageFeature(),
    }
)

# Fields that do not change what is built; every other field must match to resume an output_dir.
_RUNTIME_FIELDS = ("output_dir", "batch_size", "device", "disable_tqdm", "overlap_generation")


@dataclass
class RichPreferenceConfig:
    r"""Configuration of `RichPreferenceDataBuilder`.

    Parameters:
        output_dir (`str`, defaults to `"rpo-pairs"`):
            Folder holding the shards, `manifest.json` and `stats.json`. Re-running with the same folder resumes.
        images_per_prompt (`int`, defaults to `2`):
            Images generated (and critiqued) per prompt, each with its own seed.
        shard_size (`int`, defaults to `256`):
            Prompts per shard: the unit of work that is written atomically (a crash loses at most one shard).
        batch_size (`int`, defaults to `8`):
            Images per call of each stage (generate, critique, edit, verify). Does not change the result.
        num_inference_steps (`int`, defaults to `30`):
            Denoising steps of a diffusers generator.
        guidance_scale (`float`, defaults to `5.0`):
            Classifier-free guidance scale of a diffusers generator.
        resolution (`int` or `None`, defaults to `None`):
            Height and width of generated images; `None` uses the pipeline's default.
        negative_prompt (`str` or `None`, defaults to `None`):
            Negative prompt of a diffusers generator.
        seed (`int`, defaults to `0`):
            Base seed: image `j` of prompt `i` is generated with seed `seed + i * images_per_prompt + j`, whatever
            the process count, batch size or resumption.
        torch_dtype (`str` or `None`, defaults to `None`):
            dtype a generator given as a Hub id or folder is loaded in, e.g. `"float16"`.
        device (`str` or `None`, defaults to `None`):
            Device a generator given as a Hub id or folder is moved to; `None` uses the accelerate process's device.
        disable_tqdm (`bool`, defaults to `False`):
            Hide the progress bar.
        overlap_generation (`bool`, defaults to `False`):
            Generate the next batch in a background thread while the current one is critiqued, edited and
            verified, so a slow critic (a VLM server) or editor does not leave the generator idle. Does not change
            the result (every image has its own seed).
    """

    output_dir: str = field(
        default="rpo-pairs",
        metadata={"help": "Folder of the shards, manifest.json and stats.json; re-running with it resumes."},
    )
    images_per_prompt: int = field(default=2, metadata={"help": "Images generated per prompt, each seeded."})
    shard_size: int = field(
        default=256, metadata={"help": "Prompts per shard (written atomically; a crash loses at most one)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Images per call of each stage; does not change results."})
    num_inference_steps: int = field(default=30, metadata={"help": "Denoising steps of a diffusers generator."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Guidance scale of a diffusers generator."})
    resolution: int | None = field(
        default=None, metadata={"help": "Height and width of generated images (default: the pipeline's)."}
    )
    negative_prompt: str | None = field(default=None, metadata={"help": "Negative prompt of a diffusers generator."})
    seed: int = field(
        default=0, metadata={"help": "Base seed; image j of prompt i uses seed + i * images_per_prompt + j."}
    )
    torch_dtype: str | None = field(
        default=None, metadata={"help": "dtype of a generator loaded from a Hub id or folder, e.g. float16."}
    )
    device: str | None = field(
        default=None, metadata={"help": "Device of a generator loaded by id (default: the process's device)."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})
    overlap_generation: bool = field(
        default=False,
        metadata={"help": "Generate the next batch while the current one is critiqued and edited (same result)."},
    )

    def __post_init__(self):
        for name in ("images_per_prompt", "shard_size", "batch_size", "num_inference_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RichPreferenceConfig.{name} must be a positive integer, got {value!r}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ValueError(f"RichPreferenceConfig.resolution must be a multiple of 8, got {self.resolution}")

    def fingerprint(self) -> dict[str, Any]:
        """The fields that decide what is built (all but output_dir, batch_size, device and disable_tqdm)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _RUNTIME_FIELDS}


def stage_name(stage: Any) -> str:
    """A stable, human-readable name of a stage: its own `repr` when it defines one, else its name."""
    if isinstance(stage, str):
        return stage
    if not inspect.isroutine(stage) and type(stage).__repr__ is not object.__repr__:
        return repr(stage)
    return reward_name(stage)


class PipelineGenerator:
    """The generator stage around a diffusers text-to-image pipeline (an object, a Hub id or a local folder).

    A Hub id or folder is loaded with `DiffusionPipeline.from_pretrained` on first use, so building the builder is
    cheap and a resumed run whose work is all done never loads the model.
    """

    def __init__(self, pipeline: Any, args: RichPreferenceConfig):
        self._pipeline = None if isinstance(pipeline, (str, os.PathLike)) else pipeline
        self._source = os.fspath(pipeline) if isinstance(pipeline, (str, os.PathLike)) else None
        self.args = args
        if self._pipeline is not None:
            config = getattr(self._pipeline, "config", None) or {}
            self.name = getattr(self._pipeline, "name_or_path", None) or config.get("_name_or_path") or ""
            # from_pretrained(Path) leaves a Path in name_or_path; the manifest and the card need a string.
            self.name = str(self.name or type(self._pipeline).__name__)
        else:
            self.name = self._source

    def __repr__(self) -> str:
        return self.name

    @property
    def pipeline(self):
        """The diffusers pipeline, loaded (and moved to the configured device) on first access."""
        if self._pipeline is None:
            import torch
            from diffusers import DiffusionPipeline

            kwargs = {}
            if self.args.torch_dtype not in (None, "auto"):
                kwargs["torch_dtype"] = getattr(torch, self.args.torch_dtype)
            try:
                pipeline = DiffusionPipeline.from_pretrained(self._source, **kwargs)
            except (OSError, ValueError) as err:
                raise OSError(
                    f"could not load the generator {self._source!r}: {err}. Pass a local folder written by "
                    "`pipeline.save_pretrained`, a pipeline object, a callable, or a Hub id reachable from here."
                ) from err
            pipeline.to(self.args.device or _process_state().device)
            if hasattr(pipeline, "set_progress_bar_config"):
                pipeline.set_progress_bar_config(disable=True)
            self._pipeline = pipeline
        return self._pipeline

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        import torch

        kwargs: dict[str, Any] = {
            "prompt": list(prompts),
            "num_inference_steps": self.args.num_inference_steps,
            "guidance_scale": self.args.guidance_scale,
            # CPU generators: the same seed gives the same image on any device.
            "generator": [torch.Generator("cpu").manual_seed(int(s)) for s in seeds],
            "output_type": "pil",
        }
        if self.args.resolution is not None:
            kwargs["height"] = kwargs["width"] = self.args.resolution
        if self.args.negative_prompt is not None:
            kwargs["negative_prompt"] = [self.args.negative_prompt] * len(prompts)
        return list(self.pipeline(**kwargs).images)


class ShapesGenerator:
    """A shapes-world generator that makes deliberate mistakes: an offline stand-in for a text-to-image model.

    With probability `mistake_rate` (seeded per image) one attribute of the prompt's scene (shape, color, count,
    position or background) is changed before rendering, so `trl_rpo.shapes.Critic` has something to criticize.
    """

    name = "shapes_generator"

    def __init__(self, mistake_rate: float = 0.75, size: int = 64):
        if not 0.0 <= mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {mistake_rate}")
        self.mistake_rate, self.size = mistake_rate, size

    def __repr__(self) -> str:
        return f"ShapesGenerator(mistake_rate={self.mistake_rate}, size={self.size})"

    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[Image.Image]:
        from ..shapes import BACKGROUNDS, COUNTS, PALETTE, POSITIONS, SHAPES, parse_prompt, render

        choices = {
            "shape": SHAPES,
            "color": tuple(PALETTE),
            "count": COUNTS,
            "position": POSITIONS,
            "background": tuple(BACKGROUNDS),
        }
        images = []
        for prompt, seed in zip(prompts, seeds):
            rng = random.Random(int(seed))
            scene = parse_prompt(prompt)
            if rng.random() < self.mistake_rate:
                attribute = rng.choice(sorted(choices))
                wrong = rng.choice([v for v in choices[attribute] if v != getattr(scene, attribute)])
                scene = dataclasses.replace(scene, **{attribute: wrong})
            images.append(render(scene, size=self.size, seed=int(seed)))
        return images


def _is_diffusers_pipeline(obj: Any) -> bool:
    try:
        from diffusers import DiffusionPipeline
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return False
    return isinstance(obj, DiffusionPipeline)


def _process_state():
    """accelerate's `PartialState`, refusing a launch whose processes would each believe they are alone.

    `PartialState()` only starts a CPU process group when told to run on CPU, so `ACCELERATE_USE_CPU` (what
    `accelerate launch --cpu` sets) is honoured here as `Accelerator` does; without a process group every process
    would build every shard.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = (
        PartialState() if PartialState._shared_state else PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and state.num_processes != world_size:
        raise RuntimeError(
            f"launched as {world_size} processes (WORLD_SIZE) but accelerate runs {state.num_processes}: each process "
            "would build every shard. On a machine without GPUs launch with `accelerate launch --cpu ...` or set "
            "ACCELERATE_USE_CPU=true."
        )
    return state


def _atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary file next to `path`, then rename it over `path` (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _normalize(data: Any) -> Any:
    """`data` as it reads back from JSON (tuples become lists), so fingerprints compare equal across runs."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


@contextlib.contextmanager
def _quiet_datasets():
    """Hide datasets' own progress bars (one per shard write) under the builder's progress bar."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def _prompts_sha(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]


def _new_stats() -> dict[str, Any]:
    return {
        "prompts": 0,
        "images": 0,
        "no_edit": 0,
        "invalid_critique": 0,
        "edit_failed": 0,
        "refine_failed": 0,
        "rejected": 0,
        "rejected_by": {},
        "kept": 0,
    }


def _add_stats(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if key == "rejected_by":
            for name, n in value.items():
                total["rejected_by"][name] = total["rejected_by"].get(name, 0) + n
        else:
            total[key] = total.get(key, 0) + value


def _instruction_cells(critique: Critique) -> list[dict[str, Any]]:
    return [
        {
            "instruction": item.instruction,
            "kind": item.kind,
            "target": item.target,
            "region": list(item.region) if item.region is not None else None,
            "params": json.dumps(item.params, sort_keys=True, default=str),
        }
        for item in critique.instructions
    ]


class RichPreferenceDataBuilder:
    """Builds RPO preference pairs: each image the critic finds fault with, edited into its preferred version.

    Args:
        generator: a diffusers pipeline (object, Hub id or folder, loaded with `DiffusionPipeline.from_pretrained`)
            or any callable `generator(prompts, seeds) -> list[PIL.Image]`.
        critic: `critic(images, prompts) -> list[Critique | dict]`; an image whose critique has no instructions
            yields no pair and is counted as `no_edit`.
        editor: one editor or a list; `editor(images, instructions, prompts) -> list[PIL.Image | None]`, where
            `instructions[i]` is the list of `EditInstruction` of image `i` and None means the edit failed. With a
            list, each image goes to the editors in order and the first image returned wins.
        verifier: optional; one or a list of `verifier(originals, edited, prompts) -> list[bool]`, applied in order
            (a pair rejected by one is not shown to the next, and is counted under that verifier's name).
        args: a `RichPreferenceConfig`.
        refiner: optional; `refiner(edited, prompts, masks) -> list[PIL.Image | None]` run on each edit before
            verification (e.g. `Img2ImgRefiner(generator_pipeline, strength=0.3)`); None drops the pair
            (`refine_failed`).

    Example:

        builder = RichPreferenceDataBuilder(generator="stabilityai/stable-diffusion-xl-base-1.0", critic=critic,
                                            editor=[editor_a, editor_b], args=RichPreferenceConfig("rpo-pairs"))
        dataset = builder.build(prompts)   # resumable
        builder.push_to_hub("me/rpo-sdxl-pairs")
    """

    def __init__(
        self,
        generator: Any,
        critic: Callable,
        editor: Callable | Sequence[Callable],
        verifier: Callable | Sequence[Callable] | None = None,
        args: RichPreferenceConfig | None = None,
        refiner: Callable | None = None,
    ):
        self.args = args if args is not None else RichPreferenceConfig()
        if isinstance(generator, (str, os.PathLike)) or _is_diffusers_pipeline(generator):
            generator = PipelineGenerator(generator, self.args)
        for label, stage in (("generator", generator), ("critic", critic)):
            if not callable(stage):
                raise TypeError(f"{label} must be callable, got {type(stage).__name__}")
        self.generator = generator
        self.critic = critic
        self.editors = list(editor) if isinstance(editor, (list, tuple)) else [editor]
        if not self.editors or not all(callable(e) for e in self.editors):
            raise TypeError(f"editor must be a callable or a non-empty list of callables, got {editor!r}")
        if verifier is None:
            self.verifiers: list[Callable] = []
        else:
            self.verifiers = list(verifier) if isinstance(verifier, (list, tuple)) else [verifier]
        if not all(callable(v) for v in self.verifiers):
            raise TypeError(f"verifier must be a callable or a list of callables, got {verifier!r}")
        if refiner is not None and not callable(refiner):
            raise TypeError(f"refiner must be callable (images, prompts, masks), got {type(refiner).__name__}")
        self.refiner = refiner
        self.dataset: Dataset | None = None
        self.stats: dict[str, Any] = _new_stats()  # counts of the whole output_dir (all runs, all processes)
        self.run_stats: dict[str, Any] = _new_stats()  # counts of this process in the last build() call
        self.timings: dict[str, float] = {}  # seconds per stage of this process in the last build() call

    # ------------------------------------------------------------------ identity and output folder

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    def stage_names(self) -> dict[str, Any]:
        """The name of each stage, as recorded in the manifest, the provenance column and the dataset card."""
        names = {
            "generator": stage_name(self.generator),
            "critic": stage_name(self.critic),
            "editors": [stage_name(e) for e in self.editors],
            "verifiers": [stage_name(v) for v in self.verifiers],
        }
        if self.refiner is not None:  # only then, so folders built without one keep their fingerprint
            names["refiner"] = stage_name(self.refiner)
        return names

    def fingerprint(self) -> dict[str, Any]:
        """What an output_dir was built with; resuming requires the same fingerprint."""
        return _normalize({"config": self.args.fingerprint(), "stages": self.stage_names()})

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.output_dir / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); it is not a builder manifest") from err

    def _check_output_dir(self) -> dict[str, Any] | None:
        """The existing manifest, after refusing a folder of other content or one built with another config."""
        manifest = self._read_manifest()
        out = self.output_dir
        if manifest is None:
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise FileExistsError(
                    f"output_dir {str(out)!r} exists and is not empty, but holds no {MANIFEST}: it is not a "
                    "RichPreferenceDataBuilder output and will not be overwritten. Choose another output_dir."
                )
            return None
        theirs, ours = manifest.get("fingerprint", {}), self.fingerprint()
        if theirs != ours:
            diffs = []
            for section in ("config", "stages"):
                old, new = theirs.get(section, {}), ours[section]
                for key in sorted(set(old) | set(new)):
                    if old.get(key) != new.get(key):
                        diffs.append(f"{section}.{key}: {old.get(key)!r} (on disk) != {new.get(key)!r} (now)")
            raise ValueError(
                f"output_dir {str(out)!r} was built with a different configuration, so it cannot be resumed:\n  "
                + "\n  ".join(diffs)
                + "\nUse a new output_dir, or restore the configuration above to resume."
            )
        return manifest

    def _shard_dir(self, index: int) -> Path:
        return self.output_dir / f"shard-{index:05d}"

    def _finished_shard(self, index: int, prompts: Sequence[str]) -> dict[str, Any] | None:
        """The metadata of a committed shard, or None; refuses a shard built from other prompts."""
        meta_path = self._shard_dir(index) / SHARD_META
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("prompts_sha") != _prompts_sha(prompts):
            raise ValueError(
                f"shard {index} in {str(self.output_dir)!r} was built from other prompts than prompts "
                f"[{index * self.args.shard_size}:{index * self.args.shard_size + len(prompts)}] of this run; "
                "resume with the same prompt list (in the same order), or use a new output_dir"
            )
        return meta

    def _remove_temporaries(self) -> None:
        """Delete shards and files left half-written by a killed run (they were never committed)."""
        for path in self.output_dir.glob(".*.tmp-*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ build

    def build(self, prompts: Sequence[str] | Dataset) -> Dataset:
        """Generate, critique, edit and verify; return the pairs as a `datasets.Dataset`.

        Work is done in shards of `shard_size` prompts written under `output_dir`; finished shards are skipped when
        the same call is repeated, so a killed run resumes where it stopped. Under `accelerate launch` the shards
        are dealt round-robin to the processes and merged by the main process.
        """
        prompts = self._validate_prompts(prompts)
        state = _process_state()
        self._check_output_dir()
        state.wait_for_everyone()
        if state.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._remove_temporaries()
            if self._read_manifest() is None:
                self._write_manifest({})
        state.wait_for_everyone()

        size = self.args.shard_size
        shards = [(k, prompts[k * size : (k + 1) * size]) for k in range(math.ceil(len(prompts) / size))]
        mine = [(k, chunk) for k, chunk in shards if k % state.num_processes == state.process_index]
        todo = [(k, chunk) for k, chunk in mine if self._finished_shard(k, chunk) is None]
        if len(todo) < len(mine):
            logger.info(
                "Resuming: %d of this process's %d shard(s) are already done", len(mine) - len(todo), len(mine)
            )
        self.timings = {"generate": 0.0, "critique": 0.0, "edit": 0.0, "verify": 0.0, "write": 0.0}
        run_stats = _new_stats()
        progress = self._progress(sum(len(c) for _, c in todo) * self.args.images_per_prompt, state)
        start = time.perf_counter()
        try:
            for index, chunk in todo:
                rows, stats = self._run_shard(index, chunk, run_stats, progress, start)
                self._commit_shard(index, chunk, rows, stats, state.process_index)
                if state.num_processes == 1:
                    self._write_manifest(self._collect_shards(shards))
        finally:
            progress.close()
        self.timings["total"] = time.perf_counter() - start
        self.run_stats = run_stats

        state.wait_for_everyone()
        if state.is_main_process:
            self._finalize(shards)
        state.wait_for_everyone()
        self.stats = json.loads((self.output_dir / STATS).read_text(encoding="utf-8"))["counts"]
        self.dataset = self._load_shards([k for k, _ in shards])
        return self.dataset

    @staticmethod
    def _validate_prompts(prompts: Sequence[str] | Dataset) -> list[str]:
        if isinstance(prompts, Dataset):
            if "prompt" not in prompts.column_names:
                raise ValueError(f"the prompt dataset needs a 'prompt' column; it has {prompts.column_names}")
            prompts = prompts["prompt"]
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        prompts = list(prompts)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompt {i} must be a non-empty string, got {prompt!r}")
        if not prompts:
            raise ValueError("build() needs at least one prompt")
        return prompts

    def _progress(self, total: int, state: Any):
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            unit="img",
            desc=f"RPO pairs [{state.process_index}]" if state.num_processes > 1 else "RPO pairs",
            disable=self.args.disable_tqdm or not state.is_local_main_process,
            dynamic_ncols=True,
        )

    def _run_shard(self, index: int, prompts: list[str], run_stats: dict, progress: Any, start: float):
        """All pairs of one shard, in batches of `batch_size` images through every stage."""
        base = index * self.args.shard_size
        n = self.args.images_per_prompt
        items = [
            (base + i, j, prompt, self.args.seed + (base + i) * n + j)
            for i, prompt in enumerate(prompts)
            for j in range(n)
        ]
        rows: dict[str, list] = {name: [] for name in BUILDER_FEATURES}
        stats = _new_stats()
        stats["prompts"] = len(prompts)
        names = self.stage_names()
        batches = [items[lo : lo + self.args.batch_size] for lo in range(0, len(items), self.args.batch_size)]
        for batch, images in zip(batches, self._generated(batches, names)):
            batch_stats = _new_stats()
            self._run_batch(batch, images, rows, batch_stats, names)
            _add_stats(stats, batch_stats)
            _add_stats(run_stats, batch_stats)
            progress.update(len(batch))
            elapsed = max(time.perf_counter() - start, 1e-9)
            progress.set_postfix(
                kept=run_stats["kept"],
                no_edit=run_stats["no_edit"],
                failed=run_stats["edit_failed"] + run_stats["invalid_critique"] + run_stats["refine_failed"],
                rejected=run_stats["rejected"],
                pairs_s=f"{run_stats['kept'] / elapsed:.2f}",
                refresh=False,
            )
        return rows, stats

    def _timed(self, stage: str, func: Callable, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - began

    def _generate(self, batch: list[tuple], names: dict) -> list[Image.Image]:
        images = self._timed("generate", self.generator, [item[2] for item in batch], [item[3] for item in batch])
        return self._check_images(images, len(batch), "generator", names["generator"], allow_none=False)

    def _generated(self, batches: list[list[tuple]], names: dict):
        """Each batch's images, in order; with `overlap_generation`, batch k+1 is generated while k is processed."""
        if not self.args.overlap_generation:
            for batch in batches:
                yield self._generate(batch, names)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rpo-generate") as pool:
            pending = pool.submit(self._generate, batches[0], names) if batches else None
            for k in range(len(batches)):
                images = pending.result()  # re-raises a generator error here, in order
                pending = pool.submit(self._generate, batches[k + 1], names) if k + 1 < len(batches) else None
                yield images

    def _run_batch(
        self, batch: list[tuple], images: list[Image.Image], rows: dict[str, list], stats: dict, names: dict
    ) -> None:
        prompts = [item[2] for item in batch]
        seeds = [item[3] for item in batch]
        stats["images"] += len(batch)

        raw = self._timed("critique", self.critic, images, prompts)
        if not isinstance(raw, (list, tuple)) or len(raw) != len(batch):
            got = len(raw) if isinstance(raw, (list, tuple)) else type(raw).__name__
            raise TypeError(f"critic {names['critic']!r} must return a list of {len(batch)} critiques, got {got}")
        critiques: list[Critique | None] = []
        for k, value in enumerate(raw):
            if value is None:  # the critic's own way of saying it failed on this image
                stats["invalid_critique"] += 1
                critiques.append(None)
                continue
            try:
                critiques.append(Critique.coerce(value))
            except InvalidCritiqueError as err:
                logger.warning("Invalid critique for prompt %r (seed %d): %s", prompts[k], seeds[k], err)
                stats["invalid_critique"] += 1
                critiques.append(None)
        todo = [k for k, c in enumerate(critiques) if c is not None and c.needs_edit]
        stats["no_edit"] += sum(1 for c in critiques if c is not None and not c.needs_edit)
        edits, methods, masks = self._edit(
            [images[k] for k in todo], [critiques[k] for k in todo], [prompts[k] for k in todo]
        )
        stats["edit_failed"] += sum(1 for e in edits if e is None)
        alive = [(k, e, m) for k, e, m in zip(todo, edits, methods) if e is not None]
        mask_of = {k: mask for k, e, mask in zip(todo, edits, masks) if e is not None}
        if self.refiner is not None and alive:
            refined = self._timed(
                "refine", self.refiner, [e for _, e, _ in alive], [prompts[k] for k, _, _ in alive],
                [mask_of[k] for k, _, _ in alive],
            )  # fmt: skip
            refined = self._check_images(refined, len(alive), "refiner", names["refiner"], allow_none=True)
            stats["refine_failed"] += sum(1 for image in refined if image is None)
            # The stored mask covers what the edit *and* the refinement changed (None once either is unbounded).
            for (k, _, _), region in zip(alive, edit_masks(self.refiner, len(alive))):
                mask_of[k] = union_masks([mask_of[k], region])
            alive = [(k, image, m) for (k, _, m), image in zip(alive, refined) if image is not None]
        scores: dict[int, dict[str, float]] = {k: {} for k, _, _ in alive}
        for verifier, verifier_label in zip(self.verifiers, names["verifiers"]):
            if not alive:
                break
            keep = self._verify(verifier, verifier_label, alive, images, prompts, critiques, scores)
            name = reward_name(verifier)
            rejected = sum(1 for flag in keep if not flag)
            if rejected:
                stats["rejected"] += rejected
                stats["rejected_by"][name] = stats["rejected_by"].get(name, 0) + rejected
            alive = [entry for entry, flag in zip(alive, keep) if flag]
        for k, edit, method in alive:
            prompt_index, image_index, prompt, seed = batch[k]
            rows["prompt"].append(prompt)
            rows["chosen"].append(edit)
            rows["rejected"].append(images[k])
            rows["critique"].append(critiques[k].critique)
            rows["instructions"].append(_instruction_cells(critiques[k]))
            rows["edit_method"].append(method)
            rows["scores"].append([{"name": key, "value": value} for key, value in scores[k].items()])
            rows["mask"].append(mask_of[k])
            rows["provenance"].append(
                {
                    "generator": names["generator"],
                    "critic": names["critic"],
                    "editors": names["editors"],
                    "verifiers": names["verifiers"],
                    "seed": seed,
                    "prompt_index": prompt_index,
                    "image_index": image_index,
                }
            )
        stats["kept"] += len(alive)

    @staticmethod
    def _check_images(images: Any, n: int, role: str, name: str, allow_none: bool) -> list:
        if not isinstance(images, (list, tuple)) or len(images) != n:
            got = f"{len(images)} items" if isinstance(images, (list, tuple)) else type(images).__name__
            raise TypeError(f"{role} {name!r} must return a list of {n} images, got {got}")
        for k, image in enumerate(images):
            if image is None and allow_none:
                continue
            if not isinstance(image, Image.Image):
                expected = "a PIL image or None" if allow_none else "a PIL image"
                raise TypeError(f"{role} {name!r} returned {type(image).__name__} for image {k}; expected {expected}")
        return [image.convert("RGB") if image is not None and image.mode != "RGB" else image for image in images]

    def _edit(self, images: list, critiques: list[Critique], prompts: list[str]) -> tuple[list, list, list]:
        """Each image through the editors in order until one returns an image; the edits, editor names and masks."""
        edits: list[Image.Image | None] = [None] * len(images)
        methods: list[str | None] = [None] * len(images)
        masks: list[Image.Image | None] = [None] * len(images)
        for editor in self.editors:
            pending = [k for k, e in enumerate(edits) if e is None]
            if not pending:
                break
            name = reward_name(editor)
            out = self._timed(
                "edit",
                editor,
                [images[k] for k in pending],
                [list(critiques[k].instructions) for k in pending],
                [prompts[k] for k in pending],
            )
            out = self._check_images(out, len(pending), "editor", name, allow_none=True)
            # A router says which of its editors made each image (`last_methods`, read right after the call).
            used = getattr(editor, "last_methods", None)
            used = (
                list(used) if isinstance(used, (list, tuple)) and len(used) == len(pending) else [name] * len(pending)
            )
            regions = edit_masks(editor, len(pending))
            for k, image, method, region in zip(pending, out, used, regions):
                if image is not None:
                    edits[k], methods[k] = image, str(method or name)
                    masks[k] = region.convert("L") if region is not None and region.size == image.size else None
        return edits, methods, masks

    def _verify(self, verifier, label, alive, images, prompts, critiques, scores) -> list[bool]:
        """One verifier's keep flags for the surviving pairs; records its scores when it gives any."""
        originals = [images[k] for k, _, _ in alive]
        edited = [e for _, e, _ in alive]
        texts = [prompts[k] for k, _, _ in alive]
        kwargs = {}
        target = getattr(verifier, "verify", verifier)
        try:
            accepts = "critiques" in inspect.signature(target).parameters
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            kwargs["critiques"] = [critiques[k] for k, _, _ in alive]
        if hasattr(verifier, "verify"):
            verdicts = self._timed("verify", verifier.verify, originals, edited, texts, **kwargs)
            for (k, _, _), verdict in zip(alive, verdicts):
                scores[k].update(verdict.scores)
            keep = [verdict.keep for verdict in verdicts]
        else:
            keep = self._timed("verify", verifier, originals, edited, texts, **kwargs)
        if not isinstance(keep, (list, tuple)) or len(keep) != len(alive):
            raise TypeError(f"verifier {label!r} must return a list of {len(alive)} booleans, got {keep!r}")
        return [bool(flag) for flag in keep]

    # ------------------------------------------------------------------ shards, manifest, stats

    def _commit_shard(self, index: int, prompts: list[str], rows: dict, stats: dict, process_index: int) -> None:
        """Write a shard under a temporary name, then rename it into place: it exists whole or not at all."""
        began = time.perf_counter()
        final = self._shard_dir(index)
        tmp = self.output_dir / f".{final.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        with _quiet_datasets():
            Dataset.from_dict(rows, features=BUILDER_FEATURES).save_to_disk(str(tmp))
        meta = {
            "index": index,
            "num_rows": len(rows["prompt"]),
            "prompts_sha": _prompts_sha(prompts),
            "first_prompt_index": index * self.args.shard_size,
            "num_prompts": len(prompts),
            "process_index": process_index,
            "stats": stats,
        }
        _atomic_write_json(tmp / SHARD_META, meta)
        os.rename(tmp, final)
        self.timings["write"] = self.timings.get("write", 0.0) + time.perf_counter() - began

    def _collect_shards(self, shards: list[tuple[int, list[str]]]) -> dict[str, Any]:
        metas = {}
        for index, chunk in shards:
            meta = self._finished_shard(index, chunk)
            if meta is not None:
                metas[f"{index:05d}"] = {k: meta[k] for k in ("num_rows", "num_prompts", "process_index", "stats")}
        return metas

    def _write_manifest(self, shard_metas: dict[str, Any]) -> None:
        manifest = {"version": MANIFEST_VERSION, "fingerprint": self.fingerprint(), "shards": shard_metas}
        _atomic_write_json(self.output_dir / MANIFEST, manifest)

    def _finalize(self, shards: list[tuple[int, list[str]]]) -> None:
        """Main process: record every shard in the manifest and write the total counts to stats.json."""
        metas = self._collect_shards(shards)
        missing = [k for k, _ in shards if f"{k:05d}" not in metas]
        if missing:
            raise RuntimeError(f"shard(s) {missing} of {str(self.output_dir)!r} were not written; re-run build()")
        self._write_manifest(metas)
        totals = _new_stats()
        for meta in metas.values():
            _add_stats(totals, meta["stats"])
        _atomic_write_json(
            self.output_dir / STATS,
            {"counts": totals, "stages": self.stage_names(), "config": self.args.fingerprint(), "shards": len(metas)},
        )
        rejected = ", ".join(f"{k}: {v}" for k, v in totals["rejected_by"].items()) or "none"
        logger.info(
            "Built %d pair(s) from %d prompt(s), %d image(s): %d needed no edit, %d invalid critique(s), "
            "%d failed edit(s), %d failed refinement(s), %d rejected by verifiers (%s)",
            totals["kept"],
            totals["prompts"],
            totals["images"],
            totals["no_edit"],
            totals["invalid_critique"],
            totals["edit_failed"],
            totals.get("refine_failed", 0),
            totals["rejected"],
            rejected,
        )

    def _load_shards(self, indices: Sequence[int]) -> Dataset:
        # Empty shards are skipped: datasets 5.2 cannot load_from_disk (or concatenate) a saved empty dataset.
        parts = [
            load_from_disk(str(self._shard_dir(k)))
            for k in indices
            if json.loads((self._shard_dir(k) / SHARD_META).read_text(encoding="utf-8"))["num_rows"] > 0
        ]
        if not parts:
            return Dataset.from_dict({name: [] for name in BUILDER_FEATURES}, features=BUILDER_FEATURES)
        # Shards written before the `mask` column existed get an empty one, so old and new shards concatenate.
        parts = [
            part if "mask" in part.column_names
            else part.add_column("mask", [None] * len(part), feature=BUILDER_FEATURES["mask"])
            for part in parts
        ]  # fmt: skip
        return concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def load(self) -> Dataset:
        """The dataset of every committed shard of `output_dir`, in shard order (e.g. to push after a build)."""
        if self._read_manifest() is None:
            raise FileNotFoundError(f"{str(self.output_dir)!r} holds no {MANIFEST}: run build() first")
        indices = sorted(
            int(p.name.split("-")[1]) for p in self.output_dir.glob("shard-*") if (p / SHARD_META).is_file()
        )
        if not indices:
            raise FileNotFoundError(f"{str(self.output_dir)!r} holds no finished shard: run build() first")
        self.dataset = self._load_shards(indices)
        stats_path = self.output_dir / STATS
        if stats_path.is_file():
            self.stats = json.loads(stats_path.read_text(encoding="utf-8"))["counts"]
        return self.dataset

    def _built(self) -> Dataset:
        return self.dataset if self.dataset is not None else self.load()

    # ------------------------------------------------------------------ export and publishing

    def export(self, format: str = "pickapic") -> Dataset:
        """The pairs in another dataset format.

        `"pickapic"`: Pick-a-Pic v2 columns (`caption`, `jpg_0`, `jpg_1` as encoded image bytes, `label_0`); the
        edited image is `jpg_0` on even rows (`label_0 = 1`) and `jpg_1` on odd rows (`label_0 = 0`), so both
        label values occur. `"preference"`: only TRL's `prompt`, `chosen`, `rejected`.
        """
        dataset = self._built()
        if format == "preference":
            return dataset.select_columns(["prompt", "chosen", "rejected"])
        if format != "pickapic":
            raise ValueError(f"unknown export format {format!r}; expected 'pickapic' or 'preference'")
        raw = dataset.select_columns(["prompt", "chosen", "rejected"])
        raw = raw.cast_column("chosen", ImageFeature(decode=False)).cast_column("rejected", ImageFeature(decode=False))
        features = Features(
            {
                "caption": Value("string"),
                "jpg_0": Value("binary"),
                "jpg_1": Value("binary"),
                "label_0": Value("float64"),
            }
        )
        return raw.map(
            _to_pickapic, batched=True, with_indices=True, remove_columns=raw.column_names, features=features
        )

    def dataset_card(self, repo_id: str | None = None, num_examples: int = 3):
        """A dataset card: how the pairs were built, models and settings, counts at each stage, examples, citation."""
        return _build_dataset_card(self, repo_id=repo_id, num_examples=num_examples)

    def push_to_hub(
        self, repo_id: str, private: bool | None = None, token: str | None = None, num_examples: int = 3
    ) -> str:
        """Upload the dataset and its card to the Hub; returns the dataset's URL.

        The token defaults to the environment (`HF_TOKEN` or a `huggingface-cli login`) and is never written
        anywhere. The card is uploaded first, so `Dataset.push_to_hub` keeps its text and adds its metadata.
        """
        from huggingface_hub import HfApi

        dataset = self._built()
        card = self.dataset_card(repo_id, num_examples=num_examples)
        card_path = self.output_dir / "README.md"
        tmp = card_path.with_name(f".README.md.tmp-{os.getpid()}")
        tmp.write_text(str(card), encoding="utf-8")
        os.replace(tmp, card_path)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_file(
            path_or_fileobj=str(card).encode("utf-8"),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="dataset",
            commit_message="Add dataset card (trl-rpo RichPreferenceDataBuilder)",
        )
        dataset.push_to_hub(repo_id, private=private, token=token, commit_message="Upload RPO preference pairs")
        return f"https://huggingface.co/datasets/{repo_id}"


def _to_pickapic(examples: dict, indices: list[int]) -> dict:
    out: dict[str, list] = {"caption": examples["prompt"], "jpg_0": [], "jpg_1": [], "label_0": []}
    for chosen, rejected, index in zip(examples["chosen"], examples["rejected"], indices):
        win, lose = _image_bytes(chosen), _image_bytes(rejected)
        first, second, label = (win, lose, 1.0) if index % 2 == 0 else (lose, win, 0.0)
        out["jpg_0"].append(first)
        out["jpg_1"].append(second)
        out["label_0"].append(label)
    return out


def _image_bytes(cell: dict) -> bytes:
    if cell.get("bytes") is not None:
        return cell["bytes"]
    with open(cell["path"], "rb") as handle:
        return handle.read()


_PIPELINE_TEXT = """```text
prompts ──> generator ──> critic ──> editor(s) ──> verifier(s) ──> (prompt, chosen = edit, rejected = original)
             (seeded)      │                │                 │
                           └ no instructions: image already good (no pair)
                                            └ no editor returned an image: edit failed
                                                              └ a verifier said no: rejected
```"""


def _cell(text: Any, limit: int = 160) -> str:
    """Text fit for one Markdown table cell: one line, pipes escaped, shortened to `limit` characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _build_dataset_card(builder: RichPreferenceDataBuilder, repo_id: str | None, num_examples: int):
    """The dataset card of a built output_dir (see `RichPreferenceDataBuilder.dataset_card`)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    from ..trainer.model_card import RPO_CITATION

    dataset = builder._built()
    names = builder.stage_names()
    counts = builder.stats
    data = DatasetCardData(
        task_categories=["text-to-image"],
        tags=["rpo", "preference", "dpo", "trl-rpo", "synthetic"],
        pretty_name=f"RPO preference pairs{f' ({repo_id})' if repo_id else ''}",
        size_categories=["n<1K" if len(dataset) < 1000 else "1K<n<10K" if len(dataset) < 10_000 else "10K<n<100K"],
    )
    settings = "\n".join(f"| `{k}` | `{_cell(v)}` |" for k, v in builder.args.fingerprint().items())
    models = "\n".join(
        [
            f"| generator | `{_cell(names['generator'])}` |",
            f"| critic | `{_cell(names['critic'])}` |",
            *(f"| editor {i + 1} | `{_cell(n)}` |" for i, n in enumerate(names["editors"])),
            *([f"| refiner | `{_cell(names['refiner'])}` |"] if "refiner" in names else []),
            *(f"| verifier {i + 1} | `{_cell(n)}` |" for i, n in enumerate(names["verifiers"])),
        ]
    )
    rejected_by = "".join(f"\n| rejected by `{k}` | {v} |" for k, v in counts.get("rejected_by", {}).items())
    stage_counts = (
        f"| prompts | {counts.get('prompts', 0)} |\n| images generated | {counts.get('images', 0)} |\n"
        f"| already good (no instructions) | {counts.get('no_edit', 0)} |\n"
        f"| invalid critiques | {counts.get('invalid_critique', 0)} |\n"
        f"| edits failed | {counts.get('edit_failed', 0)} |\n"
        + (f"| refinements failed | {counts['refine_failed']} |\n" if counts.get("refine_failed") else "")
        + f"| rejected by verifiers | {counts.get('rejected', 0)} |{rejected_by}\n"
        f"| **pairs kept** | **{counts.get('kept', len(dataset))}** |"
    )
    text = dataset.select_columns(["prompt", "critique", "instructions", "edit_method"])
    examples = "\n".join(
        f"| {_cell(row['prompt'], 80)} | {_cell(row['critique'])} | "
        f"{_cell('; '.join(i['instruction'] for i in row['instructions']))} | `{_cell(row['edit_method'], 60)}` |"
        for row in text.select(range(min(num_examples, len(text))))
    )
    name = repo_id or "path/to/this/dataset"
    content = f"""---
{data.to_yaml()}
---

# RPO preference pairs

Preference pairs for text-to-image diffusion models, built with
trl-rpo's `RichPreferenceDataBuilder` following Rich Preference Optimization
([arXiv 2503.11720](https://arxiv.org/abs/2503.11720)): each generated image is criticized, the critique is turned
into editing instructions, the image is edited, and the edit (when verified) is preferred over the original.

{_PIPELINE_TEXT}

Columns: `prompt`, `chosen` (the edited image), `rejected` (the generated image), `critique`, `instructions`
(the executable edits), `edit_method` (the editor that succeeded), `scores` (the verifiers' numbers) and
`provenance` (models, seed, prompt and image index).

## Models

| stage | model |
|---|---|
{models}

## Settings

| setting | value |
|---|---|
{settings}

## Counts at each stage

| stage | count |
|---|---|
{stage_counts}

## Examples

| prompt | critique | instructions | editor |
|---|---|---|---|
{examples}

## Use

```python
from datasets import load_dataset
from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer

dataset = load_dataset("{name}", split="train")
args = DiffusionDPOConfig(output_dir="rpo-dpo")
trainer = DiffusionDPOTrainer(model="<base pipeline>", args=args, train_dataset=dataset)
trainer.train()
```

## Citation

```bibtex
{RPO_CITATION}
```
"""
    return DatasetCard(content)
