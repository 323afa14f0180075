#!/usr/bin/env bash
# The training attempts behind the shipped default model, run one after another
# (30-50 min each on 2 CPU cores). Selection uses validation numbers only:
#   python benchmarks/select_model.py --data "$DATA" RUNS/*   (picks by validation ROC-AUC, then evaluates all on test)
set -euo pipefail
DATA=${DATA:-../shared/data/kermany-cxr-224}
RUNS=${RUNS:-runs}
common=(--arch mobilenet_v2 --data "$DATA" --augment standard --seed 0)
edgecxr train "${common[@]}" --out "$RUNS/a_mnv2_224_int02" --epochs 15 --patience 5 --intensity 0.2
edgecxr train "${common[@]}" --out "$RUNS/b_mnv2_224_int02_eq" --epochs 15 --patience 15 --intensity 0.2 --equalize
edgecxr train "${common[@]}" --out "$RUNS/c_mnv2_224_crop_eq_int03" --epochs 20 --patience 20 --intensity 0.3 --equalize --lung-crop
edgecxr train "${common[@]}" --out "$RUNS/d_mnv2_224_int02_eq_swa5" --epochs 20 --patience 20 --intensity 0.2 --equalize --swa 5
edgecxr train --arch mobilenet_v2 --data "$DATA" --seed 0 --out "$RUNS/e_mnv2_224_noflip_int02_eq_swa5" --augment no-flip \
  --epochs 15 --patience 15 --intensity 0.2 --equalize --swa 5
edgecxr train "${common[@]}" --out "$RUNS/f_mnv2_224_int02_eq_e30_swa10" --epochs 30 --patience 30 --intensity 0.2 --equalize --swa 10
edgecxr train --arch mobilenet_v2 --data "$DATA" --augment standard --seed 1 --out "$RUNS/g_mnv2_224_int02_eq_swa5_seed1" \
  --epochs 20 --patience 20 --intensity 0.2 --equalize --swa 5
edgecxr train --arch mobilenet_v3_large --data "$DATA" --augment standard --seed 0 --out "$RUNS/h_mnv3l_224_int02_eq_swa5" \
  --epochs 15 --patience 15 --intensity 0.2 --equalize --swa 5
# session 4: the loss and label options the issue names, on d's recipe
d_recipe=(--arch mobilenet_v2 --data "$DATA" --augment standard --seed 0 --epochs 20 --patience 20 --intensity 0.2 --equalize --swa 5)
edgecxr train "${d_recipe[@]}" --out "$RUNS/i_mnv2_224_int02_eq_swa5_focal" --loss focal
edgecxr train "${d_recipe[@]}" --out "$RUNS/j_mnv2_224_int02_eq_swa5_mixup02" --mixup 0.2
edgecxr train "${d_recipe[@]}" --out "$RUNS/k_mnv2_224_int02_eq_swa5_ls01" --label-smoothing 0.1
