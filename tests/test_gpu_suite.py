"""The GPU suite (`benchmarks/gpu_suite.sh`) at `--tiny`: it runs every case on the CPU and writes its JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_tiny_runs_every_case_and_writes_their_figures(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--tiny"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "cuda_tests.log").exists()  # --tiny leaves the CUDA tests to a GPU machine
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["tiny"] and suite["device"] == "cpu"
    assert set(suite["cases"]) == {"sdxl_dpo", "sd35m_dpo", "flux_grpo"}
    dpo = suite["cases"]["sdxl_dpo"]["variants"]
    assert set(dpo) == {"plain_stacked_step", "trainer", "trainer_precompute"}
    assert dpo["plain_stacked_step"]["vs_plain"] == 1.0
    for variant in dpo.values():
        assert variant["pairs_per_s"] > 0 and variant["peak_gib"] is None  # no CUDA memory to report on the CPU
    assert suite["cases"]["sd35m_dpo"]["variants"]["trainer"]["pairs_per_s"] > 0
    grpo = suite["cases"]["flux_grpo"]["variants"]
    assert set(grpo) == {"default", "sde_window_2"} and all(v["images_per_s"] > 0 for v in grpo.values())
