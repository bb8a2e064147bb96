/* tok_internal.h: the tokenizer's insides, shared by io/tok/tokenizer.c and io/tok_*.c.
 *
 * Every kind fills the same tables: id -> text (as the vocabulary writes it),
 * id -> bytes (what decode emits), text -> id. Byte-level BPE adds merges and
 * pre-tokenizer regexes; llama2c adds scores. The original files are kept so
 * the tokenizer can be written into a checkpoint and rebuilt from it.
 */
#ifndef ST_TOK_INTERNAL_H
#define ST_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/tok/tokenizer.h"

enum { ST_TOK_BYTE, ST_TOK_GPT2, ST_TOK_HF, ST_TOK_LLAMA2C, ST_TOK_LLMC, ST_TOK_N_KINDS };

#define ST_TOK_MAX_STAGES 8      /* pre-tokenizer regex stages applied in sequence */
#define ST_TOK_MAX_FILES 2       /* original files carried in the blob */
#define ST_TOK_MAX_VOCAB (1 << 24)

#define ST_TOK_MAX_NORMS 8       /* normalizer steps (a Sequence flattened) */

/* One normalizer step of a tokenizer.json (tok_norm.c). */
enum { ST_NORM_NFC, ST_NORM_NFD, ST_NORM_NFKC, ST_NORM_NFKD, ST_NORM_LOWER, ST_NORM_REPLACE, ST_NORM_PREPEND,
       ST_NORM_STRIP };
typedef struct {
    int kind;
    char *pattern;         /* Replace: the regex (a String pattern escaped) */
    pcre2_code *re;
    char *content;         /* Replace: the replacement; Prepend: the prefix */
    size_t content_len;
    int left, right;       /* Strip */
} st_tok_norm;

/* Open-addressing map from a byte string to an id. Keys point into storage
 * owned by the tokenizer (they are not copied). */
typedef struct {
    const char **key;
    uint32_t *klen;
    int32_t *val;
    size_t cap;    /* power of two, 0 when empty */
    size_t count;
} st_tok_strmap;

/* Open-addressing map from an id pair to (merge priority, merged id); one
 * 16-byte slot per entry so a lookup touches one cache line. */
typedef struct {
    uint64_t key;      /* (a << 32 | b) + 1; 0 marks an empty slot */
    int32_t rank;
    int32_t merged;
} st_tok_pairslot;

typedef struct {
    st_tok_pairslot *slot;
    size_t cap;
    size_t count;
} st_tok_pairmap;

/* An added token as Hugging Face describes it. */
typedef struct {
    const char *content;   /* must outlive the tokenizer (points into its storage) */
    size_t len;
    int32_t id;
    int special;           /* matched only with allow_special */
    int lstrip, rstrip, single_word;
} st_tok_added;

struct st_tokenizer {
    int kind;
    int32_t n_vocab;
    char **text;           /* [n_vocab] vocabulary form, NUL-terminated; NULL for an unused id */
    uint32_t *text_len;    /* [n_vocab] */
    char **dec;            /* [n_vocab] bytes decode emits (may point into text) */
    uint32_t *dec_len;     /* [n_vocab] */
    uint8_t *is_added;     /* [n_vocab] 1 special added, 2 non-special added, 0 plain */
    st_tok_strmap vocab;   /* model vocabulary text -> id (merges resolve through it) */
    st_tok_strmap added;   /* added / special token content -> id */
    int32_t bos, eos;
    st_tok_norm norm[ST_TOK_MAX_NORMS];   /* hf: applied in order to the text between added tokens */
    int n_norm;
    int add_bos, add_eos;  /* the tokenizer's own rule (st_tokenizer_adds_bos) */
    char *chat_template;

    /* added / special tokens: [0] non-special only (may be NULL), [1] all (may be NULL) */
    pcre2_code **added_re[2];           /* alternations of at most ADDED_CHUNK bytes of pattern each */
    int n_added_re[2];
    uint64_t added_hash;                /* of the patterns above */

