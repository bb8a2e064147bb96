/* chat_template.c: a Jinja chat template -> tokens and loss mask: the
 * template's generation blocks, else the prefix method, else each turn as
 * the whole conversation renders it (see chat_template.h). */
#include "io/chat/chat_template.h"

#include <stdlib.h>
#include <string.h>

#include "io/jsonl.h"

struct st_chat_template {
    st_jinja *tpl;
    char *bos, *eos;   /* the tokenizer's texts, or NULL */
};

static const char hint[] = "use --template default|plain|chatml";

/* ---- the template ---------------------------------------------------------------- */

void st_chat_template_free(st_chat_template *ct)
{
    if (!ct) return;
    st_jinja_free(ct->tpl);
    free(ct->bos);
    free(ct->eos);
    free(ct);
}

/* The first line of the current error message, copied. */
static void first_line(char *buf, size_t cap)
{
    const char *m = st_error_message(), *nl = strchr(m, '\n');
    snprintf(buf, cap, "%.*s", (int)(nl ? nl - m : (long)strlen(m)), m);
}

st_err st_chat_template_new(st_chat_template **out, const char *source, const char *bos_token,
                            const char *eos_token)
{
    *out = NULL;
    st_chat_template *ct = calloc(1, sizeof *ct);
    if (!ct || (bos_token && !(ct->bos = strdup(bos_token))) || (eos_token && !(ct->eos = strdup(eos_token)))) {
        st_chat_template_free(ct);
        ST_FAIL(ST_ERR_MEM, "out of memory for the chat template");
    }
    st_err e = st_jinja_parse(&ct->tpl, source, strlen(source));
    if (e) {
        st_chat_template_free(ct);
        if (e == ST_ERR_MEM) ST_TRY(e);
        char msg[1024];
        first_line(msg, sizeof msg);
        ST_FAIL(e, "%s; %s", msg, hint);
    }
    *out = ct;
    return ST_OK;
}

/* The text of token id (NULL when id < 0). */
static st_err token_text(const st_tokenizer *tok, int id, char **out)
{
    const char *p;
    size_t n;
    *out = NULL;
    if (id < 0) return ST_OK;
    ST_TRY(st_tokenizer_decode_piece(tok, -1, id, &p, &n));
    if (!(*out = strndup(p, n))) ST_FAIL(ST_ERR_MEM, "out of memory");
    return ST_OK;
}

