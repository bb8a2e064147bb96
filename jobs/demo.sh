#!/usr/bin/env bash
# make demo: fine-tune the shipped base model (data/base/) on banking77 with
# 2 MPI ranks, two ways, and show the banking77 test accuracy before and after:
#   classify  a classification head over the 77 intents (full fine-tuning)
#   sft       the model answers a query with its intent name (loss on the answer)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shardtune}
OUT=runs/banking
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MPIRUN=(mpirun --bind-to none -np 2)
STEPS_CLS=${STEPS_CLS:-300} STEPS_SFT=${STEPS_SFT:-250} N_GEN=${N_GEN:-100}
rm -rf "$OUT" && mkdir -p "$OUT"
t0=$(date +%s)
acc() { sed -n 's/.*"accuracy":[[:space:]]*\([0-9.eE+-]*\).*/\1/p' "$1" | head -1; }
em() { sed -n 's/.*"exact_match":[[:space:]]*\([0-9.eE+-]*\).*/\1/p' "$1" | head -1; }
pct() { awk -v x="${1:-0}" 'BEGIN { printf "%.1f%%", 100 * x }'; }

echo "== 1. prepare banking77 (data/banking77: 10,003 train and 3,080 test queries, 77 intents)"
L=(--label-names data/banking77/categories.json)
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/train.csv --format classify --label-col category "${L[@]}" \
    --out $OUT/train-classify.h5 | tail -n 3
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/test.csv --format classify --label-col category "${L[@]}" \
    --val-fraction 0 --out $OUT/test-classify.h5 | tail -n 1
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/train.csv --format sft --prompt-field text \
    --response-field category --out $OUT/train-sft.h5 | tail -n 1
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/test.csv --format sft --prompt-field text \
    --response-field category --val-fraction 0 --out $OUT/test-sft.h5 | tail -n 1

echo; echo "== 2. before fine-tuning: the base model (data/base/shardtune-base-byte.h5, pretrained on bank and health text)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/banking-classify.yaml --steps 0 --out_dir $OUT/classify-before >/dev/null
"${MPIRUN[@]}" "$BIN" eval $OUT/classify-before/ckpt/step_00000000.h5 --data $OUT/test-classify.h5 --split all \
    --seq_len 128 --out $OUT/classify-before.json | sed -n 's/^  \(accuracy\|macro-F1\)/  classify: \1/p'
"${MPIRUN[@]}" "$BIN" eval data/base/shardtune-base-byte.h5 --data $OUT/test-sft.h5 --split all --seq_len 160 \
    --generate "$N_GEN" --out $OUT/sft-before.json | sed -n 's/^  exact/  sft: exact/p'

echo; echo "== 3. fine-tune a classification head + the whole model: 2 ranks, ZeRO-1 ($STEPS_CLS steps)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/banking-classify.yaml --steps "$STEPS_CLS" | grep -v '^  '

echo; echo "== 4. supervised fine-tuning: query -> intent name, loss on the answer only ($STEPS_SFT steps)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/banking-sft.yaml --steps "$STEPS_SFT" | grep -v '^  '

echo; echo "== 5. after fine-tuning, on the banking77 test split"
CLS=$(ls $OUT/classify/ckpt/step_*.h5 | tail -n 1)
SFT=$(ls $OUT/sft/ckpt/step_*.h5 | tail -n 1)
"${MPIRUN[@]}" "$BIN" eval "$CLS" --data $OUT/test-classify.h5 --split all --seq_len 128 --out $OUT/classify-after.json
"${MPIRUN[@]}" "$BIN" eval "$SFT" --data $OUT/test-sft.h5 --split all --seq_len 160 --generate "$N_GEN" \
    --out $OUT/sft-after.json | grep -E 'exact|loss|perplexity'

echo; echo "== 6. the fine-tuned model answers (greedy)"
# one batched call over a prompts file, as for raters' candidates
for q in "I still have not received my new card, what should I do?" "Why was I charged a fee for my transfer?"; do
  printf '{"prompt": "<|user|>\\n%s\\n<|assistant|>\\n"}\n' "$q"
done > $OUT/demo-prompts.jsonl
"$BIN" generate "$SFT" --prompts $OUT/demo-prompts.jsonl --temperature 0 --max_new 40

echo
echo "== banking77 test accuracy ($(( $(date +%s) - t0 )) s in all)"
printf "  %-44s %10s %10s\n" "" "before" "after"
printf "  %-44s %10s %10s\n" "classify (77-way accuracy, 3,080 queries)" "$(pct "$(acc $OUT/classify-before.json)")" \
    "$(pct "$(acc $OUT/classify-after.json)")"
printf "  %-44s %10s %10s\n" "sft (exact intent name, $N_GEN queries)" "$(pct "$(em $OUT/sft-before.json)")" \
    "$(pct "$(em $OUT/sft-after.json)")"
echo "loss curves: $OUT/classify/loss.png $OUT/sft/loss.png   metrics: $OUT/*/metrics.jsonl"
