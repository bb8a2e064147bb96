#!/usr/bin/env bash
# make faults: shardtune stopped, killed, misconfigured or fed bad data (issue
# 13). Every case runs the real binary (2 MPI ranks unless it says otherwise)
# and prints one row: case | expected | got. A row whose got differs from its
# expected fails the suite, except cases marked known (their fix is not in
# yet), which fail the suite when they pass, so that the marks stay true.
#   tests/faults/run.sh [CASE-PATTERN]    (a grep -E pattern over case names)
# Work goes to a temporary folder (kept when a case fails, or with KEEP=1).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "$ROOT" && realpath "${BIN:-bin/shardtune}")
FAULTGEN=$(cd "$ROOT" && realpath "${FAULTGEN:-build/tests/faults/faultgen}")
ONLY=${1:-.}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# MFU is not what these cases look at: skip measuring the matmul rate in every run
export SHARDTUNE_PEAK_GFLOPS=10
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
MPIRUN=(mpirun --bind-to none --mca btl ^openib --mca btl_vader_single_copy_mechanism none)
W=$(mktemp -d /tmp/shardtune-faults.XXXXXX)
T0=$(date +%s)
cd "$W"
# the full-disk case mounts a tmpfs here; never leave it mounted
trap 'mountpoint -q "$W/disk" 2>/dev/null && umount "$W/disk"' EXIT

# ---- helpers ---------------------------------------------------------------

