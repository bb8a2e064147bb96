#!/usr/bin/env bash
# The fuzzers' seed corpora (make fuzz): real files of each format, so that
# libFuzzer starts from structure that parses instead of discovering it byte
# by byte (the unseeded safetensors harness reached 49 edges).
#   tests/fuzz/seeds.sh BIN OUT     writes OUT/<harness>/<seed> for every harness
# The files come from data/ (llama2.c's tokenizer, GPT-2's BPE files, chat
# templates, banking77, hh-rlhf) and from shardtune itself: a tiny model
# trained zero steps on 50 banking77 queries and exported to safetensors (f32,
# f16, bf16, with its config.json and tokenizer.json) and GGUF (f32, f16).
# A harness whose first byte picks a mode gets the byte before the file.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(realpath "$1")
OUT=$(realpath -m "$2")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
rm -rf "$OUT" && mkdir -p "$OUT"/{fuzz_safetensors,fuzz_gguf,fuzz_tokenizer,fuzz_jsonl,fuzz_chat_template}
W=$(mktemp -d /tmp/shardtune-seeds.XXXXXX)
trap 'rm -rf "$W"' EXIT

# seed HARNESS NAME MODE FILE...: the mode byte (decimal; "-" for none), then the files' bytes
seed() {
  local h=$1 name=$2 mode=$3; shift 3
  { [ "$mode" = - ] || printf "\\$(printf %03o "$mode")"; cat "$@"; } > "$OUT/$h/$name"
}

# a tiny model, its exports
head -n 51 "$ROOT/data/banking77/train.csv" > "$W/b.csv"
"$BIN" prepare --input "$W/b.csv" --format text --text-col text --tokenizer byte --out "$W/b.h5" > /dev/null
"$BIN" train --data.train "$W/b.h5" --model.n_layer 1 --model.d_model 8 --model.n_head 2 --model.d_ff 16 \
  --seq_len 16 --steps 0 --plot false --out_dir "$W/run" > /dev/null
CK=$W/run/ckpt/step_00000000.h5
for dt in f32 f16 bf16; do
  "$BIN" export "$CK" --to "hf:$W/hf-$dt" --dtype "$dt" > /dev/null
  seed fuzz_safetensors "model-$dt.safetensors" - "$W/hf-$dt/model.safetensors"
done
for dt in f32 f16; do
  "$BIN" export "$CK" --to "gguf:$W/m-$dt.gguf" --dtype "$dt" > /dev/null
  seed fuzz_gguf "model-$dt.gguf" - "$W/m-$dt.gguf"
done

# tokenizers: modes 0 byte, 1 gpt2 (encoder.json 0xFF vocab.bpe), 2 hf, 3 llama2c, 6 text
printf 'byte' > "$W/byte"
seed fuzz_tokenizer byte 0 "$W/byte"
head -c 20000 "$ROOT/data/gpt2-bpe/encoder.json" | sed 's/\(.*\), ".*$/\1}/' > "$W/enc.json"
printf '\377' > "$W/ff"
head -n 400 "$ROOT/data/gpt2-bpe/vocab.bpe" > "$W/vocab.bpe"
seed fuzz_tokenizer gpt2-part 1 "$W/enc.json" "$W/ff" "$W/vocab.bpe"
seed fuzz_tokenizer hf-tokenizer.json 2 "$W/hf-f32/tokenizer.json"
seed fuzz_tokenizer llama2c-tok512 3 "$ROOT/data/llama2c/tok512.bin"
head -n 20 "$ROOT/data/banking77/train.csv" > "$W/text"
seed fuzz_tokenizer banking-text 6 "$W/text"

# prepare's inputs: even first byte JSONL (plain or gzip), odd CSV
{ zcat "$ROOT/data/hh-rlhf/harmless-base-test.jsonl.gz" || true; } | head -n 3 > "$W/hh.jsonl"
gzip -c "$W/hh.jsonl" > "$W/hh.jsonl.gz"
{ zcat "$ROOT/data/medquad/medquad-qa.jsonl.gz" || true; } | head -n 3 > "$W/mq.jsonl"
seed fuzz_jsonl hh-rlhf 0 "$W/hh.jsonl"
seed fuzz_jsonl hh-rlhf-gz 2 "$W/hh.jsonl.gz"
seed fuzz_jsonl medquad 4 "$W/mq.jsonl"
seed fuzz_jsonl banking77-csv 1 "$W/text"

# chat templates: mode 0 renders a template, 3 also through tokens and mask
for t in "$ROOT"/data/chat-templates/*.jinja; do
  n=$(basename "$t" .jinja)
  seed fuzz_chat_template "$n" 0 "$t"
  seed fuzz_chat_template "$n-tokens" 3 "$t"
done
echo "seeds: $(find "$OUT" -type f | wc -l) files in $OUT"
