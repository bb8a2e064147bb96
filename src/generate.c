/* generate.c: `shardtune generate CKPT --prompt TEXT | --prompts FILE.jsonl`.
 *
 * Loads a checkpoint on any grid (tp splits the model, dp ranks share the
 * prompts), runs each prompt through the model once (prefill, in chunks) and
 * then one position per new token against the key/value cache. Every tp rank
 * gathers the same logits and draws with the same seed, so all agree on each
 * token without further communication.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "commands.h"
#include "jsonl.h"
#include "lora.h"
#include "model.h"
#include "options.h"
#include "sample.h"
#include "tokenizer.h"
#include "tp.h"

typedef struct {
    char *prompt, *prompts, *out;
    int max_new, tp, chunk, stop_at_eos, raw;
    int64_t seed;
    st_sampling s;
} gen_opts;
static gen_opts G;

static const st_option gen_options[] = {
    {"prompt", ST_OPT_STRING, &G.prompt, NULL, "one prompt (text)"},
    {"prompts", ST_OPT_STRING, &G.prompts, NULL, "JSONL file of {\"prompt\": ...} lines (e.g. candidates for raters)"},
    {"out", ST_OPT_STRING, &G.out, NULL, "write {\"prompt\",\"completion\"} JSON lines here (default: print)"},
    {"max_new", ST_OPT_INT, &G.max_new, "64", "tokens to generate per prompt"},
    {"temperature", ST_OPT_FLOAT, &G.s.temperature, "0.8", "sampling temperature (0 = greedy)"},
    {"top_k", ST_OPT_INT, &G.s.top_k, "0", "sample from the k most likely tokens (0 = all)"},
    {"top_p", ST_OPT_FLOAT, &G.s.top_p, "0.95", "nucleus sampling threshold (1 = off)"},
    {"seed", ST_OPT_INT64, &G.seed, "1", "sampling seed"},
    {"stop_at_eos", ST_OPT_BOOL, &G.stop_at_eos, "true", "stop a completion at the end-of-text token"},
    {"tp", ST_OPT_INT, &G.tp, "1", "tensor-parallel ranks"},
    {"chunk", ST_OPT_INT, &G.chunk, "64", "prompt tokens per prefill pass"},
};
#define N_GEN ((int)(sizeof gen_options / sizeof gen_options[0]))

/* Generate a completion of prompt; *out malloc'd text of the new tokens. */
static st_err complete(st_model *m, st_tokenizer *tok, const char *prompt, st_rng *rng, char **out,
                       float *full, float *local, int *scratch)
{
    const st_layout *y = &m->lay;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    st_kvcache c;
    st_err e = st_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &n, &cap);
    if (!e && n == 0) {
        int bos = st_tokenizer_bos(tok) >= 0 ? st_tokenizer_bos(tok) : st_tokenizer_eos(tok);
        if (bos < 0) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "empty prompt and the tokenizer has no BOS token");
        else { ids = realloc(ids, sizeof *ids); ids[0] = bos; n = 1; }
    }
    if (e) { free(ids); ST_TRY(e); }
    if ((int)n + G.max_new > y->cfg.max_seq) {
        free(ids);
        ST_FAIL(ST_ERR_ARG, "prompt of %zu tokens + %d new exceeds the model's max_seq %d (lower --max_new)",
                n, G.max_new, y->cfg.max_seq);
    }
    ST_TRY(st_kvcache_create(&c, m, 1));
    int32_t *outids = malloc(sizeof *outids * (size_t)(G.max_new + 1));
    int nout = 0;
    if (!outids) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    for (size_t at = 0; !e && at < n; at += (size_t)G.chunk) {
        int q = (int)(n - at < (size_t)G.chunk ? n - at : (size_t)G.chunk);
        e = st_model_forward_cached(m, &c, ids + at, q, local);
    }
    const int vpad = y->vocab_l * y->tp_size;
    while (!e && nout < G.max_new) {
        e = st_tp_gather_logits(m->tp, full, local, 1, y->vocab_l);
        if (e) break;
        (void)vpad;
        int next = st_sample_token(full, y->cfg.vocab_size, &G.s, rng, scratch);
        if (G.stop_at_eos && next == st_tokenizer_eos(tok)) break;
        outids[nout++] = next;
        if (nout == G.max_new) break;
        e = st_model_forward_cached(m, &c, &outids[nout - 1], 1, local);
    }
    size_t len = 0;
    if (!e) e = st_tokenizer_decode(tok, outids, (size_t)nout, out, &len);
    free(outids);
    free(ids);
    st_kvcache_free(&c);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

