/* model_open.c: a path opened as the model source of its format. */
#include "io/formats/model_open.h"

#include <errno.h>
#include <stdint.h>
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

/* A directory is a Hugging Face model; llm.c models start with the magic
 * 20240326; files that are something else and say so by their first bytes
 * (GGUF, llm.c's tokenizer and token data, HDF5) are named; anything else is
 * taken for llama2.c, which has no magic (its header is checked against the
 * file size, and a failure says what was tried). */
static st_err detect(const char *path, const char **fmt)
{
    struct stat sb;
    if (stat(path, &sb)) ST_FAIL(ST_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        *fmt = "hf";
        return ST_OK;
    }
    if (!S_ISREG(sb.st_mode)) ST_FAIL(ST_ERR_IO, "'%s' is not a regular file (a FIFO or device?)", path);
    FILE *f = fopen(path, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char b[4] = {0};
    size_t n = fread(b, 1, 4, f);
    fclose(f);
    if (n != 4) ST_FAIL(ST_ERR_FORMAT, "'%s' is too short to be a model file", path);
    const int32_t magic = (int32_t)((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24);
    if (!memcmp(b, "GGUF", 4))
        ST_FAIL(ST_ERR_FORMAT, "'%s' is a GGUF file (llama.cpp's format), which convert does not read: convert the "
                "model it was made from (a Hugging Face folder, llama2.c or llm.c file)", path);
    if (!memcmp(b, "\x89HDF", 4))
        ST_FAIL(ST_ERR_FORMAT, "'%s' is an HDF5 file: a shardtune checkpoint is converted with --format shardtune",
                path);
    if (magic == 20240328)
        ST_FAIL(ST_ERR_FORMAT, "'%s' is llm.c's tokenizer file (magic 20240328), not a model: store it with a model "
                "with --tokenizer llmc:%s", path, path);
    if (magic == 20240520)
        ST_FAIL(ST_ERR_FORMAT, "'%s' is an llm.c token data file (magic 20240520), not a model", path);
    *fmt = magic == 20240326 ? "llmc" : "llama2c";
    return ST_OK;
}

st_err st_model_source_open(st_model_source *s, const char *path, const char *format)
{
    memset(s, 0, sizeof *s);
    const int guessed = !strcmp(format, "auto");
    if (guessed) ST_TRY(detect(path, &format));
    st_err e;
    if (!strcmp(format, "llama2c")) e = st_llama2c_open(s, path);
    else if (!strcmp(format, "llmc")) e = st_llmc_open(s, path);
    else if (!strcmp(format, "hf")) e = st_hf_open(s, path);
    else ST_FAIL(ST_ERR_ARG, "unknown model format '%s' (llama2c, llmc or hf)", format);
    if (!e) e = check_cover(s);
    if (e) {
        st_model_source_close(s);
        if (guessed && !strcmp(format, "llama2c")) { /* say what the guess was */
            char why[1200];
            snprintf(why, sizeof why, "%.*s", (int)strcspn(st_error_message(), "\n"), st_error_message());
            return st_error_set(e, __FILE__, __LINE__, __func__, "'%s' is no model file shardtune knows: not a Hugging "
                                "Face folder, no llm.c or GGUF magic, and read as llama2.c (which has no magic): %s",
                                path, why);
        }
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
