#!/usr/bin/env bash
# Everything this project checks and measures on a CUDA GPU, in one go.
#
#   bash benchmarks/gpu.sh [OUTDIR]      (default benchmarks/gpu-out)
#
# Runs the GPU tests, then the benchmark driver and the paper-preset timings
# with each fast path; logs and JSON files land in OUTDIR. Works from an
# installed package or straight from the checkout (PYTHONPATH=src).
set -u
out=${1:-benchmarks/gpu-out}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

section() { echo; echo "=== $* ==="; }
{
section device
nvidia-smi -L
$py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

section tests
timeout 600 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_fast_paths.py

section "paper presets"
for opts in "" "--cuda-graphs" "--amp bf16 --channels-last" "--amp bf16 --channels-last --cuda-graphs"; do
    tag=$(echo "eager $opts" | tr -d '-' | tr ' ' '_')
    timeout 300 $py benchmarks/presets.py --device cuda --steps ${PRESET_STEPS:-50} $opts --out "$out/presets_$tag.json"
done

section "benchmark driver"
timeout 600 $py benchmarks/run_all.py --device cuda --out "$out/all_eager.json"
timeout 600 $py benchmarks/run_all.py --device cuda --cuda-graphs --out "$out/all_graphs.json"

section "torch.compile"
timeout 400 $py benchmarks/presets.py --device cuda --steps ${PRESET_STEPS:-50} --presets mnist-linf-mma-0.45 \
    --compile --out "$out/presets_compile.json"
} 2>&1 | tee "$out/log.txt"
