#!/usr/bin/env bash
# Legal: LegalBench's 38 CUAD contract-clause tasks ("does this clause ...?",
# Yes/No), few-shot as LegalBench means it: 6 labelled examples per task.
# Every variant answers by likelihood: each test row is scored twice
# (`shardtune score`: log p(" Yes" | prompt) and log p(" No" | prompt), the
# prompt "Clause: {clause}\nQuestion: {the task's question}\nAnswer:"), the
# likelier answer is the prediction. Metric: balanced accuracy per task and its
# mean over the 38 tasks, as LegalBench reports.
#   zero-shot     the base as it is, no training; also with contextual
#                 calibration (Zhao et al. 2021): each answer's log-probability
#                 less its log-probability for the content-free clause "N/A"
#   (d) per task  LoRA adapters on the frozen base from the task's 6 examples
#   (d) multi     one LoRA over all 38 tasks' 228 examples
#   (a) scratch   the base's shape with fresh weights, trained on the 228
#   (c) cpt       the base after continued pretraining on the 227 train
#                 clauses, then the multi-task LoRA
#   and stories260K (general English) zero-shot and with the multi-task LoRA.
# Test rows: test.tsv minus the rows whose clause is in any train.tsv, a
# sample of CUAD_TEST_PER_TASK (20) rows per task, half Yes and half No where
# the task has enough (jobs/industry/splits.py; 0 = all 17,502 rows).
# The TSVs are read with python3's csv module (tab delimiter, pandas-style
# quoting) and converted to JSONL for prepare and score.
# 2 cores; LORA_STEPS (20), MT_STEPS (80), CPT_STEPS (30) scale it; CUAD_TASKS
# (default: all 38) limits the per-task LoRAs to some tasks, for a quick try.
# PREPARE_ONLY=1 prepares and stops.
source "$(dirname "$0")/industry/lib.sh"
OUT=runs/industry/legal
R=jobs/recipes/industry
PER_TASK=${CUAD_TEST_PER_TASK:-20} LORA_STEPS=${LORA_STEPS:-20} MT_STEPS=${MT_STEPS:-80} CPT_STEPS=${CPT_STEPS:-30}
rm -rf $OUT && mkdir -p $OUT
TABLE=$OUT/table.tsv
TASKS=${CUAD_TASKS:-$(ls -d data/legalbench-cuad/cuad_* | xargs -n 1 basename)}   # CUAD_TASKS: a subset, for a quick try

echo "== CUAD: train rows, test sample, prepare with each base's tokenizer"
$PY jobs/industry/splits.py cuad $OUT "$PER_TASK" | grep -v '/tasks/'
stories
P=(--format sft --template plain --val-fraction 0)
for t in "sp4096 $BASE_TOK 256" "tok512 $STORIES_TOK 512"; do
  set -- $t
  prep --input $OUT/train.jsonl "${P[@]}" --tokenizer $2 --max-len $3 --out $OUT/train-$1.h5
  prep --input $OUT/domain.jsonl --format text --tokenizer $2 --out $OUT/domain-$1.h5
done
for task in $TASKS; do
  "$BIN" prepare --force --input $OUT/tasks/$task/train.jsonl "${P[@]}" --tokenizer $BASE_TOK --max-len 256 \
      --out $OUT/tasks/$task/train-sp4096.h5 >/dev/null
done
[ "${PREPARE_ONLY:-0}" = 1 ] && exit 0

# score_both CKPT CANDIDATES OUT SEQ_LEN: score runs on one rank, so the two
# halves of the candidates (Yes/No pairs kept together) are scored at once.
score_both() {
  local n half; n=$(wc -l < "$2"); half=$(( (n / 4) * 2 ))
  head -n $half "$2" > "$3.a"; tail -n +$(( half + 1 )) "$2" > "$3.b"
  "$BIN" score "$1" --input "$3.a" --out "$3.a.out" --template plain --seq_len "$4" --batch_size 16 >/dev/null &
  "$BIN" score "$1" --input "$3.b" --out "$3.b.out" --template plain --seq_len "$4" --batch_size 16 >/dev/null
  wait $!
  cat "$3.a.out" "$3.b.out" > "$3"
  rm -f "$3.a" "$3.b" "$3.a.out" "$3.b.out"
}
# cuad_row NAME LABEL: balanced accuracy of $OUT/NAME-scored.jsonl as a table row.
cuad_row() {
  $PY jobs/industry/metrics.py cuad $OUT/$1-scored.jsonl > $OUT/$1.json
  row "$2" "$(num $OUT/$1.json mean)" "$(json_num $OUT/$1.json rows)"
}
# lora_task TASK: LoRA from the task's 6 examples (1 rank), then its test rows scored.
lora_task() {
  local d=$OUT/tasks/$1
  "$BIN" train $R/legal-lora.yaml --init_from $BASE --data.train $d/train-sp4096.h5 --batch_size 6 \
      --global_batch 6 --steps "$LORA_STEPS" --out_dir $d/lora --plot false > $d/train.log
  "$BIN" score "$(last_ckpt $d/lora)" --input $d/candidates.jsonl --out $d/scored.jsonl --template plain \
      --seq_len 256 --batch_size 16 >/dev/null
  rm -rf $d/lora/ckpt
}

