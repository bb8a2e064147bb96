/* test_mpi2_prepare.c: `shardtune prepare` on 2 ranks writes the same
 * dataset as on 1 rank (every dataset and the counting attributes equal),
 * for CSV, gzip JSONL preference pairs, chat with skipped lines, and an
 * input with fewer records than ranks; a bad record in the second rank's
 * half stops both ranks and leaves no file. */
#include <check.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "harness.h"
#include "io/h5util.h"
#include "mpi/grid.h"

static char DIR_[256];
static int RANK;

/* prepare on comm: argv = "prepare" + the NULL-terminated list. */
static st_err prepare_on(MPI_Comm comm, const char *first, ...)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "prepare";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    st_grid g;
    st_error_clear();
    st_err e = st_grid_init(&g, comm, 1);
    if (!e) {
        e = st_cmd_prepare(argc, argv, &g);
        st_grid_free(&g);
    }
    return e;
}

/* The whole dataset name as bytes of its native type; NULL when absent. */
static char *read_raw(hid_t f, const char *name, size_t *bytes)
{
    *bytes = 0;
    if (!st_h5_has_link(f, name)) return NULL;
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT), t = H5Dget_type(d), s = H5Dget_space(d);
    hid_t nt = H5Tget_native_type(t, H5T_DIR_ASCEND);
    size_t n = (size_t)H5Sget_simple_extent_npoints(s) * H5Tget_size(nt);
    char *buf = calloc(n + 1, 1);
    if (n && H5Dread(d, nt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) n = (size_t)-1;
    H5Tclose(nt), H5Tclose(t), H5Sclose(s), H5Dclose(d);
    *bytes = n;
    return buf;
}

/* 0 when files a and b hold the same datasets and counts; else prints why. */
static int same_dataset(const char *a, const char *b)
{
    static const char *const sets[] = {"tokens", "loss_mask", "offsets", "split", "labels",
                                       "label_names", "pairs/chosen", "pairs/rejected", "tokenizer"};
    static const char *const counts[] = {"n_records", "n_docs", "n_tokens", "n_skipped",
                                         "n_truncated_prompt", "n_truncated_response", "n_labels"};
    hid_t fa = H5Fopen(a, H5F_ACC_RDONLY, H5P_DEFAULT), fb = H5Fopen(b, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (fa < 0 || fb < 0) {
        printf("cannot open %s or %s\n", a, b);
        return 1;
    }
    int bad = 0;
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) {
        size_t na, nb;
        char *x = read_raw(fa, sets[i], &na), *y = read_raw(fb, sets[i], &nb);
        if (na != nb || (x == NULL) != (y == NULL) || (na && memcmp(x, y, na))) {
            printf("%s differs between %s and %s\n", sets[i], a, b);
            bad = 1;
        }
        free(x), free(y);
    }
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        int64_t x = -1, y = -2;
        if (st_h5_attr_read_i64(fa, counts[i], &x) || st_h5_attr_read_i64(fb, counts[i], &y) || x != y) {
            printf("attribute %s: %lld vs %lld\n", counts[i], (long long)x, (long long)y);
            bad = 1;
        }
    }
    uint64_t ha = 0, hb = 1;
    st_h5_attr_read_u64(fa, "tokenizer_hash", &ha);
    st_h5_attr_read_u64(fb, "tokenizer_hash", &hb);
    bad |= ha != hb;
    H5Fclose(fa), H5Fclose(fb);
    return bad;
}

