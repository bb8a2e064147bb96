/* value.c: a scalar head at every position and PPO's clipped value loss (value.h). */
#include "model/value.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/classify.h"

st_err st_value_create(st_value_head *h, const st_model *m, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    const int C = m->lay.cfg.d_model;
    ST_TRY(st_cls_layout(&h->lay, &m->lay.cfg, 1, m->lay.tp_size, m->lay.tp_rank));
    h->max_N = m->B * m->T;
    ST_ALLOC(h->params, h->lay.numel, "value head");
    ST_ALLOC(h->grads, h->lay.numel, "value head gradients");
    ST_ALLOC(h->values, (size_t)h->max_N, "values");
    ST_ALLOC(h->dhidden, (size_t)h->max_N * C, "hidden-state gradient");
    st_normal_fill(h->params, (size_t)C, st_splitmix64(seed ^ st_hash_str("value.score.weight")), 0, 0.02f);
    return ST_OK;
}

void st_value_free(st_value_head *h)
{
    st_layout_free(&h->lay);
    free(h->params), free(h->grads), free(h->values), free(h->dhidden);
    memset(h, 0, sizeof *h);
}

st_err st_value_forward(st_value_head *h, st_model *m, const int32_t *tokens, int B, int T, float *out)
{
    const int C = m->lay.cfg.d_model;
    if ((int64_t)B * T > h->max_N) ST_FAIL(ST_ERR_ARG, "%d x %d positions exceed the value head's %d", B, T, h->max_N);
    ST_TRY(st_model_forward_body(m, tokens, B, T));
    const float *w = h->params, bias = h->params[C];
    for (int64_t i = 0; i < (int64_t)B * T; i++) {
        const float *x = m->a.lnf + i * C;
        double s = bias;
        for (int c = 0; c < C; c++) s += (double)w[c] * x[c];
        h->values[i] = (float)s;
    }
    h->B = B;
    h->T = T;
    if (out) memcpy(out, h->values, sizeof(float) * (size_t)B * T);
    return ST_OK;
}

void st_value_loss(st_value_head *h, const float *mask, const float *old_v, const float *ret, float clip, float scale,
                   double *loss_sum, double *clipped)
{
    *loss_sum = *clipped = 0;
    for (int64_t i = 0; i < (int64_t)h->B * h->T; i++) {
        const double v = h->values[i];
        h->values[i] = 0.0f;
        if (mask[i] == 0.0f) continue;
        const double vc = fmin(fmax(v, (double)old_v[i] - clip), (double)old_v[i] + clip);
        const double a = (v - ret[i]) * (v - ret[i]), b = (vc - ret[i]) * (vc - ret[i]);
        *loss_sum += scale * 0.5 * fmax(a, b);
        /* the gradient flows through the larger term; the clipped one only
         * inside the clip range, where it is v itself */
        if (b > a) {
            *clipped += 1;
            if (vc == v) h->values[i] = (float)(scale * (v - ret[i]));
        } else {
            h->values[i] = (float)(scale * (v - ret[i]));
        }
    }
}

st_err st_value_backward(st_value_head *h, st_model *m, const int32_t *tokens)
{
    const int C = m->lay.cfg.d_model;
    const float *w = h->params;
    float *dw = h->grads;
    for (int64_t i = 0; i < (int64_t)h->B * h->T; i++) {
        const float g = h->values[i], *x = m->a.lnf + i * C;
        float *d = h->dhidden + i * C;
        for (int c = 0; c < C; c++) {
            d[c] = g * w[c];
            dw[c] += g * x[c];
        }
        dw[C] += g;
    }
    return st_model_backward_hidden(m, tokens, h->dhidden);
}
