# Fault cases: a training run stopped by signals and time limits, diverging,
# misused on a cluster (sourced by tests/faults/run.sh).

# stopped_well D RC: "exit 75 with its last step saved" when the run exited 75
# and its newest checkpoint is the last step it logged
stopped_well() {
  local last; last=$(tail -n 1 "$1/metrics.jsonl" 2>/dev/null | sed -n 's/^{"step":\([0-9]*\),.*/\1/p')
  if [ "$2" = 75 ] && [ -n "$last" ] && [ "$(latest_step "$1")" = "$last" ]; then echo "exit 75 with its last step saved"
  else echo "exit $2, latest step $(latest_step "$1"), last logged step ${last:-none}"; fi
}
# resume_rest D: resume D to the end: "equal to ..." or what went wrong
resume_rest() {
  st 2 "$1.c.log" train tiny.yaml --out_dir "$1" --resume auto || { echo "resume failed: $(grep -m1 error "$1.c.log")"; return; }
  same_as_ref "$1"
}

# signal_at SIG WHERE: SIG to every rank mid-step (just after the save of step
# 10) or mid-save (the save of step 10 paused by the test hook).
signal_at() {
  local sig=$1 where=$2 d=sig-$1-$2 rc=0
  if [ "$where" = save ]; then
    SHARDTUNE_CKPT_TEST_PAUSE_MS=2000 st_bg 2 $d.b.log train tiny.yaml --out_dir $d
    wait_for "test hook: pausing" $d.b.log 60
  else
    st_bg 2 $d.b.log train tiny.yaml --out_dir $d
    wait_for "saved checkpoint .*step_00000010" $d.b.log 60
  fi
  kill -"$sig" $(ranks) 2>/dev/null
  wait "$PID" || rc=$?
  echo "$(stopped_well $d $rc); $(resume_rest $d)"
}
for sig in TERM USR1 INT; do
  add "signal-$sig-mid-step" 2 "exit 75 with its last step saved; equal to the uninterrupted run" "signal_at $sig step"
done
add signal-TERM-mid-save 2 "exit 75 with its last step saved; equal to the uninterrupted run" "signal_at TERM save"
add signal-USR1-mid-save 2 "exit 75 with its last step saved; equal to the uninterrupted run" "signal_at USR1 save"

# end_time: SLURM_JOB_END_TIME 25 s away, a save every 5 steps slowed to 3 s
# (the whole run would take 30 s and more): the run stops and saves while two
# steps and two saves (as timed) still fit: its last checkpoint is written
# before the end time.
end_time() {
  local d=endtime rc=0 t0; t0=$(date +%s)
  SLURM_JOB_END_TIME=$(( t0 + 25 )) SHARDTUNE_CKPT_TEST_PAUSE_MS=3000 \
    st 2 $d.b.log train tiny.yaml --out_dir $d --save_every 5 || rc=$?
  local late=$(( $(stat -c %Y "$d/ckpt/$(cat $d/ckpt/latest)" 2>/dev/null || echo 0) > t0 + 25 ))
  echo "$(stopped_well $d $rc)$([ $late = 1 ] && echo ' after the end time'); $(resume_rest $d)"
}
add end-time 2 "exit 75 with its last step saved; equal to the uninterrupted run" end_time

# default_interval: without save_every a run still saves by time (every 30
# minutes by default, says --help); with save_minutes 0.00001 (0.6 ms, less
# than any step takes) a short run saves after nearly every step, however
# fast the machine (0.005 minutes gave only 2 saves when 40 steps took 3 s).
default_interval() {
  local d=interval rc=0
  st 2 $d.log train tiny.yaml --out_dir $d --save_every 0 --save_minutes 0.00001 --steps 10 || rc=$?
  echo "default $(st 1 help.log train --help; sed -n 's/.*--save_minutes .*\[default: \([0-9.]*\)\]/\1/p' help.log);" \
       "$([ "$(grep -c 'saved checkpoint' $d.log)" -gt 2 ] && echo 'saves by time' || echo "exit $rc, $(grep -c 'saved checkpoint' $d.log) saves")"
}
add save-by-time 3 "default 30; saves by time" default_interval

