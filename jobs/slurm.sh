# jobs/slurm.sh: what the Slurm job scripts share (sourced by finetune.sbatch
# and prepare.sbatch once they know SHARDTUNE_HOME).
#
#   st_srun CMD...     srun CMD in the background with the job's CPUs per task,
#                      forwarding the batch shell's stop signals to it; returns
#                      srun's exit status. ST_STOP_SIGNAL names the first stop
#                      signal the batch shell received ("" = none).
#   st_end_time        export SLURM_JOB_END_TIME (epoch seconds) when Slurm
#                      does not set it (it does from 23.02), for shardtune's
#                      stop before the time limit.
#   st_requeue_if_asked RC   requeue this job when shardtune stopped early with
#                      a checkpoint (RC 75), the job was not cancelled and the
#                      user asked for it (SHARDTUNE_REQUEUE=1).
#
# Why srun gets USR1 for every stop signal: srun forwards SIGUSR1 to the tasks
# as it is, but on SIGTERM it cancels the step (tasks are killed after
# KillWait) and a single SIGINT only prints the step's status. shardtune treats
# USR1, TERM and INT alike: every rank finishes its step, saves, exits 75.

ST_EXIT_STOPPED=75  # shardtune stopped early after saving a checkpoint (EX_TEMPFAIL): resume to go on
ST_STOP_SIGNAL=${ST_STOP_SIGNAL:-}  # the scripts' first line traps stop signals into it
ST_LAUNCHED=0

st_srun() {
  if [ -n "$ST_STOP_SIGNAL" ]; then
    echo "job script: got SIG$ST_STOP_SIGNAL before the ranks started: not starting them"
    return "$ST_EXIT_STOPPED"
  fi
  ST_LAUNCHED=1
  # Slurm 22.05's srun no longer takes --cpus-per-task from the job: pass it.
  srun --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=1 "$@" &
  ST_SRUN_PID=$!
  trap 'st_forward_stop USR1' USR1
  trap 'st_forward_stop TERM' TERM
  trap 'st_forward_stop INT' INT
  # a signal between the launch and these traps was only noted: pass it on
  [ -n "$ST_STOP_SIGNAL" ] && kill -USR1 "$ST_SRUN_PID" 2>/dev/null
  # wait returns early (status > 128) whenever a trapped signal arrives.
  while kill -0 "$ST_SRUN_PID" 2>/dev/null; do wait "$ST_SRUN_PID" 2>/dev/null || true; done
  local rc=0
  wait "$ST_SRUN_PID" || rc=$?
  trap - USR1 TERM INT
  return "$rc"
}

st_forward_stop() {
  ST_STOP_SIGNAL=${ST_STOP_SIGNAL:-$1}
  echo "job script: got SIG$1, asking shardtune to finish its step, save and stop"
  kill -USR1 "$ST_SRUN_PID" 2>/dev/null || true
}

st_end_time() {
  [ -n "${SLURM_JOB_END_TIME:-}" ] && return 0
  local end
  end=$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null) || return 0
  end=$(date -d "$end" +%s 2>/dev/null) || return 0
  export SLURM_JOB_END_TIME=$end
}

st_requeue_if_asked() {
  local rc=$1
  [ "$rc" = "$ST_EXIT_STOPPED" ] && [ "$ST_LAUNCHED" = 1 ] || return 0
  case "$ST_STOP_SIGNAL" in TERM|INT) echo "stopped by SIG$ST_STOP_SIGNAL (cancelled or pre-empted): not requeued"; return 0 ;; esac
  if [ "${SHARDTUNE_REQUEUE:-0}" = 1 ]; then
    echo "requeueing job $SLURM_JOB_ID: it resumes from its last checkpoint (restart ${SLURM_RESTART_COUNT:-0})"
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "stopped before the end with a checkpoint: resubmit the same command to continue" \
         "(or submit with SHARDTUNE_REQUEUE=1 to requeue automatically)"
  fi
}
