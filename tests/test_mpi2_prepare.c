/* test_mpi2_prepare.c: `shardtune prepare` on 2 ranks writes the same
 * dataset as on 1 rank (every dataset and the counting attributes equal),
 * for CSV, gzip JSONL preference pairs, chat with skipped lines, and an
 * input with fewer records than ranks; a bad record in the second rank's
 * half stops both ranks and leaves no file; inputs that used to pass or fail
 * mutely (issue 13 item 8) fail on both ranks with the reason: a NUL inside a
 * JSON string, a gzip stream cut at a flush point, --out equal to --input or
 * already there (without --force), a rename that cannot happen, and no good
 * line at all (the first bad one is shown). */
#include <check.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

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

/* prepare --input in --out DIR_/out [extra...]: its status on every rank, the
 * message must hold want (on some rank; the others name it) */
static void refused(const char *in, const char *out, const char *want, const char *extra)
{
    st_err e = extra ? prepare_on(MPI_COMM_WORLD, "--input", in, "--out", out, extra, NULL)
                     : prepare_on(MPI_COMM_WORLD, "--input", in, "--out", out, NULL);
    int has = strstr(st_error_message(), want) != NULL, any = 0;
    MPI_Allreduce(&has, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    ck_assert_msg(e != ST_OK && any, "rank %d: %s: returned %d: %s", RANK, in, e, st_error_message());
}

START_TEST(test_nul_in_a_string)
{
    const char *in = fixture("nul.jsonl", "{\"text\": \"hello\"}\n{\"text\": \"ab\\u0000cd\"}\n"
                                          "{\"text\": \"a \\\\u0000 is text\"}\n");
    char out[512];
    snprintf(out, sizeof out, "%s/nul.h5", DIR_);
    refused(in, out, "nul.jsonl:2: a NUL character", NULL);
    /* an escaped backslash before u0000 is text, not a NUL */
    const char *ok = fixture("nul-ok.jsonl", "{\"text\": \"a \\\\u0000 is text\"}\n");
    ck_assert_int_eq(prepare_on(MPI_COMM_WORLD, "--input", ok, "--out", out, NULL), ST_OK);
}
END_TEST

/* 400 lines, deflated up to a line end near the middle, a sync flush, and
 * nothing more: every byte inflates, the end block and trailer are missing. */
START_TEST(test_gzip_cut_at_a_flush_point)
{
    char in[512], out[512];
    snprintf(in, sizeof in, "%s/cut.jsonl.gz", DIR_);
    snprintf(out, sizeof out, "%s/cut.h5", DIR_);
    if (RANK == 0) {
        static char text[400 * 48], z[400 * 48 + 1024];
        size_t n = 0;
        for (int i = 0; i < 400; i++) n += (size_t)sprintf(text + n, "{\"text\": \"query %d, my card\"}\n", i);
        z_stream s;
        memset(&s, 0, sizeof s);
        ck_assert_int_eq(deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
        s.next_in = (Bytef *)text, s.avail_in = (uInt)(strchr(text + n / 2, '\n') + 1 - text);
        s.next_out = (Bytef *)z, s.avail_out = sizeof z;
        ck_assert_int_eq(deflate(&s, Z_SYNC_FLUSH), Z_OK);
        th_write_file(in, z, s.total_out);
        deflateEnd(&s);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    refused(in, out, "the gzip stream ends early", NULL);
}
END_TEST

START_TEST(test_outputs_are_not_overwritten)
{
    const char *in = fixture("same.jsonl", "{\"text\": \"hello\"}\n");
    refused(in, in, "is the same file as --input", "--force");
    char out[512];
    snprintf(out, sizeof out, "%s/there.h5", DIR_);
    fixture("there.h5", "not a dataset\n");
    refused(in, out, "exists; add --force", NULL);
    ck_assert_int_eq(prepare_on(MPI_COMM_WORLD, "--input", in, "--out", out, "--force", NULL), ST_OK);
    /* a folder in the way: the rename's reason is given */
    snprintf(out, sizeof out, "%s/folder.h5", DIR_);
    if (RANK == 0) {
        char inner[600];
        ck_assert_int_eq(mkdir(out, 0755), 0);
        snprintf(inner, sizeof inner, "%s/x", out);
        th_write_file(inner, "x", 1);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    refused(in, out, "Is a directory", "--force");
}
END_TEST

START_TEST(test_no_good_line_shows_the_first_bad_one)
{
    char out[512];
    snprintf(out, sizeof out, "%s/none.h5", DIR_);
    /* nothing parses */
    const char *junk = fixture("junk.jsonl", "not json\nalso not\n");
    refused(junk, out, "the first: ", "--on-error=skip");
    refused(junk, out, "junk.jsonl:1: malformed JSON", "--on-error=skip");
    /* everything parses, nothing is usable */
    const char *typed = fixture("typed.jsonl", "{\"text\": 5}\n{\"text\": 6}\n");
    refused(typed, out, "every record of", "--on-error=skip");
    refused(typed, out, "typed.jsonl:1", "--on-error=skip");
}
END_TEST

int main(int argc, char **argv)
{
    const TTest *const tests[] = {test_banking77_any_ranks, test_hh_any_ranks, test_chat_skip_any_ranks,
                                  test_fewer_records_than_ranks, test_bad_record_stops_all, test_nul_in_a_string,
                                  test_gzip_cut_at_a_flush_point, test_outputs_are_not_overwritten,
                                  test_no_good_line_shows_the_first_bad_one};
    return th_mpi_dir_main(&argc, &argv, "prepare_mpi2", 30, &RANK, DIR_, sizeof DIR_, tests,
                           (int)(sizeof tests / sizeof tests[0]));
}
