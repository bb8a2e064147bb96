/* cmd_convert.c: `shardtune convert` (import a model into a checkpoint) and
 * `shardtune inspect` (describe a checkpoint). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "commands.h"
#include "hf.h"
#include "llama2c.h"
#include "llmc.h"
#include "options.h"
#include "params.h"
#include "tokenizer.h"

typedef struct { char *out, *format, *tokenizer; } convert_opts;
static convert_opts CV;
static const st_option convert_options[] = {
    {"out", ST_OPT_STRING, &CV.out, NULL, "checkpoint to write (required)"},
    {"format", ST_OPT_STRING, &CV.format, "auto", "source format: auto, llama2c, llmc, hf (a Hugging Face directory) or shardtune (a checkpoint: keeps weights and tokenizer, drops optimizer state)"},
    {"tokenizer", ST_OPT_STRING, &CV.tokenizer, NULL, "tokenizer to store with the model (byte, gpt2:DIR, hf:FILE, llama2c:FILE)"},
};

/* A directory is a Hugging Face model; llm.c files start with the magic
 * 20240326; llama2.c files with a dim. */
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
    /* HDF5's signature starts \x89HDF: one of our checkpoints */
    *fmt = magic == 20240326 ? "llmc" : !memcmp(&magic, "\x89HDF", 4) ? "shardtune" : "llama2c";
    return ST_OK;
}

/* DIR/tokenizer.json, when there is one shardtune reads; otherwise a warning
 * and no tokenizer (--tokenizer can supply one). */
static void hf_tokenizer(const char *dir, st_tokenizer **tok)
{
    char spec[4200];
    snprintf(spec, sizeof spec, "hf:%s/tokenizer.json", dir);
    if (access(spec + 3, R_OK) != 0) {
        fprintf(stderr, "shardtune: warning: %s not found; the checkpoint stores no tokenizer "
                "(pass --tokenizer SPEC to add one)\n", spec + 3);
        return;
    }
    if (st_tokenizer_load(tok, spec) != ST_OK) {
        fprintf(stderr, "shardtune: warning: %s is not stored in the checkpoint: %s\n"
                "(pass --tokenizer SPEC to store another one)\n", spec + 3, st_error_message());
        st_error_clear();
        *tok = NULL;
    }
}

/* A shardtune checkpoint, whole on this rank: weights and tokenizer only
 * (dropping optimizer and training state: a release copy of a model). */
static st_err read_checkpoint(const char *path, st_config *cfg, float **params, st_tokenizer **tok)
{
    st_layout lay;
    char *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    ST_TRY(st_ckpt_load_whole(path, cfg, &lay, params, &kind, &blob, &nb));
    st_layout_free(&lay);
    st_err e = kind ? st_tokenizer_from_blob(tok, kind, blob, nb) : ST_OK;
    free(kind);
    free(blob);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

static st_err convert(const char *src, MPI_Comm world)
{
    int rank = 0;
    MPI_Comm_rank(world, &rank);
    if (!CV.out) ST_FAIL(ST_ERR_ARG, "convert needs --out FILE.h5");
    st_err e = ST_OK;
    /* One rank reads and writes (the file is written whole by a 1x1 grid). */
    if (rank == 0) {
        const char *fmt = CV.format;
        st_config cfg;
        float *params = NULL;
        st_tokenizer *tok = NULL;
        if (!strcmp(fmt, "auto")) e = detect(src, &fmt);
        if (!e) {
            if (!strcmp(fmt, "llama2c")) e = st_llama2c_read(src, &cfg, &params);
            else if (!strcmp(fmt, "llmc")) e = st_llmc_read(src, &cfg, &params);
            else if (!strcmp(fmt, "hf")) e = st_hf_read(src, &cfg, &params);
            else if (!strcmp(fmt, "shardtune")) e = read_checkpoint(src, &cfg, &params, &tok);
            else e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__,
                                  "unknown --format '%s' (auto, llama2c, llmc, hf or shardtune)", fmt);
        }
        if (!e && CV.tokenizer) {
            if (tok) st_tokenizer_free(tok);
            tok = NULL;
            e = st_tokenizer_load(&tok, CV.tokenizer);
        }
        else if (!e && !strcmp(fmt, "hf")) hf_tokenizer(src, &tok);
        if (!e && tok && st_tokenizer_vocab_size(tok) > cfg.vocab_size)
            e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__,
                             "tokenizer '%s' has %d tokens but the model only %d", CV.tokenizer,
                             st_tokenizer_vocab_size(tok), cfg.vocab_size);
        st_grid g;
        st_layout lay;
        const char *kind = NULL;
        uint8_t *blob = NULL;
        size_t nb = 0;
        if (!e && tok) e = st_tokenizer_to_blob(tok, &kind, &blob, &nb);
        if (!e) e = st_grid_init(&g, MPI_COMM_SELF, 1);
        if (!e) {
            e = st_layout_init(&lay, &cfg, 1, 0);
            if (!e) {
                st_ckpt_tensors t = {.lay = &lay, .params = params};
                st_train_state s = {0};
                e = st_ckpt_save_file(CV.out, &g, &t, &s, kind, blob, nb);
                if (!e)
                    printf("converted %s (%s, %s, %lld parameters) -> %s\n", src, fmt,
                           st_family_name(cfg.family), st_config_num_params(&cfg), CV.out);
                st_layout_free(&lay);
            }
            st_grid_free(&g);
        }
        free(blob);
        free(params);
        if (tok) st_tokenizer_free(tok);
    }
    return st_agree(world, e);
}

st_err st_cmd_convert(int argc, char **argv, MPI_Comm world)
{
    return st_options_run(argc, argv, world, convert_options, 3,
                   "usage: shardtune convert SRC --out base.h5 [--tokenizer SPEC]\n\n"
                   "Imports a llama2.c .bin, an llm.c .bin or a Hugging Face model directory\n"
                   "(config.json + *.safetensors + tokenizer.json: GPT-2, Llama, Mistral, Qwen2)\n"
                   "into a shardtune checkpoint (weights only), which `train --init_from` and\n"
                   "`generate` read.\n\n",
                   "the source model (a file or a directory)", convert);
}

static st_err inspect(const char *path, MPI_Comm world)
{
    int rank = 0;
    MPI_Comm_rank(world, &rank);
    st_err e = ST_OK;
    if (rank == 0) e = st_ckpt_inspect(path, MPI_COMM_SELF, stdout);
    return st_agree(world, e);
}

st_err st_cmd_inspect(int argc, char **argv, MPI_Comm world)
{
    return st_options_run(argc, argv, world, NULL, 0,
                   "usage: shardtune inspect CKPT.h5\n\n"
                   "Prints format version, config, step, parameter count, tensor shapes and\n"
                   "verifies every tensor's checksum. The file is plain HDF5: h5ls -r works too.\n\n",
                   "a checkpoint path", inspect);
}
