/* tokenizer.c: the public tokenizer API: loading by spec, the blob,
 * special-token splitting, encode and decode dispatch. Kind-specific work
 * lives in tok_bpe.c (+ tok_gpt2.c, tok_hf.c), tok_llama2c.c and tok_llmc.c;
 * the id tables they all fill are tok_vocab.c's. */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

static const char *const kind_name[ST_TOK_N_KINDS] = {"byte", "gpt2", "hf", "llama2c", "llmc"};
static const int kind_files[ST_TOK_N_KINDS] = {0, 2, 2, 1, 1};

#define BLOB_MAGIC 0x4B4F5453u   /* "STOK" little-endian */
#define BLOB_VERSION 1u

/* ---- hash ---- */

static uint64_t hash_u64(uint64_t h, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    return st_tok_fnv(h, b, 8);
}

/* Everything that decides an encoding, in a fixed byte order. gpt2: and an
 * equivalent hf: tokenizer.json hash the same. */
static uint64_t compute_hash(const st_tokenizer *t)
{
    const char *family = t->kind == ST_TOK_BYTE ? "byte" : t->kind == ST_TOK_LLAMA2C ? "llama2c" : "bytebpe";
    uint64_t h = st_tok_fnv(0xcbf29ce484222325ULL, family, strlen(family) + 1);
    h = hash_u64(h, (uint64_t)t->n_vocab);
    for (int32_t i = 0; i < t->n_vocab; i++) {
        h = hash_u64(h, t->text[i] ? t->text_len[i] : UINT64_MAX);
        if (t->text[i]) h = st_tok_fnv(h, t->text[i], t->text_len[i]);
        h = hash_u64(h, t->is_added[i]);
        if (t->score) {
            uint32_t bits;
            memcpy(&bits, &t->score[i], 4);
            h = hash_u64(h, bits);
        }
    }
    h = hash_u64(h, (uint64_t)t->n_merges);
    for (int32_t i = 0; i < 2 * t->n_merges; i++) h = hash_u64(h, (uint32_t)t->merge_pair[i]);
    h = hash_u64(h, (uint64_t)t->n_stages);
    for (int k = 0; k < t->n_stages; k++) h = st_tok_fnv(h, t->stage_pat[k], strlen(t->stage_pat[k]) + 1);
    h = st_tok_fnv(h, t->stage_prefix_space, (size_t)t->n_stages + 1);
    h = hash_u64(h, (uint64_t)t->ignore_merges);
    h = hash_u64(h, t->added_hash);
    if (t->n_norm) h = st_tok_norm_hash(t, h);   /* (tokenizers without these keep their old hash) */
    int maps = t->byte_level_at >= 0 && t->byte_level_at < t->n_stages, merge_prev = 0;
    for (int k = 0; k < t->n_stages; k++) merge_prev |= t->stage_merge_prev[k];
    if (t->is_spm) {   /* a .model's normalizer flags; a tokenizer.bin keeps its hash */
        int32_t f[2] = {t->spm_dummy_prefix, t->spm_strip_spaces};
        h = st_tok_fnv(h, f, sizeof f);
    }
    if (t->char_bpe || t->meta_repl_len || maps || merge_prev) {
        int32_t v[8] = {t->char_bpe, t->byte_fallback, t->fuse_unk, t->unk_id, t->meta_prepend, maps ? t->byte_level_at : -1,
                        merge_prev, t->meta_repl_len};
        h = st_tok_fnv(h, v, sizeof v);
        h = st_tok_fnv(h, t->stage_merge_prev, (size_t)t->n_stages);
        h = st_tok_fnv(h, t->meta_repl, t->meta_repl_len);
    }
    return h;
}

/* ---- construction ---- */

static st_err byte_build(st_tokenizer *t)
{
    ST_TRY(st_tok_alloc_vocab(t, 257));
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        ST_TRY(st_tok_set_text(t, b, &c, 1, "byte tokenizer"));
        ST_TRY(st_tok_strmap_put(&t->vocab, t->text[b], 1, b, 0));
    }
    ST_TRY(st_tok_set_text(t, 256, "<|endoftext|>", 13, "byte tokenizer"));
    st_tok_added eot = {.content = t->text[256], .len = 13, .id = 256, .special = 1};
    ST_TRY(st_tok_build_added_re(t, &eot, 1, "byte tokenizer"));
    t->bos = t->eos = 256;
    return ST_OK;
}

