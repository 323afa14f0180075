#!/usr/bin/env bash
# The same int8 bundle must decide the same on every x86 CPU. Runs each int8 bundle natively and under
# `qemu-x86_64 -cpu EPYC-Rome` (AVX2, no VNNI: the CPU where ONNX Runtime's and OpenVINO's u8 x s8 kernels
# saturate), on the shipped sample's 100 test images, and compares the probabilities and the parity verdicts.
#
#   bash .ci/cpu_paths.sh [BUNDLES] [DATA]
#     BUNDLES  folder of bundles to check (default: export tflite-int8, onnx-int8, openvino-int8 of the shipped
#              model from DATA into a temporary folder)
#     DATA     Kermany root the bundles come from (default: ../shared/data/kermany-cxr-224)
#   env: QEMU_CPU (default EPYC-Rome), OUT (folder for the JSON results, default: a temporary one)
# Needs qemu-user-static (installed with apt-get when missing and possible; skipped with a warning otherwise).
# The emulated run is about 100x slower than native: only the sample's 100 images are compared.
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
    echo "warning: qemu-user-static not available; the AVX2-only CPU check is skipped" >&2; exit 0
  fi
fi

BUNDLES="${1:-}"
if [ -z "$BUNDLES" ]; then
  BUNDLES="$OUT/bundles"
  # exit 2 when a target is refused: the others are still written and checked
  edgecxr export --target tflite-int8 --target onnx-int8 --target openvino-int8 --data "$DATA" \
    --calib-count 300 --out "$BUNDLES" --overwrite || echo "note: some targets were refused (see the summary)"
fi

SAMPLE="$REPO/edgecxr/sample"
status=0
for b in "$BUNDLES"/*/; do
  b="${b%/}"; t="$(basename "$b")"
  echo "== $t: native and under qemu -cpu $CPU"
  "$PY" -m edgecxr.cli device run "$b" "$SAMPLE/test" --json > "$OUT/$t.native.json"
  QEMU_CPU="$CPU" qemu-x86_64-static "$PY" -m edgecxr.cli device run "$b" "$SAMPLE/test" --json \
    > "$OUT/$t.emulated.json" 2> >(grep -v "TCG doesn't support" >&2)
  for where in native emulated; do
    set +e
    if [ "$where" = native ]; then
      "$PY" -m edgecxr.cli device parity "$b" --data "$SAMPLE" --min-coverage 0 --json "$OUT/$t.parity.$where.json" > "$OUT/$t.parity.$where.txt"
    else
      QEMU_CPU="$CPU" qemu-x86_64-static "$PY" -m edgecxr.cli device parity "$b" --data "$SAMPLE" --min-coverage 0 \
        --json "$OUT/$t.parity.$where.json" > "$OUT/$t.parity.$where.txt" 2> >(grep -v "TCG doesn't support" >&2)
    fi
    set -e
  done
  "$PY" - "$OUT" "$t" <<'EOF' || status=1
import json, sys
out, t = sys.argv[1], sys.argv[2]
runs = {w: json.load(open(f"{out}/{t}.{w}.json")) for w in ("native", "emulated")}
par = {w: json.load(open(f"{out}/{t}.parity.{w}.json")) for w in ("native", "emulated")}
p = {w: {r["source"]: r["probability"] for r in runs[w]["results"]} for w in runs}
thr = runs["native"]["threshold"]
diff = max(abs(p["native"][k] - p["emulated"][k]) for k in p["native"])
flips = sum((p["native"][k] >= thr) != (p["emulated"][k] >= thr) for k in p["native"])
cpus = {w: par[w]["host"]["cpu"]["int8_path"] for w in par}
print(f"{t}: {len(p['native'])} images, native ({cpus['native']}) vs emulated ({cpus['emulated']}): "
      f"max |diff| {diff:.4f}, decisions differing {flips}; parity native {par['native']['passed']}, "
      f"emulated {par['emulated']['passed']}")
json.dump({"target": t, "max_abs_diff": diff, "decisions_differing": flips, "cpu": cpus,
           "parity": {w: par[w]["passed"] for w in par}}, open(f"{out}/{t}.summary.json", "w"), indent=1)
# one int8 output step (1/256) of slack: requantization may round once differently
assert flips == 0 and diff <= 1 / 256 + 1e-6, f"{t}: the bundle decides differently on an AVX2-only CPU"
assert par["native"]["passed"] == par["emulated"]["passed"], f"{t}: parity verdict depends on the CPU"
EOF
done
exit $status
