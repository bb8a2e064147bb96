/* rewards.c: a reward model and rules, weighted (rewards.h). */
#include "cmd/rewards.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/classify.h"

struct st_rewarder {
    const rl_opts *o;
    int max_new;
    int has_model;
    st_infer rm;            /* the reward model, ST_MODEL_INFER on the run's tp group */
    pcre2_code *re;         /* the pattern, when it has no {reference} */
    pcre2_match_data *md;
    char describe[512];
};

/* pattern with {reference} replaced by ref between \Q and \E (an \E inside
 * ref closes and reopens the quote): malloc'd */
static char *pattern_for(const char *pattern, const char *ref)
{
    size_t cap = strlen(pattern) + 1, n = 0;
    for (const char *p = strstr(pattern, "{reference}"); p; p = strstr(p + 1, "{reference}"))
        cap += 4 * strlen(ref) + 8;
    char *out = malloc(cap);
    if (!out) return NULL;
    for (const char *p = pattern; *p;) {
        if (strncmp(p, "{reference}", 11)) {
            out[n++] = *p++;
            continue;
        }
        n += (size_t)sprintf(out + n, "\\Q");
        for (const char *r = ref; *r; r++) {
            if (r[0] == '\\' && r[1] == 'E') {
                n += (size_t)sprintf(out + n, "\\E\\\\E\\Q");
                r++;
            } else {
                out[n++] = *r;
            }
        }
        n += (size_t)sprintf(out + n, "\\E");
        p += 11;
    }
    out[n] = '\0';
    return out;
}

static st_err compile(pcre2_code **re, const char *pattern, const char *shown)
{
    int ecode = 0;
    PCRE2_SIZE eoff = 0;
    *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &ecode,
                        &eoff, NULL);
    if (!*re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        ST_FAIL(ST_ERR_ARG, "rl.reward.regex '%s': %s at offset %zu", shown, (const char *)msg, (size_t)eoff);
    }
    return ST_OK;
}

static void add_term(st_rewarder *r, float w, const char *what)
{
    if (w == 0.0f) return;
    size_t n = strlen(r->describe);
    snprintf(r->describe + n, sizeof r->describe - n, "%s%g * %s", n ? " + " : "", (double)w, what);
}

static st_err open_model(st_rewarder *r, const trainer *t)
{
    const rl_opts *o = &t->o->rl;
    const st_infer_opts io = {.B = t->o->batch_size, .T = t->o->seq_len, .head = ST_INFER_HEAD_REQUIRED,
                              .merge_lora = 1, .need_tokenizer = 1};
    ST_TRY(st_infer_open(&r->rm, o->reward.model, &t->grid, &io));
    r->has_model = 1;
    if (r->rm.n_labels != 1)
        ST_FAIL(ST_ERR_ARG, "rl.reward.model '%s' is a classifier of %d labels, not a reward model (train one with "
                "method reward)", o->reward.model, r->rm.n_labels);
    if (r->rm.cfg.max_seq < t->o->seq_len)
        ST_FAIL(ST_ERR_ARG, "rl.reward.model '%s' reads at most %d tokens, fewer than seq_len %d", o->reward.model,
                r->rm.cfg.max_seq, t->o->seq_len);
    if (st_tokenizer_hash(r->rm.tok) != st_dataset_tokenizer_hash(t->ds))
        ST_FAIL(ST_ERR_ARG, "rl.reward.model '%s' was trained with a different tokenizer than '%s' uses",
                o->reward.model, t->o->data_train);
    return ST_OK;
}

