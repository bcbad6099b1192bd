"""The output folder: shards written atomically, the manifest that makes a build resumable, stats, processes.

`ShardStore` is the part of `RichPreferenceDataBuilder` that reads and writes `output_dir`; the builder supplies
`args`, `fingerprint()` and `stage_names()`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk

from .config import BUILDER_FEATURES

logger = logging.getLogger("trl_rpo.data.builder")

MANIFEST = "manifest.json"
STATS = "stats.json"
SHARD_META = "rpo_shard.json"
MANIFEST_VERSION = 1


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

def _read_manifest(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it is not a builder manifest") from err


def _shard_path(output_dir: Path, index: int) -> Path:
    return output_dir / f"shard-{index:05d}"


def load_shards(output_dir: str | Path, indices: Sequence[int]) -> Dataset:
    """The committed shards `indices` of a builder's `output_dir`, concatenated in that order."""
    output_dir = Path(output_dir)
    # Empty shards are skipped: datasets 5.2 cannot load_from_disk (or concatenate) a saved empty dataset.
    parts = [
        load_from_disk(str(_shard_path(output_dir, k)))
        for k in indices
        if json.loads((_shard_path(output_dir, k) / SHARD_META).read_text(encoding="utf-8"))["num_rows"] > 0
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


def load_built_dataset(output_dir: str | Path) -> Dataset:
    """The dataset of every committed shard of a builder's `output_dir`, in shard order, without a builder (e.g.
    the pairs an earlier run built)."""
    output_dir = Path(output_dir)
    if _read_manifest(output_dir) is None:
        raise FileNotFoundError(f"{str(output_dir)!r} holds no {MANIFEST}: run build() first")
    indices = sorted(int(p.name.split("-")[1]) for p in output_dir.glob("shard-*") if (p / SHARD_META).is_file())
    if not indices:
        raise FileNotFoundError(f"{str(output_dir)!r} holds no finished shard: run build() first")
    return load_shards(output_dir, indices)


class ShardStore:
    """Shards, manifest and stats of `output_dir` (mixed into `RichPreferenceDataBuilder`)."""

    # Set by the builder; `fingerprint()` and `stage_names()` come from it too.
    args: Any
    dataset: Dataset | None
    stats: dict[str, Any]
    timings: dict[str, float]

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    def _read_manifest(self) -> dict[str, Any] | None:
        return _read_manifest(self.output_dir)

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
        return _shard_path(self.output_dir, index)

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
        return load_shards(self.output_dir, indices)

    def load(self) -> Dataset:
        """The dataset of every committed shard of `output_dir`, in shard order (e.g. to push after a build)."""
        self.dataset = load_built_dataset(self.output_dir)
        stats_path = self.output_dir / STATS
        if stats_path.is_file():
            self.stats = json.loads(stats_path.read_text(encoding="utf-8"))["counts"]
        return self.dataset

    def _built(self) -> Dataset:
        return self.dataset if self.dataset is not None else self.load()
