"""`RichPreferenceDataBuilder`: runs each batch through generator -> critic -> editor(s) -> refiner -> verifier(s).

The output folder (shards, manifest, stats) is `ShardStore`'s job (`shards.py`), publishing is `DatasetExport`'s
(`card.py`), generating from a diffusers pipeline is `PipelineGenerator`'s (`generation.py`).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from datasets import Dataset
from PIL import Image

from ...rewards.base import reward_name
from ..editors import edit_masks
from ..masks import union_masks
from ..schema import Critique, InvalidCritiqueError
from .card import DatasetExport
from .config import BUILDER_FEATURES, RichPreferenceConfig
from .generation import PipelineGenerator, _is_diffusers_pipeline, stage_name
from .shards import STATS, ShardStore, _add_stats, _new_stats, _normalize, _process_state

logger = logging.getLogger("trl_rpo.data.builder")

__all__ = ["RichPreferenceDataBuilder"]


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


class RichPreferenceDataBuilder(ShardStore, DatasetExport):
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

    # ------------------------------------------------------------------ identity

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
