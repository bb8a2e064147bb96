/* eval.c: `shardtune eval CKPT --data dataset.h5`.
 *
 * Language models: held-out loss and perplexity over the chosen split; with
 * --generate N, greedy answers to the first N prompts of an sft/chat dataset
 * and their exact-match rate against the reference responses.
 * Classifiers (a checkpoint with a "head" set): loss, accuracy, macro-F1 and
 * the confusion table. Reward models (a 1-output head) on preference pairs:
 * the pairwise loss and the pair accuracy (chosen scored above rejected). Runs under MPI, sharded over dp like training;
 * results as a table on rank 0 and as JSON with --out.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/answer.h"
#include "cmd/commands.h"
#include "cmd/options.h"
#include "io/checkpoint.h"
#include "io/dataset.h"
#include "io/inference.h"
#include "io/tok/tokenizer.h"
#include "model/classify.h"
#include "model/decode.h"
#include "model/lora.h"
#include "model/model.h"

typedef struct {
    char *data, *split, *out, *precision;
    int batch_size, seq_len, max_batches, tp, generate, max_new;
} eval_opts;

static const st_option eval_options[] = {
    {"data", ST_OPT_STRING, offsetof(eval_opts, data), NULL, "dataset.h5 to evaluate on (required)", NULL},
    {"split", ST_OPT_STRING, offsetof(eval_opts, split), "validation", "validation, train or all", NULL},
    {"batch_size", ST_OPT_INT, offsetof(eval_opts, batch_size), "16", "rows per micro-batch on each rank", "[1,)"},
    {"seq_len", ST_OPT_INT, offsetof(eval_opts, seq_len), "0", "tokens per row (0 = the model's max_seq)", "[0,)"},
    {"max_batches", ST_OPT_INT, offsetof(eval_opts, max_batches), "0", "stop after this many micro-batches per rank (0 = the whole split)", "[0,)"},
    {"generate", ST_OPT_INT, offsetof(eval_opts, generate), "0", "sft/chat data: answer N prompts spread evenly over the split greedily and report exact match", "[0,)"},
    {"max_new", ST_OPT_INT, offsetof(eval_opts, max_new), "32", "with --generate: longest answer in tokens", "[0,)"},
    {"tp", ST_OPT_INT, offsetof(eval_opts, tp), "1", "tensor-parallel ranks", "[1,)"},
    {"precision", ST_OPT_STRING, offsetof(eval_opts, precision), "fp32", "matrix products: fp32, bf16 (bf16 inputs, fp32 accumulation) or auto (bf16 where this CPU's bf16 matmul is faster)", NULL},
    {"out", ST_OPT_STRING, offsetof(eval_opts, out), NULL, "write the results as JSON here", NULL},
};

typedef struct {
    st_grid g;
    st_infer x;         /* the model, its head and tokenizer */
    int classify, K;    /* a head with K outputs */
    int reward;         /* a 1-output head: scores preference pairs */
    st_dataset *ds;
    st_loader *ld;
    st_batch b;
    int64_t *confusion; /* K x K: [truth][prediction] */
    int32_t *pred;
} evaluator;

