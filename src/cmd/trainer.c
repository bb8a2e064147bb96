/* trainer.c: the pieces of a run the methods use too (trainer.h). */
#include "cmd/trainer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"

st_err st_trainer_add_set(trainer *t, const char *what, const char *group, char *meta, const st_layout *lay,
                          float *params, float *grads)
{
    const train_opts *o = t->o;
    ST_ASSERT(t->n_extra < (int)(sizeof t->extra / sizeof t->extra[0]), "too many parameter sets");
    st_pset *p = &t->extra[t->n_extra++];
    p->what = what;
    p->group = group;
    p->meta = meta;
    p->lay = lay;
    p->params = params;
    p->grads = grads;
    return st_adamw_init(&p->adam, lay, 0, lay->numel, &o->opt);
}

/* The model's tokenizer (kind, blob; kind NULL: the checkpoint has none)
 * must be the dataset's: token ids mean nothing under another one. */
static st_err check_same_tokenizer(const trainer *t, const char *kind, const uint8_t *blob, size_t n)
{
    const train_opts *o = t->o;
    if (!kind) {
        if (t->grid.world_rank == 0)
            fprintf(stderr, "shardtune: warning: '%s' carries no tokenizer, so nothing checks that '%s' was "
                    "prepared with the model's\n", o->init_from, o->data_train);
        return ST_OK;
    }
    st_tokenizer *model_tok = NULL;
    ST_TRY(st_tokenizer_from_blob(&model_tok, kind, blob, n));
    const int same = st_tokenizer_hash(model_tok) == st_tokenizer_hash(t->tok);
    st_tokenizer_free(model_tok);
    if (!same)
        ST_FAIL(ST_ERR_ARG, "'%s' was prepared with a different tokenizer than init_from '%s' carries (%s); "
                "prepare the data with the model's tokenizer", o->data_train, o->init_from, kind);
    return ST_OK;
}

/* init_from's weights into m, less the init_skip names, which start from
 * the seed as in a new model; heads and adapters start fresh on a new base. */
st_err st_trainer_load_init(trainer *t, st_model *m)
{
    const train_opts *o = t->o;
    st_ckpt_tensors c = {.lay = &m->lay, .params = m->params};
    /* the skip list: "a,b,c*" -> {"a", "b", "c*", NULL} */
    char *list = o->init_skip ? strdup(o->init_skip) : NULL, *names[64] = {0}, *save = NULL, *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    int n = 0;
    for (char *p = list ? strtok_r(list, ",", &save) : NULL; p && n < 63; p = strtok_r(NULL, ",", &save))
        names[n++] = p;
    for (int i = 0; i < m->lay.n_tensors; i++)
        if (st_ckpt_skipped(m->lay.tensors[i].name, (const char *const *)names))
            st_params_init_tensor(&m->lay, m->params, (uint64_t)o->seed, i);
    st_err e = st_ckpt_load(o->init_from, &t->grid, &c, NULL, (const char *const *)names, ST_CKPT_WEIGHTS_ONLY,
                            &kind, &blob, &nb);
    if (!e) e = check_same_tokenizer(t, kind, blob, nb);
    free(list);
    free(kind);
    free(blob);
    return e;
}