# nonfinite: a learning rate of 1e6 makes the loss NaN within a few steps.
nonfinite() {
  local d=nan rc=0
  first_part $d 10 >/dev/null
  st 2 $d.b.log train tiny.yaml --out_dir $d --resume auto --optim.lr 1e6 || rc=$?
  local bad; bad=$(grep -ciE ':-?(nan|inf)' $d/metrics.jsonl)
  echo "$(says 1 'non-finite' $d.b.log $rc), $bad non-JSON lines, latest step $(latest_step $d)"
}
add nonfinite-stop 4 "exit 1, says /non-finite/, 0 non-JSON lines, latest step 10" nonfinite

# tokenizer: a byte-level dataset with a model whose tokenizer is llama2.c's.
tokenizer_mismatch() {
  local rc=0
  [ -f stories.h5 ] || st 1 conv.log convert "$ROOT/data/llama2c/stories260K.bin" --tokenizer "llama2c:$ROOT/data/llama2c/tok512.bin" --out stories.h5
  st 2 tokmix.log train tiny.yaml --out_dir tokmix --init_from stories.h5 --steps 2 || rc=$?
  says 1 'tokenizer' tokmix.log $rc
}
add tokenizer-mismatch 6 "exit 1, says /tokenizer/" tokenizer_mismatch

# metrics_once: a run resumed from an older checkpoint logs each step once.
metrics_once() {
  local d=metrics
  first_part $d 30 >/dev/null
  flip_byte $d/ckpt/step_00000030.h5 $(( $(stat -c %s $d/ckpt/step_00000030.h5) / 2 ))
  st 2 $d.c.log train tiny.yaml --out_dir $d --resume auto >/dev/null
  local dup; dup=$(sed -n 's/^{"step":\([0-9]*\),.*/\1/p' $d/metrics.jsonl | sort -n | uniq -d | wc -l)
  echo "resumed at step $(resumed_at $d.c.log), $dup steps logged twice"
}
add metrics-after-resume 10 "resumed at step 20, 0 steps logged twice" metrics_once

# run_lock: a second run into the same directory while the first runs.
run_lock() {
  local d=lock rc=0
  SHARDTUNE_CKPT_TEST_PAUSE_MS=3000 st_bg 2 $d.a.log train tiny.yaml --out_dir $d
  wait_for "test hook: pausing" $d.a.log 60
  local first=$PID
  st 2 $d.b.log train tiny.yaml --out_dir $d || rc=$?
  PID=$first; wait "$PID"; local rc1=$?
  echo "second: $(says 1 'in use|locked' $d.b.log $rc); first: exit $rc1"
}
add run-dir-lock 10 "second: exit 1, says /in use|locked/; first: exit 0" run_lock

# steps_changed: resuming with another `steps` (another LR schedule).
steps_changed() {
  local d=steps rc=0
  first_part $d 20 >/dev/null
  st 2 $d.b.log train tiny.yaml --out_dir $d --resume auto --steps 80 || rc=$?
  says 1 'steps' $d.b.log $rc
}
add steps-changed-on-resume 10 "exit 1, says /steps/" steps_changed

# finished: the same command again after the run has finished.
finished() {
  local rc=0
  cp -r ref fin
  st 2 fin.log train tiny.yaml --out_dir fin --resume auto || rc=$?
  echo "$(says 0 'already finished' fin.log $rc), $(diff -q <(losses ref) <(losses fin) >/dev/null && echo 'no new steps' || echo 'steps added')"
}
add resubmit-finished 10 "exit 0, says /already finished/, no new steps" finished

# val_dp: the validation loss before training on 1x1, dp 2 and tp 2.
val_dp() {
  st 1 val1.log train tiny.yaml --out_dir val1 --steps 0 >/dev/null
  st 2 val2.log train tiny.yaml --out_dir val2 --steps 0 >/dev/null
  st 2 val3.log train tiny.yaml --out_dir val3 --steps 0 --grid.tp 2 --grid.zero false >/dev/null
  local v; v=$(grep -h -o 'validation before training: loss [0-9.]*' val1.log val2.log val3.log | sort -u | wc -l)
  [ "$v" = 1 ] && echo "the same on every grid" || echo "$v different values: $(grep -h -o 'before training: loss [0-9.]*' val[123].log | tr '\n' ' ')"
}
add val-loss-any-grid 10 "the same on every grid" val_dp
