#!/usr/bin/env bash
# make slurm-test: the job scripts on a real Slurm (Debian slurm-wlm 22.05 +
# munge), two nodes on this host (tests/slurm/cluster.sh), as root.
#
#   1. prepare.sbatch on 1 node (2 ranks) and on 2 nodes (1 rank each): the
#      same dataset;
#   2. finetune.sbatch, uninterrupted: the reference; tp 2 over 2 nodes is
#      warned about (on 1 node it is not);
#   3. cancelled mid-run (scancel) and submitted again, on 1 and on 2 nodes;
#   4. stopped for the time limit (USR1 or SLURM_JOB_END_TIME): on 1 node
#      submitted again, on 2 nodes requeued by the job script itself;
# every interrupted run must save its last step and exit 75, and end with the
# reference's per-step losses and its final weights and AdamW moments,
# bitwise. Jobs are submitted from a
# folder outside the repository with an absolute script path, as a user would.
# Keeps everything under one temporary folder; tears the cluster down on any
# exit. KEEP=1 keeps the folder.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-bin/shardtune}
BIN=$(cd "$ROOT" && realpath "$BIN")
source "$ROOT/tests/slurm/cluster.sh"

[ "$(id -u)" = 0 ] || { echo "slurm-test: needs root (slurmd runs jobs as their user)"; exit 1; }
T=$(mktemp -d /tmp/shardtune-slurm.XXXXXX)
t0=$(date +%s)
fail() { echo "slurm-test: FAILED: $*" >&2; exit 1; }
cleanup() {
  local rc=$?
  slurm_down "$T/cluster"
  if [ $rc -ne 0 ]; then
    echo "---- logs (kept in $T)"; tail -n 30 "$T"/work/*.out "$T"/cluster/log/slurmctld.log 2>/dev/null || true
  elif [ "${KEEP:-0}" != 1 ]; then rm -rf "$T"; fi
  echo "slurm-test: $([ $rc = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - t0 )) s"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

slurm_up "$T/cluster"
echo "slurm-test: cluster up: $(sinfo -h -N -o '%N:%t' | tr '\n' ' ')"
mkdir -p "$T/work" && cd "$T/work"
# Jobs inherit this environment (sbatch --export=ALL). Open MPI between two
# "nodes" on one host: TCP, as between real nodes.
export OMPI_MCA_btl=self,tcp OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# No binding of OpenMP threads either (each rank's mask is the whole host here,
# so OMP_PROC_BIND=close would put every rank on core 0).
export OMP_PROC_BIND=false
# The scripts find bin/shardtune themselves; another build is named to them.
[ "$BIN" = "$ROOT/bin/shardtune" ] || export SHARDTUNE_BIN=$BIN
ONE=(-N 1 --ntasks-per-node=2 -c 1)   # 1 node x 2 ranks
TWO=(-N 2 --ntasks-per-node=1 -c 1)   # 2 nodes x 1 rank

field() { scontrol show job "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
# wait_job ID...: until every job has ended; fails on a job that is not
# COMPLETED unless EXPECT names its state.
wait_job() {
  local id s
  for id in "$@"; do
    for _ in $(seq 300); do
      s=$(field "$id" JobState)
      case "$s" in PENDING|RUNNING|COMPLETING|CONFIGURING|REQUEUED|"") sleep 1 ;; *) break ;; esac
    done
    [ "$s" = "${EXPECT:-COMPLETED}" ] ||
      fail "job $id ended $s (exit $(field "$id" ExitCode)), expected ${EXPECT:-COMPLETED}: $(ls "$T"/work/*"-${id}_"*.out)"
  done
}
# latest_step DIR: the step DIR/ckpt/latest names (0 = none)
latest_step() { sed -n 's/^step_0*\([0-9][0-9]*\)\.h5.*/\1/p' "$1/ckpt/latest" 2>/dev/null | grep . || echo 0; }
# cancel_at STEP DIR JOB [DIR JOB]...: scancel each job once its DIR has saved STEP
cancel_at() {
  local step=$1 d j; shift
  local -a left=("$@") next
  for _ in $(seq 600); do
    next=()
    while [ ${#left[@]} -gt 0 ]; do
      d=${left[0]} j=${left[1]} left=("${left[@]:2}")
      if [ "$(latest_step "$d")" -ge "$step" ]; then scancel "$j"; else next+=("$d" "$j"); fi
    done
    left=("${next[@]}")
    [ ${#left[@]} = 0 ] && return 0
    sleep 0.2
  done
  fail "${left[*]}: never saved step $step"
}
# stopped_mid_run DIR: the interrupted job left a checkpoint before the end,
# of the last step it logged (nothing finished was lost)
stopped_mid_run() {
  local s last
  s=$(latest_step "$1")
  last=$(tail -n 1 "$1/metrics.jsonl" | sed -n 's/^{"step":\([0-9]*\),.*/\1/p')
  [ "$s" -gt 0 ] && [ "$s" -lt 120 ] || fail "$1: the interrupted job did not stop mid-run (latest: step $s)"
  [ "$s" = "$last" ] || fail "$1: stopped at step $last but its last checkpoint is step $s"
  echo "  $1: stopped with its last step ($s) saved"
}
# resumed JOB...: each job's log says it resumed from a checkpoint
resumed() {
  local j
  for j in "$@"; do grep -q "^resumed from" shardtune-"$j"_*.out || fail "job $j did not resume"; done
}
# losses DIR: "step loss" per step, the last line of each step (a resumed run
# logs again the steps after its checkpoint)
losses() {
  sed -n 's/^{"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/p' "$1/metrics.jsonl" |
    awk '{ l[$1] = $2 } END { for (s in l) print s, l[s] }' | sort -n
}
# same_run DIR: the reference's losses, and its last checkpoint's weights and
# moments, bitwise (h5diff compares values exactly)
same_run() {
  diff <(losses ref) <(losses "$1") > "$1.lossdiff" || fail "$1: losses differ from the reference ($1.lossdiff)"
  local last; last=$(basename "$(ls ref/ckpt/step_*.h5 | tail -n 1)")
  [ -f "$1/ckpt/$last" ] || fail "$1: no $last"
  h5diff -q "ref/ckpt/$last" "$1/ckpt/$last" /model /model || fail "$1: weights differ from the reference"
  h5diff -q "ref/ckpt/$last" "$1/ckpt/$last" /optim /optim || fail "$1: AdamW moments differ from the reference"
  echo "  $1: $(losses "$1" | wc -l) steps, losses and $last equal to the reference"
}

echo "== 1. prepare.sbatch on 1 node and on 2 nodes ($(( $(date +%s) - t0 )) s)"
p1=$(sbatch --parsable "${ONE[@]}" "$ROOT/jobs/prepare.sbatch" "$ROOT/data/banking77/train.csv" bank1.h5 \
       --format text --text-col text --tokenizer byte)
p2=$(sbatch --parsable "${TWO[@]}" "$ROOT/jobs/prepare.sbatch" "$ROOT/data/banking77/train.csv" bank2.h5 \
       --format text --text-col text --tokenizer byte)
wait_job "$p1" "$p2"
for d in /tokens /offsets /loss_mask /split /tokenizer; do
  h5diff -q bank1.h5 bank2.h5 "$d" "$d" || fail "prepare: $d differs between 1 and 2 nodes"
done
ls shardtune-prepare-"$p1"_*.out >/dev/null || fail "prepare: no log named %x-%A_%a.out"
echo "  bank1.h5 = bank2.h5 ($(grep -m1 -o '[0-9,]* docs' shardtune-prepare-"$p1"_*.out || echo ok))"

# A small model, 2 ranks (dp 2, ZeRO-1); every 10th step saved.
cat > tiny.yaml <<EOF
model: {family: llama, n_layer: 2, d_model: 64, n_head: 4, n_kv_head: 2, max_seq: 64}
data: {train: $T/work/bank1.h5}
method: pretrain
seq_len: 64
batch_size: 4
global_batch: 8
steps: 120
optim: {lr: 2.0e-3, warmup_steps: 10}
grid: {zero: true}
save_every: 10
keep: 2
log_every: 10
eval_every: 40
eval_batches: 2
plot: false
EOF

echo "== 2. finetune.sbatch, uninterrupted (the reference) ($(( $(date +%s) - t0 )) s)"
r=$(sbatch --parsable "${ONE[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml --out_dir ref)
wait_job "$r"
grep -q "^step *120/120" shardtune-"$r"_*.out || fail "reference: no step 120 in its log"

echo "== 2b. tp 2 on 1 node, and split over 2 nodes (warned about) ($(( $(date +%s) - t0 )) s)"
w1=$(sbatch --parsable "${ONE[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml --out_dir tp1 --steps 2 --grid.tp 2)
w2=$(sbatch --parsable "${TWO[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml --out_dir tp2 --steps 2 --grid.tp 2)
wait_job "$w1" "$w2"
! grep -q "tensor-parallel group spans" shardtune-"$w1"_*.out || fail "job $w1: tp on one node was warned about"
grep -q "tensor-parallel group spans 2 nodes" shardtune-"$w2"_*.out || fail "job $w2: tp over 2 nodes was not warned about"
echo "  tp over 2 nodes warned about, on 1 node not"

echo "== 3. cancelled mid-run, then submitted again (1 node, 2 nodes) ($(( $(date +%s) - t0 )) s)"
# Saves slowed down by the checkpoint's test hook (each sleeps 1 s after its
# first tensor), so that the runs last and a cancel may come mid-save.
c1=$(SHARDTUNE_CKPT_TEST_PAUSE_MS=1000 sbatch --parsable "${ONE[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml \
       --out_dir cancel1)
c2=$(SHARDTUNE_CKPT_TEST_PAUSE_MS=1000 sbatch --parsable "${TWO[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml \
       --out_dir cancel2)
cancel_at 30 cancel1 "$c1" cancel2 "$c2"
EXPECT=CANCELLED wait_job "$c1" "$c2"
for c in "$c1" "$c2"; do
  # TERM from slurmstepd, or USR1 from the batch shell that got TERM: whichever reaches the ranks first
  grep -qE "^stopping after step [0-9]+ on SIG(TERM|USR1)" shardtune-"$c"_*.out || fail "job $c: shardtune did not stop on the cancel"
  grep -q "job script: got SIGTERM" shardtune-"$c"_*.out || fail "job $c: the job script did not get SIGTERM"
done
stopped_mid_run cancel1; stopped_mid_run cancel2
c1b=$(sbatch --parsable "${ONE[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml --out_dir cancel1)
c2b=$(sbatch --parsable "${TWO[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml --out_dir cancel2)
wait_job "$c1b" "$c2b"
resumed "$c1b" "$c2b"
same_run cancel1
same_run cancel2

echo "== 4. the time limit (1 node: submitted again; 2 nodes: SHARDTUNE_REQUEUE=1) ($(( $(date +%s) - t0 )) s)"
# --time 1 minute with the warning 45 s before the end: slurmctld checks time
# limits every 30 s, so the warning comes 15-45 s after the start, unless
# shardtune stops first for SLURM_JOB_END_TIME (which the job script sets on
# Slurm 22.05). Saves are slowed down by the checkpoint's test hook (each
# sleeps 5 s) so that the run has saved step 10 by then and is still running;
# the requeued run goes without the pause (a wrapper drops it on a restart).
LIMIT=(--time=1 --signal=B:USR1@45)
printf '#!/bin/bash\n[ -n "${SLURM_RESTART_COUNT:-}" ] && unset SHARDTUNE_CKPT_TEST_PAUSE_MS\nexec "%s" "$@"\n' \
  "$BIN" > slow-first.sh
chmod +x slow-first.sh
l1=$(SHARDTUNE_CKPT_TEST_PAUSE_MS=5000 sbatch --parsable "${ONE[@]}" "${LIMIT[@]}" "$ROOT/jobs/finetune.sbatch" \
       tiny.yaml --out_dir limit1)
l2=$(SHARDTUNE_CKPT_TEST_PAUSE_MS=5000 SHARDTUNE_REQUEUE=1 SHARDTUNE_BIN=$T/work/slow-first.sh \
       sbatch --parsable "${TWO[@]}" "${LIMIT[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml --out_dir limit2)
EXPECT=FAILED wait_job "$l1"
[ "$(field "$l1" ExitCode)" = 75:0 ] || fail "job $l1 ended with $(field "$l1" ExitCode), expected 75:0 (stopped, saved)"
grep -qE "^stopping after step [0-9]+ on (SIGUSR1|the time limit)" shardtune-"$l1"_*.out ||
  fail "job $l1: shardtune did not stop for the time limit"
stopped_mid_run limit1
l1b=$(sbatch --parsable "${ONE[@]}" "$ROOT/jobs/finetune.sbatch" tiny.yaml --out_dir limit1)
# the requeued job waits for its BeginTime (Slurm holds requeued batch jobs
# about 2 minutes): release it now, with room for the rest of the run
for _ in $(seq 300); do
  [ "$(field "$l2" Restarts)" = 1 ] && [ "$(field "$l2" JobState)" = PENDING ] && break
  sleep 0.5
done
[ "$(field "$l2" Restarts)" = 1 ] || fail "job $l2 was not requeued (state $(field "$l2" JobState))"
grep -q "requeueing job $l2" shardtune-"$l2"_*.out || fail "job $l2: the script did not say it requeued"
scontrol update JobId="$l2" StartTime=now TimeLimit=5
wait_job "$l1b" "$l2"
resumed "$l1b" "$l2"
same_run limit1
same_run limit2
