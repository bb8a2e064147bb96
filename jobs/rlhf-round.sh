#!/usr/bin/env bash
# One round of RLHF with people in it, end to end from a fresh clone, on the
# e-commerce support data (Bitext, data/bitext-support; jobs/rlhf/bitext.py):
#  0. build; the round's policy: the shipped base model after a short SFT on
#     the agents' answers (kept in runs/rlhf-round/sft for the next round);
#  1. candidates: the policy samples SAMPLES answers to each of N_PROMPTS
#     customer messages (`generate --prompts --samples`), written one message
#     per line for raters (candidates.jsonl);
#  2. raters: `jobs/rlhf/rate.py ask` shows each message and its answers in a
#     terminal and asks which is best and which worst (RATER=person). In this
#     demo a SCRIPTED RATER stands in for people (RATER=script, the default)
#     and says so: it prefers answers that name what the customer asked about;
#  3. their choices become preference pairs (best over worst) and a dataset;
#  4. a reward model learns them (method reward; `method: dpo` on the same
#     pairs would skip the reward model and the RL below);
#  5. GRPO from the policy against that reward model;
#  6. greedy answers to the 438 held-out messages before and after: the new
#     reward model's mean score and the scripted rater's mean score (what the
#     raters asked for).
# 2 ranks. N_PROMPTS, SAMPLES, STEPS_SFT, STEPS_RM, STEPS_RL change the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory   # a fresh clone: the Debian packages and the build (nothing when present)
BIN=${BIN:-bin/shardtune}
OUT=runs/rlhf-round
PY=jobs/rlhf/bitext.py RATE=jobs/rlhf/rate.py
BASE=${BASE:-data/base/shardtune-base-sp4096.h5} TOK=${TOK:-llama2c:data/base/tok4096.bin}
MAX_NEW=48   # answer tokens (the answers are at most 140 bytes, about 35 tokens)
N_PROMPTS=${N_PROMPTS:-400} SAMPLES=${SAMPLES:-4} RATER=${RATER:-script}
STEPS_SFT=${STEPS_SFT:-150} STEPS_RM=${STEPS_RM:-100} STEPS_RL=${STEPS_RL:-15}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MPIRUN=(mpirun --bind-to none -np 2)
ck() { printf "%s/ckpt/step_%08d.h5" "$1" "$2"; }
t0=$(date +%s)

echo "== 0. the policy: the base model after $STEPS_SFT steps of SFT on the agents' answers"
python3 $PY split $OUT
SFT=$(ck $OUT/sft "$STEPS_SFT")
if [ ! -f "$SFT" ]; then
  "${MPIRUN[@]}" "$BIN" prepare --input $OUT/sft-train.jsonl --format sft --max-len 128 --tokenizer "$TOK" --force \
      --out $OUT/sft-train.h5 \
      | tail -n 1
  "${MPIRUN[@]}" "$BIN" train jobs/recipes/bitext-sft.yaml --init_from "$BASE" --data.train $OUT/sft-train.h5 --out_dir $OUT/sft \
      --steps "$STEPS_SFT" | grep -E '^validation:'
fi

echo; echo "== 1. candidates: $SAMPLES sampled answers to each of $N_PROMPTS messages"
head -n "$N_PROMPTS" $OUT/prompts-train.jsonl > $OUT/round-prompts.jsonl
"${MPIRUN[@]}" "$BIN" generate "$SFT" --prompts $OUT/round-prompts.jsonl --samples "$SAMPLES" --temperature 1 \
    --top_p 1 --max_new $MAX_NEW --batch 16 --seed 1 --out $OUT/candidates-gen.jsonl
python3 $RATE candidates $OUT/candidates-gen.jsonl $OUT/round-prompts.jsonl "$SAMPLES" $OUT/candidates.jsonl
echo "candidates for raters: $OUT/candidates.jsonl"

echo; echo "== 2. raters pick the best and the worst answer of each message"
rm -f $OUT/choices.jsonl
if [ "$RATER" = person ]; then python3 $RATE ask $OUT/candidates.jsonl $OUT/choices.jsonl
else python3 $RATE ask $OUT/candidates.jsonl $OUT/choices.jsonl --script; fi

echo; echo "== 3. choices -> preference pairs"
python3 $RATE pairs $OUT/candidates.jsonl $OUT/choices.jsonl $OUT/pairs.jsonl
"${MPIRUN[@]}" "$BIN" prepare --input $OUT/pairs.jsonl --max-len 128 --tokenizer "$TOK" --force --out $OUT/pairs.h5 \
    | tail -n 1

echo; echo "== 4. a reward model on the raters' pairs ($STEPS_RM steps)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/bitext-reward.yaml --init_from "$BASE" --data.train $OUT/pairs.h5 --out_dir $OUT/reward \
    --steps "$STEPS_RM" --eval_batches 4 | grep -E '^validation:'
RM=$(ck $OUT/reward "$STEPS_RM")

echo; echo "== 5. GRPO from the policy against it ($STEPS_RL steps)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/bitext-grpo.yaml --init_from "$SFT" --rl.reward.model "$RM" \
    --data.train $OUT/sft-train.h5 --out_dir $OUT/grpo --steps "$STEPS_RL" \
    | grep -E '^(grpo:|step|validation:|generation|wall)'
RL=$(ck $OUT/grpo "$STEPS_RL")

echo; echo "== 6. greedy answers to the held-out messages, before and after the round"
for m in before after; do
  ckpt=$SFT; [ $m = after ] && ckpt=$RL
  "${MPIRUN[@]}" "$BIN" generate "$ckpt" --prompts $OUT/test.jsonl --temperature 0 --max_new $MAX_NEW --batch 16 \
      --out $OUT/$m-gen.jsonl
  python3 $PY answers $OUT/$m-gen.jsonl $OUT/test.jsonl $OUT/$m-answers.jsonl
  "$BIN" score "$RM" --input $OUT/$m-answers.jsonl --out $OUT/$m-scored.jsonl --seq_len 128 > /dev/null
done
mean() { python3 -c "import json,sys; r=[json.loads(l)['reward'] for l in open(sys.argv[1])]; print(f'{sum(r)/len(r):.3f}')" "$1"; }
echo
echo "== one round ($(( $(date +%s) - t0 )) s; rater: $RATER), 438 held-out messages"
printf "  %-28s %12s %22s\n" "" "reward model" "scripted rater's score"
printf "  %-28s %12s %22s\n" "before (the SFT policy)" "$(mean $OUT/before-scored.jsonl)" "$(python3 $RATE judge $OUT/before-answers.jsonl)"
printf "  %-28s %12s %22s\n" "after GRPO ($STEPS_RL steps)" "$(mean $OUT/after-scored.jsonl)" "$(python3 $RATE judge $OUT/after-answers.jsonl)"
echo "next round: rate the new policy's candidates (run again with SFT=... pointing at $RL, or continue from it)"