    /* byte-level BPE (gpt2, hf) */
    int32_t byte_id[256];               /* id of the single-byte token, -1 if absent */
    st_tok_pairmap merges;              /* (a, b) -> rank, merged id */
    int32_t n_merges;
    int32_t *merge_pair;                /* [n_merges][2] in rank order, for the hash */
    int n_stages;
    pcre2_code *stage_re[ST_TOK_MAX_STAGES];
    char *stage_pat[ST_TOK_MAX_STAGES];
    uint8_t stage_prefix_space[ST_TOK_MAX_STAGES + 1]; /* prepend ' ' before stage k (k = n_stages: before BPE) */
    int ignore_merges;                  /* a whole word found in the vocabulary is one token (Llama 3) */
    uint8_t stage_merge_prev[ST_TOK_MAX_STAGES]; /* Split MergedWithPrevious: a match joins the piece before it */
    int byte_level_at;                  /* stages from here on see ByteLevel's mapped text (-1: none do) */

    /* sentencepiece-style BPE in tokenizer.json (Llama 2, Mistral, Gemma): no
     * ByteLevel; a word's symbols are its characters, an absent one falls
     * back to its bytes' <0xNN> tokens (byte_fallback) or to unk */
    int char_bpe, byte_fallback, fuse_unk;
    int32_t unk_id;
    int meta_prepend;                   /* Metaspace: prefix the replacement 0 never, 1 first, 2 always */
    char meta_repl[8];                  /* Metaspace replacement for ' ' (UTF-8); "" when no Metaspace */
    uint8_t meta_repl_len;
    int strip_lead_space;               /* decode drops a leading space at the start / after bos */
    char byte_chr[256][2];              /* UTF-8 of each byte's stand-in character */
    uint8_t byte_chr_len[256];

    /* llama2c */
    float *score;                       /* [n_vocab] */
    uint32_t max_text_len;
    int32_t space_id;                   /* the dummy-prefix token " ", -1 if absent */
    int is_spm;                         /* read from a sentencepiece .model (tok_spm.c), not tokenizer.bin */
    int spm_dummy_prefix;               /* add_dummy_prefix: " " starts the text (tokenizer.bin: yes) */
    int spm_strip_spaces;               /* remove_extra_whitespaces: no leading/trailing ' ', runs as one */

    /* the original files, for the blob */
    int n_files;
    uint8_t *file[ST_TOK_MAX_FILES];
    size_t file_len[ST_TOK_MAX_FILES];

    uint64_t hash;
};

/* A candidate merge of the symbols at positions left and right. */
typedef struct {
    uint64_t prio;      /* (key << 32) | left position: smaller pops first */
    int32_t right;      /* right symbol position when pushed */
    int32_t rid;        /* right symbol id when pushed */
    int32_t merged;     /* id after merging */
} st_tok_heap_ent;

/* Working state of one encode call (per call, so encode is thread-safe). */
typedef struct {
    const st_tokenizer *t;
    int32_t **ids;
    size_t *n, *cap;
    pcre2_match_data *md;
    /* BPE / merge workspace, grown on demand */
    int32_t *sym, *prev, *next;
    size_t sym_cap;
    st_tok_heap_ent *heap;
    size_t heap_len, heap_cap;
    char *buf;                          /* scratch string */
    size_t buf_cap;
} st_tok_enc;

/* tok_util.c */
uint64_t st_tok_fnv(uint64_t h, const void *p, size_t n);
st_err st_tok_strmap_put(st_tok_strmap *m, const char *key, uint32_t klen, int32_t val, int replace);
int32_t st_tok_strmap_get(const st_tok_strmap *m, const char *key, size_t klen);
void st_tok_strmap_free(st_tok_strmap *m);
st_err st_tok_pairmap_put(st_tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged);
int st_tok_pairmap_get(const st_tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged);
void st_tok_pairmap_free(st_tok_pairmap *m);
st_err st_tok_heap_push(st_tok_enc *e, st_tok_heap_ent ent);
st_tok_heap_ent st_tok_heap_pop(st_tok_enc *e);
st_err st_tok_reserve(void **p, size_t *cap, size_t need, size_t elem, const char *what);
st_err st_tok_push_id(st_tok_enc *e, int32_t id);
/* Room for n symbols in e->sym, e->prev, e->next. */
st_err st_tok_reserve_syms(st_tok_enc *e, size_t n);
/* Offset of the first invalid UTF-8 byte, or len when all valid. */
size_t st_tok_utf8_check(const uint8_t *s, size_t len);
st_err st_tok_read_file(const char *path, uint8_t **data, size_t *n);
st_err st_tok_regex_compile(pcre2_code **out, const char *pat, size_t len, const char *what);
st_err st_tok_regex_escape(char **p, size_t *len, size_t *cap, const char *s, size_t n);
/* Run a compiled regex at offset; returns >0 on match, 0 on none, <0 error (already recorded). */
int st_tok_regex_match(const pcre2_code *re, pcre2_match_data *md, const char *s, size_t len,
                       size_t off, const char *what);

