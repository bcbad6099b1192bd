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

from .builder import RichPreferenceDataBuilder
from .config import BUILDER_FEATURES, RichPreferenceConfig
from .generation import PipelineGenerator, stage_name

# Used by the CLI and reward_pairs (the process group, whether a stage is a pipeline): part of the package's API
# to its siblings, not to users.
from .generation import _is_diffusers_pipeline as _is_diffusers_pipeline
from .shards import _process_state as _process_state

__all__ = [
    "BUILDER_FEATURES",
    "PipelineGenerator",
    "RichPreferenceConfig",
    "RichPreferenceDataBuilder",
    "stage_name",
]
