#!/usr/bin/env bash
# Device parity on an emulated Raspberry Pi 4 / Pi 5: a Debian 12 arm64 userland (the base of Raspberry Pi
# OS Bookworm: glibc 2.36, Python 3.11) under qemu-user, with the real aarch64 wheels of every runtime.
#
#   bash .ci/arm_parity.sh [BUNDLES]
#     BUNDLES  folder holding <target>/ bundles (default: export the shipped model's int8 targets from DATA)
#   env: PROFILES (default "pi4 pi5"), TARGETS (default "tflite-int8 onnx-int8 openvino-int8"),
#        DATA (default ../shared/data/kermany-cxr-224), OUT (reports; default benchmarks/results/arm-parity-<date>),
#        EDGECXR_ARM_CACHE (the arm64 userland, kept between runs; default ~/.cache/edgecxr-arm)
# Parity runs on the shipped sample's 100 test images (--min-coverage 0: a subset of the bundle's reference).
# Needs root (chroot, mounts) and apt-get for qemu-user-static and debootstrap. Emulated latency is ~80x native:
# only the verdicts and probabilities mean anything. First run: a few minutes more to build the userland.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILES="${PROFILES:-pi4 pi5}"
TARGETS="${TARGETS:-tflite-int8 onnx-int8 openvino-int8}"
DATA="${DATA:-$REPO/../shared/data/kermany-cxr-224}"
OUT="${OUT:-$REPO/benchmarks/results/arm-parity-$(date +%F)}"
CACHE="${EDGECXR_ARM_CACHE:-$HOME/.cache/edgecxr-arm}"
ROOT="$CACHE/root"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say() { printf '\n== %s\n' "$*"; }
[ "$(id -u)" = 0 ] || { echo "arm_parity: needs root (chroot and mounts)" >&2; exit 2; }

need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  # flag F: the interpreter is opened now, so it works inside the chroot without copying it there
  cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi

# -- the arm64 userland and a venv with the runtimes' aarch64 wheels, built once ---------------------------
if [ ! -x "$ROOT/opt/venv/bin/python" ]; then
  say "building the Debian 12 arm64 userland in $ROOT (once; ~3 min)"
  rm -rf "$ROOT" && mkdir -p "$CACHE"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 bookworm "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log"
  # Instead of debootstrap's second stage (every maintainer script under emulation: ~25 min), unpack the
  # downloaded packages natively and do the two things their scripts do that Python needs: the linker cache
  # and the passwd/group files. Nothing here runs apt or dpkg inside the userland.
  for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
  cp "$ROOT/usr/share/base-passwd/passwd.master" "$ROOT/etc/passwd"
  cp "$ROOT/usr/share/base-passwd/group.master" "$ROOT/etc/group"
  chroot "$ROOT" /sbin/ldconfig
  platforms=(); for i in $(seq 17 36); do platforms+=(--platform "manylinux_2_${i}_aarch64"); done
  python3 -m pip download -q --only-binary=:all: --python-version 3.11 "${platforms[@]}" -d "$ROOT/wheels" \
    ai-edge-litert onnxruntime openvino numpy pillow click tqdm "pydicom>=2.4" setuptools wheel
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root /bin/sh -c "python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index --find-links /wheels \
    ai-edge-litert onnxruntime openvino numpy pillow click tqdm pydicom setuptools wheel"
fi
say "edgecxr from this checkout into the arm64 venv"
rm -rf "$ROOT/src" && mkdir -p "$ROOT/src"
tar -C "$REPO" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=build --exclude=__pycache__ \
  --exclude=benchmarks/results -cf - . | tar -C "$ROOT/src" -xf -
chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root /opt/venv/bin/pip install -q --no-index --no-build-isolation --no-deps --force-reinstall /src

# -- bundles ----------------------------------------------------------------------------------------------
BUNDLES="${1:-}"
if [ -z "$BUNDLES" ]; then
  BUNDLES="$CACHE/bundles"
  say "exporting $TARGETS of the shipped model from $DATA"
  # shellcheck disable=SC2046
  edgecxr export $(printf -- '--target %s ' $TARGETS) --data "$DATA" --out "$BUNDLES" --overwrite \
    || echo "note: some targets were refused (see the summary); the others are checked"
fi
rm -rf "$ROOT/b" && mkdir -p "$ROOT/b" "$OUT"
for t in $TARGETS; do [ -d "$BUNDLES/$t" ] && cp -rL "$BUNDLES/$t" "$ROOT/b/$t"; done

