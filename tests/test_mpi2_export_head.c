/* test_mpi2_export_head.c: a classifier trained on 2 ranks with
 * classify.bias: false exports as Hugging Face's LlamaForSequenceClassification:
 * config.json names the architecture, the labels and the pad token; the
 * safetensors hold the body without lm_head and score.weight equal to the
 * checkpoint's head (read here straight from the HDF5 file). A head with a
 * bias, a mean-pooling head and GGUF are refused without writing anything;
 * --as lm still writes the language model. A reward model exports with one
 * label and no pad token. */
#include <check.h>
#include <cjson/cJSON.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "harness.h"
#include "io/formats/safetensors.h"

static char DIR_[256];
static int RANK;

static const char *path_in(const char *name)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 512, "%s/%s", DIR_, name);
    return b;
}

static void train_classifier(const char *out, const char *bias, const char *pool)
{
    const char *a[] = {"--method", "classify", "--data.train", path_in("data.h5"), "--out_dir", out,
                       "--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4", "--model.n_kv_head", "2",
                       "--model.d_ff", "64", "--seq_len", "24", "--batch_size", "4", "--steps", "6", "--optim.lr", "3e-3",
                       "--eval_every", "0", "--plot", "false", "--classify.bias", bias, "--classify.pool", pool, NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
}

static st_err export_to(const char *ckpt, const char *to, const char *as)
{
    char *argv[] = {"export", (char *)ckpt, "--to", (char *)to, "--as", (char *)as, NULL};
    st_error_clear();
    return st_cmd_export(6, argv, MPI_COMM_WORLD);
}

/* /head/score.weight of a checkpoint, read with plain HDF5. */
static float *h5_score_weight(const char *ckpt, size_t *n)
{
    hid_t f = H5Fopen(ckpt, H5F_ACC_RDONLY, H5P_DEFAULT);
    ck_assert(f >= 0);
    hid_t d = H5Dopen2(f, "head/score.weight", H5P_DEFAULT), s = H5Dget_space(d);
    *n = (size_t)H5Sget_simple_extent_npoints(s);
    float *w = malloc(*n * sizeof *w);
    ck_assert(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w) >= 0);
    H5Sclose(s), H5Dclose(d), H5Fclose(f);
    return w;
}

START_TEST(test_classifier_exports_as_sequence_classification)
{
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_WORLD, DIR_, "classify"), 0);
    train_classifier(path_in("nobias"), "false", "last");
    char ckpt[600], hf[600];
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_00000006.h5", path_in("nobias"));
    snprintf(hf, sizeof hf, "hf:%s", path_in("hf"));
    st_err e = export_to(ckpt, hf, "auto");
    ck_assert_msg(e == ST_OK, "%s", st_error_message());
    if (RANK == 0) {
        char p[700];
        snprintf(p, sizeof p, "%s/config.json", path_in("hf"));
        FILE *f = fopen(p, "r");
        ck_assert(f);
        char text[8192];
        size_t n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[n] = 0;
        cJSON *c = cJSON_Parse(text);
        ck_assert(c);
        ck_assert_str_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(c, "architectures"), 0)->valuestring,
                         "LlamaForSequenceClassification");
        const cJSON *id2 = cJSON_GetObjectItem(c, "id2label");
        ck_assert_int_eq(cJSON_GetArraySize(id2), 3);
        ck_assert_str_eq(cJSON_GetObjectItem(id2, "0")->valuestring, "L0");
        ck_assert_int_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c, "label2id"), "L2")->valueint, 2);
        ck_assert_int_eq(cJSON_GetObjectItem(c, "pad_token_id")->valueint, 256);   /* the byte tokenizer's eos */
        cJSON_Delete(c);
        /* the weights: no lm_head, score.weight exactly the checkpoint's head */
        snprintf(p, sizeof p, "%s/model.safetensors", path_in("hf"));
        st_safetensors st;
        ck_assert_int_eq(st_safetensors_open(&st, p), ST_OK);
        ck_assert_ptr_null(st_safetensors_find(&st, "lm_head.weight"));
        ck_assert_ptr_nonnull(st_safetensors_find(&st, "model.embed_tokens.weight"));
        const st_safetensors_entry *sw = st_safetensors_find(&st, "score.weight");
        ck_assert_ptr_nonnull(sw);
        ck_assert(sw->ndim == 2 && sw->shape[0] == 3 && sw->shape[1] == 32);
        size_t nw;
        float *want = h5_score_weight(ckpt, &nw), *got = malloc(nw * sizeof *got);
        ck_assert_uint_eq(nw, 3 * 32);
        ck_assert_int_eq(st_safetensors_read(&st, sw, got), ST_OK);
        ck_assert(memcmp(want, got, nw * sizeof *got) == 0);
        free(want), free(got);
        st_safetensors_close(&st);
    }
    /* a head with a bias, a mean-pooling head, GGUF: refused, nothing written */
    train_classifier(path_in("bias"), "true", "last");
    train_classifier(path_in("mean"), "false", "mean");
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_00000006.h5", path_in("bias"));
    snprintf(hf, sizeof hf, "hf:%s", path_in("hf_bias"));
    ck_assert_int_eq(export_to(ckpt, hf, "auto"), ST_ERR_ARG);
    if (RANK == 0) ck_assert_msg(strstr(st_error_message(), "classify.bias: false"), "%s", st_error_message());
    ck_assert(access(path_in("hf_bias"), F_OK) != 0);
    snprintf(hf, sizeof hf, "hf:%s", path_in("hf_lm"));   /* the language model of the same checkpoint */
    ck_assert_int_eq(export_to(ckpt, hf, "lm"), ST_OK);
    snprintf(hf, sizeof hf, "gguf:%s", path_in("m.gguf"));
    ck_assert_int_eq(export_to(ckpt, hf, "auto"), ST_ERR_ARG);
    ck_assert(access(path_in("m.gguf"), F_OK) != 0);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_00000006.h5", path_in("mean"));
    snprintf(hf, sizeof hf, "hf:%s", path_in("hf_mean"));
    ck_assert_int_eq(export_to(ckpt, hf, "classifier"), ST_ERR_ARG);
    ck_assert(access(path_in("hf_mean"), F_OK) != 0);
}
END_TEST

