#!/usr/bin/env bash
# The paper's MNIST MMA-0.45 preset trained on the bundled digits on a GPU, then evaluated.
#
#   bash benchmarks/gpu_digits.sh OUTDIR [STEPS]      (default 4400 steps)
#
# The bundled digits hold 1 000 validation images, so val_size is cut to
# that; everything else is the preset's. CUDA graphs on (the PGD loops are
# replayed). The log and each protocol's eval.json and report.md land in OUTDIR.
set -u
out=${1:?usage: gpu_digits.sh OUTDIR [STEPS]}
steps=${2:-4400}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
run=${RUN_DIR:-/tmp/mnist-mma-digits}
{
/usr/bin/time -v $py -m maxmargin train --preset mnist-linf-mma-0.45 --out "$run" --device cuda --quiet \
    --set dataset=digits --set val_size=1000 --set steps="$steps" --set cuda_graphs=true 2>&1 \
    | grep -v "^\s*\(Page\|Major\|Minor\|Vol\|Invol\|Swaps\|File\|Socket\|Signals\|Average\|Exit\|Percent\|System\|User\)"
for protocol in paper autoattack; do
    timeout 240 $py -m maxmargin eval "$run" --protocol "$protocol" --device cuda --n 1000 --quiet \
        --out "$run/eval_$protocol" && cp "$run/eval_$protocol/report.md" "$out/report_$protocol.md" \
        && cp "$run/eval_$protocol/eval.json" "$out/eval_$protocol.json"
done
} 2>&1 | tee "$out/digits_log.txt"
