"""What every shapes sweep shares: a new output folder, its NAME.json/NAME.md, and a paired dev gain.

A module of its own so that `sweep` (the Diffusion-DPO sweeps) and `online_sweep` (the online ones, which `sweep`
re-exports) both import it, and either can be imported first.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .stages import _Scorer


def _new_folder(output_dir: str | Path) -> Path:
    """`output_dir`, created; refused when it holds files, so no earlier sweep is overwritten."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; the sweep writes only into a new folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    return output_dir


def _write_sweep(output_dir: Path, name: str, results: dict[str, Any], table: str, log: Callable[[str], None]):
    """Writes NAME.json (everything) and NAME.md (the table), logs the table and returns `results`."""
    (output_dir / f"{name}.json").write_text(json.dumps(results, indent=2, default=list) + "\n", encoding="utf-8")
    (output_dir / f"{name}.md").write_text(table + "\n", encoding="utf-8")
    log(table)
    return results


def _dev_gain(scorer: _Scorer, method: str, reference: str = "base") -> dict[str, Any]:
    """`method - reference` on the dev prompts: the gain, its 95% interval and the p-value."""
    result = scorer.compare(method, reference, "dev").to_dict()
    return {key: result[key] for key in ("gain", "gain_ci", "p_value")}
