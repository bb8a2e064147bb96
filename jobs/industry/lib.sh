# Shared by the industry recipes (jobs/banking.sh, healthcare.sh, legal.sh,
# ecommerce.sh): paths, the bases compared, and small helpers. Sourced, not run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
BIN=${BIN:-bin/shardtune}
PY=${PY:-python3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MPIRUN=(mpirun --bind-to none -np 2)
# The bases: the shipped one (data/base/, pretrained by this project on the
# four industries' train sides) and llama2.c's stories260K (general English
# children's stories, Karpathy's tinyllamas), each with its own tokenizer.
BASE=${BASE:-data/base/shardtune-base-sp4096.h5}
BASE_TOK=llama2c:data/base/tok4096.bin
STORIES=runs/stories260K.h5
STORIES_TOK=llama2c:data/llama2c/tok512.bin
# From scratch: the shipped base's shape with fresh weights.
SCRATCH=(--model.family llama --model.n_layer 6 --model.d_model 192 --model.n_head 6 --model.n_kv_head 2
         --model.d_ff 512 --model.max_seq 256)
T0=$(date +%s)

# The genuine stories260K as a checkpoint (once).
stories() {
  [ -f $STORIES ] || "$BIN" convert data/llama2c/stories260K.bin --tokenizer $STORIES_TOK --out $STORIES >/dev/null
}

# prepare on 2 ranks (--force: the scripts re-create their datasets); prints its summary line.
prep() { "${MPIRUN[@]}" "$BIN" prepare --force "$@" | sed -n 2p; }

# train on 2 ranks; prints the closing validation line.
train() { "${MPIRUN[@]}" "$BIN" train "$@" | grep -E '^validation:' || true; }

# The newest checkpoint of a run directory.
last_ckpt() { ls "$1"/ckpt/step_*.h5 | tail -n 1; }

# eval on 2 ranks into a JSON file (quiet).
evaluate() { "${MPIRUN[@]}" "$BIN" eval "$@" >/dev/null; }

# A number from a JSON file: json_num FILE KEY.
json_num() { sed -n "s/.*\"$2\":[[:space:]]*\([0-9.eE+-]*\).*/\1/p" "$1" | head -n 1; }

# Formatting: pct 0.1234 -> 12.3%; dec3 0.1234 -> 0.123.
pct() { awk -v x="${1:-0}" 'BEGIN { printf "%.1f%%", 100 * x }'; }
dec3() { awk -v x="${1:-0}" 'BEGIN { printf "%.3f", x }'; }

# fit_classifier NAME RECIPE TRAIN.h5 TEST.h5 SEQ_LEN STEPS [train overrides...]:
# fine-tune into $OUT/NAME, then accuracy and macro-F1 on the whole TEST.h5
# into $OUT/NAME.json.
fit_classifier() {
  local name=$1 recipe=$2 data=$3 test=$4 seq=$5 steps=$6; shift 6
  train "$recipe" --data.train "$data" --seq_len "$seq" --steps "$steps" --out_dir $OUT/$name "$@"
  evaluate "$(last_ckpt $OUT/$name)" --data "$test" --split all --seq_len "$seq" --out $OUT/$name.json
}

# fit_sft NAME RECIPE TRAIN.h5 TEST.h5 SEQ_LEN STEPS GEN.jsonl MAX_NEW [train overrides...]:
# supervised fine-tuning into $OUT/NAME; the test answers' loss into
# $OUT/NAME.json; greedy answers to GEN.jsonl's questions (rendered with the
# sft template, as training saw them) scored against its references into
# $OUT/NAME-gen.json (metrics.py gen).
fit_sft() {
  local name=$1 recipe=$2 data=$3 test=$4 seq=$5 steps=$6 gen=$7 max_new=$8; shift 8
  train "$recipe" --data.train "$data" --seq_len "$seq" --steps "$steps" --out_dir $OUT/$name "$@"
  local ck; ck=$(last_ckpt $OUT/$name)
  evaluate "$ck" --data "$test" --split all --seq_len "$seq" --out $OUT/$name.json
  $PY -c 'import json, sys
for line in open(sys.argv[1]):
    print(json.dumps({"prompt": "<|user|>\n" + json.loads(line)["prompt"] + "\n<|assistant|>\n"}))' "$gen" \
      > $OUT/$name-prompts.jsonl
  "${MPIRUN[@]}" "$BIN" generate "$ck" --prompts $OUT/$name-prompts.jsonl --out $OUT/$name-gen.jsonl \
      --temperature 0 --max_new "$max_new" >/dev/null
  $PY jobs/industry/metrics.py gen "$gen" $OUT/$name-gen.jsonl > $OUT/$name-gen.json
}

# cpt NAME RECIPE INIT TEXT.h5 STEPS: continued pretraining of INIT on a domain's text.
cpt() {
  echo "-- continued pretraining of $3 on $4 ($5 steps)"
  train "$2" --init_from "$3" --data.train "$4" --steps "$5" --out_dir $OUT/$1
}

# Figures from the JSON files above: acc NAME, f1 NAME, num FILE KEY.
acc() { pct "$(json_num $OUT/$1.json accuracy)"; }
f1() { dec3 "$(json_num $OUT/$1.json macro_f1)"; }
num() { dec3 "$(json_num "$1" "$2")"; }

# The most frequent label of a {"label"} JSONL file: "FRACTION LABEL".
majority() {
  $PY -c 'import collections, json, sys
labels = [json.loads(l)["label"] for l in open(sys.argv[1])]
top, n = collections.Counter(labels).most_common(1)[0]
print(f"{n / len(labels):.4f} {top}")' "$1"
}

# Table rows, tab-separated, printed at the end by metrics.py table.
row() { local IFS=$'\t'; echo "$*" >> "$TABLE"; }
show_table() {
  echo; echo "== $1 ($(( $(date +%s) - T0 )) s in all)"
  $PY jobs/industry/metrics.py table "$TABLE"
}
