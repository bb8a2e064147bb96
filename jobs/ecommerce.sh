#!/usr/bin/env bash
# E-commerce / customer support: Bitext (4,514 customer messages, 27 intents,
# reference answers with {{Placeholder}} slots), held-out test side by a
# seed-free split of the messages (jobs/industry/splits.py: 4,076 train, 438
# test), two tasks:
#   intent  intent classification: accuracy and macro-F1 on the whole test side
#   sft     answering as the references do: bits per character of the test
#           answers, and for greedy answers to N_GEN test messages spread over
#           the side, the share of the reference's {{Placeholder}} slots kept
#           verbatim and ROUGE-L against the reference
# each (a) from scratch, (b) from the shipped base, (c) from the base after
# continued pretraining on the Bitext train text, (d) LoRA (intent), and from
# llama2.c's stories260K directly and after the same continued pretraining.
# 2 ranks; STEPS_INTENT (100), STEPS_SFT (60), CPT_STEPS (60), N_GEN (40)
# scale it. PREPARE_ONLY=1 prepares and stops. (The RLHF recipes,
# jobs/rlhf-bitext.sh and rlhf-round.sh, hold out the same test side.)
source "$(dirname "$0")/industry/lib.sh"
OUT=runs/industry/ecommerce
R=jobs/recipes/industry
STEPS_INTENT=${STEPS_INTENT:-100} STEPS_SFT=${STEPS_SFT:-60} CPT_STEPS=${CPT_STEPS:-60} N_GEN=${N_GEN:-40}
rm -rf $OUT && mkdir -p $OUT
TABLE=$OUT/table.tsv

echo "== split Bitext by message, prepare with each base's tokenizer"
$PY jobs/industry/splits.py bitext $OUT "$N_GEN"
stories
for t in "sp4096 $BASE_TOK 256" "tok512 $STORIES_TOK 512"; do
  set -- $t
  I=(--format classify --label-names $OUT/intents.json --tokenizer $2)
  prep --input $OUT/intent-train.jsonl "${I[@]}" --out $OUT/intent-train-$1.h5
  prep --input $OUT/intent-test.jsonl "${I[@]}" --val-fraction 0 --out $OUT/intent-test-$1.h5
  prep --input $OUT/sft-train.jsonl --format sft --tokenizer $2 --max-len $3 --out $OUT/sft-train-$1.h5
  prep --input $OUT/sft-test.jsonl --format sft --tokenizer $2 --max-len $3 --val-fraction 0 --out $OUT/sft-test-$1.h5
  prep --input $OUT/domain.jsonl --format text --tokenizer $2 --out $OUT/domain-$1.h5
done
[ "${PREPARE_ONLY:-0}" = 1 ] && exit 0

# intent NAME TOKENIZER SEQ_LEN LABEL [train overrides...]: one table row.
intent() {
  local name=intent-$1 tok=$2 seq=$3 label=$4; shift 4
  echo "-- intent: $label"
  fit_classifier $name $R/ecommerce-intent.yaml $OUT/intent-train-$tok.h5 $OUT/intent-test-$tok.h5 $seq \
      "$STEPS_INTENT" "$@"
  row "intent: $label" "$(acc $name)" "$(f1 $name)" "" "" ""
}
# sft NAME TOKENIZER SEQ_LEN MAX_NEW LABEL [train overrides...]: one table row.
sft() {
  local name=sft-$1 tok=$2 seq=$3 max_new=$4 label=$5; shift 5
  echo "-- sft: $label"
  fit_sft $name $R/ecommerce-sft.yaml $OUT/sft-train-$tok.h5 $OUT/sft-test-$tok.h5 $seq "$STEPS_SFT" \
      $OUT/sft-gen.jsonl $max_new "$@"
  row "sft: $label" "" "" "$($PY jobs/industry/metrics.py bpc $OUT/$name.json $OUT/sft-test.jsonl response)" \
      "$(pct "$(json_num $OUT/$name-gen.json placeholder_retention)")" "$(num $OUT/$name-gen.json rouge_l)"
}

majority=$(majority $OUT/intent-test.jsonl)
row "Bitext test side (438 messages)" "intent accuracy" "intent macro-F1" "sft bits/char" \
    "sft slots kept ($N_GEN answers)" "sft ROUGE-L"
row "majority intent (${majority#* }) for every message" "$(pct "${majority% *}")" "-" "" "" ""
echo; echo "== continued pretraining"
cpt cpt-base $R/ecommerce-cpt.yaml $BASE $OUT/domain-sp4096.h5 "$CPT_STEPS"
cpt cpt-stories $R/ecommerce-cpt.yaml $STORIES $OUT/domain-tok512.h5 "$CPT_STEPS"
echo; echo "== intent classification ($STEPS_INTENT steps)"
intent scratch sp4096 48 "(a) from scratch (the base's shape)" --init_from $BASE --init_skip '*'
intent base sp4096 48 "(b) shipped base fine-tuned" --init_from $BASE
intent cpt-base sp4096 48 "(c) shipped base + Bitext continued pretraining" --init_from "$(last_ckpt $OUT/cpt-base)"
intent lora sp4096 48 "(d) shipped base frozen, LoRA rank 8 + head" --init_from $BASE --lora.rank 8 \
    --lora.targets all --optim.lr 3e-3
intent stories tok512 96 "(b) stories260K fine-tuned" --init_from $STORIES
intent cpt-stories tok512 96 "(c) stories260K + Bitext continued pretraining" \
    --init_from "$(last_ckpt $OUT/cpt-stories)"
echo; echo "== answers by SFT ($STEPS_SFT steps)"
sft scratch sp4096 256 192 "(a) from scratch (the base's shape)" --init_from $BASE --init_skip '*'
sft base sp4096 256 192 "(b) shipped base fine-tuned" --init_from $BASE
sft cpt-base sp4096 256 192 "(c) shipped base + Bitext continued pretraining" \
    --init_from "$(last_ckpt $OUT/cpt-base)"
sft stories tok512 512 400 "(b) stories260K fine-tuned" --init_from $STORIES
sft cpt-stories tok512 512 400 "(c) stories260K + Bitext continued pretraining" \
    --init_from "$(last_ckpt $OUT/cpt-stories)"
show_table "Bitext intent classification and answers"
