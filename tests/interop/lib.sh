# lib.sh: what the interop checks share (sourced). run.sh exports
# SHARDTUNE_ROOT and SHARDTUNE_BIN and runs every check from this folder.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
: "${SHARDTUNE_ROOT:=$(cd ../.. && pwd)}"
: "${SHARDTUNE_BIN:=$SHARDTUNE_ROOT/bin/shardtune}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=/usr/bin/python3           # Debian's, with python3-sentencepiece and python3-jinja2
DATA="$SHARDTUNE_ROOT/data"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/shardtune-interop.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
status=0

# shardtune on one rank; its output is shown only when it fails.
st() {
  if ! "$SHARDTUNE_BIN" "$@" >"$WORK/log" 2>&1; then
    echo "FAILED: shardtune $*"; head -n 12 "$WORK/log"; status=1; return 1
  fi
}
# compare NAME A.ids B.ids LABEL_A LABEL_B: prints the agreement; a difference fails the check.
compare() {
  "$PY" compare.py "$1" "$WORK/texts.jsonl" "$2" "$3" "$4" "$5" || status=1
}
# The texts every tokenizer check encodes (texts.py): real text from data/ and hard cases.
make_texts() {
  [ -s "$WORK/texts.jsonl" ] || "$PY" texts.py "$WORK/texts.jsonl" "$@"
}
