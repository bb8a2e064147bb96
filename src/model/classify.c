/* classify.c: the classification head (see classify.h). */
#include "model/classify.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "kernels/kernels.h"
#include "mpi/tp.h"

st_err st_cls_layout(st_layout *lay, const st_config *cfg, int n_classes, int tp_size, int tp_rank)
{
    memset(lay, 0, sizeof *lay);
    const int C = cfg->d_model;
    /* the head's own tensor table, so AdamW and checkpoints treat it like any parameter set */
    lay->cfg = *cfg;
    lay->tp_size = tp_size;
    lay->tp_rank = tp_rank;
    lay->n_tensors = 2;
    ST_ALLOC(lay->tensors, 2, "classifier tensor table");
    st_tensor *t = lay->tensors;
    snprintf(t[0].name, sizeof t[0].name, "score.weight");
    t[0].ndim = 2;
    t[0].shape[0] = t[0].lshape[0] = n_classes;
    t[0].shape[1] = t[0].lshape[1] = C;
    t[0].numel = (size_t)n_classes * C;
    t[0].decay = 1;
    t[0].layer = -1;
    snprintf(t[1].name, sizeof t[1].name, "score.bias");
    t[1].ndim = 1;
    t[1].shape[0] = t[1].lshape[0] = n_classes;
    t[1].shape[1] = t[1].lshape[1] = 1;
    t[1].offset = t[0].numel;
    t[1].numel = (size_t)n_classes;
    t[1].layer = -1;
    lay->numel = t[0].numel + t[1].numel;
    return ST_OK;
}

st_err st_cls_create(st_cls_head *h, const st_model *m, int n_classes, int pool_mean, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    const int C = m->lay.cfg.d_model;
    if (n_classes < 1) ST_FAIL(ST_ERR_ARG, "a head needs at least 1 output, not %d", n_classes);
    if (m->B > (int)(sizeof h->lengths / sizeof h->lengths[0]))
        ST_FAIL(ST_ERR_ARG, "batch_size %d is too large for the classification head", m->B);
    h->n_classes = n_classes;
    h->pool_mean = pool_mean;
    h->max_B = m->B;
    ST_TRY(st_cls_layout(&h->lay, &m->lay.cfg, n_classes, m->lay.tp_size, m->lay.tp_rank));
    const st_tensor *t = h->lay.tensors;
    ST_ALLOC(h->params, h->lay.numel, "classifier parameters");
    ST_ALLOC(h->grads, h->lay.numel, "classifier gradients");
    h->w = h->params;
    h->b = h->params + t[1].offset;
    h->dw = h->grads;
    h->db = h->grads + t[1].offset;
    /* N(0, 0.02) like the body's linear layers, grid-independent */
    st_normal_fill(h->w, t[0].numel, st_splitmix64(seed ^ st_hash_str("score.weight")), 0, 0.02f);
    ST_ALLOC(h->pooled, (size_t)m->B * C, "pooled states");
    ST_ALLOC(h->logits, (size_t)m->B * n_classes, "class logits");
    ST_ALLOC(h->rowbuf, 3 * (size_t)m->B, "cross-entropy scratch");
    ST_ALLOC(h->dhidden, (size_t)m->B * m->T * C, "hidden-state gradient");
    ST_ALLOC(h->dpooled, (size_t)m->B * C, "pooled-state gradient");
    return ST_OK;
}

void st_cls_free(st_cls_head *h)
{
    free(h->lay.tensors);
    free(h->params);
    free(h->grads);
    free(h->pooled);
    free(h->logits);
    free(h->rowbuf);
    free(h->dhidden);
    free(h->dpooled);
    memset(h, 0, sizeof *h);
}

void st_cls_zero_grad(st_cls_head *h) { memset(h->grads, 0, h->lay.numel * sizeof(float)); }

st_err st_cls_forward(st_cls_head *h, st_model *m, const int32_t *tokens, const int32_t *lengths,
                      const int32_t *labels, int B, int T, float scale, double *loss_sum, int32_t *pred)
{
    const int C = m->lay.cfg.d_model, K = h->n_classes;
    if (B > h->max_B) ST_FAIL(ST_ERR_ARG, "%d rows exceed the head's %d", B, h->max_B);
    for (int b = 0; b < B; b++) {
        if (lengths[b] < 1 || lengths[b] > T)
            ST_FAIL(ST_ERR_ARG, "row %d has %d tokens; expected 1..%d", b, lengths[b], T);
        if (labels && (labels[b] < 0 || labels[b] >= K))
            ST_FAIL(ST_ERR_ARG, "row %d has label %d outside [0, %d)", b, labels[b], K);
        h->lengths[b] = lengths[b];
    }
    ST_TRY(st_model_forward_body(m, tokens, B, T));
    const float *hid = m->a.lnf;
    /* pool: (B, C) */
    for (int b = 0; b < B; b++) {
        float *p = h->pooled + (size_t)b * C;
        const int n = lengths[b];
        if (!h->pool_mean) {
            memcpy(p, hid + ((size_t)b * T + n - 1) * C, sizeof(float) * C);
            continue;
        }
        memset(p, 0, sizeof(float) * C);
        for (int t = 0; t < n; t++)
            for (int c = 0; c < C; c++) p[c] += hid[((size_t)b * T + t) * C + c];
        for (int c = 0; c < C; c++) p[c] /= (float)n;
    }
    ST_TRY(st_linear_forward(h->logits, h->pooled, h->w, NULL, h->b, B, C, K));
    if (pred)
        for (int b = 0; b < B; b++) {
            int best = 0;
            for (int k = 1; k < K; k++) if (h->logits[b * K + k] > h->logits[b * K + best]) best = k;
            pred[b] = best;
        }
    *loss_sum = 0;
    if (labels) /* one rank's worth: the head is replicated, so no tp exchange */
        ST_TRY(st_tp_cross_entropy(MPI_COMM_SELF, loss_sum, h->logits, h->logits, labels, NULL, scale, B, 0,
                                   K, K, h->rowbuf, NULL));
    return ST_OK;
}