static st_err new_tokenizer(st_tokenizer **out, int kind)
{
    st_tokenizer *t = calloc(1, sizeof(*t));
    if (!t) ST_FAIL(ST_ERR_MEM, "out of memory allocating a tokenizer");
    t->kind = kind;
    t->bos = t->eos = t->space_id = t->unk_id = t->byte_level_at = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    *out = t;
    return ST_OK;
}

/* t->file[] is filled; names are used in messages. Frees t on failure. */
static st_err build(st_tokenizer *t, const char *name0, const char *name1)
{
    st_err err = ST_OK;
    switch (t->kind) {
    case ST_TOK_BYTE: err = byte_build(t); break;
    case ST_TOK_GPT2: err = st_tok_gpt2_build(t, name0, name1); break;
    case ST_TOK_HF: err = st_tok_hf_build(t, name0, name1); break;
    case ST_TOK_LLAMA2C: err = st_tok_llama2c_build(t, name0); break;
    case ST_TOK_LLMC: err = st_tok_llmc_build(t, name0); break;
    default: err = st_error_set(ST_ERR_INTERNAL, __FILE__, __LINE__, __func__, "unknown tokenizer kind %d", t->kind);
    }
    if (err) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_tokenizer_free(t);
        return err;
    }
    t->hash = compute_hash(t);
    return ST_OK;
}

static int kind_of(const char *s, size_t n)
{
    for (int k = 0; k < ST_TOK_N_KINDS; k++)
        if (strlen(kind_name[k]) == n && memcmp(kind_name[k], s, n) == 0) return k;
    return -1;
}

/* dir + "/" + name (name may be empty: then just dir) into a malloc'd string. */
static st_err join_path(char **out, const char *dir, size_t dlen, const char *name)
{
    size_t n = dlen + 1 + strlen(name) + 1;
    char *p = malloc(n);
    if (!p) ST_FAIL(ST_ERR_MEM, "out of memory building a path");
    snprintf(p, n, "%.*s%s%s", (int)dlen, dir, *name ? "/" : "", name);
    *out = p;
    return ST_OK;
}

/* Read the files a spec names into t->file[]; *name0, *name1 get the paths. */
static st_err read_spec_files(st_tokenizer *t, const char *path, char **name0, char **name1)
{
    size_t plen = strlen(path);
    if (t->kind == ST_TOK_GPT2) {
        ST_TRY(join_path(name0, path, plen, "encoder.json"));
        ST_TRY(join_path(name1, path, plen, "vocab.bpe"));
        ST_TRY(st_tok_read_file(*name0, &t->file[0], &t->file_len[0]));
        ST_TRY(st_tok_read_file(*name1, &t->file[1], &t->file_len[1]));
        t->n_files = 2;
    } else if (t->kind == ST_TOK_HF) {
        /* tokenizer_config.json beside it is optional: it only names bos/eos and the chat template */
        const char *slash = strrchr(path, '/');
        ST_TRY(join_path(name0, path, plen, ""));
        ST_TRY(join_path(name1, slash ? path : ".", slash ? (size_t)(slash - path) : 1, "tokenizer_config.json"));
        ST_TRY(st_tok_read_file(*name0, &t->file[0], &t->file_len[0]));
        t->n_files = 2;
        FILE *f = fopen(*name1, "rb");
        if (f) {
            fclose(f);
            ST_TRY(st_tok_read_file(*name1, &t->file[1], &t->file_len[1]));
        }
    } else if (t->kind == ST_TOK_LLAMA2C || t->kind == ST_TOK_LLMC) {
        ST_TRY(join_path(name0, path, plen, ""));
        ST_TRY(st_tok_read_file(*name0, &t->file[0], &t->file_len[0]));
        t->n_files = 1;
    }
    return ST_OK;
}

st_err st_tokenizer_load(st_tokenizer **out, const char *spec)
{
    if (!out || !spec) ST_FAIL(ST_ERR_ARG, "st_tokenizer_load: NULL argument");
    *out = NULL;
    const char *colon = strchr(spec, ':');
    size_t klen = colon ? (size_t)(colon - spec) : strlen(spec);
    int kind = kind_of(spec, klen);
    if (kind < 0 || (kind == ST_TOK_BYTE) != (colon == NULL) || (colon && !colon[1]))
        ST_FAIL(ST_ERR_ARG, "tokenizer spec \"%s\" not understood; use \"byte\", \"gpt2:DIR\" (encoder.json + "
                "vocab.bpe), \"hf:PATH/tokenizer.json\", \"llama2c:PATH/tokenizer.bin\" or "
                "\"llmc:PATH/gpt2_tokenizer.bin\"", spec);
    st_tokenizer *t;
    ST_TRY(new_tokenizer(&t, kind));
    char *name0 = NULL, *name1 = NULL;
    st_err err = read_spec_files(t, colon ? colon + 1 : "", &name0, &name1);
    if (err) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_tokenizer_free(t);
    } else {
        err = build(t, name0, name1);
        if (!err) *out = t;
        else st_error_trace(__FILE__, __LINE__, __func__);
    }
    free(name0);
    free(name1);
    return err;
}

