#!/usr/bin/env bash
# On-policy RL with a rule reward on banking77 (data/banking77, CC BY 4.0):
#  1. SFT: the shipped base model (data/base/) learns to answer a bank
#     customer's query with its intent name ("card_arrival"), as in make demo;
#  2. GRPO on top (jobs/recipes/banking-grpo.yaml): 8 sampled answers per
#     query, reward 1 when the answer is exactly the query's intent;
#  3. the banking77 test split's exact match (greedy answers to N_GEN queries
#     spread over its 3,080) after SFT and after GRPO.
# 2 ranks; STEPS_SFT, STEPS_RL and N_GEN change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shardtune}
OUT=runs/rlhf-banking
STEPS_SFT=${STEPS_SFT:-250} STEPS_RL=${STEPS_RL:-60} N_GEN=${N_GEN:-400}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MPIRUN=(mpirun --bind-to none -np 2)
rm -rf $OUT && mkdir -p $OUT   # prepare replaces no file without --force
t0=$(date +%s)
em() { sed -n 's/.*"exact_match":[[:space:]]*\([0-9.eE+-]*\).*/\1/p' "$1" | head -1; }
pct() { awk -v x="${1:-0}" 'BEGIN { printf "%.1f%%", 100 * x }'; }

echo "== 1. prepare: query -> intent name (prompts cut from the left to 160 bytes)"
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/train.csv --format sft --prompt-field text \
    --response-field category --max-len 160 --out $OUT/train-sft.h5 | tail -n 1
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/test.csv --format sft --prompt-field text \
    --response-field category --max-len 160 --val-fraction 0 --out $OUT/test-sft.h5 | tail -n 1

echo; echo "== 2. SFT ($STEPS_SFT steps)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/banking-sft.yaml --data.train $OUT/train-sft.h5 --out_dir $OUT/sft \
    --steps "$STEPS_SFT" | grep -E '^(step|validation)'
SFT=$OUT/sft/ckpt/step_$(printf %08d "$STEPS_SFT").h5
"${MPIRUN[@]}" "$BIN" eval "$SFT" --data $OUT/test-sft.h5 --split all --seq_len 160 --generate "$N_GEN" \
    --out $OUT/sft-test.json | grep exact

echo; echo "== 3. GRPO on top, reward: the answer is the query's intent ($STEPS_RL steps)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/banking-grpo.yaml --init_from "$SFT" --data.train $OUT/train-sft.h5 \
    --out_dir $OUT/grpo --steps "$STEPS_RL" | grep -E '^(grpo|step|validation|generation|forward|backward|wall)'
RL=$OUT/grpo/ckpt/step_$(printf %08d "$STEPS_RL").h5
"${MPIRUN[@]}" "$BIN" eval "$RL" --data $OUT/test-sft.h5 --split all --seq_len 160 --generate "$N_GEN" \
    --out $OUT/grpo-test.json | grep exact

echo
echo "== banking77 test split, exact intent name, greedy, $N_GEN queries ($(( $(date +%s) - t0 )) s in all)"
printf "  %-28s %8s\n" "after SFT ($STEPS_SFT steps)" "$(pct "$(em $OUT/sft-test.json)")"
printf "  %-28s %8s\n" "after GRPO ($STEPS_RL steps)" "$(pct "$(em $OUT/grpo-test.json)")"
echo "metrics: $OUT/grpo/metrics.jsonl (reward, kl, entropy, answer length, generation share per step)"