static st_err load(evaluator *v, const char *ckpt, MPI_Comm world, const eval_opts *o)
{
    ST_TRY(st_grid_init(&v->g, world, o->tp));
    ST_TRY(st_agree(world, st_dataset_open(&v->ds, o->data)));
    const st_infer_opts io = {.B = o->batch_size, .T = o->seq_len, .head = ST_INFER_HEAD, .merge_lora = 1,
                              .precision = o->precision};
    ST_TRY(st_infer_open(&v->x, ckpt, &v->g, &io));
    st_infer_print_loaded(&v->x, "eval", &v->g);
    if (o->seq_len > v->x.cfg.max_seq)
        ST_FAIL(ST_ERR_ARG, "--seq_len %d exceeds the model's max_seq %d", o->seq_len, v->x.cfg.max_seq);
    v->classify = v->x.has_head;
    v->K = v->x.n_labels;
    v->reward = v->classify && v->K == 1;
    const int T = v->x.m.T;
    if (v->x.tok && st_tokenizer_hash(v->x.tok) != st_dataset_tokenizer_hash(v->ds))
        ST_FAIL(ST_ERR_ARG, "'%s' was tokenized with a different tokenizer than checkpoint '%s' carries; "
                "prepare the data with the model's tokenizer", o->data, ckpt);
    if (v->reward && (st_dataset_num_pairs(v->ds) < 1 || o->batch_size % 2))
        ST_FAIL(ST_ERR_ARG, "'%s' is a reward model: evaluate it on a preference dataset (prompt/chosen/rejected) "
                "with an even --batch_size ('%s' has %lld pairs, --batch_size %d)", ckpt, o->data,
                (long long)st_dataset_num_pairs(v->ds), o->batch_size);
    if (v->classify && !v->reward && st_dataset_num_labels(v->ds) != v->K)
        ST_FAIL(ST_ERR_ARG, "'%s' has %d labels but the classifier in '%s' has %d (prepare with the same "
                "--label-names)", o->data, st_dataset_num_labels(v->ds), ckpt, v->K);
    int split = !strcmp(o->split, "all") ? -1 : !strcmp(o->split, "train") ? 0 : !strcmp(o->split, "validation") ? 1 : -2;
    if (split == -2) ST_FAIL(ST_ERR_ARG, "--split '%s': expected validation, train or all", o->split);
    int docs = v->classify || strcmp(st_dataset_kind(v->ds), "text");
    ST_TRY(st_loader_create(&v->ld, v->ds, docs ? ST_SAMPLE_DOCS : ST_SAMPLE_STREAM, T, 0, split));
    ST_TRY(st_batch_alloc(&v->b, o->batch_size, T));
    ST_ALLOC(v->pred, o->batch_size, "predictions");
    if (v->classify && !v->reward) ST_ALLOC(v->confusion, (size_t)v->K * v->K, "confusion table");
    return ST_OK;
}

/* sums: loss, counted, correct */
static st_err score(evaluator *v, double sums[3], const eval_opts *o)
{
    const int B = o->batch_size, T = v->b.T;
    int64_t n = st_loader_num_samples(v->ld);
    if (n < 1) ST_FAIL(ST_ERR_ARG, "'%s' has no samples in split '%s'", o->data, o->split);
    for (int64_t k = 0;; k++) {
        if (o->max_batches && k >= o->max_batches) break;
        int64_t g0 = (k * v->g.dp_size + v->g.dp_rank) * B;
        if (g0 >= n) break;
        int rows = n - g0 < B ? (int)(n - g0) : B;
        ST_TRY(st_loader_fill(v->ld, &v->b, g0, rows, 0));
        double loss = 0;
        if (v->reward) { /* rows 2i, 2i+1: a pair; counts pairs */
            double none = 0, correct = 0;
            ST_TRY(st_cls_forward(&v->x.head, &v->x.m, v->b.tokens, v->b.lengths, NULL, rows, T, 1.0f, &none, NULL));
            ST_TRY(st_cls_pair_loss(&v->x.head, rows, 1.0f, &loss, &correct));
            sums[1] += rows / 2, sums[2] += correct;
        } else if (v->classify) {
            ST_TRY(st_cls_forward(&v->x.head, &v->x.m, v->b.tokens, v->b.lengths, v->b.labels, rows, T, 1.0f, &loss, v->pred));
            for (int i = 0; i < rows; i++) {
                v->confusion[(size_t)v->b.labels[i] * v->K + v->pred[i]]++;
                sums[2] += v->pred[i] == v->b.labels[i];
            }
            sums[1] += rows;
        } else {
            if (!strcmp(st_dataset_kind(v->ds), "text")) /* every real next token */
                st_batch_mask_all(&v->b, rows);
            ST_TRY(st_model_forward(&v->x.m, v->b.tokens, v->b.targets, v->b.mask, rows, T, 1.0f, &loss));
            for (int i = 0; i < rows * T; i++) sums[1] += v->b.mask[i];
        }
        sums[0] += loss;
    }
    ST_TRY(st_allreduce(v->g.dp, sums, 3, ST_M_F64, ST_OP_SUM));
    if (v->classify && !v->reward)
        ST_TRY(st_allreduce(v->g.dp, v->confusion, (int64_t)v->K * v->K, ST_M_I64, ST_OP_SUM));
    return ST_OK;
}