void st_tokenizer_free(st_tokenizer *t)
{
    if (!t) return;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        if (t->dec[i] != t->text[i] && t->kind != ST_TOK_LLAMA2C) free(t->dec[i]);
        free(t->text[i]);
    }
    free(t->text), free(t->text_len), free(t->dec), free(t->dec_len), free(t->is_added);
    st_tok_strmap_free(&t->vocab);
    st_tok_strmap_free(&t->added);
    free(t->chat_template);
    st_tok_norm_free(t->norm, t->n_norm);
    for (int i = 0; i < 2; i++) {
        for (int k = 0; k < t->n_added_re[i]; k++) pcre2_code_free(t->added_re[i][k]);
        free(t->added_re[i]);
    }
    st_tok_pairmap_free(&t->merges);
    free(t->merge_pair);
    for (int k = 0; k < ST_TOK_MAX_STAGES; k++) {
        pcre2_code_free(t->stage_re[k]);
        free(t->stage_pat[k]);
    }
    free(t->score);
    for (int i = 0; i < ST_TOK_MAX_FILES; i++) free(t->file[i]);
    free(t);
}

/* ---- blob: u32 magic, u32 version, u32 n_files, then per file u64 length + bytes ---- */

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

st_err st_tokenizer_to_blob(const st_tokenizer *t, const char **kind, uint8_t **blob, size_t *n)
{
    if (!t || !kind || !blob || !n) ST_FAIL(ST_ERR_ARG, "st_tokenizer_to_blob: NULL argument");
    size_t total = 12;
    for (int i = 0; i < t->n_files; i++) total += 8 + t->file_len[i];
    uint8_t *b = malloc(total);
    if (!b) ST_FAIL(ST_ERR_MEM, "out of memory for a %zu-byte tokenizer blob", total);
    put_le(b, BLOB_MAGIC, 4);
    put_le(b + 4, BLOB_VERSION, 4);
    put_le(b + 8, (uint64_t)t->n_files, 4);
    size_t pos = 12;
    for (int i = 0; i < t->n_files; i++) {
        put_le(b + pos, t->file_len[i], 8);
        if (t->file_len[i]) memcpy(b + pos + 8, t->file[i], t->file_len[i]);
        pos += 8 + t->file_len[i];
    }
    *kind = kind_name[t->kind];
    *blob = b;
    *n = total;
    return ST_OK;
}

/* Split a blob into its files (copied into t->file[]). */
static st_err blob_files(st_tokenizer *t, const uint8_t *blob, size_t n)
{
    const char *k = kind_name[t->kind];
    if (n < 12 || (!blob && n))
        ST_FAIL(ST_ERR_FORMAT, "%s tokenizer blob is %zu bytes, shorter than its 12-byte header", k, n);
    if (get_le(blob, 4) != BLOB_MAGIC || get_le(blob + 4, 4) != BLOB_VERSION)
        ST_FAIL(ST_ERR_FORMAT, "%s tokenizer blob: bad magic or version (not written by st_tokenizer_to_blob)", k);
    uint64_t nf = get_le(blob + 8, 4);
    if (nf != (uint64_t)kind_files[t->kind])
        ST_FAIL(ST_ERR_FORMAT, "%s tokenizer blob holds %llu files; expected %d", k, (unsigned long long)nf,
                kind_files[t->kind]);
    size_t pos = 12;
    for (int i = 0; i < (int)nf; i++) {
        if (n - pos < 8) ST_FAIL(ST_ERR_FORMAT, "%s tokenizer blob truncated in the header of file %d", k, i);
        uint64_t len = get_le(blob + pos, 8);
        pos += 8;
        if (len > n - pos)
            ST_FAIL(ST_ERR_FORMAT, "%s tokenizer blob: file %d claims %llu bytes but only %zu remain", k, i,
                    (unsigned long long)len, n - pos);
        if (len) {   /* NUL-terminated like st_tok_read_file's buffers */
            t->file[i] = malloc(len + 1);
            if (!t->file[i]) ST_FAIL(ST_ERR_MEM, "out of memory copying %llu blob bytes", (unsigned long long)len);
            memcpy(t->file[i], blob + pos, len);
            t->file[i][len] = 0;
        }
        t->file_len[i] = len;
        t->n_files = i + 1;
        pos += len;
    }
    if (pos != n) ST_FAIL(ST_ERR_FORMAT, "%s tokenizer blob has %zu trailing bytes", k, n - pos);
    return ST_OK;
}

