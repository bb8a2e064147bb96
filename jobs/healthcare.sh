#!/usr/bin/env bash
# Healthcare: MedQuAD (16,407 answered NIH health questions), two tasks on a
# held-out test side split by document focus (jobs/industry/splits.py: 14,752
# train and 1,594 test pairs; no test answer occurs in train):
#   qtype  question-type classification from the question (16 types):
#          accuracy and macro-F1 on the whole test side
#   qa     question answering by SFT (answers cut to 400 characters): bits per
#          character of the test answers (tokenizer-independent), and ROUGE-L
#          of greedy answers to N_GEN test questions spread over the side
# each (a) from scratch, (b) from the shipped base, (c) from the base after
# continued pretraining on the MedQuAD train text, (d) LoRA (qtype), and from
# llama2.c's stories260K (general English) directly and after the same
# continued pretraining. 2 ranks; STEPS_QTYPE (100), STEPS_QA (80),
# CPT_STEPS (60), N_GEN (50) scale it. PREPARE_ONLY=1 prepares and stops.
source "$(dirname "$0")/industry/lib.sh"
OUT=runs/industry/healthcare
R=jobs/recipes/industry
STEPS_QTYPE=${STEPS_QTYPE:-100} STEPS_QA=${STEPS_QA:-80} CPT_STEPS=${CPT_STEPS:-60} N_GEN=${N_GEN:-50}
rm -rf $OUT && mkdir -p $OUT
TABLE=$OUT/table.tsv

echo "== split MedQuAD by focus, prepare with each base's tokenizer"
$PY jobs/industry/splits.py medquad $OUT "$N_GEN"
stories
for t in "sp4096 $BASE_TOK" "tok512 $STORIES_TOK"; do
  set -- $t
  Q=(--format classify --label-names $OUT/qtypes.json --tokenizer $2)
  prep --input $OUT/qtype-train.jsonl "${Q[@]}" --out $OUT/qtype-train-$1.h5
  prep --input $OUT/qtype-test.jsonl "${Q[@]}" --val-fraction 0 --out $OUT/qtype-test-$1.h5
  prep --input $OUT/qa-train.jsonl --format sft --tokenizer $2 --max-len 512 --out $OUT/qa-train-$1.h5
  prep --input $OUT/qa-test.jsonl --format sft --tokenizer $2 --max-len 512 --val-fraction 0 --out $OUT/qa-test-$1.h5
  prep --input $OUT/domain.jsonl --format text --tokenizer $2 --out $OUT/domain-$1.h5
done
[ "${PREPARE_ONLY:-0}" = 1 ] && exit 0

# qtype NAME TOKENIZER SEQ_LEN LABEL [train overrides...]: one table row.
qtype() {
  local name=qtype-$1 tok=$2 seq=$3 label=$4; shift 4
  echo "-- qtype: $label"
  fit_classifier $name $R/healthcare-qtype.yaml $OUT/qtype-train-$tok.h5 $OUT/qtype-test-$tok.h5 $seq \
      "$STEPS_QTYPE" "$@"
  row "qtype: $label" "$(acc $name)" "$(f1 $name)" "" ""
}
# qa NAME TOKENIZER SEQ_LEN MAX_NEW LABEL [train overrides...]: one table row.
qa() {
  local name=qa-$1 tok=$2 seq=$3 max_new=$4 label=$5; shift 5
  echo "-- qa: $label"
  fit_sft $name $R/healthcare-qa.yaml $OUT/qa-train-$tok.h5 $OUT/qa-test-$tok.h5 $seq "$STEPS_QA" \
      $OUT/qa-gen.jsonl $max_new "$@"
  row "qa: $label" "" "" "$($PY jobs/industry/metrics.py bpc $OUT/$name.json $OUT/qa-test.jsonl response)" \
      "$(num $OUT/$name-gen.json rouge_l)"
}

majority=$(majority $OUT/qtype-test.jsonl)
row "MedQuAD test side (1,594 pairs, split by focus)" "qtype accuracy" "qtype macro-F1" "qa bits/char" \
    "qa ROUGE-L ($N_GEN answers)"
row "majority type (${majority#* }) for every question" "$(pct "${majority% *}")" "-" "" ""
echo; echo "== continued pretraining"
cpt cpt-base $R/healthcare-cpt.yaml $BASE $OUT/domain-sp4096.h5 "$CPT_STEPS"
cpt cpt-stories $R/healthcare-cpt.yaml $STORIES $OUT/domain-tok512.h5 "$CPT_STEPS"
echo; echo "== question-type classification ($STEPS_QTYPE steps)"
qtype scratch sp4096 48 "(a) from scratch (the base's shape)" --init_from $BASE --init_skip '*'
qtype base sp4096 48 "(b) shipped base fine-tuned" --init_from $BASE
qtype cpt-base sp4096 48 "(c) shipped base + MedQuAD continued pretraining" --init_from "$(last_ckpt $OUT/cpt-base)"
qtype lora sp4096 48 "(d) shipped base frozen, LoRA rank 8 + head" --init_from $BASE --lora.rank 8 \
    --lora.targets all --optim.lr 3e-3
qtype stories tok512 96 "(b) stories260K fine-tuned" --init_from $STORIES
qtype cpt-stories tok512 96 "(c) stories260K + MedQuAD continued pretraining" \
    --init_from "$(last_ckpt $OUT/cpt-stories)"
echo; echo "== question answering by SFT ($STEPS_QA steps)"
qa scratch sp4096 192 128 "(a) from scratch (the base's shape)" --init_from $BASE --init_skip '*'
qa base sp4096 192 128 "(b) shipped base fine-tuned" --init_from $BASE
qa cpt-base sp4096 192 128 "(c) shipped base + MedQuAD continued pretraining" \
    --init_from "$(last_ckpt $OUT/cpt-base)"
qa stories tok512 384 256 "(b) stories260K fine-tuned" --init_from $STORIES
qa cpt-stories tok512 384 256 "(c) stories260K + MedQuAD continued pretraining" \
    --init_from "$(last_ckpt $OUT/cpt-stories)"
show_table "MedQuAD question type and question answering"