/* One sft doc as a prompt and its reference answer (trailing eos dropped). */
typedef struct {
    int32_t *tok;       /* the doc, malloc'd */
    size_t p, r1;       /* prompt tok[0, p), reference tok[p, r1) */
} em_doc;

/* Greedy answers (model/decode.h) to docs[0 .. n) in one batch; counts and
 * the first samples as exact_match says. */
static st_err answer_batch(evaluator *v, st_decoder *d, em_doc *docs, int n, int32_t *ans, int *tried, int *matched,
                           cJSON *samples, const eval_opts *o)
{
    const int32_t eos = st_tokenizer_eos(v->x.tok);
    const st_decode_opts dopt = {.s = {.temperature = 0}, .max_new = o->max_new, .stop = &eos, .n_stop = eos >= 0};
    st_decode_row rows[n];
    for (int i = 0; i < n; i++)
        rows[i] = (st_decode_row){.prompt = docs[i].tok, .plen = (int)docs[i].p, .out = ans + (size_t)i * o->max_new};
    ST_TRY(st_decode(d, rows, n, &dopt));
    st_err e = ST_OK;
    for (int i = 0; !e && i < n; i++) {
        char *got = NULL, *want = NULL, *prompt = NULL;
        size_t len;
        e = st_answer_text(v->x.tok, rows[i].out, (size_t)(rows[i].len - rows[i].stopped), &got);
        if (!e) e = st_answer_text(v->x.tok, docs[i].tok + docs[i].p, docs[i].r1 - docs[i].p, &want);
        if (!e) e = st_tokenizer_decode(v->x.tok, docs[i].tok, docs[i].p, &prompt, &len);
        if (!e) {
            (*tried)++;
            *matched += !strcmp(got, want);
            if (samples && cJSON_GetArraySize(samples) < 8) {
                cJSON *s = cJSON_CreateObject();
                cJSON_AddStringToObject(s, "prompt", prompt);
                cJSON_AddStringToObject(s, "reference", want);
                cJSON_AddStringToObject(s, "generated", got);
                cJSON_AddItemToArray(samples, s);
            }
        }
        free(got), free(want), free(prompt);
    }
    return e;
}

/* Greedy answers to o->generate prompts (docs whose mask marks the
 * response) spread evenly over the split; exact match after trimming white
 * space. The tp group of dp rank 0 does them all, --batch_size at a time. */
