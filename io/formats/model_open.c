/* model_open.c: a path opened as the model source of its format. */
#include "io/formats/model_open.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/formats/hf.h"
#include "io/formats/llama2c.h"
#include "io/formats/llmc.h"

/* Every tensor of the layout in exactly one unit: a format's own bug otherwise. */
static st_err check_cover(const st_model_source *s)
{
    int *seen = calloc((size_t)s->lay.n_tensors + 1, sizeof *seen);
    if (!seen) ST_FAIL(ST_ERR_MEM, "out of memory");
    st_err e = ST_OK;
    for (int u = 0; u < s->n_units; u++)
        for (int p = 0; p < s->units[u].n_dst; p++) seen[s->units[u].dst[p] - s->lay.tensors]++;
    for (int i = 0; i < s->lay.n_tensors && !e; i++)
        if (seen[i] != 1)
            e = st_error_set(ST_ERR_INTERNAL, __FILE__, __LINE__, __func__, "%s source fills tensor %s %d times",
                             s->format, s->lay.tensors[i].name, seen[i]);
    free(seen);
    return e;
}

/* A directory is a Hugging Face model; llm.c files start with the magic
 * 20240326; anything else is taken for llama2.c (whose header is checked
 * against the file size, so a wrong guess fails clearly). */
static st_err detect(const char *path, const char **fmt)
{
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        *fmt = "hf";
        return ST_OK;
    }
    FILE *f = fopen(path, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open '%s'", path);
    int32_t magic = 0;
    size_t n = fread(&magic, 4, 1, f);
    fclose(f);
    if (n != 1) ST_FAIL(ST_ERR_FORMAT, "'%s' is too short to be a model file", path);
    *fmt = magic == 20240326 ? "llmc" : "llama2c";
    return ST_OK;
}

st_err st_model_source_open(st_model_source *s, const char *path, const char *format)
{
    memset(s, 0, sizeof *s);
    if (!strcmp(format, "auto")) ST_TRY(detect(path, &format));
    st_err e;
    if (!strcmp(format, "llama2c")) e = st_llama2c_open(s, path);
    else if (!strcmp(format, "llmc")) e = st_llmc_open(s, path);
    else if (!strcmp(format, "hf")) e = st_hf_open(s, path);
    else ST_FAIL(ST_ERR_ARG, "unknown model format '%s' (llama2c, llmc or hf)", format);
    if (!e) e = check_cover(s);
    if (e) {
        st_model_source_close(s);
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

st_err st_model_source_read_file(const char *path, const char *format, st_config *cfg, float **params)
{
    *params = NULL;
    st_model_source s;
    ST_TRY(st_model_source_open(&s, path, format));
    float *w = calloc(s.lay.numel, sizeof *w);
    st_err e = w ? st_model_source_read_all(&s, w)
                 : st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__,
                                "out of memory for the %zu parameters of '%s'", s.lay.numel, path);
    if (!e) *cfg = s.cfg, *params = w;
    else free(w), st_error_trace(__FILE__, __LINE__, __func__);
    st_model_source_close(&s);
    return e;
}