/* tok_vocab.c: the id tables (st_tokenizer_token_id, public, is there too) */
st_err st_tok_alloc_vocab(st_tokenizer *t, int32_t n_vocab);
st_err st_tok_set_text(st_tokenizer *t, int32_t id, const char *s, size_t len, const char *file);
st_err st_tok_build_added_re(st_tokenizer *t, const st_tok_added *added, int n_added, const char *file);

/* tok_norm.c: tokenizer.json normalizers */
st_err st_tok_norm_parse(st_tokenizer *t, const cJSON *normalizer, const char *name, int depth);
void st_tok_norm_free(st_tok_norm *n, int count);
uint64_t st_tok_norm_hash(const st_tokenizer *t, uint64_t h);
/* s[0..len) through t's normalizers into a malloc'd *out (NULL when there
 * are none: use s). continues: the text continues earlier text of the same
 * sequence (a Prepend does not apply). */
st_err st_tok_normalize(const st_tokenizer *t, const char *s, size_t len, int continues, char **out,
                        size_t *olen);

/* tok_bpe.c: byte-level BPE (gpt2 and hf) */
extern const char st_tok_gpt2_pattern[];
void st_tok_bytes_to_unicode(uint32_t cp[256]);
st_err st_tok_bpe_add_stage(st_tokenizer *t, const char *pat, size_t len, const char *file);
st_err st_tok_bpe_add_merge(st_tokenizer *t, const char *a, size_t alen, const char *b, size_t blen,
                            const char *file, const char *unit, size_t where);
/* t->byte_chr, byte_chr_len: each byte's stand-in character (st_tok_bpe_finish does it too). */
void st_tok_bpe_byte_chars(st_tokenizer *t);
/* One pair-map entry (a, b) -> merged at priority rank (smaller first). */
st_err st_tok_bpe_put_merge(st_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t merged);
st_err st_tok_bpe_finish(st_tokenizer *t, const char *file);
/* word_start: the piece starts the text; fresh: it does not continue earlier
 * text of the sequence (Metaspace's prepend schemes "first" and "always"). */
st_err st_tok_bpe_encode(st_tok_enc *e, const char *s, size_t len, int word_start, int fresh);

/* tok_gpt2.c: JSON helpers shared with tok_hf.c */
st_err st_tok_json_parse(cJSON **out, const uint8_t *data, size_t n, const char *name);
/* Check a {"token": id, ...} object; *max_id = largest id (-1 when empty). */
st_err st_tok_json_vocab_scan(const cJSON *vocab, const char *name, int32_t *max_id, int32_t *count);
st_err st_tok_json_vocab_fill(st_tokenizer *t, const cJSON *vocab, const char *name);
/* Vocabularies may be sparse, but not absurdly: n_vocab <= 2 * entries + 1024. */
st_err st_tok_check_density(int32_t max_id, int32_t count, const char *name);

/* tok_gpt2.c, tok_hf.c, tok_llama2c.c: build from the files' bytes (names for messages) */
st_err st_tok_gpt2_build(st_tokenizer *t, const char *enc_name, const char *vocab_name);
st_err st_tok_hf_build(st_tokenizer *t, const char *json_name, const char *config_name);
st_err st_tok_llama2c_build(st_tokenizer *t, const char *name);
st_err st_tok_llmc_build(st_tokenizer *t, const char *name);
st_err st_tok_llama2c_encode(st_tok_enc *e, const char *s, size_t len, int at_start);
/* tok_spm.c: a sentencepiece .model as the llama2c kind */
int st_tok_spm_is_model(const uint8_t *d, size_t n);
/* Like tok_llama2c.c's walk: count the pieces; with t->text allocated, store them. */
st_err st_tok_spm_walk(st_tokenizer *t, const uint8_t *d, size_t n, const char *name, int32_t *count);

#endif
