/* cmd_convert.c: `shardtune convert` (import a model into a checkpoint) and
 * `shardtune inspect` (describe a checkpoint). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "core/params.h"
#include "core/timer.h"
#include "io/checkpoint.h"
#include "io/formats/hf.h"
#include "io/formats/model_open.h"
#include "io/tok/tokenizer.h"
#include "mpi/comm.h"

typedef struct { char *out, *format, *tokenizer; } convert_opts;
static const st_option convert_options[] = {
    {"out", ST_OPT_STRING, offsetof(convert_opts, out), NULL, "checkpoint to write (required)", NULL},
    {"format", ST_OPT_STRING, offsetof(convert_opts, format), "auto", "source format: auto, llama2c, llmc, hf (a Hugging Face directory) or shardtune (a checkpoint: keeps weights and tokenizer, drops optimizer state)", NULL},
    {"tokenizer", ST_OPT_STRING, offsetof(convert_opts, tokenizer), NULL, "tokenizer to store with the model (byte, gpt2:DIR, hf:FILE, llama2c:FILE, llmc:FILE); default: the one beside the source (DIR/tokenizer.json, gpt2_tokenizer.bin, tokenizer.bin)", NULL},
};

/* A directory is a Hugging Face model; an HDF5 signature is one of our
 * checkpoints; the other formats are told apart by model_source.c. */
static st_err detect(const char *path, const char **fmt)
{
    struct stat sb;
    *fmt = "auto";
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return ST_OK;
    FILE *f = fopen(path, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open '%s'", path);
    char magic[4] = {0};
    size_t n = fread(magic, 4, 1, f);
    fclose(f);
    if (n != 1) ST_FAIL(ST_ERR_FORMAT, "'%s' is too short to be a model file", path);
    if (!memcmp(magic, "\x89HDF", 4)) *fmt = "shardtune";
    return ST_OK;
}

/* spec when the file it names is readable; otherwise NULL. */
static const char *if_readable(char *spec, size_t cap, const char *kind, const char *dir, const char *name)
{
    snprintf(spec, cap, "%s:%s/%s", kind, dir, name);
    return access(strchr(spec, ':') + 1, R_OK) == 0 ? spec : NULL;
}

/* The tokenizer found beside the source: DIR/tokenizer.json for a Hugging
 * Face directory, gpt2_tokenizer.bin (llm.c) or tokenizer.bin (llama2.c) in
 * the file's directory. A missing or unreadable one is a warning: the
 * checkpoint then stores none (--tokenizer can supply one). */
static void found_tokenizer(const char *src, const char *fmt, st_tokenizer **tok)
{
    char dir[4096], spec[4200];
    const char *use = NULL, *slash = strrchr(src, '/');
    if (!strcmp(fmt, "hf")) {
        use = if_readable(spec, sizeof spec, "hf", src, "tokenizer.json");
    } else {
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - src) : 1, slash ? src : ".");
        use = !strcmp(fmt, "llmc") ? if_readable(spec, sizeof spec, "llmc", dir, "gpt2_tokenizer.bin")
                                   : if_readable(spec, sizeof spec, "llama2c", dir, "tokenizer.bin");
    }
    if (!use) {
        fprintf(stderr, "shardtune: warning: no tokenizer found beside %s; the checkpoint stores none "
                "(pass --tokenizer SPEC to add one)\n", src);
        return;
    }
    if (st_tokenizer_load(tok, use) != ST_OK) {
        fprintf(stderr, "shardtune: warning: %s is not stored in the checkpoint: %s\n"
                "(pass --tokenizer SPEC to store another one)\n", use, st_error_message());
        st_error_clear();
        *tok = NULL;
        return;
    }
    printf("tokenizer: %s\n", use);
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

/* Rank 0: the tokenizer to store (--tokenizer, else the one found beside
 * the source) as a blob; its size checked against the model's vocabulary. */
static st_err tokenizer_blob(const char *src, const char *fmt, const st_config *cfg, st_tokenizer *tok,
                             const char **kind, uint8_t **blob, size_t *nb, const convert_opts *o)
{
    st_tokenizer *own = NULL;
    if (o->tokenizer) {
        ST_TRY(st_tokenizer_load(&own, o->tokenizer));
        tok = own;
    } else if (!tok) {
        found_tokenizer(src, fmt, &own);
        tok = own;
    }
    st_err e = ST_OK;
    if (tok && st_tokenizer_vocab_size(tok) > cfg->vocab_size)
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__,
                         "tokenizer '%s' has %d tokens but the model only %d", o->tokenizer ? o->tokenizer : "found",
                         st_tokenizer_vocab_size(tok), cfg->vocab_size);
    if (!e && tok) e = st_tokenizer_to_blob(tok, kind, blob, nb);
    if (own) st_tokenizer_free(own);
    return e;
}

/* llama2.c, llm.c, Hugging Face: every rank opens the source and converts
 * its share of the tensors into one parallel HDF5 file. */
