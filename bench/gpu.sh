#!/usr/bin/env bash
# The GPU figures in one go, for a session that is lent a CUDA machine (about 6-10 minutes):
#   1. stage one, i3d_r50 then inception_i3d: GFLOPs per frame, extraction throughput vs the
#      forward floor and a naive clip-by-clip extractor (bench/extract.py, crop 224);
#   2. mamba-ssm's kernel vs our scan: parity and speed (installs the `cuda` extra first);
#   3. the detector's full training step per variant, peak memory, 15-min inference (bench/model.py).
# Every figure goes to bench/results/gpu-<UTC time>/ (JSON, plus each benchmark's printed output).
#     bash bench/gpu.sh            # from the repository root, after `make venv`
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "no CUDA device visible to torch: nothing to measure" >&2; exit 2; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" -c "import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name()}))" > "$OUT/versions.json"
status=0
for m in i3d_r50 inception_i3d; do
  echo "== 1/3 extraction throughput, $m (crop 224, 120 s video)"
  timeout 240 "$PY" -m bench.extract --model "$m" --device cuda --crop 224 --short-side 256 \
    --seconds 120 --skip-memory --json "$OUT/extract-$m.json" 2>&1 \
    | tee "$OUT/extract-$m.txt" || status=1
done
echo "== 2/3 mamba-ssm parity and speed"
"$PY" -c "import mamba_ssm" 2>/dev/null || timeout 300 "$PY" -m pip install -q -e '.[cuda]' \
  > "$OUT/mamba-install.txt" 2>&1 || echo "mamba-ssm did not install (see $OUT/mamba-install.txt)"
timeout 120 "$PY" -m bench.mamba_cuda --json "$OUT/mamba_cuda.json" 2>&1 \
  | tee "$OUT/mamba_cuda.txt" || status=1
echo "== 3/3 detector step times and memory"
timeout 180 "$PY" -m bench.model --device cuda --repeats 10 --warmup 2 --json "$OUT/model.json" \
  2>&1 | tee "$OUT/model.txt" || status=1
echo "figures in $OUT"
exit $status
