/* generate.c: `shardtune generate CKPT --prompt TEXT | --prompts FILE.jsonl`.
 *
 * Loads a checkpoint on any grid (tp splits the model, dp ranks take blocks
 * of prompts), runs each prompt through the model once (prefill, in chunks),
 * then decodes a batch of prompts together, one position per new token
 * against the key/value cache. Every tp rank
 * gathers the same logits and draws with the same seed, so all agree on each
 * token without further communication.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "cmd/options.h"
#include "core/timer.h"
#include "io/checkpoint.h"
#include "io/inference.h"
#include "io/jsonl.h"
#include "io/npy.h"
#include "io/tok/tokenizer.h"
#include "kernels/kernels.h"
#include "model/lora.h"
#include "model/model.h"
#include "model/sample.h"
#include "mpi/comm.h"
#include "mpi/tp.h"

typedef struct {
    char *prompt, *prompts, *out, *logits, *precision;
    int max_new, tp, chunk, stop_at_eos, raw, batch;
    int64_t seed;
    st_sampling s;
} gen_opts;

static const st_option gen_options[] = {
    {"prompt", ST_OPT_STRING, offsetof(gen_opts, prompt), NULL, "one prompt (text)", NULL},
    {"prompts", ST_OPT_STRING, offsetof(gen_opts, prompts), NULL, "JSONL file of {\"prompt\": ...} lines (e.g. candidates for raters)", NULL},
    {"out", ST_OPT_STRING, offsetof(gen_opts, out), NULL, "write {\"prompt\",\"completion\",\"prompt_ids\",\"completion_ids\"} JSON lines here (default: print)", NULL},
    {"max_new", ST_OPT_INT, offsetof(gen_opts, max_new), "64", "tokens to generate per prompt", "[0,)"},
    {"logits", ST_OPT_STRING, offsetof(gen_opts, logits), NULL, "write the logits each new token was drawn from (before temperature, top-k, top-p) to this NumPy .npy file: float32, shape (prompts, max_new, vocab), prompt order, NaN after a completion ends", NULL},
    {"temperature", ST_OPT_FLOAT, offsetof(gen_opts, s.temperature), "0.8", "sampling temperature (0 = greedy)", "[0,)"},
    {"top_k", ST_OPT_INT, offsetof(gen_opts, s.top_k), "0", "sample from the k most likely tokens (0 = all)", "[0,)"},
    {"top_p", ST_OPT_FLOAT, offsetof(gen_opts, s.top_p), "0.95", "nucleus sampling threshold (1 = off)", "(0,1]"},
    {"seed", ST_OPT_INT64, offsetof(gen_opts, seed), "1", "sampling seed", NULL},
    {"stop_at_eos", ST_OPT_BOOL, offsetof(gen_opts, stop_at_eos), "true", "stop a completion at the end-of-text token", NULL},
    {"tp", ST_OPT_INT, offsetof(gen_opts, tp), "1", "tensor-parallel ranks", "[1,)"},
    {"chunk", ST_OPT_INT, offsetof(gen_opts, chunk), "64", "prompt tokens per prefill pass", "[1,)"},
    {"batch", ST_OPT_INT, offsetof(gen_opts, batch), "8", "prompts decoded together on each rank", "[1,)"},
    {"precision", ST_OPT_STRING, offsetof(gen_opts, precision), "fp32", "matrix products: fp32, bf16 (bf16 inputs, fp32 accumulation) or auto (bf16 where this CPU's bf16 matmul is faster)", NULL},
};
#define N_GEN ((int)(sizeof gen_options / sizeof gen_options[0]))

/* Token ids of one prompt: bos first when the tokenizer's rule says so, as
 * prepare built the training data (and as llama2.c and llama.cpp query such
 * models); an empty prompt otherwise starts from bos, or eos. */