st_err st_tokenizer_from_blob(st_tokenizer **out, const char *kind, const uint8_t *blob, size_t n)
{
    if (!out || !kind) ST_FAIL(ST_ERR_ARG, "st_tokenizer_from_blob: NULL argument");
    *out = NULL;
    int k = kind_of(kind, strlen(kind));
    if (k < 0) ST_FAIL(ST_ERR_FORMAT, "tokenizer kind \"%.40s\" unknown; expected byte, gpt2, hf, llama2c or llmc", kind);
    st_tokenizer *t;
    ST_TRY(new_tokenizer(&t, k));
    st_err err = blob_files(t, blob, n);
    if (err) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_tokenizer_free(t);
        return err;
    }
    static const char *const names[ST_TOK_N_KINDS][2] = {
        {"byte", NULL},
        {"gpt2 blob: encoder.json", "gpt2 blob: vocab.bpe"},
        {"hf blob: tokenizer.json", "hf blob: tokenizer_config.json"},
        {"llama2c blob: tokenizer.bin", NULL},
        {"llmc blob: gpt2_tokenizer.bin", NULL},
    };
    ST_TRY(build(t, names[k][0], names[k][1]));
    *out = t;
    return ST_OK;
}

/* ---- accessors ---- */

int st_tokenizer_vocab_size(const st_tokenizer *t) { return t ? t->n_vocab : 0; }
int st_tokenizer_eos(const st_tokenizer *t) { return t ? t->eos : -1; }
int st_tokenizer_bos(const st_tokenizer *t) { return t ? t->bos : -1; }
int st_tokenizer_adds_bos(const st_tokenizer *t) { return t && t->add_bos && t->bos >= 0; }
int st_tokenizer_adds_eos(const st_tokenizer *t) { return t && t->add_eos && t->eos >= 0; }
const char *st_tokenizer_chat_template(const st_tokenizer *t) { return t ? t->chat_template : NULL; }
uint64_t st_tokenizer_hash(const st_tokenizer *t) { return t ? t->hash : 0; }

/* ---- encode ---- */

/* Plain text between added tokens. first: the segment is the text's first;
 * continues: the text continues earlier text of the sequence (so its first
 * segment starts no word: no dummy prefix, no Prepend). */
