#!/usr/bin/env bash
# The GPU suite, one command (issue 30): the CUDA tests of the trainer files, then Diffusion-DPO and GRPO throughput
# and peak memory at real architecture sizes (benchmarks/gpu_suite.py), JSON under $OUT (default outputs/gpu_suite).
#   bash benchmarks/gpu_suite.sh            # on a GPU machine, about 8 minutes on one H100
#   bash benchmarks/gpu_suite.sh --tiny     # tiny models on the CPU: checks the suite itself (the test suite runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-outputs/gpu_suite}
mkdir -p "$OUT"
status=0
if [[ " $* " != *" --tiny "* ]]; then
  # The trainer tests, run on the GPU: each test builds its trainer on the accelerator's device.
  "$PYTHON" -m pytest -q -p no:cacheprovider -m "not slow" --junitxml "$OUT/cuda_tests.xml" \
    tests/test_diffusion_dpo_trainer.py tests/test_flow_models.py tests/test_grpo_trainer.py \
    tests/test_tailorpo_trainer.py tests/test_precompute.py tests/test_memory.py tests/test_nft_trainer.py \
    > "$OUT/cuda_tests.log" 2>&1 || status=1
  tail -n 3 "$OUT/cuda_tests.log"
fi
"$PYTHON" benchmarks/gpu_suite.py "$@" --output "$OUT/suite.json" || status=1
exit $status
