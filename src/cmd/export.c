/* cmd_export.c: `shardtune export CKPT --to hf:DIR | gguf:FILE [--dtype ...]`:
 * a checkpoint's weights (and tokenizer) as a Hugging Face model directory
 * or a llama.cpp GGUF file. One rank does the work on a 1x1 view of the
 * checkpoint; the others wait and agree on the outcome. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "core/params.h"
#include "io/inference.h"
#include "io/lora_ckpt.h"
#include "io/checkpoint.h"
#include "io/formats/gguf.h"
#include "io/formats/hf.h"
#include "io/tok/tokenizer.h"
#include "model/classify.h"
#include "model/lora.h"
#include "mpi/comm.h"



typedef struct { char *to, *dtype, *name, *as; int merge_lora, force, overwrite; } export_opts;
static const st_option export_options[] = {
    {"to", ST_OPT_STRING, offsetof(export_opts, to), NULL, "destination: hf:DIR (Hugging Face directory), gguf:FILE (llama.cpp) or peft:DIR (the LoRA adapters alone, as PEFT saves them)", NULL},
    {"dtype", ST_OPT_STRING, offsetof(export_opts, dtype), "f32", "weight type written: f32, f16 or bf16 (bf16: hf only)", NULL},
    {"name", ST_OPT_STRING, offsetof(export_opts, name), "shardtune", "model name recorded in GGUF general.name", NULL},
    {"overwrite", ST_OPT_BOOL, offsetof(export_opts, overwrite), "false", "replace an existing GGUF file, or write into a folder that is not empty", NULL},
    {"merge-lora", ST_OPT_BOOL, offsetof(export_opts, merge_lora), "false", "merge the checkpoint's LoRA adapters into the weights (W += alpha/r B A)", NULL},
    {"force", ST_OPT_BOOL, offsetof(export_opts, force), "false", "gguf: write the tokenizer even when llama.cpp would tokenize text differently (unknown pre-tokenizer, normalizers, sentencepiece-style tokenizer.json)", NULL},
    {"as", ST_OPT_STRING, offsetof(export_opts, as), "auto", "what to write: lm (the language model), classifier (a classification or reward head as *ForSequenceClassification, hf only) or auto (classifier when the checkpoint has a head)", NULL},
};

static const char usage[] =
    "usage: shardtune export CKPT.h5 --to hf:DIR | gguf:FILE | peft:DIR [--dtype f32|f16|bf16] [--merge-lora]\n\n"
    "Writes a checkpoint's weights and tokenizer as a Hugging Face model directory\n"
    "(config.json, model.safetensors, tokenizer.json; loads with transformers'\n"
    "from_pretrained) or as a GGUF file for llama.cpp. Optimizer state is not exported.\n\n";

/* Adapters are merged on request and never silently dropped. */
static st_err check_lora(const char *path, const export_opts *o)
{
    char *meta = NULL;
    int has_lora = 0;
    ST_TRY(st_ckpt_read_set_meta(path, MPI_COMM_SELF, "lora", &meta, &has_lora));
    free(meta);
    if (has_lora && !o->merge_lora)
        ST_FAIL(ST_ERR_ARG, "%s carries LoRA adapters; pass --merge-lora to export the base with the adapters "
                "merged in, or export the adapters alone with --to peft:DIR", path);
    return ST_OK;
}

static st_err parse_dtype(const char *s, st_dtype *d)
{
    if (!strcmp(s, "f32")) *d = ST_DT_F32;
    else if (!strcmp(s, "f16")) *d = ST_DT_F16;
    else if (!strcmp(s, "bf16")) *d = ST_DT_BF16;
    else ST_FAIL(ST_ERR_ARG, "--dtype %s: expected f32, f16 or bf16", s);
    return ST_OK;
}

