#!/usr/bin/env bash
# RLHF for e-commerce customer support on Bitext (data/bitext-support,
# CDLA-Sharing-1.0; jobs/rlhf/bitext.py makes the files: an answer is the
# first informative sentence of a Bitext agent's reply, at most 140 bytes;
# the industry recipes' Bitext test side, which the base never saw, is held
# out), on the shipped sentencepiece base model (BASE,
# data/base/shardtune-base-sp4096.h5: 3.15M parameters, 4096 tokens; the
# byte-level base collapsed to nearly one answer for every message here):
#  1. SFT on the answers;
#  2. a reward model on preference pairs: the answer written for the
#     customer's intent preferred over one written for another intent;
#  3. a judge that is not the reward: an intent classifier of the answer's
#     text alone, trained on the agents' answers;
#  4. GRPO and PPO from the SFT model against the reward model;
#  5. greedy answers to the 438 held-out messages from the base model, the
#     SFT model, GRPO and PPO (and the agents' own answers): the reward
#     model's mean score, the judge's accuracy (the answer's intent is the
#     customer's), length and {{placeholder}} slots.
# 2 ranks, about 13 minutes on 2 shared cores with the defaults; STEPS_SFT,
# STEPS_RM, STEPS_JUDGE, STEPS_RL change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shardtune}
OUT=runs/rlhf-bitext
PY=jobs/rlhf/bitext.py
BASE=${BASE:-data/base/shardtune-base-sp4096.h5} TOK=${TOK:-llama2c:data/base/tok4096.bin}
STEPS_SFT=${STEPS_SFT:-150} STEPS_RM=${STEPS_RM:-120} STEPS_JUDGE=${STEPS_JUDGE:-120} STEPS_RL=${STEPS_RL:-20}
MAX_NEW=48   # answer tokens (the answers are at most 140 bytes, about 35 tokens)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MPIRUN=(mpirun --bind-to none -np 2)
ck() { printf "%s/ckpt/step_%08d.h5" "$1" "$2"; }
t0=$(date +%s)

echo "== 1. data"
rm -rf $OUT
python3 $PY split $OUT
P=(--tokenizer "$TOK" --force)
"${MPIRUN[@]}" "$BIN" prepare --input $OUT/sft-train.jsonl --format sft --max-len 128 "${P[@]}" --out $OUT/sft-train.h5 \
    | tail -n 1
"${MPIRUN[@]}" "$BIN" prepare --input $OUT/pairs-train.jsonl --max-len 128 "${P[@]}" --out $OUT/pairs-train.h5 | tail -n 1
L=(--format classify --label-names $OUT/intents.json --max-len 64 "${P[@]}")
"${MPIRUN[@]}" "$BIN" prepare --input $OUT/judge-train.jsonl "${L[@]}" --out $OUT/judge-train.h5 | tail -n 1

echo; echo "== 2. SFT, the reward model and the judge ($STEPS_SFT, $STEPS_RM, $STEPS_JUDGE steps)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/bitext-sft.yaml --init_from "$BASE" --steps "$STEPS_SFT" | grep -E '^validation:'
"${MPIRUN[@]}" "$BIN" train jobs/recipes/bitext-reward.yaml --init_from "$BASE" --steps "$STEPS_RM" | grep -E '^validation:'
"${MPIRUN[@]}" "$BIN" train jobs/recipes/bitext-judge.yaml --init_from "$BASE" --steps "$STEPS_JUDGE" \
    | grep -E '^validation:'
SFT=$(ck $OUT/sft "$STEPS_SFT") RM=$(ck $OUT/reward "$STEPS_RM") JUDGE=$(ck $OUT/judge "$STEPS_JUDGE")

echo; echo "== 3. GRPO and PPO from the SFT model against the reward model ($STEPS_RL steps each)"
for m in grpo ppo; do
  "${MPIRUN[@]}" "$BIN" train jobs/recipes/bitext-$m.yaml --init_from "$SFT" --rl.reward.model "$RM" \
      --steps "$STEPS_RL" | grep -E "^($m:|step|validation:|generation|forward|backward|wall)"
done

echo; echo "== 4. greedy answers to the held-out messages, scored by the reward model and the judge"
# name checkpoint: its answers, the reward model's scores, the judge's accuracy
judge() {
  "${MPIRUN[@]}" "$BIN" prepare --input $OUT/$1-answers.jsonl "${L[@]}" --val-fraction 0 --out $OUT/$1-judge.h5 \
      > /dev/null
  "${MPIRUN[@]}" "$BIN" eval "$JUDGE" --data $OUT/$1-judge.h5 --split all --seq_len 64 --out $OUT/$1-judge.json \
      > /dev/null
  "$BIN" score "$RM" --input $OUT/$1-answers.jsonl --out $OUT/$1-scored.jsonl --seq_len 128 > /dev/null
}
evaluate() {
  "${MPIRUN[@]}" "$BIN" generate "$2" --prompts $OUT/test.jsonl --temperature 0 --max_new $MAX_NEW --batch 16 \
      --out $OUT/$1-gen.jsonl
  python3 $PY answers $OUT/$1-gen.jsonl $OUT/test.jsonl $OUT/$1-answers.jsonl
  judge "$1"
}
cp $OUT/ref-answers.jsonl $OUT/reference-answers.jsonl && judge reference
evaluate base "$BASE"
evaluate sft "$SFT"
evaluate grpo "$(ck $OUT/grpo "$STEPS_RL")"
evaluate ppo "$(ck $OUT/ppo "$STEPS_RL")"

echo
echo "== Bitext held-out messages (438), greedy answers ($(( $(date +%s) - t0 )) s in all)"
python3 $PY table $OUT reference base sft grpo ppo
echo "answers: $OUT/*-answers.jsonl; RL metrics: $OUT/{grpo,ppo}/metrics.jsonl"