# st NP LOG ARGS...: shardtune ARGS on NP ranks (60 s at most), output in LOG
st() {
  local np=$1 log=$2; shift 2
  timeout -k 5 60 "${MPIRUN[@]}" -np "$np" "$BIN" "$@" > "$log" 2>&1
}
# st_bg NP LOG ARGS...: the same in the background; PID = mpirun's pid
st_bg() {
  local np=$1 log=$2; shift 2
  "${MPIRUN[@]}" -np "$np" "$BIN" "$@" > "$log" 2>&1 &
  PID=$!
}
# ranks: the pids of mpirun $PID's ranks (its children)
ranks() { pgrep -P "$PID" | tr '\n' ' '; }
# wait_for REGEX LOG [SECONDS]: until LOG has a line matching REGEX
wait_for() {
  local i
  for i in $(seq $(( ${3:-60} * 20 ))); do
    grep -qE "$1" "$2" 2>/dev/null && return 0
    kill -0 "$PID" 2>/dev/null || { grep -qE "$1" "$2"; return; }
    sleep 0.05
  done
  return 1
}
# says RC_WANT REGEX LOG RC: "exit RC_WANT, says /REGEX/" when the command
# exited RC_WANT, its output matches REGEX and no MPI abort shows; otherwise
# what happened, briefly.
says() {
  local want=$1 re=$2 log=$3 rc=$4
  if grep -qE "MPI_ABORT|MPI_ERR|An error occurred in MPI" "$log"; then
    echo "exit $rc after an MPI abort: $(grep -m1 -E 'MPI_ERR|MPI_ABORT' "$log" | cut -c1-60)"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "did not finish (killed by the timeout)"
  elif [ "$rc" = "$want" ] && grep -qE "$re" "$log"; then echo "exit $want, says /$re/"
  else echo "exit $rc: $(grep -iE 'error|warning' "$log" | grep -v 'stopping because' | head -n 1 | cut -c1-90 || true)"
  fi
}
# latest_step DIR: the step DIR/ckpt/latest names (none: 0)
latest_step() { sed -n 's/^step_0*\([0-9][0-9]*\)\.h5.*/\1/p' "$1/ckpt/latest" 2>/dev/null | grep . || echo 0; }
# losses DIR: "step loss" per step, the last line of each step
losses() {
  sed -n 's/^{"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$1/metrics.jsonl" 2>/dev/null |
    awk '{ l[$1] = $2 } END { for (s in l) print s, l[s] }' | sort -n
}
# same_as_ref DIR: "equal to the uninterrupted run" when DIR's per-step losses
# and last checkpoint (weights, moments) are the reference's, bitwise
same_as_ref() {
  local last; last=$(basename "$(ls ref/ckpt/step_*.h5 | tail -n 1)")
  if ! diff -q <(losses ref) <(losses "$1") >/dev/null; then echo "losses differ from the uninterrupted run"
  elif [ ! -f "$1/ckpt/$last" ]; then echo "no $last"
  elif ! h5diff -q "ref/ckpt/$last" "$1/ckpt/$last" /model /model ||
       ! h5diff -q "ref/ckpt/$last" "$1/ckpt/$last" /optim /optim; then echo "$last differs from the uninterrupted run"
  else echo "equal to the uninterrupted run"; fi
}
# resumed_at LOG: the step a run resumed at ("fresh" when it started anew)
resumed_at() {
  local s; s=$(sed -n 's/^resumed from .* at step \([0-9]*\)$/\1/p' "$1" | head -n 1)
  echo "${s:-fresh}"
}
# flip_byte FILE OFFSET: invert the bits of one byte in place
flip_byte() {
  local b; b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  printf "$(printf '\\%03o' $(( 255 - b )))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# ---- shared fixtures ---------------------------------------------------------

# A small model on banking77 text (byte tokens), 2 ranks (dp 2, ZeRO-1),
# 40 steps, a checkpoint every 10; `ref` is the uninterrupted run.
st 2 prep.log prepare --input "$ROOT/data/banking77/train.csv" --format text --text-col text --tokenizer byte \
    --out bank.h5 || { cat prep.log; exit 1; }
cat > tiny.yaml <<EOF
model: {family: llama, n_layer: 2, d_model: 64, n_head: 4, n_kv_head: 2, max_seq: 64}
data: {train: $W/bank.h5}
method: pretrain
seq_len: 64
batch_size: 4
global_batch: 8
steps: 40
optim: {lr: 2.0e-3, warmup_steps: 4}
grid: {zero: true}
save_every: 10
keep: 3
log_every: 10
eval_every: 20
eval_batches: 2
plot: false
EOF
st 2 ref.log train tiny.yaml --out_dir ref || { cat ref.log; exit 1; }

# ---- the cases -----------------------------------------------------------------

# add NAME ITEM EXPECTED 'FUNCTION ARGS' [known]: a case of issue 13's item
# ITEM; "known" marks a case whose fix is not in yet.
CASES=()
SEP=$'\x1f'   # between the fields of a case (regexes use |)
add() { CASES+=("$1$SEP$2$SEP$3$SEP$4$SEP${5:-}"); }
source "$ROOT/tests/faults/cases_ckpt.sh"
source "$ROOT/tests/faults/cases_run.sh"
source "$ROOT/tests/faults/cases_options.sh"
source "$ROOT/tests/faults/cases_inputs.sh"

pass=0 fail=0 n_known=0 ran=0
printf '%-26s | %-4s | %-62s | %s\n' case item expected got
printf '%s\n' "$(printf '%.0s-' $(seq 150))"
for c in "${CASES[@]}"; do
  IFS=$SEP read -r name item expected fn known <<< "$c"
  echo "$name" | grep -qE "$ONLY" || continue
  ran=$((ran + 1))
  t_case=$(date +%s)
  got=$(eval "$fn" 2>>"$W/cases.err")
  t_case=$(( $(date +%s) - t_case ))
  verdict=ok
  if [ "$got" = "$expected" ]; then
    if [ -n "$known" ]; then verdict="FIXED: drop its known mark"; fail=$((fail + 1))
    else pass=$((pass + 1)); fi
  elif [ -n "$known" ]; then verdict="known failure"; n_known=$((n_known + 1))
  else verdict=FAIL; fail=$((fail + 1)); fi
  printf '%-26s | %-4s | %-62s | %s  [%s, %d s]\n' "$name" "$item" "$expected" "$got" "$verdict" "$t_case"
done
echo "faults: $ran cases: $pass as expected, $n_known known failures, $fail failed in $(( $(date +%s) - T0 )) s (work in $W)"
if [ "$fail" = 0 ] && [ "${KEEP:-0}" != 1 ]; then cd / && rm -rf "$W"; fi
[ "$fail" = 0 ]
