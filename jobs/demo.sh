#!/usr/bin/env bash
# make demo: tokenize real bank customer queries, train a small Llama-family
# model on them with 2 MPI ranks, show progress, the validation loss before
# and after, the loss curve, and text the model writes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-bin/shardtune}
OUT=runs/demo
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MPIRUN=(mpirun --bind-to none -np 2)
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1. prepare: banking77 queries (data/banking77/train.csv) -> byte-level tokens"
"${MPIRUN[@]}" "$BIN" prepare --input data/banking77/train.csv --format text --text-col text \
    --tokenizer byte --out "$OUT/banking77-text.h5"

echo; echo "== 2. train: llama-family, 4 layers, on 2 ranks (data parallel, ZeRO-1)"
"${MPIRUN[@]}" "$BIN" train jobs/recipes/demo-pretrain.yaml

echo; echo "== 3. generate: the model completes bank customer queries"
CKPT=$(ls "$OUT"/ckpt/step_*.h5 | tail -n 1)
for p in "I lost my" "Why was my card" "How do I top up"; do
  "$BIN" generate "$CKPT" --prompt "$p" --max_new 48 --temperature 0.7 --top_k 20 --seed 3
done
echo; echo "checkpoint: $CKPT  (shardtune inspect $CKPT; h5ls -r $CKPT)"
echo "loss curve: $OUT/loss.png   metrics: $OUT/metrics.jsonl"
