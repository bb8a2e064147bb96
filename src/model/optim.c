/* optim.c: AdamW, warmup + cosine schedule, gradient norms. */
#include "model/optim.h"

#include <math.h>
#include <stdlib.h>

void st_optim_config_default(st_optim_config *c)
{
    c->lr = 3e-4f;
    c->min_lr_ratio = 0.1f;
    c->warmup_steps = 0;
    c->total_steps = 0;
    c->schedule = ST_SCHED_COSINE;
    c->beta1 = 0.9f;
    c->beta2 = 0.95f;
    c->eps = 1e-8f;
    c->weight_decay = 0.1f;
    c->grad_clip = 1.0f;
}

float st_lr_at(const st_optim_config *c, int64_t step)
{
    if (c->warmup_steps > 0 && step < c->warmup_steps)
        return c->lr * (float)(step + 1) / (float)c->warmup_steps;
    if (c->schedule == ST_SCHED_CONSTANT || c->total_steps <= c->warmup_steps) return c->lr;
    double p = (double)(step - c->warmup_steps) / (double)(c->total_steps - c->warmup_steps);
    if (p > 1.0) p = 1.0;
    double min = c->lr * c->min_lr_ratio;
    if (c->schedule == ST_SCHED_LINEAR) return (float)(c->lr - (c->lr - min) * p);
    return (float)(min + 0.5 * (c->lr - min) * (1.0 + cos(M_PI * p)));
}

st_err st_adamw_init(st_adamw *o, const st_layout *lay, size_t begin, size_t end,
                     const st_optim_config *cfg)
{
    o->cfg = *cfg;
    o->lay = lay;
    o->begin = begin;
    o->end = end;
    o->step = 0;
    o->trainable = NULL;
    o->m = o->v = NULL;
    ST_ALLOC(o->m, end - begin, "AdamW first moment");
    ST_ALLOC(o->v, end - begin, "AdamW second moment");
    return ST_OK;
}

void st_adamw_free(st_adamw *o)
{
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

void st_adamw_update(st_adamw *o, float *params, const float *grads, float lr)
{
    const st_optim_config *c = &o->cfg;
    o->step++;
    const float b1 = c->beta1, b2 = c->beta2;
    const float bc1 = 1.0f - powf(b1, (float)o->step), bc2 = 1.0f - powf(b2, (float)o->step);
    for (int t = 0; t < o->lay->n_tensors; t++) {
        const st_tensor *ts = &o->lay->tensors[t];
        if (o->trainable && !o->trainable[t]) continue;
        size_t lo = ts->offset > o->begin ? ts->offset : o->begin;
        size_t hi = ts->offset + ts->numel < o->end ? ts->offset + ts->numel : o->end;
        if (lo >= hi) continue;
        const float wd = ts->decay ? c->weight_decay : 0.0f;
        float *m = o->m - o->begin, *v = o->v - o->begin;
        for (size_t i = lo; i < hi; i++) {
            float g = grads[i];
            m[i] = b1 * m[i] + (1.0f - b1) * g;
            v[i] = b2 * v[i] + (1.0f - b2) * g * g;
            float mhat = m[i] / bc1, vhat = v[i] / bc2;
            params[i] -= lr * (mhat / (sqrtf(vhat) + c->eps) + wd * params[i]);
        }
    }
}

double st_grad_sumsq(const st_layout *lay, const float *grads, size_t begin, size_t end,
                     int count_replicated)
{
    double s = 0.0;
    for (int t = 0; t < lay->n_tensors; t++) {
        const st_tensor *ts = &lay->tensors[t];
        if (ts->split == ST_SPLIT_NONE && !count_replicated) continue;
        size_t lo = ts->offset > begin ? ts->offset : begin;
        size_t hi = ts->offset + ts->numel < end ? ts->offset + ts->numel : end;
        for (size_t i = lo; i < hi; i++) s += (double)grads[i] * grads[i];
    }
    return s;
}

void st_scale(float *x, size_t begin, size_t end, float s)
{
    for (size_t i = begin; i < end; i++) x[i] *= s;
}
