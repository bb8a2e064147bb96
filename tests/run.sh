#!/usr/bin/env bash
# Runs every test binary given on the command line.
#   test_*        one process
#   test_mpi2_*   mpirun -np 2
#   test_mpi4_*   mpirun -np 4 --oversubscribe
# One oneDNN/OpenMP thread per rank. Prints a closing "N passed, N failed" line.
set -u
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMP_NUM_THREADS=1 OMPI_MCA_rmaps_base_oversubscribe=1
export SHARDTUNE_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export SHARDTUNE_BIN="$SHARDTUNE_ROOT/${BIN:-bin/shardtune}"
# Sanitizer builds (SANITIZE set): leaks are reported and any finding fails
# the test. Open MPI's and the other libraries' own allocations are suppressed
# by tests/lsan.supp, which needs their module names: plugins stay loaded
# (nodlclose.c).
if [ -n "${SANITIZE:-}" ]; then
  export LD_PRELOAD="$SHARDTUNE_ROOT/${BUILD:-build-san}/libnodlclose.so${LD_PRELOAD:+:$LD_PRELOAD}"
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:verify_asan_link_order=0}
  export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$SHARDTUNE_ROOT/tests/lsan.supp:print_suppressions=0}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi
MPIRUN="mpirun --bind-to none --mca btl ^openib --mca btl_vader_single_copy_mechanism none"
pass=0; fail=0; failed=()
for t in "$@"; do
  name=$(basename "$t")
  case "$name" in
    test_mpi2_*) cmd="$MPIRUN -np 2 $t" ;;
    test_mpi4_*) cmd="$MPIRUN -np 4 --oversubscribe $t" ;;
    *) cmd="$t" ;;
  esac
  echo "=== $name: $cmd"
  start=$(date +%s)
  if timeout 600 $cmd; then pass=$((pass+1)); else fail=$((fail+1)); failed+=("$name"); fi
  echo "=== $name: $(( $(date +%s) - start ))s"
done
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
