"""The model registry (`trl_rpo.families`): no trainer or data module names a family, and a new family is one
registered `DenoiserFamily` (the walk-through of docs/adding_a_model.md, followed in a few lines)."""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from trl_rpo import DiffusionDPOTrainer
from trl_rpo.families import FAMILIES, DenoiserFamily, detect_family, register_family, unregister_family
from trl_rpo.testing import tiny_preference_dataset, tiny_sd3_pipeline

from ._helpers import dpo_config

torch.set_num_threads(1)

PACKAGE = Path(__file__).resolve().parents[1] / "trl_rpo"
# The trainers, the data builder, and what serves them: the adapter, evaluation, the memory guide.
SERVING = ("models.py", "evaluation.py", "memory_guide.py")
FAMILY_AGNOSTIC = sorted([*(PACKAGE / "trainer").rglob("*.py"), *(PACKAGE / "data").rglob("*.py"),
                          *(PACKAGE / name for name in SERVING)])  # fmt: skip
# Branches on a family: a pipeline-class predicate call, a flag named after a family, a comparison of a family name.
BRANCH_PATTERNS = [
    re.compile(r"\bis_\w+_pipeline\("),
    re.compile(r"\bis_(sdxl|sd3|flux|flux2|qwen_image|z_image)\b"),
    re.compile(r"family\.name\s*(==|!=|in\b|not in\b)"),
]


def family_branches(source: str) -> list[str]:
    """The family-name branches of a module: pattern matches, and string constants equal to a registered name."""
    found = [m.group(0) for pattern in BRANCH_PATTERNS for m in pattern.finditer(source)]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [
                    repr(v.value)
                    for v in values
                    if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value in FAMILIES
                ]
    return found


def test_the_branch_finder_finds_branches():
    assert family_branches('if is_flux_pipeline(pipe):\n    pass\n') == ["is_flux_pipeline("]
    assert family_branches('x = name == "sdxl"\n') == ["'sdxl'"]
    assert family_branches('x = name in ("sd", "flux")\n') == ["'sd'", "'flux'"]
    assert family_branches("if self.is_sdxl:\n    pass\n") == ["is_sdxl"]
    assert family_branches("if self.family.name == other:\n    pass\n") == ["family.name =="]
    assert family_branches("if self.family.flow_matching:\n    pass\n") == []


@pytest.mark.parametrize("path", FAMILY_AGNOSTIC, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_trainers_and_data_never_branch_on_a_family_name(path):
    branches = family_branches(path.read_text(encoding="utf-8"))
    assert not branches, f"{path.relative_to(PACKAGE)} branches on a family: {branches}; read the registry instead"


def test_the_built_in_families_are_registered_and_detected():
    assert {"sd", "sdxl", "sd3", "flux"} <= set(FAMILIES)
    assert detect_family(tiny_sd3_pipeline()) is FAMILIES["sd3"]
    with pytest.raises(ValueError, match="already registered"):
        register_family(FAMILIES["sd3"])
    with pytest.raises(KeyError, match="insert before"):
        register_family(FAMILIES["sd3"].__class__("other", "transformer", True, ()), before="nope")


# -- the walk-through of docs/adding_a_model.md -----------------------------------------------------------------------


def _toy_pipeline():
    """A pipeline whose denoiser no built-in family accepts: the tiny SD3 pipeline with a renamed transformer class."""
    from diffusers import SD3Transformer2DModel

    class ToyTransformer(SD3Transformer2DModel):
        pass

    pipe = tiny_sd3_pipeline()
    toy = ToyTransformer.from_config(pipe.transformer.config)
    toy.load_state_dict(pipe.transformer.state_dict())
    pipe.transformer = toy
    return pipe


def test_a_toy_family_registers_in_a_few_lines_and_trains(tmp_path):
    pipe = _toy_pipeline()
    with pytest.raises(TypeError, match="no registered family accepts"):
        detect_family(pipe)
    calls = []

    # Steps 1-2 of the guide: subclass DenoiserFamily with `encode_prompts` and `predict`, then register it.
    @dataclass(frozen=True)
    class ToyFamily(DenoiserFamily):
        def encode_prompts(self, pipeline, prompts, max_sequence_length=None):
            calls.append(list(prompts))
            embeds, _, pooled, _ = pipeline.encode_prompt(
                prompts, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=16
            )
            return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

        def predict(self, model, noisy_latents, timesteps, conditioning, num_train_timesteps, guidance):
            return model(
                hidden_states=noisy_latents, timestep=timesteps, encoder_hidden_states=conditioning["prompt_embeds"],
                pooled_projections=conditioning["pooled_prompt_embeds"], return_dict=False,
            )[0]  # fmt: skip

    toy = ToyFamily(
        "toy", "transformer", flow_matching=True, denoiser_classes=("ToyTransformer",),
        text_encoders=("text_encoder", "text_encoder_2", "text_encoder_3"), lora_targets=("to_q", "to_k"),
    )  # fmt: skip
    register_family(toy)
    try:
        assert detect_family(pipe) is toy
        # Step 3: every trainer now takes the pipeline; the first DPO loss is ln 2 (policy == reference).
        trainer = DiffusionDPOTrainer(
            model=pipe,
            args=dpo_config(tmp_path, resolution=32, max_steps=1),
            train_dataset=tiny_preference_dataset(2),
            peft_config=LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian"),  # no targets: the family's
        )
        assert trainer.family is toy and trainer.prediction_type == "flow"
        assert trainer.peft_config.target_modules == {"to_q", "to_k"}
        adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in trainer.model.named_parameters()
                   if ".lora_A" in name}  # fmt: skip
        assert adapted == {"to_q", "to_k"}
        trainer.train()
        first = next(e for e in trainer.state.log_history if "loss" in e)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert calls, "the toy family's encode_prompts was never called"
        assert trainer.model_adapter.lora_save_kwargs({}, {}).keys() == {
            "transformer_lora_layers", "transformer_lora_adapter_metadata",
        }  # fmt: skip
    finally:
        unregister_family("toy")
    assert "toy" not in FAMILIES
