#!/usr/bin/env bash
# Sharded parity on the 624 real test images: one run, 3 shards merged, Ray (local, 2 CPUs); reports compared.
# Usage: bash run.sh BUNDLE DATA OUT   (e.g. runs/twin-bundles/tflite-int8 ../shared/data/kermany-cxr-224 /tmp/shards)
set -u
B=$1; D=$2; O=$3
mkdir -p "$O"
edgecxr device parity "$B" --data "$D" --json "$O/single.json" --junit "$O/single.xml" > "$O/single.txt"; echo "single exit $?"
for i in 1 2 3; do
  edgecxr device parity "$B" --data "$D" --shard $i/3 --predictions "$O/shard-$i.json"; echo "shard $i exit $?"
done
edgecxr device merge "$O"/shard-{1,2,3}.json --json "$O/merged.json" --junit "$O/merged.xml" > "$O/merged.txt"; echo "merge exit $?"
edgecxr device parity "$B" --data "$D" --ray --ray-workers 2 --json "$O/ray.json" --junit "$O/ray.xml" > "$O/ray.txt" 2> "$O/ray.err"; echo "ray exit $?"
python - "$O" <<'PY'
import json, sys
o = sys.argv[1]
load = lambda n: json.load(open(f"{o}/{n}.json"))
volatile = ("timing", "host", "shards")
single = load("single")
for name in ("merged", "ray"):
    other = load(name)
    a = {k: v for k, v in single.items() if k not in volatile}
    b = {k: v for k, v in other.items() if k not in volatile}
    if name == "ray":  # the runtime's thread count (1 per Ray worker) is part of 'runtime'
        a["runtime"] = {k: v for k, v in a["runtime"].items() if k != "threads"}
        b["runtime"] = {k: v for k, v in b["runtime"].items() if k != "threads"}
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    print(f"{name} vs single: {'IDENTICAL' if not diff else 'DIFFERENT in ' + ', '.join(diff)} "
          f"({len(b['cases'])} cases, passed {other['passed']}, {other['timing']['seconds']:.1f} s)")
PY
strip() { grep -v 'time=\|name="agreement"\|seconds' "$1"; }
diff <(strip "$O/single.xml") <(strip "$O/merged.xml") > /dev/null && echo "junit merged vs single: IDENTICAL (apart from times)"
