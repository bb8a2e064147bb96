/* template.c: the built-in chat/prompt templates and their loss masks, and
 * the choice of a template by name. The patterns are documented in template.h. */
#include "io/chat/template.h"

#include <stdlib.h>
#include <string.h>

#include "io/chat/chat_template.h"

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

    if (st_tokenizer_adds_bos(tok)) {
        ST_TRY(st_tokseq_push_id(s, st_tokenizer_bos(tok), 0));
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

st_err st_template_resolve(const char *name, const st_tokenizer *tok, const char *tok_name, st_template *own,
                           st_chat_template **ct, const st_template **out)
{
    *ct = NULL;
    if (strcmp(name, "tokenizer")) {
        if (!(*out = st_template_find(name)))
            ST_FAIL(ST_ERR_ARG, "--template %s: unknown template (available: %s, tokenizer)", name,
                    st_template_names());
        return ST_OK;
    }
    if (!st_tokenizer_chat_template(tok))
        ST_FAIL(ST_ERR_ARG, "--template tokenizer: the tokenizer %s has no chat template (tokenizer_config.json "
                "\"chat_template\"); use --template default|plain|chatml", tok_name);
    ST_TRY(st_chat_template_from_tokenizer(ct, tok));
    *own = (st_template){"tokenizer", {NULL, NULL, NULL}, *ct};
    *out = own;
    return ST_OK;
}
