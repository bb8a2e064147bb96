#!/usr/bin/env bash
# Rebuild data/base/shardtune-base-byte.h5, the previous base model, which the
# banking demo, few-shot and preference scripts
# fine-tune: corpus -> prepare -> pretrain (2 ranks) -> weights-only copy.
# About 10 minutes on 2 cores. The log of the run that made the committed
# file is data/base/pretrain-byte.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin/shardtune}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p runs/base data/base
python3 jobs/base/corpus.py data/banking77/train.csv data/medquad/medquad-qa.jsonl.gz runs/base/corpus.jsonl
mpirun --bind-to none -np 2 "$BIN" prepare --input runs/base/corpus.jsonl --format text --tokenizer byte \
    --out runs/base/corpus.h5 --force
mpirun --bind-to none -np 2 "$BIN" train jobs/recipes/base-pretrain.yaml 2>&1 | tee data/base/pretrain-byte.log
"$BIN" convert runs/base/ckpt/step_00001500.h5 --out data/base/shardtune-base-byte.h5
