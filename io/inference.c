/* inference.c: a checkpoint opened for inference (inference.h). */
#include "io/inference.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timer.h"
#include "io/checkpoint.h"
#include "io/lora_ckpt.h"

/* The head's description, when wanted and present: *present, and x's
 * n_labels, labels, pool_mean. */
static st_err read_head(st_infer *x, const char *ckpt, const st_grid *g, st_infer_head want, int *present)
{
    *present = 0;
    if (want == ST_INFER_NO_HEAD) return ST_OK;
    char *meta = NULL;
    ST_TRY(st_ckpt_read_set_meta(ckpt, g->world, "head", &meta, present));
    if (!*present) {
        if (want == ST_INFER_HEAD_REQUIRED)
            ST_FAIL(ST_ERR_ARG, "'%s' has no classification or reward head (train one with method classify or "
                    "reward)", ckpt);
        return ST_OK;
    }
    st_err e = st_cls_meta_parse(meta, &x->n_labels, &x->pool_mean, &x->labels);
    free(meta);
    return e;
}

static st_err open_parts(st_infer *x, const char *ckpt, const st_grid *g, const st_infer_opts *o)
{
    int head = 0;
    ST_TRY(st_ckpt_read_config(ckpt, g->world, &x->cfg));
    ST_TRY(read_head(x, ckpt, g, o->head, &head));
    const int T = o->T > 0 && o->T < x->cfg.max_seq ? o->T : x->cfg.max_seq;
    if (o->B < 1) ST_FAIL(ST_ERR_ARG, "'%s': buffers for %d rows: expected at least 1", ckpt, o->B);
    ST_TRY(st_model_create(&x->m, &x->cfg, g->tp, o->B, T, ST_MODEL_INFER));
    st_ckpt_tensors t = {.lay = &x->m.lay, .params = x->m.params};
    if (head) {
        ST_TRY(st_cls_create(&x->head, &x->m, x->n_labels, x->pool_mean, 0));
        x->has_head = 1;
        t.n_sets = 1;
        t.sets[0] = (st_ckpt_set){.group = "head", .lay = &x->head.lay, .params = x->head.params};
    }
    char *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    ST_TRY(st_ckpt_load(ckpt, g, &t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, &kind, &blob, &nb));
    x->bytes = st_ckpt_tensor_bytes(&t, ST_CKPT_WEIGHTS_ONLY);
    free(t.sets[0].meta);
    st_err e = ST_OK;
    if (kind) e = st_tokenizer_from_blob(&x->tok, kind, blob, nb);
    else if (o->need_tokenizer)
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "'%s' carries no tokenizer, so text cannot "
                         "be turned into tokens (convert the model with --tokenizer SPEC)", ckpt);
    free(kind);
    free(blob);
    ST_TRY(e);
    if (o->merge_lora) ST_TRY(st_lora_merge_checkpoint(ckpt, g, &x->m.lay, x->m.params, &x->lora_merged));
    if (o->precision && strcmp(o->precision, "fp32")) { /* after the weights are final */
        ST_TRY(st_precision_agree(g->world, o->precision, 1024, &x->prec));
        ST_TRY(st_model_set_precision(&x->m, x->prec.bf16));
        if (st_comm_rank(g->world) == 0) /* stderr: stdout may be the command's output */
            fprintf(stderr, "precision: %s (%s)\n", x->prec.bf16 ? "bf16" : "fp32", x->prec.why);
    }
    return ST_OK;
}

st_err st_infer_open(st_infer *x, const char *ckpt, const st_grid *g, const st_infer_opts *o)
{
    memset(x, 0, sizeof *x);
    const double t0 = st_now();
    st_err e = open_parts(x, ckpt, g, o);
    x->seconds = st_now() - t0;
    if (e) {
        st_infer_close(x);
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

void st_infer_print_loaded(const st_infer *x, const char *cmd, const st_grid *g)
{
    if (g->world_rank) return;
    fprintf(stderr, "shardtune %s: loaded %.2f GB in %.2f s (%.2f GB/s), %.2f s after start\n", cmd, x->bytes / 1e9,
            x->seconds, x->seconds > 0 ? x->bytes / 1e9 / x->seconds : 0.0, st_since_start());
}

void st_infer_close(st_infer *x)
{
    if (x->has_head) st_cls_free(&x->head);
    /* x->m is zeroed until st_model_create ran; st_model_free takes both */
    for (int k = 0; x->labels && k < x->n_labels; k++) free(x->labels[k]);
    free(x->labels);
    if (x->tok) st_tokenizer_free(x->tok);
    st_model_free(&x->m);
    memset(x, 0, sizeof *x);
}
