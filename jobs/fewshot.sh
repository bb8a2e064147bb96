#!/usr/bin/env bash
# Few-shot banking77: the first 16 examples of each intent (1,232 queries),
# LoRA adapters + a classification head on the frozen base, early stopping,
# then the banking77 test accuracy. Needs python3 for the CSV subset.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shardtune}
OUT=runs/banking
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p $OUT
python3 - <<'PY'
import csv, collections
seen = collections.Counter()
with open("data/banking77/train.csv", newline="") as f, open("runs/banking/fewshot.csv", "w", newline="") as g:
    r, w = csv.DictReader(f), None
    w = csv.DictWriter(g, fieldnames=r.fieldnames)
    w.writeheader()
    for row in r:
        if seen[row["category"]] < 16:
            seen[row["category"]] += 1
            w.writerow(row)
PY
L=(--label-names data/banking77/categories.json)
"$BIN" prepare --input $OUT/fewshot.csv --format classify --label-col category "${L[@]}" --val-fraction 0.2 \
    --out $OUT/train-fewshot.h5 --force | tail -n 2
[ -f $OUT/test-classify.h5 ] || "$BIN" prepare --input data/banking77/test.csv --format classify \
    --label-col category "${L[@]}" --val-fraction 0 --out $OUT/test-classify.h5 | tail -n 1
mpirun --bind-to none -np 2 "$BIN" train jobs/recipes/banking-lora-fewshot.yaml "$@" | grep -v '^  '
BEST=$(cut -d' ' -f1 $OUT/fewshot/ckpt/best)
"$BIN" eval $OUT/fewshot/ckpt/$BEST --data $OUT/test-classify.h5 --split all --seq_len 128 --out $OUT/fewshot-after.json
