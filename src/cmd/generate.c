/* generate.c: `shardtune generate CKPT --prompt TEXT | --prompts FILE.jsonl`.
 *
 * Loads a checkpoint on any grid (tp splits the model, dp ranks take blocks
 * of answers) and decodes batches of answers with the engine of
 * model/decode.h: each prompt runs through the model once (prefill, in
 * chunks, shared by its --samples answers), then the batch decodes together,
 * one position per new token against the key/value cache. Every tp rank
 * gathers the same logits and draws the same number, so all agree on each
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
#include "core/rng.h"
#include "core/timer.h"
#include "io/checkpoint.h"
#include "io/inference.h"
#include "io/jsonl.h"
#include "io/npy.h"
#include "io/tok/tokenizer.h"
#include "kernels/kernels.h"
#include "model/decode.h"
#include "model/lora.h"
#include "mpi/comm.h"
#include "mpi/tp.h"

typedef struct {
    char *prompt, *prompts, *out, *logits, *precision;
    int max_new, tp, chunk, stop_at_eos, raw, batch, samples;
    int64_t seed;
    st_sampling s;
} gen_opts;

static const st_option gen_options[] = {
    {"prompt", ST_OPT_STRING, offsetof(gen_opts, prompt), NULL, "one prompt (text)", NULL},
    {"prompts", ST_OPT_STRING, offsetof(gen_opts, prompts), NULL, "JSONL file of {\"prompt\": ...} lines (e.g. candidates for raters)", NULL},
    {"out", ST_OPT_STRING, offsetof(gen_opts, out), NULL, "write {\"prompt\",\"completion\",\"prompt_ids\",\"completion_ids\"} JSON lines here (\"sample\" too with --samples above 1; default: print)", NULL},
    {"max_new", ST_OPT_INT, offsetof(gen_opts, max_new), "64", "tokens to generate per answer", "[1,)"},
    {"logits", ST_OPT_STRING, offsetof(gen_opts, logits), NULL, "write the logits each new token was drawn from (before temperature, top-k, top-p) to this NumPy .npy file: float32, shape (prompts x samples, max_new, vocab), in --out's order, NaN after a completion ends", NULL},
    {"temperature", ST_OPT_FLOAT, offsetof(gen_opts, s.temperature), "0.8", "sampling temperature (0 = greedy)", "[0,)"},
    {"top_k", ST_OPT_INT, offsetof(gen_opts, s.top_k), "0", "sample from the k most likely tokens (0 = all)", "[0,)"},
    {"top_p", ST_OPT_FLOAT, offsetof(gen_opts, s.top_p), "0.95", "nucleus sampling threshold (1 = off)", "(0,1]"},
    {"seed", ST_OPT_INT64, offsetof(gen_opts, seed), "1", "sampling seed", NULL},
    {"stop_at_eos", ST_OPT_BOOL, offsetof(gen_opts, stop_at_eos), "true", "stop a completion at the end-of-text token", NULL},
    {"tp", ST_OPT_INT, offsetof(gen_opts, tp), "1", "tensor-parallel ranks", "[1,)"},
    {"chunk", ST_OPT_INT, offsetof(gen_opts, chunk), "64", "prompt tokens per prefill pass", "[1,)"},
    {"batch", ST_OPT_INT, offsetof(gen_opts, batch), "8", "answers decoded together on each rank", "[1,)"},
    {"samples", ST_OPT_INT, offsetof(gen_opts, samples), "1", "answers per prompt (candidates for raters), each from its own random stream; the prompt is run once for all of them", "[1,)"},
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

/* The token ids of one answer's prompt and of its completion, for --out. */
typedef struct {
    int32_t *prompt, *completion;
    size_t n_prompt, n_completion;
} gen_ids;

/* --logits: the decoder's logits of batch row r go to file row first + r
 * (tp rank 0 of each dp rank writes; the first failed write is kept and
 * reported after the batch, while the other tp ranks are still decoding). */
typedef struct {
    st_npy *f;
    int64_t first;
    int max_new, write;
    st_err werr;
} gen_logits;

static void put_logits(void *ctx, int row, int t, const float *logits, int V)
{
    gen_logits *g = ctx;
    if (g->write && !g->werr)
        g->werr = st_npy_put(g->f, ((g->first + row) * g->max_new + t) * (int64_t)V, logits, (size_t)V);
}

