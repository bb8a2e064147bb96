/* test_mpi2_score.c: `shardtune score` gives each candidate the reward the
 * model gives the same text in a prepared dataset. A reward model is trained
 * on 2 ranks on preference pairs; then its pairs' prompts with their chosen
 * and rejected answers are scored from JSONL, and each score is compared with
 * the head's output on the dataset's own tokens for that pair (so score
 * renders exactly as prepare does), for a fully fine-tuned reward model and
 * for one trained with LoRA (whose adapters score must apply). A language
 * model (no head) gets log p(completion | prompt) instead: equal to minus the
 * masked cross-entropy of the sft dataset's own tokens for that line. Bad
 * input fails on every rank. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "harness.h"
#include "io/lora_ckpt.h"
#include "io/checkpoint.h"
#include "io/dataset.h"
#include "model/classify.h"
#include "model/lora.h"

enum { N_PAIRS = 10, T = 160 };

static char DIR_[256];
static int RANK;

static st_err score_on(MPI_Comm comm, const char *ckpt, const char *in, const char *out, const char *precision)
{
    char *argv[] = {"score", (char *)ckpt, "--input", (char *)in, "--out", (char *)out, "--seq_len", "160",
                    "--batch_size", "3", "--precision", (char *)precision, NULL};
    st_error_clear();
    return st_cmd_score(12, argv, comm);
}

/* Rewards of docs [0, 2 N_PAIRS) of the dataset, from the checkpoint (its
 * LoRA adapters, if any, merged: *merged says so), here. */
static void direct_rewards(const char *ckpt, const char *data, double *out, int *merged)
{
    st_config cfg;
    ck_assert_int_eq(st_ckpt_read_config(ckpt, MPI_COMM_SELF, &cfg), ST_OK);
    st_grid g;
    ck_assert_int_eq(st_grid_init(&g, MPI_COMM_SELF, 1), ST_OK);
    st_model m;
    st_cls_head h;
    ck_assert_int_eq(st_model_create(&m, &cfg, g.tp, 1, T, ST_MODEL_TRAIN), ST_OK);
    ck_assert_int_eq(st_cls_create(&h, &m, 1, 0, 0), ST_OK);
    st_ckpt_tensors t = {.lay = &m.lay, .params = m.params, .n_sets = 1};
    t.sets[0] = (st_ckpt_set){.group = "head", .lay = &h.lay, .params = h.params};
    ck_assert_msg(st_ckpt_load(ckpt, &g, &t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) == ST_OK, "%s",
                  st_error_message());
    free(t.sets[0].meta);
    ck_assert_int_eq(st_lora_merge_checkpoint(ckpt, &g, &m.lay, m.params, merged), ST_OK);
    st_dataset *ds;
    ck_assert_int_eq(st_dataset_open(&ds, data), ST_OK);
    for (int d = 0; d < 2 * N_PAIRS; d++) {
        int32_t *tok, row[T] = {0};
        uint8_t *mask;
        size_t n;
        ck_assert_int_eq(st_dataset_read_doc(ds, d, &tok, &mask, &n), ST_OK);
        ck_assert(n >= 1 && n <= T);
        memcpy(row, tok, n * sizeof *tok);
        int32_t len = (int32_t)n;
        double none;
        ck_assert_int_eq(st_cls_forward(&h, &m, row, &len, NULL, 1, T, 1.0f, &none, NULL), ST_OK);
        out[d] = h.logits[0];
        free(tok);
        free(mask);
    }
    st_dataset_close(ds);
    st_cls_free(&h);
    st_model_free(&m);
    st_grid_free(&g);
}

/* Train a reward model into DIR/run (extra: more train arguments), score the
 * first pairs' texts with it, and compare with direct_rewards (fp32): within
 * 1e-4 when score runs in fp32, within 2e-2 in bf16 (its products' inputs
 * rounded to 8 significant bits; measured 1.3e-3). */