/* Prepare input on both ranks and on rank 0 alone; the files must match. */
static void check_same(const char *input, const char *tag, const char *opt, const char *val)
{
    char out2[512], out1[512];
    snprintf(out2, sizeof out2, "%s/%s_np2.h5", DIR_, tag);
    snprintf(out1, sizeof out1, "%s/%s_np1.h5", DIR_, tag);
    st_err e = prepare_on(MPI_COMM_WORLD, "--input", input, "--out", out2, opt, val, NULL);
    ck_assert_msg(e == ST_OK, "%s on 2 ranks: %s", tag, st_error_message());
    int diff = 0;
    if (RANK == 0) {
        e = prepare_on(MPI_COMM_SELF, "--input", input, "--out", out1, opt, val, NULL);
        diff = e ? 2 : same_dataset(out1, out2);
    }
    MPI_Bcast(&diff, 1, MPI_INT, 0, MPI_COMM_WORLD);
    ck_assert_msg(diff == 0, "%s: the 1-rank and 2-rank datasets differ (%d) %s", tag, diff,
                  RANK == 0 && diff == 2 ? st_error_message() : "");
}

/* rank 0 writes a fixture; everyone waits for it. */
static const char *fixture(const char *name, const char *text)
{
    static char path[4][512];
    static int k;
    char *p = path[k++ % 4];
    snprintf(p, 512, "%s/%s", DIR_, name);
    if (RANK == 0) {
        FILE *f = fopen(p, "wb");
        ck_assert_ptr_nonnull(f);
        fputs(text, f);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return p;
}

START_TEST(test_banking77_any_ranks)
{
    check_same(th_data_path("banking77/train.csv"), "b77", "--seed", "5");
}
END_TEST

START_TEST(test_hh_any_ranks)
{
    check_same(th_data_path("hh-rlhf/harmless-base-test.jsonl.gz"), "hh", "--max-len", "256");
}
END_TEST

START_TEST(test_chat_skip_any_ranks)
{
    const char *in = fixture("chat.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n"
        "\n"
        "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n"
        "not json\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"\"}]}\n"
        "{\"messages\": [{\"role\": \"user\", \"content\": \"again\"}, {\"role\": \"assistant\", \"content\": \"sure\"}]}\n");
    check_same(in, "chat", "--on-error", "skip");
}
END_TEST

START_TEST(test_fewer_records_than_ranks)
{
    const char *in = fixture("one.jsonl", "{\"text\": \"a single document\"}\n");
    check_same(in, "one", "--val-fraction", "0");
}
END_TEST

START_TEST(test_bad_record_stops_all)
{
    const char *in = fixture("bad.jsonl",
                             "{\"prompt\": \"a\", \"response\": \"b\"}\n"
                             "{\"prompt\": \"a\", \"response\": \"b\"}\n"
                             "{\"prompt\": \"a\", \"response\": \"b\"}\n"
                             "{\"prompt\": \"a\", \"response\": 7}\n");
    char out[512], tmp[600];
    snprintf(out, sizeof out, "%s/bad.h5", DIR_);
    snprintf(tmp, sizeof tmp, "%s.tmp", out);
    st_err e = prepare_on(MPI_COMM_WORLD, "--input", in, "--out", out, NULL);
    /* the record is in rank 1's half: its message names it; rank 0 names rank 1 */
    const char *m = st_error_message();
    int ok = e != ST_OK && (RANK == 1 ? strstr(m, "bad.jsonl:4:") && strstr(m, "\"response\"")
                                      : strstr(m, "rank 1") != NULL);
    MPI_Barrier(MPI_COMM_WORLD); /* assert only after the last collective */
    ck_assert_msg(ok, "rank %d: prepare returned %d: %s", RANK, e, m);
    ck_assert_int_ne(access(out, F_OK), 0);
    ck_assert_int_ne(access(tmp, F_OK), 0);
}
END_TEST

int main(int argc, char **argv)
{
    const TTest *const tests[] = {test_banking77_any_ranks, test_hh_any_ranks, test_chat_skip_any_ranks, test_fewer_records_than_ranks, test_bad_record_stops_all};
    return th_mpi_dir_main(&argc, &argv, "prepare_mpi2", 30, &RANK, DIR_, sizeof DIR_, tests,
                           (int)(sizeof tests / sizeof tests[0]));
}
