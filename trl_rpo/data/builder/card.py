"""Publishing a build: export to other dataset formats, the dataset card, and the push to the Hub.

`DatasetExport` is the part of `RichPreferenceDataBuilder` that turns a built `output_dir` into something others
load; the builder supplies `_built()`, `stage_names()`, `args`, `stats` and `output_dir`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature

from ...citations import RPO_CITATION

if TYPE_CHECKING:
    from .builder import RichPreferenceDataBuilder


class DatasetExport:
    """`export`, `dataset_card` and `push_to_hub` of `RichPreferenceDataBuilder`."""

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