# -- a Pi's /proc/cpuinfo and /sys/devices/system/cpu (qemu-user shows the host's x86 ones) --------------
fake_cpu() {  # $1: midr  $2: part  $3: features
  local sys="$ROOT/sys/devices/system/cpu"
  rm -rf "$ROOT/sys/devices" "$CACHE/cpuinfo" && mkdir -p "$sys"
  for f in possible present online; do echo 0-3 > "$sys/$f"; done
  for c in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x%s\nCPU part\t: 0x%s\nCPU revision\t: %s\n\n' \
      "$c" "$3" "${1:12:1}" "$2" "${1: -1}" >> "$CACHE/cpuinfo"
    d="$sys/cpu$c"; mkdir -p "$d/regs/identification" "$d/topology"
    echo "$1" > "$d/regs/identification/midr_el1"; echo 0x0 > "$d/regs/identification/revidr_el1"
    echo "$c" > "$d/topology/core_id"; echo 0 > "$d/topology/physical_package_id"; echo 0 > "$d/topology/cluster_id"
    echo 0-3 > "$d/topology/core_siblings_list"; echo "$c" > "$d/topology/thread_siblings_list"
    echo 0-3 > "$d/topology/package_cpus_list"; echo "$c" > "$d/topology/core_cpus_list"
    # hwloc (OpenVINO) reads the bitmask files, not the lists
    echo f > "$d/topology/package_cpus"; echo f > "$d/topology/core_siblings"
    printf '%x\n' $((1 << c)) > "$d/topology/core_cpus"; printf '%x\n' $((1 << c)) > "$d/topology/thread_siblings"
    echo 1 > "$d/online"
    for i in 0 1 2; do
      mkdir -p "$d/cache/index$i"
      case $i in 0) l=1 ty=Data s=32K;; 1) l=1 ty=Instruction s=48K;; 2) l=2 ty=Unified s=512K;; esac
      echo $l > "$d/cache/index$i/level"; echo $ty > "$d/cache/index$i/type"; echo $s > "$d/cache/index$i/size"
      echo 64 > "$d/cache/index$i/coherency_line_size"; echo "$c" > "$d/cache/index$i/shared_cpu_list"
    done
  done
}

results=()
for profile in $PROFILES; do
  case $profile in
    pi4) qcpu=cortex-a72; fake_cpu 0x00000000410fd083 d08 "fp asimd evtstrm crc32 cpuid";;
    pi5) qcpu=cortex-a76; fake_cpu 0x00000000414fd0b1 d0b "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp";;
    *) echo "unknown profile $profile (pi4, pi5)" >&2; exit 2;;
  esac
  mount -t proc proc "$ROOT/proc"; mount --bind "$CACHE/cpuinfo" "$ROOT/proc/cpuinfo"
  for t in $TARGETS; do
    [ -d "$ROOT/b/$t" ] || { results+=("$profile $qcpu $t: no bundle (refused at export)"); continue; }
    say "$t on $profile ($qcpu)"
    set +e
    QEMU_CPU=$qcpu chroot "$ROOT" /opt/venv/bin/edgecxr device parity "/b/$t" --data /src/edgecxr/sample --min-coverage 0 \
      --json "/b/$t.$profile.json" --junit "/b/$t.$profile.xml" > "$OUT/$t.$profile.txt" 2>&1
    rc=$?
    set -e
    cp "$ROOT/b/$t.$profile.json" "$ROOT/b/$t.$profile.xml" "$OUT/" 2>/dev/null || true
    grep -E "^parity |^CPU path|^PASS|^FAIL|^note|^error" "$OUT/$t.$profile.txt" || tail -3 "$OUT/$t.$profile.txt"
    case $rc in 0) v=PASSED;; 1) v=FAILED;; *) v="did not run (exit $rc): $(grep -m1 -iE 'error|fault|exception' "$OUT/$t.$profile.txt" | cut -c1-160)";; esac
    results+=("$profile $qcpu $t: parity $v")
    set +e  # the golden vectors of the input contract, reproduced on the emulated Pi
    QEMU_CPU=$qcpu chroot "$ROOT" /opt/venv/bin/edgecxr device conform "/b/$t" > "$OUT/$t.$profile.conform.txt" 2>&1
    rc=$?
    set -e
    tail -1 "$OUT/$t.$profile.conform.txt"
    case $rc in 0) v=PASSED;; 1) v=FAILED;; *) v="did not run (exit $rc)";; esac
    results+=("$profile $qcpu $t: conform $v")
  done
  umount "$ROOT/proc/cpuinfo" "$ROOT/proc"
done
say "summary (reports in $OUT)"
printf '%s\n' "${results[@]}" | tee "$OUT/summary.txt"
