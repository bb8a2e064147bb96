#!/usr/bin/env bash
# jobs/bf16.sh: does bf16 mixed precision learn what fp32 learns? The demo's
# classify recipe (banking77, the shipped base, 2 ranks, ZeRO-1), shortened,
# trained twice from the same start and data order, once with precision fp32
# and once with bf16; then both loss curves and banking77 test accuracies.
#
#   bash jobs/bf16.sh            (STEPS=200 by default; a few minutes on 2 cores)
#
# It passes when the two loss curves, as means over windows of 20 steps,
# differ by at most LOSS_TOL (relative, default 0.05) and the test accuracies
# by at most ACC_TOL (absolute, default 0.02). bf16 rounds every matrix
# product's inputs to 8 significant bits; the runs start equal and drift apart
# as rounding changes the updates (single steps' losses then differ by up to
# ~9%, as two fp32 runs with other seeds would), so the tolerances are about
# learning, not about bits.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shardtune}
OUT=${OUT:-runs/bf16}
STEPS=${STEPS:-200} LOSS_TOL=${LOSS_TOL:-0.05} ACC_TOL=${ACC_TOL:-0.02}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MPIRUN=(mpirun --bind-to none -np 2)
rm -rf "$OUT" && mkdir -p "$OUT"
t0=$(date +%s)

L=(--label-names data/banking77/categories.json)
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/train.csv --format classify --label-col category "${L[@]}" \
    --out "$OUT/train.h5" | tail -n 1
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/test.csv --format classify --label-col category "${L[@]}" \
    --val-fraction 0 --out "$OUT/test.h5" | tail -n 1

for p in fp32 bf16; do
  echo "== precision $p: $STEPS steps"
  "${MPIRUN[@]}" "$BIN" train jobs/recipes/banking-classify.yaml --data.train "$OUT/train.h5" --steps "$STEPS" \
      --precision "$p" --log_every 10 --eval_every 0 --out_dir "$OUT/$p" | grep -E '^(precision|step|matmul)' | sed -n '1,3p;$p'
  ck=$(ls "$OUT/$p"/ckpt/step_*.h5 | tail -n 1)
  # evaluation in fp32 for both: the question is what the weights learned
  "${MPIRUN[@]}" "$BIN" eval "$ck" --data "$OUT/test.h5" --split all --seq_len 128 --out "$OUT/$p.json" > /dev/null
done

python3 - "$OUT" "$LOSS_TOL" "$ACC_TOL" <<'EOF'
import json, sys
out, loss_tol, acc_tol = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def curve(p):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"{out}/{p}/metrics.jsonl")) if "loss" in r and "step" in r}
a, b = curve("fp32"), curve("bf16")
steps = sorted(set(a) & set(b))
W = 20
rows = []
for i in range(0, len(steps), W):
    blk = steps[i:i + W]
    ma, mb = (sum(c[s] for s in blk) / len(blk) for c in (a, b))
    rows.append((blk[0], blk[-1], ma, mb, abs(ma - mb) / abs(ma)))
print("steps        fp32 loss   bf16 loss   relative difference (means over 20 steps)")
for lo, hi, ma, mb, r in rows:
    print(f"{lo:4d}-{hi:<4d}    {ma:8.4f}    {mb:8.4f}    {r:.4f}")
rel = max(r[4] for r in rows)
acc = {p: json.load(open(f"{out}/{p}.json"))["accuracy"] for p in ("fp32", "bf16")}
print(f"banking77 test accuracy: fp32 {100 * acc['fp32']:.1f}%, bf16 {100 * acc['bf16']:.1f}% "
      f"(difference {100 * abs(acc['fp32'] - acc['bf16']):.1f} points)")
ok = rel <= loss_tol and abs(acc["fp32"] - acc["bf16"]) <= acc_tol
print(f"bf16 vs fp32: {'PASS' if ok else 'FAIL'} (loss curves within {rel:.1%} <= {loss_tol:.0%} relative, "
      f"accuracy within {100 * abs(acc['fp32'] - acc['bf16']):.1f} <= {100 * acc_tol:.0f} points)")
sys.exit(0 if ok else 1)
EOF
echo "($(( $(date +%s) - t0 )) s in all)"
