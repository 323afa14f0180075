#!/usr/bin/env bash
# The same int8 bundle must decide the same on every x86 CPU. Runs `edgecxr device parity` on each int8
# bundle natively and under `qemu-x86_64 -cpu EPYC-Rome` (AVX2, no VNNI: the CPU where ONNX Runtime's and
# OpenVINO's u8 x s8 kernels saturate) on the shipped sample's 100 test images, and compares the per-image
# probabilities and the verdicts of the two runs.
#
#   bash .ci/cpu_paths.sh [BUNDLES] [DATA]
#     BUNDLES  folder of bundles to check (default: export tflite-int8, onnx-int8, onnx-int8-trt, openvino-int8 of the shipped
#              model from DATA into a temporary folder)
#     DATA     Kermany root the bundles come from (default: ../shared/data/kermany-cxr-224)
#   env: QEMU_CPU (default EPYC-Rome), OUT (folder for the JSON results, default: a temporary one)
# Needs qemu-user-static (installed with apt-get when missing; fails without it unless CPU_PATHS_OPTIONAL=1).
# Emulation is about 100x slower than native (about 2 minutes per bundle): only the sample's images are used.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${2:-$REPO/../shared/data/kermany-cxr-224}"
CPU="${QEMU_CPU:-EPYC-Rome}"
OUT="${OUT:-$(mktemp -d -t edgecxr-cpupaths-XXXXXX)}"
mkdir -p "$OUT"
PY="$(command -v python)"

if ! command -v qemu-x86_64-static >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" != "0" ] && SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && $SUDO apt-get update -qq >/dev/null 2>&1 \
     && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends qemu-user-static >/dev/null 2>&1; then
    echo "cpu_paths: installed qemu-user-static"
  else
    if [ "${CPU_PATHS_OPTIONAL:-0}" = 1 ]; then
      echo "warning: qemu-user-static not available; the AVX2-only CPU check is skipped (CPU_PATHS_OPTIONAL=1)" >&2; exit 0
    fi
    echo "FAIL: qemu-user-static could not be installed; set CPU_PATHS_OPTIONAL=1 to skip this check" >&2; exit 1
  fi
fi

BUNDLES="${1:-}"
if [ -z "$BUNDLES" ]; then
  BUNDLES="$OUT/bundles"
  # exits 2 when a target is refused: the others are still written and checked
  edgecxr export --target tflite-int8 --target onnx-int8 --target onnx-int8-trt --target openvino-int8 --data "$DATA" \
    --calib-count 300 --out "$BUNDLES" --overwrite || echo "note: some targets were refused (see the summary)"
fi

SAMPLE="$REPO/edgecxr/sample"
compgen -G "$BUNDLES/*/manifest.json" >/dev/null || { echo "FAIL: no bundle to check in $BUNDLES" >&2; exit 1; }
status=0
for b in "$BUNDLES"/*/; do
  b="${b%/}"; t="$(basename "$b")"
  echo "== $t: device parity natively and under qemu -cpu $CPU"
  set +e
  "$PY" -m edgecxr.cli device parity "$b" --data "$SAMPLE" --min-coverage 0 --json "$OUT/$t.native.json" > "$OUT/$t.native.txt"
  QEMU_CPU="$CPU" qemu-x86_64-static -cpu "$CPU" "$PY" -m edgecxr.cli device parity "$b" --data "$SAMPLE" --min-coverage 0 \
    --json "$OUT/$t.emulated.json" > "$OUT/$t.emulated.txt" 2> >(grep -v "TCG doesn't support" >&2)
  set -e
  grep -E "^CPU path|^parity" "$OUT/$t.emulated.txt" || true
  "$PY" - "$OUT" "$t" <<'PYEOF' || status=1
import json, sys
out, t = sys.argv[1], sys.argv[2]
rep = {w: json.load(open(f"{out}/{t}.{w}.json")) for w in ("native", "emulated")}
p = {w: {c["file"]: c["device_prob"] for c in rep[w]["cases"]} for w in rep}
thr = rep["native"]["threshold"]
diff = max(abs(p["native"][k] - p["emulated"][k]) for k in p["native"])
flips = sum((p["native"][k] >= thr) != (p["emulated"][k] >= thr) for k in p["native"])
cpus = {w: rep[w]["host"]["cpu"]["int8_path"] for w in rep}
print(f"{t}: {len(p['native'])} images, native ({cpus['native']}) vs emulated ({cpus['emulated']}): "
      f"max |diff| {diff:.4f}, decisions differing {flips}; parity native {rep['native']['passed']} "
      f"(agreement {rep['native']['agreement']:.3f}), emulated {rep['emulated']['passed']} (agreement {rep['emulated']['agreement']:.3f})")
json.dump({"target": t, "max_abs_diff": diff, "decisions_differing": flips, "cpu": cpus,
           "parity": {w: rep[w]["passed"] for w in rep}}, open(f"{out}/{t}.summary.json", "w"), indent=1)
# about one int8 output step of slack (2/256): a requantization may round once differently (OpenVINO: 0.005 seen)
assert flips == 0 and diff <= 2 / 256, f"{t}: the bundle decides differently on an AVX2-only CPU"
assert rep["native"]["passed"] == rep["emulated"]["passed"], f"{t}: the parity verdict depends on the CPU"
PYEOF
done
exit $status
