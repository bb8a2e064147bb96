/* tok_vocab.c: the id tables every tokenizer kind fills: id -> text, text ->
 * id, and the regex that finds added (special) tokens in a text. */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

st_err st_tok_alloc_vocab(st_tokenizer *t, int32_t n_vocab)
{
    if (n_vocab <= 0 || n_vocab > ST_TOK_MAX_VOCAB)
        ST_FAIL(ST_ERR_FORMAT, "tokenizer vocabulary of %d ids is outside 1..%d", n_vocab, ST_TOK_MAX_VOCAB);
    t->n_vocab = n_vocab;
    ST_ALLOC(t->text, n_vocab, "token texts");
    ST_ALLOC(t->text_len, n_vocab, "token text lengths");
    ST_ALLOC(t->dec, n_vocab, "token bytes");
    ST_ALLOC(t->dec_len, n_vocab, "token byte lengths");
    ST_ALLOC(t->is_added, n_vocab, "added-token flags");
    return ST_OK;
}

/* Copy s as the text of id; each id gets one text. */
st_err st_tok_set_text(st_tokenizer *t, int32_t id, const char *s, size_t len, const char *file)
{
    if (id < 0 || id >= t->n_vocab)
        ST_FAIL(ST_ERR_FORMAT, "%s: token id %d is outside 0..%d", file, id, t->n_vocab - 1);
    if (t->text[id])
        ST_FAIL(ST_ERR_FORMAT, "%s: token id %d is given twice (\"%.40s\" and \"%.40s\"); ids must be unique",
                file, id, t->text[id], s);
    if (len > UINT32_MAX - 1) ST_FAIL(ST_ERR_FORMAT, "%s: token id %d is %zu bytes long", file, id, len);
    char *c = malloc(len + 1);
    if (!c) ST_FAIL(ST_ERR_MEM, "out of memory copying token %d (%zu bytes)", id, len);
    memcpy(c, s, len);
    c[len] = '\0';
    t->text[id] = c;
    t->text_len[id] = (uint32_t)len;
    t->dec[id] = c;
    t->dec_len[id] = (uint32_t)len;
    return ST_OK;
}

/* Append s to a growing pattern string. */
static st_err pat_append(char **p, size_t *len, size_t *cap, const char *s, size_t n)
{
    void *q = *p;
    ST_TRY(st_tok_reserve(&q, cap, *len + n + 1, 1, "the added-token pattern"));
    *p = q;
    memcpy(*p + *len, s, n);
    *len += n;
    (*p)[*len] = '\0';
    return ST_OK;
}

/* One alternative: the token's literal text in capture 1, with HF's options. */
static st_err pat_literal(char **p, size_t *len, size_t *cap, const st_tok_added *a)
{
    const char *pre = a->lstrip ? "\\s*" : "";
    const char *wb = a->single_word ? "(?<![\\p{L}\\p{N}_])" : "";
    ST_TRY(pat_append(p, len, cap, pre, strlen(pre)));
    ST_TRY(pat_append(p, len, cap, wb, strlen(wb)));
    ST_TRY(pat_append(p, len, cap, "(", 1));
    ST_TRY(st_tok_regex_escape(p, len, cap, a->content, a->len));
    ST_TRY(pat_append(p, len, cap, ")", 1));
    const char *wa = a->single_word ? "(?![\\p{L}\\p{N}_])" : "";
    const char *post = a->rstrip ? "\\s*" : "";
    ST_TRY(pat_append(p, len, cap, wa, strlen(wa)));
    ST_TRY(pat_append(p, len, cap, post, strlen(post)));
    return ST_OK;
}

static int by_len_desc(const void *x, const void *y)
{
    const st_tok_added *a = x, *b = y;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* PCRE2 compiles patterns up to 64K code units; Gemma 3 has 6,415 added
 * tokens, so the alternation is cut into pieces of this many pattern bytes. */
#define ADDED_CHUNK 8192

/* Compile one piece of the alternation over the added tokens. */
static st_err added_chunk(st_tokenizer *t, int set, const char *p, size_t len, const char *file)
{
    pcre2_code **re = realloc(t->added_re[set], sizeof *re * (size_t)(t->n_added_re[set] + 1));
    if (!re) ST_FAIL(ST_ERR_MEM, "out of memory for added-token patterns");
    t->added_re[set] = re;
    t->added_hash = st_tok_fnv(t->added_hash, p, len + 1);
    char what[300];
    snprintf(what, sizeof(what), "%s: added tokens", file);
    ST_TRY(st_tok_regex_compile(&re[t->n_added_re[set]], p, len, what));
    t->n_added_re[set]++;
    return ST_OK;
}

/* Compile the alternation over the added tokens (all, or non-special only),
 * in pieces. Longest first, so PCRE2's leftmost-first match is leftmost-
 * longest as in Hugging Face (the caller takes the leftmost, then longest,
 * match of the pieces); the branch-reset group (?|...) puts every token's
 * literal in capture 1, whose text names the id. */
static st_err added_regex(st_tokenizer *t, int set, const st_tok_added *sorted, int n, const char *file)
{
    char *p = NULL;
    size_t len = 0, cap = 0;
    int count = 0;
    st_err err = ST_OK;
    for (int i = 0; !err && i < n; i++) {
        if (sorted[i].special && !set) continue;
        const char *sep = count++ ? "|" : "(?|";
        err = pat_append(&p, &len, &cap, sep, strlen(sep));
        if (!err) err = pat_literal(&p, &len, &cap, &sorted[i]);
        if (!err && len >= ADDED_CHUNK) {
            err = pat_append(&p, &len, &cap, ")", 1);
            if (!err) err = added_chunk(t, set, p, len, file);
            len = 0, count = 0;
        }
    }
    if (!err && count) err = pat_append(&p, &len, &cap, ")", 1);
    if (!err && count) err = added_chunk(t, set, p, len, file);
    free(p);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

st_err st_tok_build_added_re(st_tokenizer *t, const st_tok_added *added, int n_added, const char *file)
{
    st_tok_added *sorted = NULL;
    if (n_added == 0) return ST_OK;
    ST_ALLOC(sorted, n_added, "sorted added tokens");
    int m = 0;
    for (int i = 0; i < n_added; i++) {
        if (added[i].len == 0) continue;   /* an empty token can never be matched */
        sorted[m++] = added[i];
        t->is_added[added[i].id] = added[i].special ? 1 : 2;
    }
    qsort(sorted, (size_t)m, sizeof(*sorted), by_len_desc);
    t->added_hash = 0xcbf29ce484222325ULL;
    st_err err = added_regex(t, 0, sorted, m, file);
    if (!err) err = added_regex(t, 1, sorted, m, file);
    for (int i = 0; !err && i < m; i++)
        err = st_tok_strmap_put(&t->added, sorted[i].content, (uint32_t)sorted[i].len, sorted[i].id, 0);
    free(sorted);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

int st_tokenizer_token_id(const st_tokenizer *t, const char *token_text)
{
    if (!t || !token_text) return -1;
    size_t n = strlen(token_text);
    int32_t id = st_tok_strmap_get(&t->added, token_text, n);
    return id >= 0 ? id : st_tok_strmap_get(&t->vocab, token_text, n);
}