st_err st_rewarder_open(st_rewarder **out, const trainer *t)
{
    const rl_opts *o = &t->o->rl;
    st_rewarder *r;
    ST_ALLOC(r, 1, "rewarder");
    *out = r;
    r->o = o;
    r->max_new = o->max_new;
    if (o->reward.model && o->reward.model_weight != 0.0f) ST_TRY(open_model(r, t));
    if (o->reward.regex && o->reward.regex_weight != 0.0f) {
        if (!strstr(o->reward.regex, "{reference}")) ST_TRY(compile(&r->re, o->reward.regex, o->reward.regex));
        else { /* check it compiles with a reference in it */
            char *p = pattern_for(o->reward.regex, "x");
            pcre2_code *test = NULL;
            st_err e = p ? compile(&test, p, o->reward.regex) : ST_ERR_MEM;
            free(p);
            pcre2_code_free(test);
            ST_TRY(e);
        }
        if (!(r->md = pcre2_match_data_create(1, NULL))) ST_FAIL(ST_ERR_MEM, "out of memory");
    }
    if (r->has_model) add_term(r, o->reward.model_weight, "reward model");
    add_term(r, o->reward.exact, "exact");
    add_term(r, o->reward.contains, "contains");
    if (r->md) add_term(r, o->reward.regex_weight, "regex");
    add_term(r, -o->reward.length_penalty, "length / max_new");
    add_term(r, -o->reward.missing_eos, "no stop token");
    if (!r->describe[0])
        ST_FAIL(ST_ERR_ARG, "no reward: set rl.reward.model (a reward model's checkpoint) or a rule "
                "(rl.reward.exact, rl.reward.contains, rl.reward.regex, rl.reward.length_penalty)");
    return ST_OK;
}

void st_rewarder_close(st_rewarder *r)
{
    if (!r) return;
    if (r->has_model) st_infer_close(&r->rm);
    pcre2_code_free(r->re);
    pcre2_match_data_free(r->md);
    free(r);
}

const char *st_rewarder_describe(const st_rewarder *r) { return r->describe; }

const char *st_rewarder_model_path(const st_rewarder *r) { return r->has_model ? r->o->reward.model : NULL; }

/* 1 when the answer matches the pattern (with this reference) */
static st_err regex_match(st_rewarder *r, const char *answer, const char *reference, int *hit)
{
    pcre2_code *re = r->re, *own = NULL;
    if (!re) {
        char *p = pattern_for(r->o->reward.regex, reference);
        if (!p) ST_FAIL(ST_ERR_MEM, "out of memory");
        st_err e = compile(&own, p, r->o->reward.regex);
        free(p);
        ST_TRY(e);
        re = own;
    }
    const int rc = pcre2_match(re, (PCRE2_SPTR)answer, strlen(answer), 0, 0, r->md, NULL);
    pcre2_code_free(own);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        ST_FAIL(ST_ERR_ARG, "rl.reward.regex '%s' on an answer: %s", r->o->reward.regex, (const char *)msg);
    }
    *hit = rc >= 0;
    return ST_OK;
}

st_err st_rewarder_score(st_rewarder *r, const int32_t *tokens, const int32_t *lengths, int n, int T,
                         const int *alen, const int *stopped, char *const *answer, char *const *reference,
                         double *reward, double *model)
{
    const rl_opts *o = r->o;
    if (r->has_model) {
        double none = 0;
        ST_TRY(st_cls_forward(&r->rm.head, &r->rm.m, tokens, lengths, NULL, n, T, 1.0f, &none, NULL));
    }
    for (int i = 0; i < n; i++) {
        const double score = r->has_model ? r->rm.head.logits[i] : 0.0;
        double s = o->reward.model_weight * score;
        if (o->reward.exact != 0.0f) s += o->reward.exact * !strcmp(answer[i], reference[i]);
        if (o->reward.contains != 0.0f) s += o->reward.contains * (reference[i][0] && strstr(answer[i], reference[i]));
        if (r->md) {
            int hit = 0;
            ST_TRY(regex_match(r, answer[i], reference[i], &hit));
            s += o->reward.regex_weight * hit;
        }
        s -= o->reward.length_penalty * (double)alen[i] / r->max_new;
        s -= o->reward.missing_eos * !stopped[i];
        reward[i] = s;
        if (model) model[i] = score;
    }
    return ST_OK;
}