static void check_scores(const char *run, const char *const *extra, int want_merged)
{
    char data[300], ckpt[400], in[300], out[300];
    snprintf(data, sizeof data, "%s/data.h5", DIR_);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_00000008.h5", run);
    snprintf(in, sizeof in, "%s/cand.jsonl", DIR_);
    snprintf(out, sizeof out, "%s/scored.jsonl", DIR_);
    const char *base[] = {"--method", "reward", "--data.train", data, "--out_dir", run, "--model.n_layer", "2",
                          "--model.d_model", "32", "--model.n_head", "4", "--model.n_kv_head", "2", "--model.d_ff",
                          "64", "--seq_len", "160", "--batch_size", "4", "--steps", "8", "--optim.lr", "3e-3",
                          "--eval_every", "0", "--plot", "false", NULL};
    const char *a[64];
    int n = 0;
    for (int i = 0; base[i]; i++) a[n++] = base[i];
    for (int i = 0; extra && extra[i]; i++) a[n++] = extra[i];
    a[n] = NULL;
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    if (RANK == 0) { /* the pairs' texts as candidates: chosen, then rejected */
        char corpus[300], line[4096];
        snprintf(corpus, sizeof corpus, "%s/corpus.jsonl", DIR_);
        FILE *f = fopen(corpus, "r"), *g = fopen(in, "w");
        ck_assert(f && g);
        for (int i = 0; i < N_PAIRS && fgets(line, sizeof line, f); i++) {
            cJSON *j = cJSON_Parse(line);
            ck_assert(j);
            const char *p = cJSON_GetObjectItem(j, "prompt")->valuestring;
            const char *ans[2] = {cJSON_GetObjectItem(j, "chosen")->valuestring,
                                  cJSON_GetObjectItem(j, "rejected")->valuestring};
            for (int k = 0; k < 2; k++) {
                cJSON *o = cJSON_CreateObject();
                cJSON_AddStringToObject(o, "prompt", p);
                cJSON_AddStringToObject(o, "completion", ans[k]);
                cJSON_AddNumberToObject(o, "id", 2 * i + k);
                char *s = cJSON_PrintUnformatted(o);
                fprintf(g, "%s\n", s);
                free(s);
                cJSON_Delete(o);
            }
            cJSON_Delete(j);
        }
        fclose(f);
        fclose(g);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    for (int bf16 = 0; bf16 < 2; bf16++) {
    st_err e = score_on(MPI_COMM_WORLD, ckpt, in, out, bf16 ? "bf16" : "fp32");
    ck_assert_msg(e == ST_OK, "score: %s", st_error_message());
    const double tol = bf16 ? 2e-2 : 1e-4;
    double worst = 0;
    int ok = 1;
    if (RANK == 0) {
        double want[2 * N_PAIRS];
        int merged = 0;
        direct_rewards(ckpt, data, want, &merged);
        ck_assert_int_eq(merged, want_merged);
        FILE *f = fopen(out, "r");
        char line[8192];
        int k = 0, distinct = 0;
        while (f && fgets(line, sizeof line, f)) {
            cJSON *j = cJSON_Parse(line);
            ck_assert(j);
            int id = cJSON_GetObjectItem(j, "id")->valueint;
            double r = cJSON_GetObjectItem(j, "reward")->valuedouble;
            ck_assert_int_eq(id, k);   /* input order kept */
            worst = fmax(worst, fabs(r - want[id]) / (1 + fabs(want[id])));
            if (fabs(r - want[id]) > tol * (1 + fabs(want[id]))) {
                fprintf(stderr, "candidate %d (%s): reward %.9g, the dataset's tokens give %.9g\n", id,
                        bf16 ? "bf16" : "fp32", r, want[id]);
                ok = 0;
            }
            distinct += k > 0 && fabs(want[k] - want[k - 1]) > 1e-3;
            cJSON_Delete(j);
            k++;
        }
        if (f) fclose(f);
        ck_assert_int_eq(k, 2 * N_PAIRS);
        ck_assert_int_gt(distinct, 5);   /* the rewards are not one constant */
    }
    if (RANK == 0) printf("score in %s: rewards within %.2g of fp32's direct ones\n", bf16 ? "bf16" : "fp32", worst);
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    ck_assert_msg(ok, "score's rewards (%s) differ from the dataset's", bf16 ? "bf16" : "fp32");
    }
}

/* -log p summed over the answer tokens of docs [0, n) of an sft dataset, and
 * their count, from the language model ckpt, here. */
static void direct_nll(const char *ckpt, const char *data, int n_docs, double *nll, int *count)
{
    st_config cfg;
    ck_assert_int_eq(st_ckpt_read_config(ckpt, MPI_COMM_SELF, &cfg), ST_OK);
    st_grid g;
    ck_assert_int_eq(st_grid_init(&g, MPI_COMM_SELF, 1), ST_OK);
    st_model m;
    ck_assert_int_eq(st_model_create(&m, &cfg, g.tp, 1, T, ST_MODEL_TRAIN), ST_OK);
    st_ckpt_tensors t = {.lay = &m.lay, .params = m.params};
    ck_assert_msg(st_ckpt_load(ckpt, &g, &t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) == ST_OK, "%s",
                  st_error_message());
    st_dataset *ds;
    ck_assert_int_eq(st_dataset_open(&ds, data), ST_OK);
    for (int d = 0; d < n_docs; d++) {
        int32_t *tok, row[T] = {0}, tgt[T] = {0};
        uint8_t *mask;
        float fm[T] = {0};
        size_t n;
        ck_assert_int_eq(st_dataset_read_doc(ds, d, &tok, &mask, &n), ST_OK);
        ck_assert(n >= 2 && n <= T);
        memcpy(row, tok, n * sizeof *tok);
        count[d] = 0;
        for (size_t k = 0; k + 1 < n; k++) {   /* position k predicts token k+1 */
            tgt[k] = tok[k + 1];
            fm[k] = mask[k + 1];
            count[d] += mask[k + 1];
        }
        ck_assert_int_eq(st_model_forward(&m, row, tgt, fm, 1, T, 1.0f, &nll[d]), ST_OK);
        free(tok);
        free(mask);
    }
    st_dataset_close(ds);
    st_model_free(&m);
    st_grid_free(&g);
}

START_TEST(test_lm_logprob_equals_the_datasets)
{
    /* its own folder: the other test's data.h5 is there, and prepare does not replace a file */
    char dir[300], data[330], run[330], ckpt[400], in[330], out[330], corpus[330];
    snprintf(dir, sizeof dir, "%s/lm", DIR_);
    if (RANK == 0) ck_assert_int_eq(mkdir(dir, 0700), 0);
    MPI_Barrier(MPI_COMM_WORLD);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(run, sizeof run, "%s/sft", dir);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_00000008.h5", run);
    snprintf(in, sizeof in, "%s/cand.jsonl", dir);
    snprintf(out, sizeof out, "%s/scored.jsonl", dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.jsonl", dir);
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_WORLD, dir, "sft"), 0);
    const char *a[] = {"--method", "sft", "--data.train", data, "--out_dir", run, "--model.n_layer", "2",
                       "--model.d_model", "32", "--model.n_head", "4", "--model.n_kv_head", "2", "--model.d_ff", "64",
                       "--seq_len", "160", "--batch_size", "4", "--steps", "8", "--optim.lr", "3e-3",
                       "--eval_every", "0", "--plot", "false", NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    enum { N = 12 };
    if (RANK == 0) { /* the dataset's records, as candidates: the prepared docs are in file order */
        FILE *f = fopen(corpus, "r"), *g = fopen(in, "w");
        char line[4096];
        ck_assert(f && g);
        for (int i = 0; i < N && fgets(line, sizeof line, f); i++) {
            cJSON *j = cJSON_Parse(line);
            ck_assert(j);
            fprintf(g, "{\"prompt\": \"%s\", \"completion\": \"%s\"}\n", cJSON_GetObjectItem(j, "prompt")->valuestring,
                    cJSON_GetObjectItem(j, "response")->valuestring);
            cJSON_Delete(j);
        }
        fclose(f);
        fclose(g);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    st_err e = score_on(MPI_COMM_WORLD, ckpt, in, out, "fp32");
    ck_assert_msg(e == ST_OK, "score: %s", st_error_message());
    int ok = 1;
    if (RANK == 0) {
        double nll[N];
        int count[N];
        direct_nll(ckpt, data, N, nll, count);
        FILE *f = fopen(out, "r");
        char line[8192];
        int k = 0;
        while (f && fgets(line, sizeof line, f)) {
            cJSON *j = cJSON_Parse(line);
            ck_assert(j && k < N);
            double lp = cJSON_GetObjectItem(j, "logprob")->valuedouble;
            int nt = cJSON_GetObjectItem(j, "n_tokens")->valueint;
            ck_assert_ptr_null(cJSON_GetObjectItem(j, "reward"));
            if (nt != count[k] || nt < 2 || lp >= 0 || fabs(lp + nll[k]) > 1e-4 * (1 + nll[k])) {
                fprintf(stderr, "line %d: logprob %.9g over %d tokens, the dataset's tokens give %.9g over %d\n", k,
                        lp, nt, -nll[k], count[k]);
                ok = 0;
            }
            cJSON_Delete(j);
            k++;
        }
        if (f) fclose(f);
        ck_assert_int_eq(k, N);
    }
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    ck_assert_msg(ok, "score's log-probabilities differ from the dataset's");
}
END_TEST

START_TEST(test_scores_equal_the_datasets)
{
    char ckpt[400], in[300], out[300], data[300];
    snprintf(data, sizeof data, "%s/data.h5", DIR_);
    snprintf(in, sizeof in, "%s/cand.jsonl", DIR_);
    snprintf(out, sizeof out, "%s/scored.jsonl", DIR_);
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_WORLD, DIR_, "pref"), 0);
    char run[300];
    snprintf(run, sizeof run, "%s/reward", DIR_);
    check_scores(run, NULL, 0);
    /* a reward model trained with LoRA: score applies its adapters */
    static const char *const lora[] = {"--lora.rank", "4", "--lora.targets", "all", "--optim.lr", "1e-2", NULL};
    snprintf(run, sizeof run, "%s/reward-lora", DIR_);
    check_scores(run, lora, 1);
    snprintf(ckpt, sizeof ckpt, "%s/reward/ckpt/step_00000008.h5", DIR_);
    /* bad input: a line without a completion fails on every rank, writes nothing */
    if (RANK == 0) {
        FILE *g = fopen(in, "w");
        fprintf(g, "{\"prompt\": \"hi\", \"completion\": \"there\"}\n{\"prompt\": \"hi\"}\n");
        fclose(g);
        remove(out);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    st_err e = score_on(MPI_COMM_WORLD, ckpt, in, out, "fp32");
    ck_assert_int_eq(e, ST_ERR_FORMAT);
    if (RANK == 0) ck_assert_msg(strstr(st_error_message(), "cand.jsonl:2"), "%s", st_error_message());
    ck_assert(access(out, F_OK) != 0);
    /* a dataset is not a checkpoint */
    e = score_on(MPI_COMM_WORLD, data, in, out, "fp32");
    ck_assert_int_ne(e, ST_OK);
    /* a precision that does not exist: an error naming it */
    e = score_on(MPI_COMM_WORLD, ckpt, in, out, "fp16");
    ck_assert_int_ne(e, ST_OK); /* on every rank; rank 0, which scores, names the value */
    if (RANK == 0) ck_assert_msg(e == ST_ERR_ARG && strstr(st_error_message(), "'fp16'"), "%s", st_error_message());
}
END_TEST

int main(int argc, char **argv)
{
    const TTest *const tests[] = {test_scores_equal_the_datasets, test_lm_logprob_equals_the_datasets};
    return th_mpi_dir_main(&argc, &argv, "score_mpi2", 120, &RANK, DIR_, sizeof DIR_, tests,
                           (int)(sizeof tests / sizeof tests[0]));
}