static st_err exact_match(evaluator *v, int *tried, int *matched, cJSON *samples, const eval_opts *o)
{
    *tried = *matched = 0;
    if (!o->generate || v->classify || !v->x.tok || v->g.dp_rank != 0) return ST_OK;
    const st_layout *y = &v->x.m.lay;
    const int eos = st_tokenizer_eos(v->x.tok), B = v->x.m.B;
    st_decoder d;
    ST_TRY(st_decoder_init(&d, &v->x.m, B));
    em_doc *docs = calloc((size_t)B, sizeof *docs);
    int32_t *ans = malloc(sizeof(int32_t) * (size_t)B * o->max_new);
    st_err e = docs && ans ? ST_OK : st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    /* docs of the split spread evenly over the file (sources are often sorted by class) */
    const int64_t nd = st_dataset_num_docs(v->ds);
    const int want = strcmp(o->split, "all") ? (strcmp(o->split, "train") ? 1 : 0) : -1;
    int64_t in_split = 0, seen = 0;
    for (int64_t i = 0; i < nd; i++) in_split += want < 0 || st_dataset_doc_split(v->ds, i) == want;
    const int64_t stride = in_split / o->generate > 1 ? in_split / o->generate : 1;
    int n = 0, taken = 0;
    for (int64_t i = 0; !e && i < nd && taken < o->generate; i++) {
        if (want >= 0 && st_dataset_doc_split(v->ds, i) != want) continue;
        if (seen++ % stride) continue;
        uint8_t *mask = NULL;
        size_t len = 0, p = 0;
        em_doc *doc = &docs[n];
        if ((e = st_dataset_read_doc(v->ds, i, &doc->tok, &mask, &len))) break;
        while (p < len && !mask[p]) p++;
        free(mask);
        doc->p = p;
        doc->r1 = len;
        while (doc->r1 > p && doc->tok[doc->r1 - 1] == eos) doc->r1--;
        if (p == 0 || p >= len || (int)p + o->max_new > y->cfg.max_seq) {
            free(doc->tok);
            doc->tok = NULL;
            continue;
        }
        taken++;
        if (++n == B) {
            e = answer_batch(v, &d, docs, n, ans, tried, matched, samples, o);
            for (int k = 0; k < n; k++) free(docs[k].tok), docs[k].tok = NULL;
            n = 0;
        }
    }
    if (!e && n) e = answer_batch(v, &d, docs, n, ans, tried, matched, samples, o);
    for (int k = 0; docs && k < B; k++) free(docs[k].tok);
    free(docs);
    free(ans);
    st_decoder_free(&d);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

static void report(evaluator *v, const char *ckpt, const double sums[3], int tried, int matched, cJSON *samples, const eval_opts *o)
{
    cJSON *js = cJSON_CreateObject();
    cJSON_AddStringToObject(js, "checkpoint", ckpt);
    cJSON_AddStringToObject(js, "data", o->data);
    cJSON_AddStringToObject(js, "split", o->split);
    double loss = sums[1] > 0 ? sums[0] / sums[1] : NAN;
    cJSON_AddNumberToObject(js, "examples_or_tokens", sums[1]);
    cJSON_AddNumberToObject(js, "loss", loss);
    printf("evaluation of %s on %s (%s split)\n", ckpt, o->data, o->split);
    if (v->reward) {
        double acc = sums[2] / sums[1];
        printf("  pairs      %.0f\n  loss       %.4f\n  pair accuracy %.2f%% (chosen scored above rejected)\n",
               sums[1], loss, 100 * acc);
        cJSON_AddNumberToObject(js, "pair_accuracy", acc);
    } else if (v->classify) {
        const int K = v->K;
        double f1sum = 0;
        int present = 0;
        for (int k = 0; k < K; k++) {
            int64_t tp = v->confusion[(size_t)k * K + k], fp = 0, fn = 0;
            for (int j = 0; j < K; j++) {
                if (j == k) continue;
                fp += v->confusion[(size_t)j * K + k];
                fn += v->confusion[(size_t)k * K + j];
            }
            if (tp + fn == 0 && fp == 0) continue; /* class absent and never predicted */
            present++;
            f1sum += tp ? 2.0 * tp / (2.0 * tp + fp + fn) : 0.0;
        }
        double acc = sums[2] / sums[1], f1 = present ? f1sum / present : 0;
        printf("  examples   %.0f\n  loss       %.4f\n  accuracy   %.2f%%\n  macro-F1   %.4f\n", sums[1], loss,
               100 * acc, f1);
        cJSON_AddNumberToObject(js, "accuracy", acc);
        cJSON_AddNumberToObject(js, "macro_f1", f1);
        /* the confusion table: whole for few classes, its largest off-diagonal cells for many */
        cJSON *conf = cJSON_CreateArray();
        for (int k = 0; k < K; k++) {
            cJSON *row = cJSON_CreateArray();
            for (int j = 0; j < K; j++) cJSON_AddItemToArray(row, cJSON_CreateNumber((double)v->confusion[(size_t)k * K + j]));
            cJSON_AddItemToArray(conf, row);
        }
        cJSON_AddItemToObject(js, "confusion", conf);
        if (K <= 12) {
            printf("  confusion (rows: truth, columns: prediction)\n  %-16s", "");
            for (int j = 0; j < K; j++) printf(" %6.6s", v->x.labels[j]);
            printf("\n");
            for (int k = 0; k < K; k++) {
                printf("  %-16.16s", v->x.labels[k]);
                for (int j = 0; j < K; j++) printf(" %6lld", (long long)v->confusion[(size_t)k * K + j]);
                printf("\n");
            }
        } else {
            printf("  most frequent confusions (truth -> prediction: count)\n");
            for (int shown = 0; shown < 8; shown++) {
                int64_t best = 0;
                int bk = -1, bj = -1;
                for (int k = 0; k < K; k++)
                    for (int j = 0; j < K; j++)
                        if (k != j && v->confusion[(size_t)k * K + j] > best) best = v->confusion[(size_t)k * K + j], bk = k, bj = j;
                if (bk < 0) break;
                printf("    %-28s -> %-28s %lld\n", v->x.labels[bk], v->x.labels[bj], (long long)best);
                v->confusion[(size_t)bk * K + bj] = -v->confusion[(size_t)bk * K + bj]; /* mark shown */
            }
            for (size_t i = 0; i < (size_t)K * K; i++) if (v->confusion[i] < 0) v->confusion[i] = -v->confusion[i];
        }
    } else {
        printf("  tokens     %.0f\n  loss       %.4f\n  perplexity %.3f\n", sums[1], loss, exp(loss));
        cJSON_AddNumberToObject(js, "perplexity", exp(loss));
        if (tried) {
            printf("  exact match %d/%d = %.1f%% (greedy, %d new tokens at most)\n", matched, tried,
                   100.0 * matched / tried, o->max_new);
            cJSON_AddNumberToObject(js, "exact_match", (double)matched / tried);
            cJSON_AddNumberToObject(js, "generated", tried);
            cJSON_AddItemToObject(js, "samples", samples);
            samples = NULL;
        }
    }
    cJSON_Delete(samples);
    fflush(stdout);
    if (o->out) {
        char *txt = cJSON_Print(js);
        FILE *f = fopen(o->out, "w");
        if (f && txt) {
            fprintf(f, "%s\n", txt);
            fclose(f);
            printf("results: %s\n", o->out);
        } else {
            fprintf(stderr, "shardtune: warning: cannot write '%s': %s\n", o->out, strerror(errno));
            if (f) fclose(f);
        }
        free(txt);
    }
    cJSON_Delete(js);
}

static void release(evaluator *v)
{
    free(v->confusion);
    free(v->pred);
    st_batch_free(&v->b);
    if (v->ld) st_loader_free(v->ld);
    if (v->ds) st_dataset_close(v->ds);
    st_infer_close(&v->x);
    st_grid_free(&v->g);
}

static st_err evaluate(const char *ckpt, MPI_Comm world, void *opts)
{
    const eval_opts *o = opts;
    if (!o->data) ST_FAIL(ST_ERR_ARG, "eval needs --data dataset.h5 (made by `shardtune prepare`)");
    evaluator v;
    memset(&v, 0, sizeof v);
    double sums[3] = {0, 0, 0};
    int tried = 0, matched = 0;
    cJSON *samples = cJSON_CreateArray();
    st_err e = load(&v, ckpt, world, o);
    if (!e) e = score(&v, sums, o);
    if (!e) e = st_agree(world, exact_match(&v, &tried, &matched, samples, o));
    if (!e && v.g.world_rank == 0) report(&v, ckpt, sums, tried, matched, samples, o);
    else cJSON_Delete(samples);
    release(&v);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_cmd_eval(int argc, char **argv, MPI_Comm world)
{
    eval_opts o;
    return st_options_run(argc, argv, world, eval_options, (int)(sizeof eval_options / sizeof eval_options[0]), &o,
                          "usage: [mpirun -np N] shardtune eval CKPT.h5 --data dataset.h5 [options]\n\n"
                          "Held-out loss and perplexity; accuracy, macro-F1 and confusions for classifiers;\n"
                          "exact match of greedy answers for sft data (--generate N).\n\n",
                          "a checkpoint path", evaluate);
}