static st_err encode_text(st_tok_enc *e, const char *s, size_t len, int first, int continues)
{
    const st_tokenizer *t = e->t;
    switch (t->kind) {
    case ST_TOK_BYTE:
        for (size_t i = 0; i < len; i++) ST_TRY(st_tok_push_id(e, (unsigned char)s[i]));
        return ST_OK;
    case ST_TOK_LLAMA2C: ST_TRY(st_tok_llama2c_encode(e, s, len, first && !continues)); return ST_OK;
    default: break;
    }
    char *norm = NULL;
    size_t nlen = len;
    ST_TRY(st_tok_normalize(t, s, len, first && continues, &norm, &nlen));
    st_err err = st_tok_bpe_encode(e, norm ? norm : s, nlen, first && !continues, !(first && continues));
    free(norm);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

/* Split at added tokens (leftmost-longest), encode the plain text between.
 * continues: the text continues earlier text (no llama2c dummy prefix). */
static st_err encode_segments(st_tok_enc *e, const char *text, size_t len, int allow_special,
                              int continues)
{
    const st_tokenizer *t = e->t;
    const int set = allow_special ? 1 : 0;
    size_t pos = 0;
    while (pos < len) {
        size_t ms = len, me = 0, cs = 0, ce = 0;   /* the leftmost, then longest, match of the pieces */
        for (int k = 0; k < t->n_added_re[set]; k++) {
            int rc = st_tok_regex_match(t->added_re[set][k], e->md, text, len, pos, "added tokens");
            if (rc < 0) {
                st_error_trace(__FILE__, __LINE__, __func__);
                return ST_ERR_FORMAT;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
            if (rc > 0 && (ov[0] < ms || (ov[0] == ms && ov[1] > me))) ms = ov[0], me = ov[1], cs = ov[2], ce = ov[3];
        }
        if (ms == len) {
            ST_TRY(encode_text(e, text + pos, len - pos, pos == 0, continues));
            break;
        }
        int32_t id = st_tok_strmap_get(&t->added, text + cs, ce - cs);
        ST_ASSERT(id >= 0 && me > ms, "added-token match at %zu has no id", ms);
        if (ms > pos) ST_TRY(encode_text(e, text + pos, ms - pos, pos == 0, continues));
        ST_TRY(st_tok_push_id(e, id));
        pos = me;
    }
    return ST_OK;
}

static st_err encode(const st_tokenizer *t, const char *text, size_t len, int allow_special,
                     int continues, int32_t **ids, size_t *n, size_t *cap)
{
    if (!t || (!text && len) || !ids || !n || !cap) ST_FAIL(ST_ERR_ARG, "st_tokenizer_encode: NULL argument");
    if (*n > *cap) ST_FAIL(ST_ERR_ARG, "st_tokenizer_encode: count %zu exceeds capacity %zu", *n, *cap);
    size_t bad = st_tok_utf8_check((const uint8_t *)text, len);
    if (bad < len)
        ST_FAIL(ST_ERR_FORMAT, "text to encode is not valid UTF-8 at byte offset %zu (byte 0x%02X); "
                "convert it to UTF-8 first", bad, (unsigned char)text[bad]);
    if (len == 0) return ST_OK;
    st_tok_enc e = {.t = t, .ids = ids, .n = n, .cap = cap};
    e.md = pcre2_match_data_create(16, NULL);
    if (!e.md) ST_FAIL(ST_ERR_MEM, "out of memory creating PCRE2 match data");
    st_err err = encode_segments(&e, text, len, allow_special, continues);
    pcre2_match_data_free(e.md);
    free(e.sym), free(e.prev), free(e.next), free(e.heap), free(e.buf);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

st_err st_tokenizer_encode(const st_tokenizer *t, const char *text, size_t len, int allow_special,
                           int32_t **ids, size_t *n, size_t *cap)
{
    ST_TRY(encode(t, text, len, allow_special, 0, ids, n, cap));
    return ST_OK;
}

st_err st_tokenizer_encode_more(const st_tokenizer *t, const char *text, size_t len, int allow_special,
                                int32_t **ids, size_t *n, size_t *cap)
{
    ST_TRY(encode(t, text, len, allow_special, 1, ids, n, cap));
    return ST_OK;
}

/* ---- decode ---- */

st_err st_tokenizer_decode_piece(const st_tokenizer *t, int32_t prev, int32_t id, const char **piece, size_t *len)
{
    if (!t || !piece || !len) ST_FAIL(ST_ERR_ARG, "st_tokenizer_decode_piece: NULL argument");
    if (id < 0 || id >= t->n_vocab)
        ST_FAIL(ST_ERR_ARG, "token id %d is out of range: the tokenizer has ids 0..%d", id, t->n_vocab - 1);
    if (!t->text[id]) ST_FAIL(ST_ERR_ARG, "token id %d is unused in this tokenizer's vocabulary", id);
    const char *p = t->dec[id];
    size_t n = t->dec_len[id];
    /* sentencepiece's dummy prefix: a piece's leading space after bos is not text */
    if (t->strip_lead_space && prev == t->bos && n > 0 && p[0] == ' ' && (t->kind != ST_TOK_LLAMA2C || p == t->text[id]))
        p++, n--;
    *piece = p;
    *len = n;
    return ST_OK;
}

st_err st_tokenizer_decode(const st_tokenizer *t, const int32_t *ids, size_t n, char **out, size_t *len)
{
    if (!t || (!ids && n) || !out || !len) ST_FAIL(ST_ERR_ARG, "st_tokenizer_decode: NULL argument");
    char *buf = NULL;
    size_t used = 0, cap = 0;
    st_err err = ST_OK;
    for (size_t i = 0; i < n && !err; i++) {
        const char *p = "";
        size_t m = 0;
        /* the sequence start counts as "after bos" for the dummy prefix */
        err = st_tokenizer_decode_piece(t, i ? ids[i - 1] : t->bos, ids[i], &p, &m);
        void *q = buf;
        if (!err) err = st_tok_reserve(&q, &cap, used + m + 1, 1, "the decoded text");
        buf = q;
        if (!err) memcpy(buf + used, p, m), used += m;
    }
    if (!err && !buf) buf = malloc(1);
    if (!err && !buf) err = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    if (err) {
        free(buf);
        st_error_trace(__FILE__, __LINE__, __func__);
        return err;
    }
    buf[used] = '\0';
    *out = buf;
    *len = used;
    return ST_OK;
}
