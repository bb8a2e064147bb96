/* tokenizer.h: text <-> token ids for every model family shardtune trains.
 *
 * Spec strings given to st_tokenizer_load:
 *   "byte"                    256 byte tokens + id 256 "<|endoftext|>" (bos = eos = 256)
 *   "gpt2:DIR"                DIR/encoder.json + DIR/vocab.bpe (OpenAI GPT-2 files)
 *   "hf:PATH/tokenizer.json"  Hugging Face BPE: byte-level (GPT-2, Llama 3, SmolLM,
 *                             Qwen2/3, Falcon) or sentencepiece-style (Llama 2,
 *                             Mistral, TinyLlama, Phi-3, Gemma; tok_hf.c). A
 *                             tokenizer_config.json next to it, when present,
 *                             supplies bos/eos, add_bos_token and the chat template.
 *   "llama2c:PATH/tokenizer.bin"  llama2.c sentencepiece export (bos = 1, eos = 2), as
 *                             run.c encodes; or the sentencepiece .model itself
 *                             (BPE, identity normalizer; tok_spm.c), whose
 *                             remove_extra_whitespaces / add_dummy_prefix apply
 *   "llmc:PATH/gpt2_tokenizer.bin" llm.c's GPT-2 token bytes; merges follow from
 *                             the id order (tok_llmc.c), encodings equal gpt2's
 *
 * A tokenizer is immutable once loaded: encode/decode may run on many threads.
 *
 * Special (added) tokens: HF added tokens marked "special" and the bos/eos/unk
 * tokens of the other kinds are matched in text only when allow_special is set;
 * HF added tokens marked non-special are always matched (as Hugging Face does).
 *
 * Known gaps against Hugging Face: normalizers other than NFC, NFD, NFKC,
 * NFKD, Lowercase, Replace, Prepend, Strip (and Sequence) are refused;
 * post-processors only decide st_tokenizer_adds_bos/eos (callers add them);
 * BPE dropout is ignored.
 */
#ifndef ST_TOKENIZER_H
#define ST_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct st_tokenizer st_tokenizer;

st_err st_tokenizer_load(st_tokenizer **out, const char *spec);
void st_tokenizer_free(st_tokenizer *t);

/* Self-contained serialisation (the original files, length-prefixed), so a
 * checkpoint or dataset carries its tokenizer. kind: "byte", "gpt2", "hf",
 * "llama2c" or "llmc" (static string). *blob is malloc'd; the caller frees it.
 * from_blob validates everything: hostile bytes give ST_ERR_FORMAT. */
st_err st_tokenizer_to_blob(const st_tokenizer *t, const char **kind, uint8_t **blob, size_t *n);
st_err st_tokenizer_from_blob(st_tokenizer **out, const char *kind, const uint8_t *blob, size_t n);

int st_tokenizer_vocab_size(const st_tokenizer *t);   /* ids 0..size-1, incl. added tokens */
int st_tokenizer_eos(const st_tokenizer *t);          /* -1 if none */
int st_tokenizer_bos(const st_tokenizer *t);          /* -1 if none */
/* The tokenizer's own rule for a sequence's ends, as its authors' tools
 * apply it: 1 when bos goes before every sequence (add_bos_token in
 * tokenizer_config.json, else a TemplateProcessing post-processor that starts
 * with it; llama2c/sentencepiece: yes; byte, gpt2, llmc: no), and when eos
 * goes after it (add_eos_token, or the post-processor ending with it). */
int st_tokenizer_adds_bos(const st_tokenizer *t);
int st_tokenizer_adds_eos(const st_tokenizer *t);
/* Exact lookup of a vocabulary or added token as written in the vocabulary
 * (byte-level form for GPT-2 style: "Ġworld"); -1 if absent. llama2c also
 * knows "<unk>", "<s>", "</s>" for ids 0, 1, 2. */
int st_tokenizer_token_id(const st_tokenizer *t, const char *token_text);
const char *st_tokenizer_chat_template(const st_tokenizer *t);  /* NULL if none */
/* Stable 64-bit hash of everything that decides an encoding (vocabulary,
 * merges or scores, pre-tokenizer patterns, added tokens). */
uint64_t st_tokenizer_hash(const st_tokenizer *t);

/* Encode len bytes of UTF-8 text (not necessarily NUL-terminated), appending
 * to the growable array (*ids, *n, *cap), which is realloc'd as needed.
 * Invalid UTF-8 -> ST_ERR_FORMAT naming the byte offset. llama2c adds the
 * dummy-prefix space at the start of text, as llama2.c's run.c does. */
st_err st_tokenizer_encode(const st_tokenizer *t, const char *text, size_t len, int allow_special,
                           int32_t **ids, size_t *n, size_t *cap);

/* The same for text that continues earlier text in one sequence (a template's
 * later pieces): no llama2c dummy prefix. Other kinds encode as above. */
st_err st_tokenizer_encode_more(const st_tokenizer *t, const char *text, size_t len, int allow_special,
                                int32_t **ids, size_t *n, size_t *cap);

/* Decode ids to bytes: *out malloc'd and NUL-terminated, *len excludes the NUL.
 * Out-of-range id -> ST_ERR_ARG naming it. Special tokens decode to their text.
 * llama2c: a piece's leading space is dropped at the start of the sequence and
 * after bos (sentencepiece's dummy prefix), so decode(encode(x)) == x. */
st_err st_tokenizer_decode(const st_tokenizer *t, const int32_t *ids, size_t n, char **out, size_t *len);

/* The bytes of one token for streaming output, without allocation: *piece
 * points into the tokenizer. prev is the preceding id (-1 at the start of a
 * stream that continues earlier text); llama2c drops the leading space only
 * after bos. The bytes may be a partial UTF-8 character. */
st_err st_tokenizer_decode_piece(const st_tokenizer *t, int32_t prev, int32_t id,
                                 const char **piece, size_t *len);

#endif
