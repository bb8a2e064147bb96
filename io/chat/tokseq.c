/* tokseq.c: a token sequence with its loss mask, and the max-length policy. */
#include "io/chat/tokseq.h"

#include <stdlib.h>
#include <string.h>

void st_tokseq_clear(st_tokseq *s)
{
    s->n = 0;
    s->resp_start = 0;
    s->has_bos = 0;
}

void st_tokseq_free(st_tokseq *s)
{
    free(s->ids);
    free(s->mask);
    free(s->tmp);
    memset(s, 0, sizeof *s);
}

static st_err reserve(st_tokseq *s, size_t need)
{
    if (need <= s->cap) return ST_OK;
    size_t cap = s->cap ? s->cap : 256;
    while (cap < need) cap *= 2;
    int32_t *ids = realloc(s->ids, cap * sizeof *ids);
    if (ids) s->ids = ids;
    uint8_t *mask = realloc(s->mask, cap);
    if (mask) s->mask = mask;
    if (!ids || !mask) ST_FAIL(ST_ERR_MEM, "out of memory for a %zu-token sequence", need);
    s->cap = cap;
    return ST_OK;
}

st_err st_tokseq_push_id(st_tokseq *s, int32_t id, uint8_t mask)
{
    ST_TRY(reserve(s, s->n + 1));
    s->ids[s->n] = id;
    s->mask[s->n] = mask;
    s->n++;
    return ST_OK;
}

st_err st_tokseq_push_text(st_tokseq *s, const st_tokenizer *tok, const char *text, size_t len,
                           int allow_special, uint8_t mask)
{
    if (len == 0) return ST_OK;
    s->tmp_n = 0;
    /* one sequence is one text: only its first piece gets a dummy prefix */
    if (s->n > (size_t)s->has_bos)
        ST_TRY(st_tokenizer_encode_more(tok, text, len, allow_special, &s->tmp, &s->tmp_n, &s->tmp_cap));
    else
        ST_TRY(st_tokenizer_encode(tok, text, len, allow_special, &s->tmp, &s->tmp_n, &s->tmp_cap));
    ST_TRY(reserve(s, s->n + s->tmp_n));
    memcpy(s->ids + s->n, s->tmp, s->tmp_n * sizeof *s->tmp);
    memset(s->mask + s->n, mask, s->tmp_n);
    s->n += s->tmp_n;
    return ST_OK;
}

/* Literal template text: "<eos>" is the eos id, the rest is encoded with
 * special tokens allowed. */
/* Keep tokens [from, from + count) right after position at. */
static void keep(st_tokseq *s, size_t at, size_t from, size_t count)
{
    memmove(s->ids + at, s->ids + from, count * sizeof *s->ids);
    memmove(s->mask + at, s->mask + from, count);
}

void st_tokseq_fit(st_tokseq *s, size_t max_len, size_t reserve_len, int *cut_prompt,
                   int *cut_response)
{
    *cut_prompt = *cut_response = 0;
    size_t b = s->has_bos ? 1 : 0;
    if (max_len <= b) max_len = b + 1; /* room for at least one token after bos */
    size_t prompt = s->resp_start, resp = s->n - s->resp_start;
    if (resp > max_len - b) { /* the response alone does not fit: keep its start */
        *cut_prompt = prompt > b;
        *cut_response = 1;
        keep(s, b, s->resp_start, max_len - b);
        s->resp_start = b;
        s->n = max_len;
        return;
    }
    size_t budget = resp;
    if (reserve_len > budget) budget = reserve_len < max_len - b ? reserve_len : max_len - b;
    size_t room = max_len - budget; /* >= b */
    if (prompt <= room) return;
    size_t kept = room - b; /* prompt tokens kept after the bos: its last ones */
    *cut_prompt = 1;
    keep(s, b, prompt - kept, kept + resp);
    s->resp_start = room;
    s->n = room + resp;
}
