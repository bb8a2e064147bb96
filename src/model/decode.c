/* decode.c: prefill and step for B rows against a key/value cache (decode.h). */
#include "model/decode.h"

#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/timer.h"
#include "mpi/tp.h"

st_err st_decoder_init(st_decoder *d, st_model *m, int B)
{
    memset(d, 0, sizeof *d);
    const st_layout *y = &m->lay;
    if (B < 1 || (int64_t)B > (int64_t)m->B * m->T)
        ST_FAIL(ST_ERR_ARG, "decoding %d rows with a model built for %d x %d positions", B, m->B, m->T);
    d->m = m;
    d->B = B;
    d->first_token = -1;
    const size_t vpad = (size_t)y->vocab_l * y->tp_size;
    st_err e = st_kvcache_create(&d->cache, m, B);
    d->local = malloc(sizeof(float) * y->vocab_l * B);
    d->full = malloc(sizeof(float) * vpad * B);
    d->scratch = malloc(sizeof(int) * vpad);
    d->next = malloc(sizeof(int32_t) * B);
    d->limit = malloc(sizeof(int) * B);
    d->done = malloc(sizeof(int) * B);
    if (!e && !(d->local && d->full && d->scratch && d->next && d->limit && d->done))
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for a decoder of %d rows", B);
    if (e) {
        st_decoder_free(d);
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

void st_decoder_free(st_decoder *d)
{
    st_kvcache_free(&d->cache);
    free(d->local), free(d->full), free(d->scratch), free(d->next), free(d->limit), free(d->done);
    memset(d, 0, sizeof *d);
}

static int is_stop(int32_t t, const st_decode_opts *o)
{
    for (int i = 0; i < o->n_stop; i++)
        if (o->stop[i] == t) return 1;
    return 0;
}

/* Each row's prompt into the cache; local (nb, Vl) = the logits of its last position. */
static st_err prefill(st_decoder *d, const st_decode_row *rows, int nb, int chunk)
{
    st_model *m = d->m;
    const int Vl = m->lay.vocab_l;
    st_kvcache *c = &d->cache;
    for (int r = 0; r < nb; r++) {
        c->lens[r] = 0;
        if (r > 0 && rows[r].prompt == rows[r - 1].prompt && rows[r].plen == rows[r - 1].plen) {
            st_kvcache_copy_row(c, m, r, r - 1);
            memcpy(d->local + (size_t)r * Vl, d->local + (size_t)(r - 1) * Vl, sizeof(float) * Vl);
            continue;
        }
        st_kvcache one = st_kvcache_row(c, m, r);
        d->prompt_tokens += rows[r].plen;
        for (int at = 0; at < rows[r].plen; at += chunk) {
            const int q = rows[r].plen - at < chunk ? rows[r].plen - at : chunk;
            ST_TRY(st_model_forward_cached(m, &one, rows[r].prompt + at, q, d->local + (size_t)r * Vl));
        }
    }
    return ST_OK;
}

st_err st_decode(st_decoder *d, st_decode_row *rows, int nb, const st_decode_opts *o)
{
    st_model *m = d->m;
    const st_layout *y = &m->lay;
    const int Vl = y->vocab_l, V = y->cfg.vocab_size;
    const int max_len = o->max_len > 0 && o->max_len < y->cfg.max_seq ? o->max_len : y->cfg.max_seq;
    const int chunk = o->chunk > 0 && o->chunk < m->T ? o->chunk : m->T;
    if (nb < 1 || nb > d->B) ST_FAIL(ST_ERR_ARG, "decoding %d rows with a decoder of %d", nb, d->B);
    if (o->max_new < 1) ST_FAIL(ST_ERR_ARG, "answers of at most %d tokens: expected at least 1", o->max_new);
    for (int r = 0; r < nb; r++) {
        if (rows[r].plen < 1 || rows[r].plen >= max_len)
            ST_FAIL(ST_ERR_ARG, "row %d: a prompt of %d tokens leaves no room for an answer within %d tokens", r,
                    rows[r].plen, max_len);
        d->limit[r] = max_len - rows[r].plen < o->max_new ? max_len - rows[r].plen : o->max_new;
        d->done[r] = 0;
        rows[r].len = rows[r].stopped = 0;
    }
    const double t0 = st_now();
    ST_TRY(prefill(d, rows, nb, chunk));
    st_kvcache view = d->cache; /* the first nb rows */
    view.B = nb;
    view.owner = 0;
    for (int step = 0;; step++) {
        ST_TRY(st_tp_gather_logits(m->tp, d->full, d->local, nb, Vl));
        int active = 0;
        for (int r = 0; r < nb; r++) {
            st_decode_row *w = &rows[r];
            if (d->done[r]) {
                /* a finished row is fed its last token again at the same
                 * position (its output is ignored), so it never outgrows the cache */
                view.lens[r]--;
                continue;
            }
            float *logits = d->full + (size_t)r * Vl * y->tp_size; /* the first V are real */
            if (o->on_logits) o->on_logits(o->ctx, r, w->len, logits, V);
            const int32_t t = st_sample_token(logits, V, &o->s, st_hash_uniform(w->key, (uint64_t)w->len), d->scratch);
            w->out[w->len++] = d->next[r] = t;
            d->tokens++;
            if (is_stop(t, o)) w->stopped = 1;
            if (w->stopped || w->len == d->limit[r]) {
                d->done[r] = 1; /* fed once more below, at the position after its prompt and answer */
                continue;
            }
            active++;
        }
        if (step == 0) {
            d->prompt_seconds += st_now() - t0;
            if (d->first_token < 0) d->first_token = st_since_start();
        }
        if (!active) break;
        ST_TRY(st_model_forward_cached(m, &view, d->next, 1, d->local));
    }
    d->seconds += st_now() - t0;
    return ST_OK;
}
