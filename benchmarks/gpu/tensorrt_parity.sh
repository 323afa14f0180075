#!/usr/bin/env bash
# TensorRT parity of the shipped model's ONNX bundles, ready to run on a machine with an NVIDIA GPU (under 10
# minutes there; the CPU part runs everywhere, CI included).
#
#   bash benchmarks/gpu/tensorrt_parity.sh [BUNDLES] [DATA]
#     BUNDLES  folder with onnx-fp32 and onnx-int8-trt bundles (default: export them from DATA with the
#              shipped model, which needs the current venv to have edgecxr[export])
#     DATA     Kermany root whose 624 test images are compared (default: ../shared/data/kermany-cxr-224)
#   env: OUT (results, default benchmarks/results/tensorrt-parity-DATE), GPU_VENV (default
#        ~/.cache/edgecxr-gpu/venv), TRT_PACKAGES (default "tensorrt-cu12 polygraphy onnxruntime-gpu[cuda,cudnn]")
#
# 1. CPU part (the current venv): the static TensorRT check of each bundle and device parity on ONNX Runtime's
#    CPU provider.
# 2. GPU part, only when nvidia-smi lists a GPU (one line says it was skipped otherwise): a venv of its own with
#    tensorrt, polygraphy and onnxruntime-gpu from PyPI (onnxruntime-gpu replaces the CPU onnxruntime, so it
#    cannot share the current venv); TensorRT engines built from the bundles' ONNX (fp32 and fp16 from onnx-fp32,
#    int8 from onnx-int8-trt's Q/DQ pairs), then ONNX Runtime's CUDA and TensorRT providers; edgecxr's parity
#    report and p50 latency for each. OUT/summary.md holds the table.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA="${2:-$REPO/../shared/data/kermany-cxr-224}"
OUT="${OUT:-$REPO/benchmarks/results/tensorrt-parity-$(date +%F)}"
BUNDLES="${1:-}"
mkdir -p "$OUT"
[ -d "$DATA/test" ] || { echo "error: $DATA has no test/ folder (a Kermany root); pass DATA" >&2; exit 2; }

if [ -z "$BUNDLES" ]; then
  BUNDLES="$OUT/bundles"
  python -m edgecxr.cli export --target onnx-fp32 --target onnx-int8-trt --data "$DATA" --out "$BUNDLES" --overwrite
fi

echo "== CPU part: static TensorRT check and ONNX Runtime CPU parity"
status=0
python "$REPO/benchmarks/gpu/tensorrt_parity.py" cpu --bundles "$BUNDLES" --data "$DATA" --out "$OUT" || status=$?
[ "$status" -le 1 ] || exit "$status"

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "tensorrt_parity: no NVIDIA GPU here (nvidia-smi lists none): skipped the TensorRT engines and the CUDA/TensorRT providers"
  exit "$status"
fi

echo "== GPU part: $(nvidia-smi -L | head -1)"
GPU_VENV="${GPU_VENV:-$HOME/.cache/edgecxr-gpu/venv}"
if [ ! -x "$GPU_VENV/bin/python" ]; then
  python3 -m venv "$GPU_VENV"
  "$GPU_VENV/bin/pip" install -q --upgrade pip
fi
# shellcheck disable=SC2086
"$GPU_VENV/bin/pip" install -q -e "$REPO" ${TRT_PACKAGES:-tensorrt-cu12 polygraphy "onnxruntime-gpu[cuda,cudnn]"}
# the CUDA, cuDNN and TensorRT libraries come as pip packages: put their folders on the loader's path
LIBS="$("$GPU_VENV/bin/python" - <<'EOF'
import glob, os, site
dirs = set()
for root in site.getsitepackages():
    for pattern in ("nvidia/*/lib", "tensorrt_libs", "tensorrt_cu*_libs"):
        dirs.update(d for d in glob.glob(os.path.join(root, pattern)) if os.path.isdir(d))
print(":".join(sorted(dirs)))
EOF
)"
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EDGECXR_TRT_CACHE="$OUT/engine-cache"
"$GPU_VENV/bin/python" -c "import tensorrt, onnxruntime as o; print('TensorRT', tensorrt.__version__, '| onnxruntime', o.__version__, o.get_available_providers())"
"$GPU_VENV/bin/python" "$REPO/benchmarks/gpu/tensorrt_parity.py" gpu --bundles "$BUNDLES" --data "$DATA" --out "$OUT" || status=$?
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" || true
cat "$OUT/summary.md"
exit "$status"