/* A reward model (trained with its default bias: the pair loss never moves
 * it) exports with one label and no pad token. */
START_TEST(test_reward_model_exports)
{
    char pref[600], data[700], ckpt[700], hf[700];
    snprintf(pref, sizeof pref, "%s", path_in("pref"));
    if (RANK == 0) ck_assert_int_eq(mkdir(pref, 0755), 0);
    MPI_Barrier(MPI_COMM_WORLD);
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_WORLD, pref, "pref"), 0);
    snprintf(data, sizeof data, "%s/data.h5", pref);
    snprintf(ckpt, sizeof ckpt, "%s/run/ckpt/step_00000004.h5", pref);
    snprintf(hf, sizeof hf, "%s/run", pref);
    const char *a[] = {"--method", "reward", "--data.train", data, "--out_dir", hf, "--model.n_layer", "1",
                       "--model.d_model", "32", "--model.n_head", "4", "--model.n_kv_head", "2", "--model.d_ff", "64",
                       "--seq_len", "160", "--batch_size", "4", "--steps", "4", "--eval_every", "0", "--plot", "false",
                       NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    snprintf(hf, sizeof hf, "hf:%s/hf", pref);
    ck_assert_msg(export_to(ckpt, hf, "auto") == ST_OK, "%s", st_error_message());
    if (RANK == 0) {
        char p[800], text[8192];
        snprintf(p, sizeof p, "%s/hf/config.json", pref);
        FILE *f = fopen(p, "r");
        ck_assert(f);
        size_t n = fread(text, 1, sizeof text - 1, f);
        fclose(f);
        text[n] = 0;
        cJSON *c = cJSON_Parse(text);
        ck_assert(c);
        ck_assert_int_eq(cJSON_GetObjectItem(c, "num_labels")->valueint, 1);
        ck_assert_ptr_null(cJSON_GetObjectItem(c, "pad_token_id"));
        ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c, "id2label"), "0")->valuestring, "reward");
        cJSON_Delete(c);
    }
}
END_TEST

int main(int argc, char **argv)
{
    const TTest *const tests[] = {test_classifier_exports_as_sequence_classification, test_reward_model_exports};
    return th_mpi_dir_main(&argc, &argv, "export_head_mpi2", 120, &RANK, DIR_, sizeof DIR_, tests,
                           (int)(sizeof tests / sizeof tests[0]));
}