/* Completions of nb answers at once (model/decode.h): row first + r is
 * sample j of prompt p, drawn from its own stream (seed, p, j), so its answer
 * is the same in any batch and on any grid. outs[r]: malloc'd text of row r's
 * new tokens, the stop token left out; rids[r]: its prompt and new token ids
 * (malloc'd). lg (NULL: none): the logits file. */
static st_err complete_batch(st_decoder *d, st_tokenizer *tok, char **prompts, int first, int nb, char **outs,
                             gen_ids *rids, st_npy *lg, const gen_opts *o)
{
    const st_layout *y = &d->m->lay;
    const int32_t eos = st_tokenizer_eos(tok);
    gen_logits gl = {.f = lg, .first = first, .max_new = o->max_new, .write = lg && y->tp_rank == 0};
    const st_decode_opts dopt = {.s = o->s, .max_new = o->max_new, .stop = &eos,
                                 .n_stop = o->stop_at_eos && eos >= 0, .chunk = o->chunk,
                                 .on_logits = lg ? put_logits : NULL, .ctx = &gl};
    st_decode_row *rows = calloc((size_t)nb, sizeof *rows);
    int32_t *ans = malloc(sizeof(int32_t) * (size_t)nb * o->max_new);
    st_err e = rows && ans ? ST_OK : st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    for (int r = 0; !e && r < nb; r++) {
        const int p = (first + r) / o->samples, j = (first + r) % o->samples;
        if (r > 0 && prompts[r] == prompts[r - 1]) { /* the same prompt: the decoder shares its prefill */
            rows[r].prompt = rows[r - 1].prompt;
            rows[r].plen = rows[r - 1].plen;
        } else {
            int32_t *ids = NULL;
            size_t n = 0;
            if ((e = encode_prompt(tok, prompts[r], y->cfg.max_seq, &ids, &n, o))) break;
            rows[r].prompt = ids;
            rows[r].plen = (int)n;
        }
        rows[r].key = st_splitmix64(st_splitmix64((uint64_t)o->seed * 1000003ULL + (uint64_t)p) ^ (uint64_t)j);
        rows[r].out = ans + (size_t)r * o->max_new;
    }
    if (!e) e = st_decode(d, rows, nb, &dopt);
    st_err werr = st_agree(d->m->tp, gl.werr); /* the tp group stops together */
    if (!e) e = werr;
    for (int r = 0; !e && r < nb; r++) {
        const size_t n = (size_t)(rows[r].len - rows[r].stopped), len_p = (size_t)rows[r].plen;
        size_t len = 0;
        e = st_tokenizer_decode(tok, rows[r].out, n, &outs[r], &len);
        rids[r].prompt = malloc(sizeof(int32_t) * len_p);
        rids[r].completion = malloc(sizeof(int32_t) * (n + 1));
        if (!e && !(rids[r].prompt && rids[r].completion))
            e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
        if (e) break;
        memcpy(rids[r].prompt, rows[r].prompt, sizeof(int32_t) * len_p);
        memcpy(rids[r].completion, rows[r].out, sizeof(int32_t) * n);
        rids[r].n_prompt = len_p, rids[r].n_completion = n;
    }
    for (int r = 0; rows && r < nb; r++)
        if (r == 0 || rows[r].prompt != rows[r - 1].prompt) free((void *)rows[r].prompt);
    free(rows);
    free(ans);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* The closing line on stderr (benchmarks/ parse it): prompt processing (up to
 * each batch's first tokens drawn) and decoding rates, over every dp rank
 * (tokens summed, times the slowest rank's), and the oneDNN primitives cached
 * (they should not grow with every new length). rows: answers this rank
 * decoded (their first tokens belong to the prompt phase). */
static st_err print_stats(const st_decoder *d, int64_t rows, const st_grid *g, const gen_opts *o)
{
    double tok[2] = {g->tp_rank ? 0 : (double)d->prompt_tokens, g->tp_rank ? 0 : (double)(d->tokens - rows)};
    double sec[2] = {d->prompt_seconds, d->seconds - d->prompt_seconds};
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
    if (o->batch < 1 || o->chunk < 1 || o->samples < 1 || o->max_new < 1)
        ST_FAIL(ST_ERR_ARG, "--batch, --chunk, --samples and --max_new must be at least 1");
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
    /* row i is sample i % samples of prompt i / samples */
    const int nrows = np * o->samples;
    char **rowp = malloc(sizeof *rowp * ((size_t)nrows + 1));
    char **texts = calloc((size_t)nrows + 1, sizeof *texts);
    gen_ids *ids = calloc((size_t)nrows + 1, sizeof *ids);
    FILE *out = stdout;
    if (o->out && g.world_rank == 0) {
        out = fopen(o->out, "w");
        if (!out) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write '%s': %s", o->out, strerror(errno));
    }
    if (!e && (!rowp || !texts || !ids)) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    for (int i = 0; !e && i < nrows; i++) rowp[i] = prompts[i / o->samples];
    st_decoder d;
    memset(&d, 0, sizeof d);
    if (!e) e = st_decoder_init(&d, m, o->batch);
    e = st_agree(world, e);
    /* the logits file: world rank 0 makes it (all NaN), each tp rank 0 fills its rows */
    st_npy lg = {.fd = -1}, *lgp = o->logits ? &lg : NULL;
    if (!e && o->logits) {
        int64_t shape[3] = {nrows, o->max_new, m->lay.cfg.vocab_size};
        e = st_agree(world, g.world_rank == 0 ? st_npy_create(o->logits, shape, 3) : ST_OK);
        if (!e) e = st_agree(world, g.tp_rank == 0 ? st_npy_open(&lg, o->logits) : ST_OK);
    }
    /* dp rank r takes a contiguous block of rows, in batches */
    const int lo = (int)((int64_t)nrows * g.dp_rank / g.dp_size), hi = (int)((int64_t)nrows * (g.dp_rank + 1) / g.dp_size);
    for (int i = lo; !e && i < hi; i += o->batch) {
        int nb = hi - i < o->batch ? hi - i : o->batch;
        e = complete_batch(&d, tok, rowp + i, i, nb, texts + i, ids + i, lgp, o);
        if (!e && i == lo && g.world_rank == 0)
            fprintf(stderr, "shardtune generate: first token %.2f s after start\n", d.first_token);
    }
    st_err ce = st_npy_close(&lg);
    if (!e) e = ce;
    e = st_agree(world, e);
    if (!e) e = print_stats(&d, hi - lo, &g, o);
    /* the block's lines, in prompt order, gathered to world rank 0 over dp (tp rank 0 ranks) */
    char *mine = NULL;
    size_t mlen = 0;
    FILE *mem = e ? NULL : open_memstream(&mine, &mlen);
    for (int i = lo; mem && i < hi; i++) {
        if (o->out) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "prompt", rowp[i]);
            if (o->samples > 1) cJSON_AddNumberToObject(j, "sample", i % o->samples);
            char *text = st_utf8_repair(texts[i], strlen(texts[i])); /* JSON holds UTF-8 only */
            cJSON_AddStringToObject(j, "completion", text ? text : "");
            free(text);
            add_ids(j, "prompt_ids", ids[i].prompt, ids[i].n_prompt);
            add_ids(j, "completion_ids", ids[i].completion, ids[i].n_completion);
            char *js = cJSON_PrintUnformatted(j);
            fprintf(mem, "%s\n", js);
            free(js);
            cJSON_Delete(j);
        } else {
            int tty = isatty(fileno(stdout));
            fprintf(mem, "=== prompt %d", i / o->samples + 1);
            if (o->samples > 1) fprintf(mem, ", sample %d", i % o->samples + 1);
            fprintf(mem, "\n%s%s%s%s\n", rowp[i], tty ? "\033[1m" : "", texts[i], tty ? "\033[0m" : "");
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
    for (int i = 0; texts && i < nrows; i++) free(texts[i]);
    for (int i = 0; ids && i < nrows; i++) free(ids[i].prompt), free(ids[i].completion);
    free(texts);
    free(ids);
    free(rowp);
    st_decoder_free(&d);
    if (out && out != stdout) fclose(out);
    for (int i = 0; i < np; i++) free(prompts[i]);
    free(prompts);
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
