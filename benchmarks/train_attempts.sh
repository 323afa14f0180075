#!/usr/bin/env bash
# The training attempts behind the shipped default model, run one after another
# (about 30 min each on 2 CPU cores). Selection uses validation numbers only:
#   python benchmarks/select_model.py RUNS/*   (picks by validation ROC-AUC, then evaluates all on test)
set -euo pipefail
DATA=${DATA:-../shared/data/kermany-cxr-224}
RUNS=${RUNS:-runs}
common=(--arch mobilenet_v2 --data "$DATA" --epochs 15 --seed 0)
edgecxr train "${common[@]}" --out "$RUNS/a_mnv2_224_int02" --augment standard --intensity 0.2
edgecxr train "${common[@]}" --out "$RUNS/b_mnv2_224_int02_eq" --augment standard --intensity 0.2 --equalize
edgecxr train "${common[@]}" --out "$RUNS/c_mnv2_224_noflip_int03" --augment no-flip --intensity 0.3