st_err st_chat_template_from_tokenizer(st_chat_template **out, const st_tokenizer *tok)
{
    const char *src = st_tokenizer_chat_template(tok);
    *out = NULL;
    if (!src) ST_FAIL(ST_ERR_ARG, "the tokenizer has no chat template (tokenizer_config.json \"chat_template\")");
    char *bos, *eos = NULL;
    st_err e = token_text(tok, st_tokenizer_bos(tok), &bos);
    if (!e) e = token_text(tok, st_tokenizer_eos(tok), &eos);
    if (!e) e = st_chat_template_new(out, src, bos, eos);
    free(bos);
    free(eos);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ---- rendering ---------------------------------------------------------------------- */

static const char *const role_name[] = {"system", "user", "assistant"};

/* {role, content} per turn: the role is the template's kind of text (one of
 * three names prepare checked), the content is the user's. */
static st_err make_messages(const st_turn *turns, int n, st_jv ***out)
{
    st_jv **m = calloc((size_t)(n ? n : 1), sizeof *m);
    if (!m) ST_FAIL(ST_ERR_MEM, "out of memory for %d messages", n);
    st_err e = ST_OK;
    for (int i = 0; i < n && !e; i++) {
        if (!(m[i] = st_jv_new_dict())) {
            e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for messages");
            break;
        }
        e = st_jv_put(m[i], "role", st_jv_string(role_name[turns[i].role], strlen(role_name[turns[i].role]), 0));
        if (!e) e = st_jv_put(m[i], "content", st_jv_string(turns[i].text, turns[i].len, 1));
    }
    if (e) {
        for (int i = 0; i < n; i++) st_jv_unref(m[i]);
        free(m);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    *out = m;
    return ST_OK;
}

static void free_messages(st_jv **m, int n)
{
    for (int i = 0; m && i < n; i++) st_jv_unref(m[i]);
    free(m);
}

st_err st_chat_template_render_vars(const st_chat_template *ct, const st_jinja_var *vars, int n_vars,
                                    st_jinja_text *out, st_jinja_report *rep)
{
    enum { N_OWN = 4 };
    if (n_vars > 64) ST_FAIL(ST_ERR_ARG, "more than 64 template variables");
    st_jv *own[N_OWN] = {ct->bos ? st_jv_string(ct->bos, strlen(ct->bos), 0) : NULL,
                         ct->eos ? st_jv_string(ct->eos, strlen(ct->eos), 0) : NULL, st_jv_none(), st_jv_none()};
    static const char *const own_name[N_OWN] = {"bos_token", "eos_token", "tools", "documents"};
    st_jinja_var all[N_OWN + 64];
    int n = 0;
    st_err e = ST_OK;
    for (int k = 0; k < N_OWN; k++) {
        if ((k == 0 && !ct->bos) || (k == 1 && !ct->eos)) continue;
        if (!own[k]) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for template variables");
        int given = 0;
        for (int i = 0; i < n_vars; i++) given |= !strcmp(vars[i].name, own_name[k]);
        if (!given) all[n++] = (st_jinja_var){own_name[k], own[k]};
    }
    for (int i = 0; i < n_vars; i++) all[n++] = vars[i];
    if (!e) e = st_jinja_render_report(ct->tpl, all, n, out, rep);
    for (int k = 0; k < N_OWN; k++) st_jv_unref(own[k]);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* A JSON value as a template value. Strings under "messages" are marked as
 * content (as prepare marks them); numbers with no fraction become
 * integers (cJSON keeps no difference between 1 and 1.0). */
static st_err from_json(const cJSON *j, int content, int depth, st_jv **out)
{
    *out = NULL;
    if (depth > 64) ST_FAIL(ST_ERR_FORMAT, "JSON nested more than 64 deep");
    if (cJSON_IsString(j)) *out = st_jv_string(j->valuestring, strlen(j->valuestring), content);
    else if (cJSON_IsBool(j)) *out = st_jv_boolean(cJSON_IsTrue(j));
    else if (cJSON_IsNull(j)) *out = st_jv_none();
    else if (cJSON_IsNumber(j) && j->valuedouble < 9e15 && j->valuedouble > -9e15 &&
             j->valuedouble == (double)(int64_t)j->valuedouble)
        *out = st_jv_integer((int64_t)j->valuedouble);
    else if (cJSON_IsNumber(j)) *out = st_jv_number(j->valuedouble);
    else if (cJSON_IsArray(j) || cJSON_IsObject(j)) {
        int list = cJSON_IsArray(j);
        st_jv *c = list ? st_jv_new_list() : st_jv_new_dict();
        if (!c) ST_FAIL(ST_ERR_MEM, "out of memory");
        for (const cJSON *k = j->child; k; k = k->next) {
            st_jv *v;
            st_err e = from_json(k, content, depth + 1, &v);
            if (!e) e = list ? st_jv_append(c, v) : st_jv_put(c, k->string, v);
            if (e) {
                st_jv_unref(c);
                return e;
            }
        }
        *out = c;
        return ST_OK;
    }
    if (!*out) ST_FAIL(ST_ERR_MEM, "out of memory");
    return ST_OK;
}

st_err st_chat_template_json(const cJSON *j, int content, st_jv **out)
{
    ST_TRY(from_json(j, content, 0, out));
    return ST_OK;
}

/* render(messages[:k], add_generation_prompt=gen), reporting into rep (or NULL) */
static st_err render_first(const st_chat_template *ct, st_jv *const *msgs, int k, int gen, st_jinja_text *out,
                           st_jinja_report *rep)
{
    st_jv *list = st_jv_new_list(), *g = st_jv_boolean(gen);
    st_err e = ST_OK;
    if (!list || !g) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for template variables");
    for (int i = 0; i < k && !e; i++) e = st_jv_append(list, st_jv_ref(msgs[i]));
    st_jinja_var vars[2] = {{"messages", list}, {"add_generation_prompt", g}};
    if (!e) e = st_chat_template_render_vars(ct, vars, 2, out, rep);
    st_jv_unref(list), st_jv_unref(g);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_chat_template_apply(const st_chat_template *ct, const st_turn *turns, int n_turns,
                              int add_generation_prompt, st_jinja_text *out)
{
    st_jv **msgs;
    ST_TRY(make_messages(turns, n_turns, &msgs));
    st_err e = render_first(ct, msgs, n_turns, add_generation_prompt, out, NULL);
    free_messages(msgs, n_turns);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ---- the loss mask ------------------------------------------------------------------- */

/* The whole conversation as rendered, and what the render told. */
typedef struct {
    st_jv **msgs;
    int n_msgs, last;         /* messages[:n_msgs]; last: the last assistant message */
    st_jinja_text full;       /* R = render(messages) */
    st_jinja_report rep;      /* rep.iter[i]: where the template's message loop wrote message i */
    st_jinja_text part;       /* scratch for the renders of first messages */
    uint8_t *learn;           /* (full.n) */
    size_t resp;              /* where the last response starts */
} conv;

static int is_prefix(const st_jinja_text *p, const st_jinja_text *full)
{
    return p->n <= full->n && (!p->n || !memcmp(p->s, full->s, p->n));
}

static st_err not_stable(int k, int n_msgs, const char *how)
{
    ST_FAIL(ST_ERR_FORMAT, "chat template is not prefix-stable at message %d: rendering the first %d "
            "message%s%s does not give the start of the whole conversation's text, and the template's "
            "loop over the messages does not show where message %d ends, so the response cannot be "
            "located; %s", k, n_msgs, n_msgs == 1 ? "" : "s", how, k, hint);
}

/* The generation-block rule: the mask is the text written inside them. */
static st_err mask_generation(conv *c)
{
    if (!c->rep.n_gen)
        ST_FAIL(ST_ERR_FORMAT, "the chat template's {%% generation %%} blocks wrote nothing for this "
                "conversation, so there is nothing to learn; %s", hint);
    for (size_t i = 0; i < c->rep.n_gen; i++) memset(c->learn + c->rep.gen[i].a, 1, c->rep.gen[i].b - c->rep.gen[i].a);
    c->resp = c->rep.gen[c->rep.n_gen - 1].a;
    return ST_OK;
}

/* The end of the last turn: the end of the text, except that text the
 * template writes after its loop over the messages and would write as well
 * when prompting for another reply (Llama 3's unconditional assistant
 * header) is not the reply's. */
static st_err last_end(const st_chat_template *ct, conv *c, size_t *end)
{
    const st_jinja_span *it = &c->rep.iter[c->last];
    *end = c->full.n;
    if (it->b <= it->a || it->b == c->full.n) return ST_OK;
    ST_TRY(render_first(ct, c->msgs, c->n_msgs, 1, &c->part, NULL));
    size_t tail = c->full.n - it->b;
    if (c->part.n >= c->full.n && !memcmp(c->part.s, c->full.s, it->b) &&
        !memcmp(c->part.s + it->b, c->full.s + it->b, tail))
        *end = it->b;
    return ST_OK;
}

/* Assistant message k's span [a, b): a = len(render(messages[:k],
 * add_generation_prompt=True)), a prefix of R; b = len(render(messages[:k+1]))
 * when that is a prefix of R (the prefix method), else the end of what the
 * template's loop wrote for message k in R (the turn as the whole
 * conversation renders it). */
static st_err response_span(const st_chat_template *ct, conv *c, int k)
{
    ST_TRY(render_first(ct, c->msgs, k, 1, &c->part, NULL));
    if (!is_prefix(&c->part, &c->full)) return not_stable(k, k, " with add_generation_prompt");
    size_t a = c->part.n, b;
    const st_jinja_span *it = &c->rep.iter[k];
    if (k == c->last) {
        ST_TRY(last_end(ct, c, &b));
    } else {
        ST_TRY(render_first(ct, c->msgs, k + 1, 0, &c->part, NULL));
        if (is_prefix(&c->part, &c->full)) b = c->part.n;
        else if (it->b > a && it->a <= a) b = it->b;
        else return not_stable(k, k + 1, "");
    }
    if (b <= a)
        ST_FAIL(ST_ERR_FORMAT, "the chat template renders assistant message %d as nothing (no text between "
                "its prompt and its end), so there is nothing to learn; %s", k, hint);
    memset(c->learn + a, 1, b - a);
    if (k == c->last) c->resp = a;
    return ST_OK;
}

/* ---- tokens ------------------------------------------------------------------------------ */

/* A stretch of the rendering encoded as one piece. */
typedef struct {
    size_t a, b;
    uint8_t special;   /* the template's own text holding special tokens: allow_special */
    uint8_t learn;
} seg;

typedef struct {
    seg *v;
    size_t n, cap;
    size_t resp;       /* a piece must start here */
    int32_t *ids[3];   /* encode scratch */
    size_t n_ids[3], cap_ids[3];
} segs;

/* Append [a, b); plain text joins a plain neighbour with the same mask. */
static st_err seg_add(segs *s, size_t a, size_t b, int special, uint8_t learn)
{
    if (a >= b) return ST_OK;
    seg *last = s->n ? &s->v[s->n - 1] : NULL;
    if (last && !special && !last->special && last->learn == learn && last->b == a && a != s->resp) {
        last->b = b;
        return ST_OK;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 32;
        seg *v = realloc(s->v, cap * sizeof *v);
        if (!v) ST_FAIL(ST_ERR_MEM, "out of memory for %zu text pieces", cap);
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (seg){a, b, (uint8_t)(special != 0), learn};
    return ST_OK;
}

static st_err encode_into(segs *s, int k, const st_tokenizer *tok, const char *p, size_t n, int allow)
{
    s->n_ids[k] = 0;
    ST_TRY(st_tokenizer_encode_more(tok, p, n, allow, &s->ids[k], &s->n_ids[k], &s->cap_ids[k]));
    return ST_OK;
}

/* The template's text [a, b): its special tokens become pieces of their own;
 * the text between them is plain. A token is special when its text alone,
 * encoded without special tokens, is not that token. */
static st_err literal_segs(segs *s, const st_tokenizer *tok, const char *t, size_t a, size_t b, uint8_t learn)
{
    ST_TRY(encode_into(s, 0, tok, t + a, b - a, 1));
    ST_TRY(encode_into(s, 1, tok, t + a, b - a, 0));
    if (s->n_ids[0] == s->n_ids[1] && !memcmp(s->ids[0], s->ids[1], s->n_ids[0] * sizeof(int32_t)))
        return seg_add(s, a, b, 0, learn);
    size_t mark = s->n, off = a;
    for (size_t i = 0; i < s->n_ids[0]; i++) {
        const char *p;
        size_t len, bad;
        char why[64];
        int32_t id = s->ids[0][i];
        ST_TRY(st_tokenizer_decode_piece(tok, -1, id, &p, &len));
        if (len > b - off || memcmp(p, t + off, len)) break; /* pieces do not spell the text */
        int special = 0;
        if (len && st_utf8_valid(p, len, &bad, why, sizeof why)) {
            ST_TRY(encode_into(s, 2, tok, p, len, 0));
            special = !(s->n_ids[2] == 1 && s->ids[2][0] == id);
        }
        ST_TRY(seg_add(s, off, off + len, special, learn));
        off += len;
    }
    if (off == b) return ST_OK;
    s->n = mark; /* could not map tokens to text: one piece with special tokens allowed */
    return seg_add(s, a, b, 1, learn);
}

/* Cut t into pieces: where provenance or the mask changes, at resp, and
 * around the template's special tokens. */
static st_err cut(segs *s, const st_tokenizer *tok, const st_jinja_text *t, const uint8_t *learn)
{
    for (size_t a = 0, b; a < t->n; a = b) {
        b = a + 1;
        while (b < t->n && t->content[b] == t->content[a] && learn[b] == learn[a] && b != s->resp) b++;
        if (t->content[a]) ST_TRY(seg_add(s, a, b, 0, learn[a]));
        else ST_TRY(literal_segs(s, tok, t->s, a, b, learn[a]));
    }
    return ST_OK;
}

static st_err encode(st_tokseq *s, const st_tokenizer *tok, const st_jinja_text *t,
                     const uint8_t *learn, size_t resp)
{
    /* No bos of our own: transformers tokenizes the rendering with
     * add_special_tokens=False, so a sequence has the bos its template writes. */
    int bos = st_tokenizer_bos(tok), eos = st_tokenizer_eos(tok), distinct = bos >= 0 && bos != eos;
    segs sg = {.resp = resp};
    st_err e = cut(&sg, tok, t, learn);
    for (size_t i = 0; !e && i < sg.n; i++) {
        const seg *g = &sg.v[i];
        if (g->a == resp) s->resp_start = s->n;
        e = st_tokseq_push_text(s, tok, t->s + g->a, g->b - g->a, g->special, g->learn);
        /* a template's own leading bos counts as the sequence's bos (kept by
         * truncation; the text after it is the sequence's first piece) */
        if (!e && distinct && !s->has_bos && s->n == 1 && s->ids[0] == bos) s->has_bos = 1;
    }
    free(sg.v);
    for (int k = 0; k < 3; k++) free(sg.ids[k]);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* The final rendering of turns[:last+1] and its mask (learn, resp). */
static st_err locate(const st_chat_template *ct, const st_turn *turns, conv *c)
{
    ST_TRY(make_messages(turns, c->n_msgs, &c->msgs));
    c->rep.track = c->msgs;
    c->rep.n_track = c->n_msgs;
    if (!(c->rep.iter = calloc((size_t)c->n_msgs, sizeof *c->rep.iter)))
        ST_FAIL(ST_ERR_MEM, "out of memory for %d messages", c->n_msgs);
    ST_TRY(render_first(ct, c->msgs, c->n_msgs, 0, &c->full, &c->rep));
    if (!(c->learn = calloc(c->full.n + 1, 1))) ST_FAIL(ST_ERR_MEM, "out of memory for a %zu-byte mask", c->full.n);
    if (st_jinja_has_generation(ct->tpl)) return mask_generation(c);
    for (int k = 0; k <= c->last; k++)
        if (turns[k].role == ST_ROLE_ASSISTANT) ST_TRY(response_span(ct, c, k));
    return ST_OK;
}

st_err st_chat_template_render(st_tokseq *s, const st_chat_template *ct, const st_tokenizer *tok,
                               const st_turn *turns, int n_turns)
{
    st_tokseq_clear(s);
    conv c = {.last = -1};
    for (int i = 0; i < n_turns; i++)
        if (turns[i].role == ST_ROLE_ASSISTANT) c.last = i;
    if (c.last < 0) ST_FAIL(ST_ERR_ARG, "nothing to learn: the conversation has no assistant turn");
    c.n_msgs = c.last + 1;
    st_err e = locate(ct, turns, &c);
    if (!e) e = encode(s, tok, &c.full, c.learn, c.resp);
    free_messages(c.msgs, c.n_msgs);
    free(c.rep.iter);
    st_jinja_report_free(&c.rep);
    st_jinja_text_free(&c.full);
    st_jinja_text_free(&c.part);
    free(c.learn);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}
