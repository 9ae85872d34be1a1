#!/usr/bin/env bash
# CUDA-path checks, for a machine with an NVIDIA GPU (torch with CUDA; spconv-cu12x for e3dsnn/sctn):
#   1. every model x every sparsity method trains a few steps on hardware=cuda (one Hydra multirun per
#      model, in parallel; models and methods are read from configs/, so new ones are covered);
#   2. 2:4 masks run on CUDA's semi-structured sparse kernels (scripts/bench_semi_structured.py).
# Usage: scripts/gpu_check.sh [output_dir]     (PYTHON=... picks the interpreter; default: python)
# Exit status 0 only if every job completed; each model's log is <output_dir>/<model>.log.
set -uo pipefail
out=${1:-outputs/gpu_check}
py=${PYTHON:-python}
mkdir -p "$out"
$py -c "import torch, spconv.pytorch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(), 'torch', torch.__version__)" || exit 2

models=$(ls configs/model/*.yaml | xargs -n1 basename | sed 's/\.yaml$//')
methods=$(ls configs/sparsity/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' | paste -sd, -)
expected=$(( $(echo "$models" | wc -l) * $(echo "$methods" | tr , '\n' | wc -l) ))
common="hardware=cuda trainer=fast trainer.enable_progress_bar=false logger=csv paths.output_dir=$out"
pids=()
for model in $models; do
  OMP_NUM_THREADS=2 $py -m sparse_lab.cli train -m model=$model sparsity=$methods $common > "$out/$model.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
completed=$(grep -l '"status": "completed"' "$out"/multirun/*/*/*/results.json 2>/dev/null | wc -l)
echo "multirun jobs completed on cuda: $completed (expected $expected)"
[ "$completed" -eq "$expected" ] || status=1
$py scripts/bench_semi_structured.py | tee "$out/semi_structured.txt" || status=1
exit $status
