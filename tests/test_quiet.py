"""Notices a user of the Python API should not see: they report nothing wrong with what trl-rpo does."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_python_api_mutes_the_bitsandbytes_cpu_kernel_notice():
    # What a script does before `trl_rpo.shapes.load_pipeline()` or a trainer: import the package, then peft (which
    # imports bitsandbytes; on AVX512-BF16 CPUs, its optional-kernel notice comes then).
    code = (
        "import logging, trl_rpo, peft\n"
        "print(logging.getLogger('bitsandbytes.backends.cpu.ops').getEffectiveLevel())\n"
        "print(logging.getLogger('bitsandbytes').getEffectiveLevel())"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gemm_4bit_forward" not in result.stderr
    muted, library = map(int, result.stdout.split())
    assert muted == 40 and library == 30  # that notice's logger at ERROR; the rest of bitsandbytes still warns


def test_trainers_cast_the_shapes_model_without_diffusers_float32_notice(tmp_path, capfd):
    # diffusers' `ModelMixin.to(dtype)` warns "There are modules in UNet2DConditionModel that should be kept in
    # float32: []" on every cast; the trainers cast the trained UNet, its reference and the VAE.
    from trl_rpo import DiffusionDPOTrainer
    from trl_rpo.shapes import load_pipeline
    from trl_rpo.testing import tiny_lora_config, tiny_preference_dataset

    from ._helpers import dpo_config

    for lora in (True, False):  # LoRA: frozen base in the training dtype; full: float32 and a reference copy
        DiffusionDPOTrainer(
            model=load_pipeline(), args=dpo_config(tmp_path / str(lora)), train_dataset=tiny_preference_dataset(2),
            peft_config=tiny_lora_config() if lora else None,
        )  # fmt: skip
    assert "should be kept in float32" not in capfd.readouterr().err  # (diffusers' logger writes to stderr itself)


def test_cast_model_keeps_the_modules_diffusers_keeps_in_float32():
    import torch

    from trl_rpo.pipelines import cast_model
    from trl_rpo.testing import tiny_sd_pipeline

    unet = tiny_sd_pipeline().unet
    unet._keep_in_fp32_modules = ["time_embedding"]  # as e.g. some transformer models declare
    cast_model(unet, torch.bfloat16)
    assert {p.dtype for p in unet.time_embedding.parameters()} == {torch.float32}
    assert {p.dtype for n, p in unet.named_parameters() if not n.startswith("time_embedding")} == {torch.bfloat16}
