#!/usr/bin/env bash
# The GPU validation: the CUDA tests, the gpu-check sweep timed at 1 and N cells per GPU (cells/hour
# and the full preset's projected wall time), and `seqbench measure --device cuda` for every
# family at L = 256, 1024, 4096 in fp32 and bf16, all written to results/gpu-<device name>/.
# Unattended; exits 1 on any failure, 2 on bad arguments or without a GPU (seqbench.sweeps.gpucheck).
#   scripts/gpu_check.sh                       # about 10 minutes on one GPU
#   scripts/gpu_check.sh --packing 1,2,4,8     # the cells/hour curve
#   scripts/gpu_check.sh --mps                 # one more run under CUDA MPS
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m seqbench.sweeps.gpucheck "$@"
