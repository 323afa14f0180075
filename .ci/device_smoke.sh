#!/usr/bin/env bash
# Device smoke test: a clean venv holding only `.[litert]` (no TensorFlow) must pass
# `edgecxr device parity` on a small bundle and the shipped sample test images;
# then check that the Raspberry Pi line resolves for aarch64 / glibc 2.36 / Python 3.11.
#
#   bash .ci/device_smoke.sh BUNDLE [DATA]
#     BUNDLE  a tflite bundle folder (or .zip) written by `edgecxr export`
#     DATA    Kermany-layout root holding test/ (default: the shipped sample, edgecxr/sample);
#             the root BUNDLE was exported with, or set MIN_COVERAGE for a deliberate subset of its reference
#   env: PYTHON (default python3), SKIP_PI_CHECK=1 to skip the pip download check,
#        MIN_COVERAGE (default 1.0: every reference image of the bundle must be compared),
#        SMOKE_DIR (default: a new temporary folder, removed at the end)
# Needs network access to PyPI.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUNDLE="${1:?usage: device_smoke.sh BUNDLE [DATA]}"
DATA="${2:-$REPO/edgecxr/sample}"
PYTHON="${PYTHON:-python3}"
MIN_COVERAGE="${MIN_COVERAGE:-1.0}"
WORK="${SMOKE_DIR:-$(mktemp -d -t edgecxr-smoke-XXXXXX)}"
[ -n "${SMOKE_DIR:-}" ] || trap 'rm -rf "$WORK"' EXIT
BUNDLE="$(cd "$(dirname "$BUNDLE")" && pwd)/$(basename "$BUNDLE")"

say() { printf '\n== %s\n' "$*"; }

say "clean venv with .[litert] only ($WORK/venv)"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install --quiet --upgrade pip
# A copy of the checkout, so the build never writes into the repository.
mkdir -p "$WORK/src"
tar -C "$REPO" --exclude=.git --exclude='*.egg-info' --exclude=build --exclude=__pycache__ -cf - . | tar -C "$WORK/src" -xf -
"$VPY" -m pip install --quiet "$WORK/src[litert,sbom]"

say "TensorFlow must not be installed"
if "$VPY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('tensorflow') else 1)"; then
  echo "FAIL: tensorflow is installed in the .[litert] venv" >&2; exit 1
fi
"$VPY" -m pip list 2>/dev/null | grep -iE '^(tensorflow|tf-keras|keras) ' && { echo "FAIL: TensorFlow/Keras pulled in" >&2; exit 1; }
"$WORK/venv/bin/edgecxr" device runtimes

say "edgecxr device parity $BUNDLE --data $DATA"
set +e
"$WORK/venv/bin/edgecxr" device parity "$BUNDLE" --data "$DATA" --min-coverage "$MIN_COVERAGE" \
  --json "$WORK/parity.json" --junit "$WORK/parity.xml" --sbom "$WORK/sbom.cdx.json"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then echo "FAIL: device parity exited $rc" >&2; exit 1; fi
"$VPY" - "$WORK/parity.json" "$WORK/parity.xml" <<'EOF'
import json, sys, xml.etree.ElementTree as ET
rep = json.load(open(sys.argv[1]))
assert rep["passed"] is True, "parity did not pass"
assert rep["runtime"]["name"] == "litert", rep["runtime"]
suite = ET.parse(sys.argv[2]).getroot().find("testsuite")
names = {case.get("name") for case in suite.findall("testcase")}
assert suite.get("failures") == "0" and {"recall_drop", "accuracy_drop", "agreement", "coverage"} <= names, names
runtimes = [c["name"] for c in rep["sbom"]["bom"]["components"] if c["name"] in ("ai-edge-litert", "onnxruntime", "openvino")]
assert runtimes == ["ai-edge-litert"], runtimes
print(f"parity passed on {rep['n']} images with {rep['runtime']['name']} {rep['runtime']['version']}; JSON, JUnit and SBOM written")
EOF

say "edgecxr device conform: the bundle's golden vectors reproduced by this device's runner, without TensorFlow"
"$WORK/venv/bin/edgecxr" device conform "$BUNDLE" --json "$WORK/conform.json"
"$VPY" -c "
import json
r = json.load(open('$WORK/conform.json'))
assert r['passed'] and len(r['images']) >= 5, r['failed']
print(f\"conform passed on {len(r['images'])} conformance images with {r['runtime']['name']}\")
"
"$WORK/venv/bin/edgecxr" device bench "$BUNDLE" --data "$DATA" --runs 50 --warmup 5 --json "$WORK/bench.json"
"$VPY" -c "
import json, sys
r = json.load(open('$WORK/bench.json'))
assert r['cold_start_tensorflow_imported'] is False
" 

FULLRES="$REPO/../shared/data/kermany-val-fullres"
if [ -d "$FULLRES" ]; then
  say "site acceptance: parity on the full-size originals, float reference recomputed by the bundle's twin"
  set +e
  "$WORK/venv/bin/edgecxr" device parity "$BUNDLE" --data "$FULLRES" --json "$WORK/site.json"
  rc=$?
  set -e
  # 0 or 1 are verdicts (two of these 16 sit near the threshold); anything else is an error
  if [ "$rc" -gt 1 ]; then echo "FAIL: site parity exited $rc" >&2; exit 1; fi
  "$VPY" -c "
import json
r = json.load(open('$WORK/site.json'))
assert r['reference']['source'] == 'twin' and r['n'] == 16 and all(len(c['sha256']) == 64 for c in r['cases']), r['reference']
print(f\"site parity: agreement {r['agreement']:.4f} with the twin's float reference on {r['n']} full-size images\")
"
fi

if [ "${SKIP_PI_CHECK:-0}" = 1 ]; then say "Pi wheel check skipped (SKIP_PI_CHECK=1)"; exit 0; fi

say "Raspberry Pi OS Bookworm wheels resolve (aarch64, glibc 2.36, Python 3.11)"
PLATFORMS=()
for n in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${n}_aarch64"); done
PIP=("$VPY" -m pip download --quiet --only-binary=:all: --python-version 3.11 "${PLATFORMS[@]}")
"$VPY" -m pip wheel --quiet --no-deps "$WORK/src" -w "$WORK/dist"
WHEEL="$(ls "$WORK"/dist/edgecxr-*.whl)"
for extra in litert onnx openvino tflite; do
  rm -rf "$WORK/pi-$extra"
  "${PIP[@]}" -d "$WORK/pi-$extra" "edgecxr[$extra] @ file://$WHEEL"
  ls "$WORK/pi-$extra" | grep -iE '^(tensorflow|tf_keras)' && { echo "FAIL: [$extra] pulls TensorFlow on the Pi" >&2; exit 1; }
  echo "[$extra]: $(ls "$WORK/pi-$extra" | grep -iE '^(ai_edge_litert|onnxruntime|openvino|tflite_runtime|numpy)-' | tr '\n' ' ')"
done
for want in "pi-litert/ai_edge_litert-" "pi-onnx/onnxruntime-" "pi-openvino/openvino-" "pi-tflite/tflite_runtime-"; do
  ls "$WORK"/$want*.whl >/dev/null 2>&1 || { echo "FAIL: no aarch64 wheel for ${want#*/}" >&2; exit 1; }
done
say "device smoke test passed"
