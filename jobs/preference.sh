#!/usr/bin/env bash
# Learning from preference pairs on the shipped base model: reward models
# (method reward) on two data sets, then DPO (method dpo):
#  1. hh-rlhf (Anthropic's human preference pairs, harmless-base test split,
#     2,312 pairs): the base model reads 128 bytes, so each dialogue keeps its
#     last 128 bytes (prompt cut from the left);
#  2. banking77 as a rater would judge a support bot: for each customer query
#     the chosen answer names the right intent, the rejected one a random other
#     intent (seeded); the test pairs come from banking77's test split.
# Prints the validation / test pair accuracy before and after training.
# Needs python3 for the banking pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shardtune}
OUT=runs/hh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p $OUT runs/banking
"$BIN" prepare --input data/hh-rlhf/harmless-base-test.jsonl.gz --tokenizer byte --max-len 128 \
    --val-fraction 0.1 --out $OUT/pairs-byte128.h5 --force | tail -n 4
mpirun --bind-to none -np 2 "$BIN" train jobs/recipes/hh-reward.yaml "$@" | grep -v '^  '

python3 - <<'PY'
import csv, json, random
rng = random.Random(77)
for split in ("train", "test"):
    rows = list(csv.DictReader(open(f"data/banking77/{split}.csv", newline="")))
    intents = sorted({r["category"] for r in rows})
    with open(f"runs/banking/pairs-{split}.jsonl", "w") as f:
        for r in rows:
            wrong = rng.choice([i for i in intents if i != r["category"]])
            say = lambda i: "This is about " + i.replace("_", " ") + "."
            f.write(json.dumps({"prompt": r["text"], "chosen": say(r["category"]), "rejected": say(wrong)}) + "\n")
PY
"$BIN" prepare --input runs/banking/pairs-train.jsonl --tokenizer byte --max-len 128 --val-fraction 0.1 \
    --out runs/banking/pairs-train.h5 --force | tail -n 3
"$BIN" prepare --input runs/banking/pairs-test.jsonl --tokenizer byte --max-len 128 --val-fraction 0 \
    --out runs/banking/pairs-test.h5 --force | tail -n 3
R=(jobs/recipes/hh-reward.yaml --data.train runs/banking/pairs-train.h5)
# the starting point (base + the fresh head training starts from), then training
mpirun --bind-to none -np 2 "$BIN" train "${R[@]}" --out_dir runs/banking/reward0 --steps 0 | tail -n 1
mpirun --bind-to none -np 2 "$BIN" train "${R[@]}" --out_dir runs/banking/reward --steps 600 "$@" | grep -v '^  '
echo "banking77 test pairs, before:"
mpirun --bind-to none -np 2 "$BIN" eval runs/banking/reward0/ckpt/step_00000000.h5 --data runs/banking/pairs-test.h5 \
    --split all --seq_len 128 --batch_size 16 | tail -n 3
echo "banking77 test pairs, after:"
mpirun --bind-to none -np 2 "$BIN" eval runs/banking/reward/ckpt/step_00000600.h5 --data runs/banking/pairs-test.h5 \
    --split all --seq_len 128 --batch_size 16 | tail -n 3

# 3. DPO on the same banking pairs: the base model is the policy and, frozen,
#    the reference; the validation pair accuracy is the policy's implicit reward
mpirun --bind-to none -np 2 "$BIN" train jobs/recipes/banking-dpo.yaml "$@" | grep -v '^  '