/* --to hf:DIR or gguf:FILE, checked before any work. */
static st_err parse_dest(const char *to, st_dtype dt, int *gguf, const char **where)
{
    if (!to) ST_FAIL(ST_ERR_ARG, "export needs --to hf:DIR or --to gguf:FILE");
    if (!strncmp(to, "hf:", 3) && to[3]) *gguf = 0, *where = to + 3;
    else if (!strncmp(to, "gguf:", 5) && to[5]) *gguf = 1, *where = to + 5;
    else ST_FAIL(ST_ERR_ARG, "--to %s: expected hf:DIR or gguf:FILE", to);
    if (*gguf && dt == ST_DT_BF16) ST_FAIL(ST_ERR_ARG, "GGUF export writes f32 or f16; --dtype bf16 is for hf:DIR");
    return ST_OK;
}

/* Nothing is overwritten without --overwrite: not a file, nor files in a folder
 * that already holds some (another model's config.json would be mixed with
 * this one's weights). */
static st_err check_dest(const char *path, int overwrite)
{
    struct stat sb;
    if (overwrite || stat(path, &sb)) return ST_OK;
    if (!S_ISDIR(sb.st_mode)) ST_FAIL(ST_ERR_ARG, "%s exists; add --overwrite to replace it", path);
    DIR *d = opendir(path);
    struct dirent *ent;
    int used = 0;
    while (d && !used && (ent = readdir(d))) used = strcmp(ent->d_name, ".") && strcmp(ent->d_name, "..");
    if (d) closedir(d);
    if (used) ST_FAIL(ST_ERR_ARG, "%s exists and is not empty; add --overwrite to write into it", path);
    return ST_OK;
}

/* --to peft:DIR: the adapters alone, for PEFT's PeftModel.from_pretrained. */
static st_err export_peft(const char *ckpt, const char *dir, st_dtype dt)
{
    static const char *const modules[ST_T_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                    "gate_proj", "up_proj", "down_proj"};
    st_config cfg;
    ST_TRY(st_ckpt_read_config(ckpt, MPI_COMM_SELF, &cfg));
    st_layout lay;
    ST_TRY(st_layout_init(&lay, &cfg, 1, 0));
    st_grid g;
    st_err e = st_grid_init(&g, MPI_COMM_SELF, 1);
    float *base = e ? NULL : calloc(lay.numel, sizeof(float));
    st_lora *l = NULL;
    st_lora_config c;
    if (!e && !base) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    if (!e) e = st_lora_load_checkpoint(ckpt, &g, &lay, base, &l, &c);
    if (!e && !l) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__,
                                   "%s has no LoRA adapters (train with lora.rank > 0)", ckpt);
    if (!e) {
        const char *names[ST_T_COUNT];
        int n = 0;
        for (int i = 0; i < ST_T_COUNT; i++)
            if (st_lora_targets(l) & (1u << i)) names[n++] = modules[i];
        e = st_hf_write_peft(dir, &cfg, st_lora_layout(l), st_lora_params(l), c.rank, c.alpha, c.dropout, names, n, dt);
        if (!e) printf("exported the LoRA adapters of %s (rank %d, alpha %g) -> %s\n", ckpt, c.rank, c.alpha, dir);
    }
    if (l) st_lora_free(l);
    free(base);
    if (!e) st_grid_free(&g);
    st_layout_free(&lay);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* The checkpoint's head as an HF score: refused when it pools the mean or
 * has a bias, which *ForSequenceClassification lacks. */
static st_err write_classifier(const char *ckpt, const char *dir, const st_infer *x, st_dtype dt)
{
    const st_cls_head *h = &x->head;
    const float *bias = h->params + h->lay.tensors[1].offset;
    if (x->pool_mean)
        ST_FAIL(ST_ERR_ARG, "%s: the head pools the mean of all tokens; Hugging Face's *ForSequenceClassification "
                "pools the last token (train with classify.pool: last, or export --as lm)", ckpt);
    for (int k = 0; k < x->n_labels; k++)
        if (bias[k] != 0.0f)
            ST_FAIL(ST_ERR_ARG, "%s: the head has a bias (score.bias[%d] = %g), which Hugging Face's "
                    "*ForSequenceClassification has not; train with classify.bias: false to export it, or export the "
                    "language model with --as lm", ckpt, k, (double)bias[k]);
    st_hf_head head = {.n_labels = x->n_labels, .weight = h->params, .labels = (const char *const *)x->labels};
    return st_hf_write_classifier(dir, &x->cfg, x->m.params, x->tok, dt, &head);
}

