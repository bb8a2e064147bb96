/* template.c: chat/prompt templates, their loss masks and the max-length
 * policy. The patterns are documented in template.h. */
#include "template.h"

#include <stdlib.h>
#include <string.h>

#include "chat_template.h"

static const st_template templates[] = {
    {"default",
     {"<|system|>\n{content}\n", "<|user|>\n{content}\n", "<|assistant|>\n{content}<eos>"}, NULL},
    {"plain", {"{content}", "{content}", "{content}<eos>"}, NULL},
    {"chatml",
     {"<|im_start|>system\n{content}<|im_end|>\n", "<|im_start|>user\n{content}<|im_end|>\n",
      "<|im_start|>assistant\n{content}<|im_end|>\n"}, NULL},
};
#define N_TEMPLATES ((int)(sizeof templates / sizeof templates[0]))

const st_template *st_template_find(const char *name)
{
    for (int i = 0; i < N_TEMPLATES; i++)
        if (!strcmp(templates[i].name, name)) return &templates[i];
    return NULL;
}

const char *st_template_names(void) { return "default, plain, chatml"; }

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
static st_err push_literal(st_tokseq *s, const st_tokenizer *tok, const st_template *tpl,
                           const char *p, size_t len, uint8_t mask)
{
    static const char eos_mark[] = "<eos>";
    const size_t eos_len = sizeof eos_mark - 1;
    while (len) {
        const char *m = memmem(p, len, eos_mark, eos_len);
        size_t lit = m ? (size_t)(m - p) : len;
        ST_TRY(st_tokseq_push_text(s, tok, p, lit, 1, mask));
        if (!m) break;
        int eos = st_tokenizer_eos(tok);
        if (eos < 0)
            ST_FAIL(ST_ERR_ARG, "template '%s' ends responses with <eos> but the tokenizer has no "
                    "end-of-sequence token (choose a tokenizer with one)", tpl->name);
        ST_TRY(st_tokseq_push_id(s, eos, mask));
        p = m + eos_len;
        len -= lit + eos_len;
    }
    return ST_OK;
}

st_err st_template_render(st_tokseq *s, const st_template *tpl, const st_tokenizer *tok,
                          const st_turn *turns, int n_turns)
{
    static const char slot[] = "{content}";
    if (tpl->jinja) {
        ST_TRY(st_chat_template_render(s, tpl->jinja, tok, turns, n_turns));
        return ST_OK;
    }
    st_tokseq_clear(s);
    int last = -1;
    for (int i = 0; i < n_turns; i++)
        if (turns[i].role == ST_ROLE_ASSISTANT) last = i;
    if (last < 0) ST_FAIL(ST_ERR_ARG, "nothing to learn: the conversation has no assistant turn");

    int bos = st_tokenizer_bos(tok), eos = st_tokenizer_eos(tok);
    if (bos >= 0 && bos != eos) {
        ST_TRY(st_tokseq_push_id(s, bos, 0));
        s->has_bos = 1;
    }
    for (int i = 0; i <= last; i++) {
        const char *pat = tpl->pattern[turns[i].role];
        const char *at = strstr(pat, slot);
        ST_ASSERT(at, "template '%s' has no {content} slot", tpl->name);
        uint8_t learn = turns[i].role == ST_ROLE_ASSISTANT;
        ST_TRY(push_literal(s, tok, tpl, pat, (size_t)(at - pat), 0));
        if (i == last) s->resp_start = s->n;
        ST_TRY(st_tokseq_push_text(s, tok, turns[i].text, turns[i].len, 0, learn));
        const char *post = at + sizeof slot - 1;
        ST_TRY(push_literal(s, tok, tpl, post, strlen(post), learn));
    }
    return ST_OK;
}

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