static st_err read_prompts(char ***list, int *n)
{
    *list = NULL;
    *n = 0;
    if (G.prompt) {
        *list = malloc(sizeof **list);
        if (!*list) ST_FAIL(ST_ERR_MEM, "out of memory");
        (*list)[(*n)++] = strdup(G.prompt);
        return ST_OK;
    }
    if (!G.prompts) ST_FAIL(ST_ERR_ARG, "give --prompt TEXT or --prompts FILE.jsonl");
    st_lines *r = NULL;
    ST_TRY(st_lines_open(&r, G.prompts));
    int cap = 0, lineno = 0;
    st_err e = ST_OK;
    for (;;) {
        const char *line;
        size_t len;
        int eof = 0;
        if ((e = st_lines_next(r, &line, &len, &eof)) || eof) break;
        lineno++;
        if (len == 0) continue;
        cJSON *j = NULL;
        if ((e = st_json_parse_line(&j, line, len, G.prompts, lineno))) break;
        cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        if (!cJSON_IsString(p)) {
            cJSON_Delete(j);
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s:%d: field \"prompt\" is missing or not a string", G.prompts, lineno);
            break;
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nl = realloc(*list, sizeof *nl * (size_t)cap);
            if (!nl) { cJSON_Delete(j); e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory"); break; }
            *list = nl;
        }
        (*list)[(*n)++] = strdup(p->valuestring);
        cJSON_Delete(j);
    }
    st_lines_close(r);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

static st_err generate(const char *ckpt, MPI_Comm world)
{
    st_grid g;
    ST_TRY(st_grid_init(&g, world, G.tp));
    st_config cfg;
    ST_TRY(st_ckpt_read_config(ckpt, world, &cfg));
    st_model m;
    ST_TRY(st_model_create(&m, &cfg, g.tp, 1, G.chunk < cfg.max_seq ? G.chunk : cfg.max_seq, 0, 0));
    st_ckpt_tensors t = {.lay = &m.lay, .params = m.params};
    char *kind = NULL;
    uint8_t *blob = NULL;
    size_t nb = 0;
    ST_TRY(st_ckpt_load(ckpt, &g, &t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, &kind, &blob, &nb));
    int merged = 0; /* LoRA adapters, if the checkpoint has them, merged into the weights */
    ST_TRY(st_lora_merge_checkpoint(ckpt, &g, &m.lay, m.params, &merged));
    if (!kind) ST_FAIL(ST_ERR_FORMAT, "checkpoint '%s' carries no tokenizer; cannot turn prompts into tokens", ckpt);
    st_tokenizer *tok = NULL;
    st_err e = st_tokenizer_from_blob(&tok, kind, blob, nb);
    free(kind);
    free(blob);
    ST_TRY(e);
    char **prompts = NULL;
    int np = 0;
    ST_TRY(st_agree(world, read_prompts(&prompts, &np)));
    size_t vpad = (size_t)m.lay.vocab_l * m.lay.tp_size;
    float *full = malloc(sizeof(float) * vpad), *local = malloc(sizeof(float) * m.lay.vocab_l);
    int *scratch = malloc(sizeof(int) * vpad);
    FILE *out = stdout;
    if (G.out && g.world_rank == 0) {
        out = fopen(G.out, "w");
        if (!out) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write '%s': %s", G.out, strerror(errno));
    }
    if (!full || !local || !scratch) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    e = st_agree(world, e);
    /* dp ranks take prompts round-robin; rank 0 of each tp group prints its own */
    for (int i = 0; !e && i < np; i++) {
        if (i % g.dp_size != g.dp_rank) continue;
        st_rng rng;
        st_rng_seed(&rng, (uint64_t)G.seed * 1000003ULL + (uint64_t)i);
        char *text = NULL;
        e = complete(&m, tok, prompts[i], &rng, &text, full, local, scratch);
        if (!e && g.tp_rank == 0) {
            if (G.out) {
                cJSON *j = cJSON_CreateObject();
                cJSON_AddStringToObject(j, "prompt", prompts[i]);
                cJSON_AddStringToObject(j, "completion", text);
                char *s = cJSON_PrintUnformatted(j);
                if (g.world_rank == 0) fprintf(out, "%s\n", s);
                else fprintf(stdout, "%s\n", s);
                free(s);
                cJSON_Delete(j);
            } else {
                int tty = isatty(fileno(stdout));
                printf("=== prompt %d\n%s%s%s%s\n", i + 1, prompts[i], tty ? "\033[1m" : "", text,
                       tty ? "\033[0m" : "");
            }
            fflush(stdout);
        }
        free(text);
    }
    if (out && out != stdout) fclose(out);
    for (int i = 0; i < np; i++) free(prompts[i]);
    free(prompts);
    free(full);
    free(local);
    free(scratch);
    st_tokenizer_free(tok);
    st_model_free(&m);
    st_grid_free(&g);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_cmd_generate(int argc, char **argv, MPI_Comm world)
{
    int rank = 0, help = 0, npos = 0;
    char *pos[1];
    MPI_Comm_rank(world, &rank);
    st_options o;
    ST_TRY(st_options_init(&o, gen_options, N_GEN));
    st_err e = st_options_parse(&o, argc, argv, &help, pos, 1, &npos);
    if (!e && (help || npos != 1)) {
        if (!rank) {
            printf("usage: [mpirun -np N] shardtune generate CKPT.h5 (--prompt TEXT | --prompts FILE.jsonl) [options]\n\n"
                   "Samples completions from a checkpoint, with a key/value cache.\n\n");
            st_options_print_help(&o, stdout);
        }
        if (!help) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "generate needs exactly one checkpoint path");
    } else if (!e) {
        e = generate(pos[0], world);
    }
    st_options_free(&o);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}
