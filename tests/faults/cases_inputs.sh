# Fault cases: bad inputs to prepare, convert, export and inspect (sourced by
# tests/faults/run.sh).

# le32 N: N as 4 little-endian bytes
le32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(( $1 & 255 )) $(( $1 >> 8 & 255 )) $(( $1 >> 16 & 255 )) $(( $1 >> 24 & 255 )))"; }

# prep NAME ARGS...: `prepare ARGS` on 2 ranks, output in prep-NAME.log; RC set
prep() { local name=$1; shift; RC=0; st 2 "prep-$name.log" prepare "$@" || RC=$?; }

prep_nul() {
  printf '{"text": "hello"}\n{"text": "ab\\u0000cd"}\n' > nul.jsonl
  prep nul --input nul.jsonl --out nul.h5
  says 1 'nul.jsonl:2.*NUL' prep-nul.log $RC
}
add prepare-nul-in-string 8 "exit 1, says /nul.jsonl:2.*NUL/" prep_nul

prep_gz_cut() {
  local i
  for i in $(seq 4000); do echo "{\"text\": \"query $i: my card has not arrived yet, what should I do?\"}"; done > lines.jsonl
  "$FAULTGEN" gz-cut lines.jsonl cut.jsonl.gz || { echo "faultgen failed"; return; }
  prep gzcut --input cut.jsonl.gz --out gzcut.h5
  says 1 'cut.jsonl.gz.*(truncated|unexpected end)' prep-gzcut.log $RC
}
add prepare-gz-truncated 8 "exit 1, says /cut.jsonl.gz.*(truncated|unexpected end)/" prep_gz_cut

prep_out_is_input() {
  printf '{"text": "hello"}\n' > same.jsonl
  local sum; sum=$(md5sum < same.jsonl)
  prep same --input same.jsonl --out ./same.jsonl
  echo "$(says 1 'same file' prep-same.log $RC), input $([ "$(md5sum < same.jsonl)" = "$sum" ] && echo intact || echo overwritten)"
}
add prepare-out-is-input 8 "exit 1, says /same file/, input intact" prep_out_is_input

prep_exists() {
  printf '{"text": "hello"}\n' > exists.jsonl
  echo "not a dataset" > exists.h5
  prep exists --input exists.jsonl --out exists.h5
  local first; first="$(says 1 'exists.*--force' prep-exists.log $RC), $(grep -q 'not a dataset' exists.h5 && echo kept || echo replaced)"
  prep force --input exists.jsonl --out exists.h5 --force
  echo "$first; with --force: exit $RC"
}
add prepare-output-exists 8 "exit 1, says /exists.*--force/, kept; with --force: exit 0" prep_exists

export_exists() {
  local rc=0
  echo "not a model" > exists.gguf
  st 1 export-exists.log export ref/ckpt/step_00000040.h5 --to gguf:exists.gguf || rc=$?
  echo "$(says 1 'exists.*--overwrite' export-exists.log $rc), $(grep -q 'not a model' exists.gguf && echo kept || echo replaced)"
}
add export-output-exists 8 "exit 1, says /exists.*--overwrite/, kept" export_exists

prep_rename() {
  printf '{"text": "hello"}\n' > ren.jsonl
  mkdir -p ren.h5/inside
  prep rename --input ren.jsonl --out ren.h5 --force
  says 1 'rename.*: (Is a directory|Directory not empty)' prep-rename.log $RC
}
add prepare-rename-reason 8 "exit 1, says /rename.*: (Is a directory|Directory not empty)/" prep_rename

prep_no_line() {
  printf 'not json\n{"text": 5}\n' > bad.jsonl
  prep noline --input bad.jsonl --out noline.h5 --on-error skip
  says 1 'bad.jsonl:1' prep-noline.log $RC
}
add prepare-first-bad-line 8 "exit 1, says /bad.jsonl:1/" prep_no_line

# An HF directory (exported from the reference run), then damaged copies.
hf_fixture() {
  [ -f hf/config.json ] || st 1 export-hf.log export ref/ckpt/step_00000040.h5 --to hf:hf >/dev/null || return 1
  rm -rf "$1" && cp -r hf "$1"
}
# conv NAME SRC: `convert SRC` on 1 rank under a 4 GB address-space limit;
# RC set, SECS its wall time
conv() {
  local t0; t0=$(date +%s.%N); RC=0
  ( ulimit -v 4000000; timeout -k 5 60 "$BIN" convert "$2" --out "conv-$1.h5" ) > "conv-$1.log" 2>&1 || RC=$?
  SECS=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
}
conv_layers() {
  local d=hf-layers-$1
  hf_fixture $d || { echo "export failed"; return; }
  sed -i "s/\"num_hidden_layers\":[[:space:]]*[0-9][0-9]*/\"num_hidden_layers\": $1/" $d/config.json
  conv layers-$1 $d
  echo "$(says 1 'num_hidden_layers' conv-layers-$1.log $RC) $(awk -v s="$SECS" 'BEGIN { print s < 5 ? "within 5 s" : "after " s " s" }')"
}
add convert-layers-1e9 9 "exit 1, says /num_hidden_layers/ within 5 s" "conv_layers 1000000000"
add convert-layers-1e5 9 "exit 1, says /num_hidden_layers/ within 5 s" "conv_layers 100000"

# A NaN written into model.norm.weight of the safetensors file.
conv_nan() {
  local d=hf-nan n off
  hf_fixture $d || { echo "export failed"; return; }
  n=$(od -An -tu8 -N8 $d/model.safetensors | tr -d ' ')
  off=$(head -c $(( 8 + n )) $d/model.safetensors | tail -c "$n" |
        grep -o '"model.norm.weight":{[^}]*}' | sed -n 's/.*"data_offsets":\[\([0-9]*\),.*/\1/p')
  [ -n "$off" ] || { echo "no model.norm.weight in the fixture"; return; }
  printf '\000\000\300\177' | dd of=$d/model.safetensors bs=1 seek=$(( 8 + n + off )) conv=notrunc status=none
  conv nan $d
  says 1 'model.norm.weight.*(NaN|non-finite)' conv-nan.log $RC
}
add convert-nan-weight 9 "exit 1, says /model.norm.weight.*(NaN|non-finite)/" conv_nan

conv_gguf() {
  [ -f m.gguf ] || st 1 export-gguf.log export ref/ckpt/step_00000040.h5 --to gguf:m.gguf >/dev/null
  cp m.gguf m.bin
  conv gguf m.bin
  says 1 'GGUF' conv-gguf.log $RC
}
add convert-gguf-file 9 "exit 1, says /GGUF/" conv_gguf

# llm.c's tokenizer file (magic 20240328) given as a model
conv_llmc_magic() {
  { le32 20240328; le32 2; le32 50257; head -c $(( 253 * 4 + 4000 )) /dev/zero; } > tok.bin
  conv llmc tok.bin
  says 1 'llm.c.*tokenizer' conv-llmc.log $RC
}
add convert-llmc-tokenizer 9 "exit 1, says /llm.c.*tokenizer/" conv_llmc_magic

inspect_fifo() {
  local rc=0
  rm -f fifo && mkfifo fifo
  timeout -k 2 10 "$BIN" inspect fifo > inspect-fifo.log 2>&1 || rc=$?
  says 1 'fifo.*regular file' inspect-fifo.log $rc
}
add inspect-fifo 9 "exit 1, says /fifo.*regular file/" inspect_fifo