static st_err export_one(const char *ckpt, const export_opts *o)
{
    st_dtype dt = ST_DT_F32;
    int gguf = 0;
    const char *where = NULL;
    ST_TRY(parse_dtype(o->dtype, &dt));
    if (o->to && !strncmp(o->to, "peft:", 5) && o->to[5]) {
        ST_TRY(check_dest(o->to + 5, o->overwrite));
        return export_peft(ckpt, o->to + 5, dt);
    }
    ST_TRY(parse_dest(o->to, dt, &gguf, &where));
    ST_TRY(check_dest(where, o->overwrite));
    if (strcmp(o->as, "auto") && strcmp(o->as, "lm") && strcmp(o->as, "classifier"))
        ST_FAIL(ST_ERR_ARG, "--as %s: expected auto, lm or classifier", o->as);
    char *meta = NULL;
    int has_head = 0;
    ST_TRY(st_ckpt_read_set_meta(ckpt, MPI_COMM_SELF, "head", &meta, &has_head));
    free(meta);
    const int as_cls = has_head && strcmp(o->as, "lm");
    if (!has_head && !strcmp(o->as, "classifier"))
        ST_FAIL(ST_ERR_ARG, "%s has no classification or reward head (train with method classify or reward)", ckpt);
    if (as_cls && gguf)
        ST_FAIL(ST_ERR_ARG, "%s is a classifier or reward model; GGUF export writes language models: use --to "
                "hf:DIR, or --as lm for its language model", ckpt);
    ST_TRY(check_lora(ckpt, o));
    /* the whole model on this rank: a 1x1 grid of its own */
    st_grid g;
    ST_TRY(st_grid_init(&g, MPI_COMM_SELF, 1));
    st_infer x;
    const st_infer_opts io = {.B = 1, .T = 1, .head = as_cls ? ST_INFER_HEAD_REQUIRED : ST_INFER_NO_HEAD,
                              .merge_lora = o->merge_lora};
    st_err e = st_infer_open(&x, ckpt, &g, &io);
    if (!e) {
        st_infer_print_loaded(&x, "export", &g);
        e = gguf     ? st_gguf_export(where, &x.cfg, x.m.params, x.tok, dt == ST_DT_F16 ? ST_GGML_F16 : ST_GGML_F32,
                                      o->name, o->force)
            : as_cls ? write_classifier(ckpt, where, &x, dt)
                     : st_hf_write(where, &x.cfg, x.m.params, x.tok, dt);
        if (!e)
            printf("exported %s (%s%s, %lld parameters, %s) -> %s\n", ckpt, st_family_name(x.cfg.family),
                   as_cls ? ", sequence classifier" : "", st_config_num_params(&x.cfg), o->dtype, o->to);
        st_infer_close(&x);
    }
    st_grid_free(&g);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* One rank writes; every rank returns the outcome. */
static st_err export_on_rank0(const char *ckpt, MPI_Comm world, void *opts)
{
    const export_opts *o = opts;
    int rank = 0;
    rank = st_comm_rank(world);
    return st_agree(world, rank == 0 ? export_one(ckpt, o) : ST_OK);
}

st_err st_cmd_export(int argc, char **argv, MPI_Comm world)
{
    export_opts o;
    return st_options_run(argc, argv, world, export_options, (int)(sizeof export_options / sizeof export_options[0]), &o,
                          usage, "a checkpoint path", export_on_rank0);
}
