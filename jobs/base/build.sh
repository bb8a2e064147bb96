#!/usr/bin/env bash
# Rebuild the shipped base model, data/base/shardtune-base-sp4096.h5, and its
# tokenizer, data/base/tok4096.{bin,model}:
#   corpus (the train sides of the four industry recipes, jobs/industry/splits.py)
#   -> a sentencepiece BPE vocabulary of 4,096 pieces (jobs/base/tokenizer.py)
#   -> prepare -> pretrain on 2 ranks (jobs/recipes/base-sp4096.yaml)
#   -> a weights-and-tokenizer copy.
# About 20 minutes on 2 idle cores (runs under nice); needs python3 and
# Debian's python3-sentencepiece. data/base/pretrain-sp4096.log is the log of the
# run that made the committed file.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-bin/shardtune}
PY=/usr/bin/python3     # Debian's python3, which has python3-sentencepiece
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
rm -rf runs/base && mkdir -p runs/base data/base
$PY jobs/industry/splits.py corpus runs/base
$PY jobs/base/tokenizer.py runs/base/corpus.txt 4096 runs/base/tok4096
cp runs/base/tok4096.bin runs/base/tok4096.model data/base/
mpirun --bind-to none -np 2 "$BIN" prepare --input runs/base/corpus.jsonl --format text \
    --tokenizer llama2c:data/base/tok4096.bin --out runs/base/corpus.h5 --force
nice mpirun --bind-to none -np 2 "$BIN" train jobs/recipes/base-sp4096.yaml 2>&1 | tee data/base/pretrain-sp4096.log
"$BIN" convert runs/base/ckpt/step_00000600.h5 --out data/base/shardtune-base-sp4096.h5