static st_err convert_source(const char *src, const char *fmt, MPI_Comm world, const convert_opts *o)
{
    int rank = 0;
    rank = st_comm_rank(world);
    st_model_source ms;
    ST_TRY(st_agree(world, st_model_source_open(&ms, src, fmt)));
    const char *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    st_err e = rank == 0 ? tokenizer_blob(src, ms.format, &ms.cfg, NULL, &kind, &blob, &nb, o) : ST_OK;
    e = st_agree(world, e);
    double t0 = st_now();
    if (!e) e = st_ckpt_save_source(o->out, world, &ms, kind, blob, nb);
    if (!e && rank == 0) {
        int size = 1;
        size = st_comm_size(world);
        double dt = st_now() - t0;
        printf("converted %s (%s, %s, %lld parameters) -> %s in %.2f s (%.3f GB/s of float32, %d rank%s)\n", src,
               ms.format, st_family_name(ms.cfg.family), st_config_num_params(&ms.cfg), o->out, dt,
               (double)ms.lay.numel * 4 / 1e9 / dt, size, size > 1 ? "s" : "");
    }
    free(blob);
    st_model_source_close(&ms);
    return e;
}

/* A shardtune checkpoint -> weights only: one rank reads it whole and writes it. */
static st_err convert_checkpoint(const char *src, MPI_Comm world, const convert_opts *o)
{
    int rank = 0;
    rank = st_comm_rank(world);
    st_err e = ST_OK;
    if (rank == 0) {
        st_config cfg;
        float *params = NULL;
        st_tokenizer *tok = NULL;
        const char *kind = NULL;
        uint8_t *blob = NULL;
        size_t nb = 0;
        st_grid g;
        st_layout lay;
        e = read_checkpoint(src, &cfg, &params, &tok);
        if (!e) e = tokenizer_blob(src, "shardtune", &cfg, tok, &kind, &blob, &nb, o);
        if (!e) e = st_grid_init(&g, MPI_COMM_SELF, 1);
        if (!e) {
            e = st_layout_init(&lay, &cfg, 1, 0);
            if (!e) {
                st_ckpt_tensors t = {.lay = &lay, .params = params};
                st_train_state s = {0};
                e = st_ckpt_save_file(o->out, &g, &t, &s, kind, blob, nb);
                if (!e)
                    printf("converted %s (shardtune, %s, %lld parameters) -> %s\n", src, st_family_name(cfg.family),
                           st_config_num_params(&cfg), o->out);
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

static st_err convert(const char *src, MPI_Comm world, void *opts)
{
    const convert_opts *o = opts;
    if (!o->out) ST_FAIL(ST_ERR_ARG, "convert needs --out FILE.h5");
    const char *fmt = o->format;
    st_err e = ST_OK;
    if (!strcmp(fmt, "auto")) e = detect(src, &fmt);
    ST_TRY(st_agree(world, e));
    if (!strcmp(fmt, "shardtune")) return convert_checkpoint(src, world, o);
    if (strcmp(fmt, "auto") && strcmp(fmt, "llama2c") && strcmp(fmt, "llmc") && strcmp(fmt, "hf"))
        ST_FAIL(ST_ERR_ARG, "unknown --format '%s' (auto, llama2c, llmc, hf or shardtune)", fmt);
    return convert_source(src, fmt, world, o);
}

st_err st_cmd_convert(int argc, char **argv, MPI_Comm world)
{
    convert_opts o;
    return st_options_run(argc, argv, world, convert_options, 3, &o,
                   "usage: shardtune convert SRC --out base.h5 [--tokenizer SPEC]\n\n"
                   "Imports a llama2.c .bin, an llm.c .bin or a Hugging Face model directory\n"
                   "(config.json + *.safetensors + tokenizer.json: GPT-2, Llama, Mistral, Qwen2)\n"
                   "into a shardtune checkpoint (weights only), which `train --init_from` and\n"
                   "`generate` read. Under mpirun the ranks convert disjoint tensors into one\n"
                   "parallel HDF5 file, each holding one source tensor at a time.\n\n",
                   "the source model (a file or a directory)", convert);
}

static st_err inspect(const char *path, MPI_Comm world, void *unused)
{
    (void)unused;
    st_err e = ST_OK;
    if (st_comm_rank(world) == 0) e = st_ckpt_inspect(path, MPI_COMM_SELF, stdout);
    return st_agree(world, e);
}

st_err st_cmd_inspect(int argc, char **argv, MPI_Comm world)
{
    return st_options_run(argc, argv, world, NULL, 0, NULL,
                   "usage: shardtune inspect CKPT.h5\n\n"
                   "Prints format version, config, step, parameter count, tensor shapes and\n"
                   "verifies every tensor's checksum. The file is plain HDF5: h5ls -r works too.\n\n",
                   "a checkpoint path", inspect);
}
