/* lora_ckpt.c: adapters stored in a checkpoint ("lora" set), merged into the
 * base weights for generation, evaluation and export. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint.h"
#include "io/lora_ckpt.h"
#include "model/lora.h"

/* {"rank":8,"alpha":16,"dropout":0,"targets":"q,v"} (written by the trainer) */
static st_err parse_meta(const char *path, const char *json, st_lora_config *c)
{
    cJSON *o = cJSON_Parse(json);
    cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "rank"), *a = cJSON_GetObjectItemCaseSensitive(o, "alpha"),
          *t = cJSON_GetObjectItemCaseSensitive(o, "targets");
    if (!o || !cJSON_IsNumber(r) || !cJSON_IsNumber(a) || !cJSON_IsString(t)) {
        cJSON_Delete(o);
        ST_FAIL(ST_ERR_FORMAT, "%s: the LoRA set's description lacks rank, alpha or targets: %.80s", path,
                json ? json : "(none)");
    }
    memset(c, 0, sizeof *c);
    c->rank = r->valueint;
    c->alpha = (float)a->valuedouble;
    st_err e = st_lora_parse_targets(t->valuestring, &c->targets);
    cJSON_Delete(o);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_lora_load_checkpoint(const char *path, const st_grid *g, const st_layout *lay, float *params,
                               st_lora **out, st_lora_config *cfg)
{
    *out = NULL;
    char *meta = NULL;
    int present = 0;
    ST_TRY(st_ckpt_read_set_meta(path, g->world, "lora", &meta, &present));
    if (!present) return ST_OK;
    st_err e = parse_meta(path, meta, cfg);
    free(meta);
    ST_TRY(e);
    st_lora *l = NULL;
    ST_TRY(st_lora_create(&l, lay, cfg, 1, 0));
    /* read only the set: every model tensor is skipped ("*"), params untouched */
    static const char *const all[] = {"*", NULL};
    st_ckpt_tensors t = {.lay = lay, .params = params, .n_sets = 1};
    t.sets[0] = (st_ckpt_set){.group = "lora", .lay = st_lora_layout(l), .params = st_lora_params(l)};
    e = st_ckpt_load(path, g, &t, NULL, all, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL);
    free(t.sets[0].meta);
    if (e) {
        st_lora_free(l);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    *out = l;
    return ST_OK;
}

st_err st_lora_merge_checkpoint(const char *path, const st_grid *g, const st_layout *lay, float *params,
                                int *merged)
{
    st_lora *l = NULL;
    st_lora_config c;
    *merged = 0;
    ST_TRY(st_lora_load_checkpoint(path, g, lay, params, &l, &c));
    if (!l) return ST_OK;
    st_err e = st_lora_merge(l, lay, params);
    st_lora_free(l);
    ST_TRY(e);
    *merged = 1;
    return ST_OK;
}
