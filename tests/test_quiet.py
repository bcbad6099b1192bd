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