st_err st_cls_pair_loss(st_cls_head *h, int B, float scale, double *loss_sum, double *correct)
{
    if (h->n_classes != 1) ST_FAIL(ST_ERR_ARG, "a pairwise reward loss needs a 1-output head, not %d", h->n_classes);
    if (B % 2) ST_FAIL(ST_ERR_ARG, "%d rows do not form (chosen, rejected) pairs", B);
    *loss_sum = *correct = 0;
    for (int i = 0; i < B; i += 2) {
        const double d = (double)h->logits[i + 1] - h->logits[i];   /* r_r - r_c */
        /* softplus(d) and sigmoid(d) without overflow for large |d| */
        const double sp = d > 0 ? d + log1p(exp(-d)) : log1p(exp(d));
        const double sg = d >= 0 ? 1 / (1 + exp(-d)) : exp(d) / (1 + exp(d));
        *loss_sum += scale * sp;
        *correct += d < 0;
        h->logits[i] = (float)(-scale * sg);     /* d loss / d r_c */
        h->logits[i + 1] = (float)(scale * sg);  /* d loss / d r_r */
    }
    return ST_OK;
}

st_err st_cls_backward(st_cls_head *h, st_model *m, const int32_t *tokens)
{
    const int C = m->lay.cfg.d_model, K = h->n_classes, B = m->last_B, T = m->last_T;
    /* dW += dlogits^T pooled; db += column sums; dpooled (B, C) = dlogits W */
    ST_TRY(st_linear_backward(h->dpooled, h->dw, h->db, h->logits, h->pooled, h->w, NULL, B, C, K, 0));
    if (h->no_bias) memset(h->db, 0, sizeof(float) * (size_t)K);   /* held at 0: an HF-style head */
    /* back to the positions each pooled row came from */
    memset(h->dhidden, 0, sizeof(float) * (size_t)B * T * C);
    for (int b = 0; b < B; b++) {
        const float *g = h->dpooled + (size_t)b * C;
        const int n = h->lengths[b];
        const int t0 = h->pool_mean ? 0 : n - 1;
        const float k = h->pool_mean ? 1.0f / (float)n : 1.0f;
        for (int t = t0; t < n; t++) {
            float *d = h->dhidden + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) d[c] = g[c] * k;
        }
    }
    return st_model_backward_hidden(m, tokens, h->dhidden);
}

st_err st_cls_meta_json(const st_cls_head *h, const char *const *labels, char **json)
{
    cJSON *o = cJSON_CreateObject(), *arr = cJSON_CreateArray();
    if (!o || !arr) { cJSON_Delete(o); cJSON_Delete(arr); ST_FAIL(ST_ERR_MEM, "out of memory"); }
    cJSON_AddNumberToObject(o, "n_classes", h->n_classes);
    cJSON_AddStringToObject(o, "pool", h->pool_mean ? "mean" : "last");
    cJSON_AddBoolToObject(o, "bias", !h->no_bias);
    for (int k = 0; k < h->n_classes; k++) {
        char num[16];
        snprintf(num, sizeof num, "%d", k);
        cJSON_AddItemToArray(arr, cJSON_CreateString(labels && labels[k] ? labels[k] : num));
    }
    cJSON_AddItemToObject(o, "labels", arr);
    *json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!*json) ST_FAIL(ST_ERR_MEM, "out of memory");
    return ST_OK;
}

st_err st_cls_meta_parse(const char *json, int *n_classes, int *pool_mean, char ***labels)
{
    cJSON *o = cJSON_Parse(json);
    if (!o) ST_FAIL(ST_ERR_FORMAT, "classification head description is not JSON: %.60s", json);
    cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "n_classes"), *p = cJSON_GetObjectItemCaseSensitive(o, "pool"),
          *l = cJSON_GetObjectItemCaseSensitive(o, "labels");
    if (!cJSON_IsNumber(k) || k->valueint < 1 || k->valueint > 1000000 || !cJSON_IsString(p) ||
        !cJSON_IsArray(l) || cJSON_GetArraySize(l) != k->valueint) {
        cJSON_Delete(o);
        ST_FAIL(ST_ERR_FORMAT, "classification head description lacks n_classes, pool or labels: %.80s", json);
    }
    *n_classes = k->valueint;
    *pool_mean = !strcmp(p->valuestring, "mean");
    if (labels) {
        *labels = calloc((size_t)*n_classes, sizeof **labels);
        if (!*labels) { cJSON_Delete(o); ST_FAIL(ST_ERR_MEM, "out of memory"); }
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, l) (*labels)[i++] = strdup(cJSON_IsString(it) ? it->valuestring : "?");
    }
    cJSON_Delete(o);
    return ST_OK;
}