static st_err encode_prompt(st_tokenizer *tok, const char *prompt, int max_seq, int32_t **ids, size_t *n, const gen_opts *o)
{
    size_t cap = 0;
    *ids = NULL;
    *n = 0;
    if (st_tokenizer_adds_bos(tok)) {
        if (!(*ids = malloc(sizeof **ids))) ST_FAIL(ST_ERR_MEM, "out of memory");
        (*ids)[0] = st_tokenizer_bos(tok);
        *n = cap = 1;
    }
    /* encode (not encode_more): the prompt still starts the text, dummy prefix and all */
    st_err e = st_tokenizer_encode(tok, prompt, strlen(prompt), 1, ids, n, &cap);
    if (!e && *n == 0) {
        int bos = st_tokenizer_bos(tok) >= 0 ? st_tokenizer_bos(tok) : st_tokenizer_eos(tok);
        int32_t *one = bos >= 0 ? realloc(*ids, sizeof **ids) : NULL;
        if (!one) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "empty prompt and the tokenizer has no BOS token");
        else *ids = one, (*ids)[0] = bos, *n = 1;
    }
    if (!e && (int)*n + o->max_new > max_seq)
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__,
                         "prompt of %zu tokens + %d new exceeds the model's max_seq %d (lower --max_new)", *n,
                         o->max_new, max_seq);
    if (e) {
        free(*ids);
        *ids = NULL;
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

/* The token ids of one prompt and of its completion, for --out. */
typedef struct {
    int32_t *prompt, *completion;
    size_t n_prompt, n_completion;
} gen_ids;

/* Where generation's time went, for the closing line and benchmarks/. */
typedef struct {
    double first_token;       /* st_since_start() when the first tokens were drawn (-1: not yet) */
    double prompt_s, decode_s; /* prompts through the model up to the first tokens drawn; the rest */
    int64_t prompt_tokens, new_tokens; /* new tokens after each row's first */
} gen_stats;

/* Completions of nb prompts at once: each row's prompt is run through the
 * model on its own (lengths differ), then all rows decode together, one
 * position per row per step. outs[r]: malloc'd text of row r's new tokens;
 * rids[r]: row r's prompt and new token ids (malloc'd). lg (NULL: none): the
 * logits file, where row r is prompt first + r. st: the time and tokens
 * are added to it. */
static st_err complete_batch(st_model *m, st_tokenizer *tok, char **prompts, int nb, st_rng *rngs, char **outs,
                             gen_ids *rids, float *full, float *local, int *scratch, st_npy *lg, int64_t first,
                             gen_stats *st, const gen_opts *o)
{
    double t0 = st_now();
    const st_layout *y = &m->lay;
    const int Vl = y->vocab_l, eos = st_tokenizer_eos(tok);
    st_kvcache c;
    ST_TRY(st_kvcache_create(&c, m, nb));
    int32_t *next = calloc((size_t)nb, sizeof *next), *outids = calloc((size_t)nb * (o->max_new + 1), sizeof *outids);
    int *nout = calloc((size_t)nb, sizeof *nout), *done = calloc((size_t)nb, sizeof *done);
    st_err e = next && outids && nout && done ? ST_OK : st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    st_err werr = ST_OK;
    for (int r = 0; !e && r < nb; r++) { /* prefill row r, in chunks */
        int32_t *ids = NULL;
        size_t n = 0;
        if ((e = encode_prompt(tok, prompts[r], y->cfg.max_seq, &ids, &n, o))) break;
        st->prompt_tokens += (int64_t)n;
        st_kvcache row = st_kvcache_row(&c, m, r);
        for (size_t at = 0; !e && at < n; at += (size_t)o->chunk) {
            int q = (int)(n - at < (size_t)o->chunk ? n - at : (size_t)o->chunk);
            e = st_model_forward_cached(m, &row, ids + at, q, local + (size_t)r * Vl);
        }
        rids[r].prompt = ids, rids[r].n_prompt = n;
    }
    for (int step = 0; !e && step < o->max_new; step++) {
        if ((e = st_tp_gather_logits(m->tp, full, local, nb, Vl))) break;
        int active = 0;
        for (int r = 0; r < nb; r++) {
            next[r] = eos >= 0 ? eos : 0; /* a finished row is fed something; its output is ignored */
            if (done[r]) continue;
            float *row = full + (size_t)r * Vl * y->tp_size;   /* the first vocab_size are real */
            /* a failed write is reported after the batch: the other tp ranks are still decoding */
            if (lg && y->tp_rank == 0 && !werr)
                werr = st_npy_put(lg, ((first + r) * o->max_new + step) * (int64_t)y->cfg.vocab_size, row,
                                  (size_t)y->cfg.vocab_size);
            int t = st_sample_token(row, y->cfg.vocab_size, &o->s, &rngs[r], scratch);
            if (o->stop_at_eos && t == eos) { done[r] = 1; continue; }
            outids[(size_t)r * (o->max_new + 1) + nout[r]++] = next[r] = t;
            active++;
        }
        if (step == 0) {
            if (st->first_token < 0) st->first_token = st_since_start();
            st->prompt_s += st_now() - t0;
            t0 = st_now();
        } else {
            st->new_tokens += active;
        }
        if (!active || step + 1 == o->max_new) break;
        e = st_model_forward_cached(m, &c, next, 1, local);
    }
    if (!e && o->max_new > 0) st->decode_s += st_now() - t0;
    werr = st_agree(m->tp, werr);   /* the tp group stops together */
    if (!e) e = werr;
    for (int r = 0; !e && r < nb; r++) {
        size_t len = 0;
        e = st_tokenizer_decode(tok, outids + (size_t)r * (o->max_new + 1), (size_t)nout[r], &outs[r], &len);
        rids[r].completion = malloc(sizeof(int32_t) * (size_t)(nout[r] + 1));
        if (!e && !rids[r].completion) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
        if (!e) memcpy(rids[r].completion, outids + (size_t)r * (o->max_new + 1), sizeof(int32_t) * (size_t)nout[r]);
        rids[r].n_completion = (size_t)nout[r];
    }
    free(next), free(outids), free(nout), free(done);
    st_kvcache_free(&c);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* The closing line on stderr: prompt processing and decoding rates, over
 * every dp rank (tokens summed, times the slowest rank's), and the oneDNN
 * primitives cached (they should not grow with every new length). */
static st_err print_stats(const gen_stats *st, const st_grid *g, const gen_opts *o)
{
    double tok[2] = {g->tp_rank ? 0 : (double)st->prompt_tokens, g->tp_rank ? 0 : (double)st->new_tokens};
    double sec[2] = {st->prompt_s, st->decode_s};
    ST_TRY(st_allreduce(g->world, tok, 2, ST_M_F64, ST_OP_SUM));
    ST_TRY(st_allreduce(g->world, sec, 2, ST_M_F64, ST_OP_MAX));
    if (g->world_rank == 0)
        fprintf(stderr, "shardtune generate: prompts %.0f tokens in %.3f s (%.1f tokens/s); then %.0f new tokens in "
                "%.3f s (%.1f tokens/s), batches of up to %d per rank; %d oneDNN primitives cached\n", tok[0],
                sec[0], sec[0] > 0 ? tok[0] / sec[0] : 0.0, tok[1], sec[1], sec[1] > 0 ? tok[1] / sec[1] : 0.0,
                o->batch, st_kernels_cache_size());
    return ST_OK;
}

static st_err read_prompts(char ***list, int *n, const gen_opts *o)
{
    *list = NULL;
    *n = 0;
    if (o->prompt) {
        *list = malloc(sizeof **list);
        if (!*list) ST_FAIL(ST_ERR_MEM, "out of memory");
        (*list)[(*n)++] = strdup(o->prompt);
        return ST_OK;
    }
    if (!o->prompts) ST_FAIL(ST_ERR_ARG, "give --prompt TEXT or --prompts FILE.jsonl");
    st_lines *r = NULL;
    ST_TRY(st_lines_open(&r, o->prompts));
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
        if ((e = st_json_parse_line(&j, line, len, o->prompts, lineno))) break;
        cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        if (!cJSON_IsString(p)) {
            cJSON_Delete(j);
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s:%d: field \"prompt\" is missing or not a string", o->prompts, lineno);
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

static void add_ids(cJSON *j, const char *key, const int32_t *ids, size_t n)
{
    cJSON *a = cJSON_AddArrayToObject(j, key);
    for (size_t i = 0; a && i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[i]));
}

static st_err generate(const char *ckpt, MPI_Comm world, void *opts)
{
    const gen_opts *o = opts;
    st_grid g;
    ST_TRY(st_grid_init(&g, world, o->tp));
    if (o->batch < 1 || o->chunk < 1) ST_FAIL(ST_ERR_ARG, "--batch and --chunk must be at least 1");
    st_infer x; /* LoRA adapters, if the checkpoint has them, merged into the weights */
    const st_infer_opts io = {.B = o->batch, .T = o->chunk, .merge_lora = 1, .need_tokenizer = 1,
                              .precision = o->precision};
    ST_TRY(st_infer_open(&x, ckpt, &g, &io));
    st_infer_print_loaded(&x, "generate", &g);
    st_model *m = &x.m;
    st_tokenizer *tok = x.tok;
    st_err e = ST_OK;
    char **prompts = NULL;
    int np = 0;
    ST_TRY(st_agree(world, read_prompts(&prompts, &np, o)));
    size_t vpad = (size_t)m->lay.vocab_l * m->lay.tp_size;
    float *full = malloc(sizeof(float) * vpad * o->batch), *local = malloc(sizeof(float) * m->lay.vocab_l * o->batch);
    int *scratch = malloc(sizeof(int) * vpad);
    st_rng *rngs = malloc(sizeof *rngs * o->batch);
    char **texts = calloc((size_t)np + 1, sizeof *texts);
    gen_ids *ids = calloc((size_t)np + 1, sizeof *ids);
    FILE *out = stdout;
    if (o->out && g.world_rank == 0) {
        out = fopen(o->out, "w");
        if (!out) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write '%s': %s", o->out, strerror(errno));
    }
    if (!full || !local || !scratch || !rngs || !texts || !ids)
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    e = st_agree(world, e);
    /* the logits file: world rank 0 makes it (all NaN), each tp rank 0 fills its prompts' rows */
    st_npy lg = {.fd = -1}, *lgp = o->logits ? &lg : NULL;
    if (!e && o->logits) {
        int64_t shape[3] = {np, o->max_new, m->lay.cfg.vocab_size};
        e = st_agree(world, g.world_rank == 0 ? st_npy_create(o->logits, shape, 3) : ST_OK);
        if (!e) e = st_agree(world, g.tp_rank == 0 ? st_npy_open(&lg, o->logits) : ST_OK);
    }
    /* dp rank r takes a contiguous block of prompts, in batches */
    const int lo = (int)((int64_t)np * g.dp_rank / g.dp_size), hi = (int)((int64_t)np * (g.dp_rank + 1) / g.dp_size);
    gen_stats st = {.first_token = -1};
    for (int i = lo; !e && i < hi; i += o->batch) {
        int nb = hi - i < o->batch ? hi - i : o->batch;
        for (int r = 0; r < nb; r++) st_rng_seed(&rngs[r], (uint64_t)o->seed * 1000003ULL + (uint64_t)(i + r));
        e = complete_batch(m, tok, prompts + i, nb, rngs, texts + i, ids + i, full, local, scratch, lgp, i, &st,
                           o);
        if (!e && i == lo && g.world_rank == 0)
            fprintf(stderr, "shardtune generate: first token %.2f s after start\n", st.first_token);
    }
    st_err ce = st_npy_close(&lg);
    if (!e) e = ce;
    e = st_agree(world, e);
    if (!e) e = print_stats(&st, &g, o);
    /* the block's lines, in prompt order, gathered to world rank 0 over dp (tp rank 0 ranks) */
    char *mine = NULL;
    size_t mlen = 0;
    FILE *mem = e ? NULL : open_memstream(&mine, &mlen);
    for (int i = lo; mem && i < hi; i++) {
        if (o->out) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "prompt", prompts[i]);
            cJSON_AddStringToObject(j, "completion", texts[i]);
            add_ids(j, "prompt_ids", ids[i].prompt, ids[i].n_prompt);
            add_ids(j, "completion_ids", ids[i].completion, ids[i].n_completion);
            char *js = cJSON_PrintUnformatted(j);
            fprintf(mem, "%s\n", js);
            free(js);
            cJSON_Delete(j);
        } else {
            int tty = isatty(fileno(stdout));
            fprintf(mem, "=== prompt %d\n%s%s%s%s\n", i + 1, prompts[i], tty ? "\033[1m" : "", texts[i],
                    tty ? "\033[0m" : "");
        }
    }
    if (mem) fclose(mem);
    if (!e && g.tp_rank == 0) {
        /* dp rank 0 writes every rank's lines, in rank (= prompt) order */
        int64_t len = (int64_t)mlen, *lens = calloc(2 * (size_t)g.dp_size, sizeof *lens), total = 0;
        int64_t *displs = lens ? lens + g.dp_size : NULL;
        char *all = NULL;
        if (!lens) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
        if (!e) e = st_gather(g.dp, &len, lens, 1, ST_M_I64, 0);
        if (!e && g.dp_rank == 0) {
            for (int r = 0; r < g.dp_size; r++) displs[r] = total, total += lens[r];
            if (!(all = malloc((size_t)total + 1))) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__,
                                                                     "out of memory for %lld bytes", (long long)total);
        }
        if (!e) e = st_gatherv(g.dp, mine, len, all, lens, displs, ST_M_U8, 0);
        if (!e && all) {
            fwrite(all, 1, (size_t)total, out);
            fflush(out);
        }
        free(all), free(lens);
    }
    free(mine);
    for (int i = 0; i < np; i++) free(texts[i]), free(ids[i].prompt), free(ids[i].completion);
    free(texts);
    free(ids);
    free(rngs);
    if (out && out != stdout) fclose(out);
    for (int i = 0; i < np; i++) free(prompts[i]);
    free(prompts);
    free(full);
    free(local);
    free(scratch);
    st_infer_close(&x);
    st_grid_free(&g);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_cmd_generate(int argc, char **argv, MPI_Comm world)
{
    gen_opts o;
    return st_options_run(argc, argv, world, gen_options, N_GEN, &o,
                          "usage: [mpirun -np N] shardtune generate CKPT.h5 (--prompt TEXT | --prompts FILE.jsonl) [options]\n\n"
                          "Samples completions from a checkpoint, with a key/value cache.\n\n",
                          "a checkpoint path", generate);
}