row "CUAD, 38 tasks, $(( $(wc -l < $OUT/candidates.jsonl) / 2 - 38 )) held-out test rows" "mean balanced accuracy" "rows"
row "chance, or one answer for every clause" "0.500" "-"
echo; echo "== zero-shot: the likelier answer, no training"
score_both $BASE $OUT/candidates.jsonl $OUT/zero-base-scored.jsonl 256
cuad_row zero-base "shipped base, zero-shot"
row "shipped base, zero-shot, contextual calibration (less the answers' log-probabilities for the clause \"N/A\")" \
    "$(num $OUT/zero-base.json mean_calibrated)" "$(json_num $OUT/zero-base.json rows)"
score_both $STORIES $OUT/candidates.jsonl $OUT/zero-stories-scored.jsonl 512
cuad_row zero-stories "stories260K, zero-shot"
row "stories260K, zero-shot, contextual calibration" "$(num $OUT/zero-stories.json mean_calibrated)" \
    "$(json_num $OUT/zero-stories.json rows)"

echo; echo "== (d) LoRA per task from its 6 examples ($LORA_STEPS steps each, two tasks at a time)"
pids=()   # waited for in launch order, so that a failing task stops the script
for task in $TASKS; do
  lora_task $task &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
for task in $TASKS; do cat $OUT/tasks/$task/scored.jsonl; done > $OUT/per-task-lora-scored.jsonl
cuad_row per-task-lora "(d) shipped base + LoRA per task (6 examples each)"

echo; echo "== (d) one LoRA over the 228 examples of all tasks ($MT_STEPS steps)"
train $R/legal-lora.yaml --init_from $BASE --steps "$MT_STEPS" --out_dir $OUT/multitask-lora-base
score_both "$(last_ckpt $OUT/multitask-lora-base)" $OUT/candidates.jsonl $OUT/multitask-lora-scored.jsonl 256
cuad_row multitask-lora "(d) shipped base + one multi-task LoRA (228 examples)"

echo; echo "== (a) from scratch on the 228 examples ($MT_STEPS steps, full training)"
train $R/legal-lora.yaml --init_from $BASE --steps "$MT_STEPS" --init_skip '*' --lora.rank 0 --optim.lr 1e-3 --out_dir $OUT/scratch
score_both "$(last_ckpt $OUT/scratch)" $OUT/candidates.jsonl $OUT/scratch-scored.jsonl 256
cuad_row scratch "(a) from scratch (the base's shape), trained on the 228 examples"

echo; echo "== (c) continued pretraining on the train clauses, then the multi-task LoRA"
cpt cpt-base $R/legal-cpt.yaml $BASE $OUT/domain-sp4096.h5 "$CPT_STEPS"
train $R/legal-lora.yaml --steps "$MT_STEPS" --init_from "$(last_ckpt $OUT/cpt-base)" --out_dir $OUT/cpt-lora
score_both "$(last_ckpt $OUT/cpt-lora)" $OUT/candidates.jsonl $OUT/cpt-lora-scored.jsonl 256
cuad_row cpt-lora "(c) shipped base + continued pretraining on the train clauses + multi-task LoRA"

echo; echo "== stories260K + the multi-task LoRA"
train $R/legal-lora.yaml --steps "$MT_STEPS" --init_from $STORIES --data.train $OUT/train-tok512.h5 --seq_len 512 \
    --out_dir $OUT/multitask-lora-stories
score_both "$(last_ckpt $OUT/multitask-lora-stories)" $OUT/candidates.jsonl $OUT/multitask-stories-scored.jsonl 512
cuad_row multitask-stories "stories260K + one multi-task LoRA (228 examples)"
row "published: large models few-shot (LegalBench, Guha et al. 2023)" "~0.84-0.87" "-"

$PY jobs/industry/metrics.py cuad_tasks $OUT/table-tasks.tsv zero-shot=$OUT/zero-base.json \
    per-task-lora=$OUT/per-task-lora.json multitask-lora=$OUT/multitask-lora.json scratch=$OUT/scratch.json \
    cpt-lora=$OUT/cpt-lora.json stories-multitask=$OUT/multitask-stories.json
echo; echo "== balanced accuracy per task"
$PY jobs/industry/metrics.py table $OUT/table-tasks.tsv
show_table "LegalBench CUAD, balanced accuracy"
