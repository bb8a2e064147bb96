#!/usr/bin/env bash
# Banking: banking77 intent classification (77 intents; 10,003 train and
# 3,080 test queries, banking77's own split; validation: 10% of train),
# measured on the whole test split for each way of starting:
#   (a) from scratch (the shipped base's shape, fresh weights)
#   (b) the shipped base fine-tuned (full fine-tuning + a classification head)
#   (c) the shipped base after continued pretraining on the banking77
#       training queries, then fine-tuned (transfer in two steps)
#   (d) LoRA rank 8 on every projection + head, the base frozen
#   and llama2.c's stories260K (general English) directly and after the same
#   continued pretraining, and the previous byte-level base where present.
# 2 ranks; STEPS (fine-tuning, default 150) and CPT_STEPS (default 60) scale it.
# PREPARE_ONLY=1 prepares the datasets and stops (for sbatch jobs/finetune.sbatch
# jobs/recipes/industry/banking-classify.yaml on a cluster).
source "$(dirname "$0")/industry/lib.sh"
OUT=runs/industry/banking
R=jobs/recipes/industry
STEPS=${STEPS:-150} CPT_STEPS=${CPT_STEPS:-60}
OLD_BASE=data/base/shardtune-base-byte.h5
rm -rf $OUT && mkdir -p $OUT
TABLE=$OUT/table.tsv
L=(--label-names data/banking77/categories.json)

echo "== prepare banking77 with each base's tokenizer"
stories
toks=("sp4096 $BASE_TOK" "tok512 $STORIES_TOK")
[ -f $OLD_BASE ] && toks+=("byte byte")
for t in "${toks[@]}"; do
  set -- $t
  prep --input data/banking77/train.csv --format classify --label-col category "${L[@]}" --tokenizer $2 \
      --out $OUT/train-$1.h5
  prep --input data/banking77/test.csv --format classify --label-col category "${L[@]}" --tokenizer $2 \
      --val-fraction 0 --out $OUT/test-$1.h5
  prep --input data/banking77/train.csv --format text --tokenizer $2 --out $OUT/text-$1.h5
done
[ "${PREPARE_ONLY:-0}" = 1 ] && exit 0

# classify NAME TOKENIZER SEQ_LEN LABEL [train overrides...]: one table row.
classify() {
  local name=$1 tok=$2 seq=$3 label=$4; shift 4
  echo "-- $label"
  fit_classifier $name $R/banking-classify.yaml $OUT/train-$tok.h5 $OUT/test-$tok.h5 $seq "$STEPS" "$@"
  row "$label" "$(acc $name)" "$(f1 $name)"
}
row "banking77 test split (3,080 queries, 77 intents), $STEPS fine-tuning steps" "accuracy" "macro-F1"
row "chance (every intent has 40 test queries)" "$(pct "$(awk 'BEGIN { print 1 / 77 }')")" "-"
echo; echo "== fine-tuning"
classify scratch sp4096 64 "(a) from scratch (the base's shape and tokenizer, fresh weights)" --init_from $BASE \
    --init_skip '*'
classify base sp4096 64 "(b) shipped base (data/base, 3.2M) fine-tuned" --init_from $BASE
cpt cpt-base $R/banking-cpt.yaml $BASE $OUT/text-sp4096.h5 "$CPT_STEPS"
classify cpt-base-ft sp4096 64 "(c) shipped base + continued pretraining on the banking77 train queries, fine-tuned" \
    --init_from "$(last_ckpt $OUT/cpt-base)"
classify lora sp4096 64 "(d) shipped base frozen, LoRA rank 8 (all projections) + head" --init_from $BASE \
    --lora.rank 8 --lora.targets all --optim.lr 3e-3
classify stories tok512 128 "(b) stories260K (general English, 0.26M) fine-tuned" --init_from $STORIES
cpt cpt-stories $R/banking-cpt.yaml $STORIES $OUT/text-tok512.h5 "$CPT_STEPS"
classify cpt-stories-ft tok512 128 "(c) stories260K + continued pretraining on the banking77 train queries, fine-tuned" \
    --init_from "$(last_ckpt $OUT/cpt-stories)"
if [ -f $OLD_BASE ]; then
  classify byte byte 128 "(b) previous byte-level base (0.77M) fine-tuned" --init_from $OLD_BASE
fi
row "published: fine-tuned sentence encoders, full training data (Casanueva et al. 2020)" "~93-94%" "-"
show_table "banking77 intent classification"
