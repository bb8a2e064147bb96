/* model_source.c: the format-independent half of model_source.h. */
#include "io/formats/model_source.h"

#include <stdlib.h>
#include <string.h>

st_err st_model_source_add_unit(st_model_source *s, const char *const *names, int n)
{
    ST_ASSERT(n >= 1 && n <= ST_SRC_MAX_DST, "a source unit fills 1..%d tensors, not %d", ST_SRC_MAX_DST, n);
    if ((s->n_units & (s->n_units - 1)) == 0) {   /* grow at powers of two */
        int cap = s->n_units ? 2 * s->n_units : 16;
        st_src_unit *u = realloc(s->units, (size_t)cap * sizeof *u);
        if (!u) ST_FAIL(ST_ERR_MEM, "out of memory for the source's tensor list");
        s->units = u;
    }
    st_src_unit *u = &s->units[s->n_units];
    memset(u, 0, sizeof *u);
    for (int i = 0; i < n; i++) {
        u->dst[i] = st_layout_find(&s->lay, names[i]);
        ST_ASSERT(u->dst[i], "%s source: the layout has no tensor %s", s->format, names[i]);
    }
    u->n_dst = n;
    s->n_units++;
    return ST_OK;
}

int64_t st_model_source_unit_bytes(const st_model_source *s, int u)
{
    int64_t n = 0;
    for (int p = 0; p < s->units[u].n_dst; p++) n += s->units[u].dst[p]->numel;
    return n * (int64_t)sizeof(float);
}

void st_model_source_close(st_model_source *s)
{
    if (s->close_impl) s->close_impl(s);
    free(s->units);
    if (s->lay.tensors) st_layout_free(&s->lay);
    memset(s, 0, sizeof *s);
}

st_err st_model_source_read_all(st_model_source *s, float *params)
{
    for (int u = 0; u < s->n_units; u++) {
        float *out[ST_SRC_MAX_DST] = {0};
        for (int p = 0; p < s->units[u].n_dst; p++) out[p] = params + s->units[u].dst[p]->offset;
        ST_TRY(s->read(s, u, out));
    }
    return ST_OK;
}
