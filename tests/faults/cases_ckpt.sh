# Fault cases: checkpoints killed, failed, out of space, damaged (sourced by
# tests/faults/run.sh, which provides st, st_bg, ranks, says, latest_step,
# same_as_ref, resumed_at, flip_byte and the tiny.yaml run `ref`).

# first_part DIR STEP: a run of tiny.yaml that stops (with a checkpoint) at STEP
first_part() { st 2 "$1.a.log" train tiny.yaml --out_dir "$1" --stop_after "$2" || echo "first part failed"; }

# kill9 PHASE: a run resumed at step 20 is killed (-9, every rank) while it
# saves step 30, paused at PHASE of the save; then resumed to the end.
kill9() {
  local d=kill-$1 err
  err=$(first_part "$d" 20); [ -n "$err" ] && { echo "$err"; return; }
  SHARDTUNE_CKPT_TEST_PAUSE_AT=$1 SHARDTUNE_CKPT_TEST_PAUSE_MS=60000 \
    st_bg 2 "$d.b.log" train tiny.yaml --out_dir "$d" --resume auto --stop_after 30
  if ! wait_for "test hook: pausing" "$d.b.log" 60; then kill -9 $(ranks) 2>/dev/null; wait "$PID"; echo "never paused"; return; fi
  kill -9 $(ranks); wait "$PID" 2>/dev/null
  st 2 "$d.c.log" train tiny.yaml --out_dir "$d" --resume auto || { echo "resume failed: $(grep -m1 error "$d.c.log")"; return; }
  echo "resumed at step $(resumed_at "$d.c.log"), $(same_as_ref "$d")"
}
for phase in tensor checksums closed renamed latest; do
  add "kill9-save-$phase" 2 "resumed at step 20, equal to the uninterrupted run" "kill9 $phase"
done
# (metrics.jsonl got step 30 after its save: killed in between, it never did)
add kill9-save-prune 10 "resumed at step 30, equal to the uninterrupted run" "kill9 prune"

# fail_after: an I/O error injected while step 30 is written.
fail_after() {
  local d=failafter err rc=0
  err=$(first_part $d 20); [ -n "$err" ] && { echo "$err"; return; }
  SHARDTUNE_CKPT_TEST_FAIL_AFTER=2 st 2 $d.b.log train tiny.yaml --out_dir $d --resume auto --stop_after 30 || rc=$?
  echo "$(says 1 'injected failure' $d.b.log $rc), latest step $(latest_step $d), $(ls $d/ckpt | grep -c tmp) tmp files"
}
add save-io-error 2 "exit 1, says /injected failure/, latest step 20, 0 tmp files" fail_after

# full_disk: the run directory on a tmpfs with room for two checkpoints and a
# half; the third save runs out of space.
full_disk() {
  [ "$(id -u)" = 0 ] || { echo "skipped: mounting a tmpfs needs root"; return; }
  local d=disk/run size rc=0
  size=$(stat -c %s "$(ls ref/ckpt/step_*.h5 | head -n 1)")
  mkdir -p disk && mount -t tmpfs -o size=$(( size * 5 / 2 / 1024 ))k shardtune-faults disk || { echo "mount failed"; return; }
  st 2 disk.log train tiny.yaml --out_dir $d --keep 0 || rc=$?
  local got
  got="$(says 1 'No space left on device' disk.log $rc), latest step $(latest_step $d), $(ls $d/ckpt | grep -c tmp) tmp files"
  umount disk
  echo "$got"
}
add disk-full 2 "exit 1, says /No space left on device/, latest step 20, 0 tmp files" full_disk

# A flipped byte in the middle of the newest checkpoint (tensor data).
flip_newest() {
  local d=flip1 err f
  err=$(first_part $d 30); [ -n "$err" ] && { echo "$err"; return; }
  f=$d/ckpt/step_00000030.h5
  flip_byte $f $(( $(stat -c %s $f) / 2 ))
  st 2 $d.c.log train tiny.yaml --out_dir $d --resume auto || { echo "resume failed: $(grep -m1 error $d.c.log)"; return; }
  echo "$(grep -c 'skipping checkpoint.*step_00000030' $d.c.log) warning, resumed at step $(resumed_at $d.c.log), $(same_as_ref $d)"
}
add flip-newest 5 "1 warning, resumed at step 20, equal to the uninterrupted run" flip_newest

# A flipped byte in every checkpoint: refuse, name them, delete nothing.
flip_all() {
  local d=flip2 err f rc=0
  err=$(first_part $d 30); [ -n "$err" ] && { echo "$err"; return; }
  for f in $d/ckpt/step_*.h5; do flip_byte $f $(( $(stat -c %s $f) / 2 )); done
  st 2 $d.c.log train tiny.yaml --out_dir $d --resume auto || rc=$?
  echo "$(says 1 'no checkpoint .* verifies' $d.c.log $rc), names $(grep -oE 'step_000000[123]0.h5' $d.c.log | sort -u | wc -l) of 3, $(ls $d/ckpt/step_*.h5 | wc -l) left"
}
add flip-all 5 "exit 1, says /no checkpoint .* verifies/, names 3 of 3, 3 left" flip_all

# One bit of the root attribute `step` of the newest checkpoint.
flip_step() {
  local d=flip3 err
  err=$(first_part $d 30); [ -n "$err" ] && { echo "$err"; return; }
  "$FAULTGEN" attr-flip $d/ckpt/step_00000030.h5 / step || { echo "faultgen failed"; return; }
  st 2 $d.c.log train tiny.yaml --out_dir $d --resume auto || { echo "resume failed: $(grep -m1 error $d.c.log)"; return; }
  echo "$(grep -c 'skipping checkpoint.*step_00000030' $d.c.log) warning, resumed at step $(resumed_at $d.c.log), $(same_as_ref $d)"
}
add flip-step-attribute 5 "1 warning, resumed at step 20, equal to the uninterrupted run" flip_step
