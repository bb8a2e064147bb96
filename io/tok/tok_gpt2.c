/* tok_gpt2.c: OpenAI's GPT-2 files: encoder.json (token -> id) and
 * vocab.bpe (one merge "a b" per line, highest priority first), plus the
 * JSON helpers tok_hf.c shares. */
#include "io/tok/tok_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

st_err st_tok_json_parse(cJSON **out, const uint8_t *data, size_t n, const char *name)
{
    if (!data || n == 0) ST_FAIL(ST_ERR_FORMAT, "%s is empty; expected JSON", name);
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts((const char *)data, n, &end, 0);
    if (!j) {
        size_t off = end ? (size_t)(end - (const char *)data) : 0;
        ST_FAIL(ST_ERR_FORMAT, "%s is not valid JSON (parsing stopped at byte %zu of %zu%s)", name, off, n,
                off >= n ? ": the file is truncated" : "");
    }
    *out = j;
    return ST_OK;
}

static st_err json_id(const cJSON *item, const char *name, int32_t *id)
{
    double d = cJSON_IsNumber(item) ? item->valuedouble : -1;
    if (!(d >= 0 && d < ST_TOK_MAX_VOCAB) || d != floor(d))
        ST_FAIL(ST_ERR_FORMAT, "%s: token \"%.60s\" has id %s; expected an integer in 0..%d", name,
                item->string ? item->string : "?", cJSON_IsNumber(item) ? "out of range" : "that is not a number",
                ST_TOK_MAX_VOCAB - 1);
    *id = (int32_t)d;
    return ST_OK;
}

st_err st_tok_json_vocab_scan(const cJSON *vocab, const char *name, int32_t *max_id, int32_t *count)
{
    if (!cJSON_IsObject(vocab)) ST_FAIL(ST_ERR_FORMAT, "%s: the vocabulary is not a JSON object {token: id}", name);
    int32_t mx = -1, c = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id;
        ST_TRY(json_id(it, name, &id));
        if (id > mx) mx = id;
        if (c == INT32_MAX) ST_FAIL(ST_ERR_FORMAT, "%s: too many tokens", name);
        c++;
    }
    *max_id = mx;
    *count = c;
    return ST_OK;
}

st_err st_tok_check_density(int32_t max_id, int32_t count, const char *name)
{
    if (max_id < 0) ST_FAIL(ST_ERR_FORMAT, "%s: the vocabulary is empty", name);
    if ((int64_t)max_id >= 2 * (int64_t)count + 1024)
        ST_FAIL(ST_ERR_FORMAT, "%s: token id %d is far beyond the %d tokens given; ids must be (nearly) dense",
                name, max_id, count);
    return ST_OK;
}

st_err st_tok_json_vocab_fill(st_tokenizer *t, const cJSON *vocab, const char *name)
{
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        int32_t id;
        ST_TRY(json_id(it, name, &id));
        const char *s = it->string ? it->string : "";
        ST_TRY(st_tok_set_text(t, id, s, strlen(s), name));
        ST_TRY(st_tok_strmap_put(&t->vocab, t->text[id], t->text_len[id], id, 0));
    }
    return ST_OK;
}

/* vocab.bpe: optional "#version" first line, then "a b" per line. */
static st_err parse_merges(st_tokenizer *t, const uint8_t *data, size_t n, const char *name)
{
    size_t pos = 0, line = 0;
    while (pos < n) {
        const char *l = (const char *)data + pos;
        const char *nl = memchr(l, '\n', n - pos);
        size_t ll = nl ? (size_t)(nl - l) : n - pos;
        pos += ll + 1;
        line++;
        if (ll && l[ll - 1] == '\r') ll--;
        if (ll == 0 || (line == 1 && ll >= 8 && memcmp(l, "#version", 8) == 0)) continue;
        const char *sp = memchr(l, ' ', ll);
        size_t alen = sp ? (size_t)(sp - l) : 0;
        if (!sp || alen == 0 || alen + 1 == ll || memchr(sp + 1, ' ', ll - alen - 1))
            ST_FAIL(ST_ERR_FORMAT, "%s:%zu: expected two tokens separated by one space, got \"%.*s\"", name, line,
                    (int)(ll > 80 ? 80 : ll), l);
        ST_TRY(st_tok_bpe_add_merge(t, l, alen, sp + 1, ll - alen - 1, name, "line", line));
    }
    if (t->n_merges == 0) ST_FAIL(ST_ERR_FORMAT, "%s holds no merges", name);
    return ST_OK;
}

st_err st_tok_gpt2_build(st_tokenizer *t, const char *enc_name, const char *vocab_name)
{
    cJSON *j;
    ST_TRY(st_tok_json_parse(&j, t->file[0], t->file_len[0], enc_name));
    int32_t max_id, count;
    st_err err = st_tok_json_vocab_scan(j, enc_name, &max_id, &count);
    if (!err) err = st_tok_check_density(max_id, count, enc_name);
    if (!err) err = st_tok_alloc_vocab(t, max_id + 1);
    if (!err) err = st_tok_json_vocab_fill(t, j, enc_name);
    cJSON_Delete(j);
    if (err) {
        st_error_trace(__FILE__, __LINE__, __func__);
        return err;
    }
    ST_TRY(parse_merges(t, t->file[1], t->file_len[1], vocab_name));
    ST_TRY(st_tok_bpe_add_stage(t, st_tok_gpt2_pattern, strlen(st_tok_gpt2_pattern), enc_name));
    int32_t eot = st_tok_strmap_get(&t->vocab, "<|endoftext|>", 13);
    if (eot >= 0) {
        st_tok_added a = {.content = t->text[eot], .len = 13, .id = eot, .special = 1};
        ST_TRY(st_tok_build_added_re(t, &a, 1, enc_name));
        t->bos = t->eos = eot;
    }
    ST_TRY(st_tok_bpe_finish(t, enc_name));
    return ST_OK;
}
