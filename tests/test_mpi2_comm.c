/* test_mpi2_comm.c: the checked collectives of mpi/comm.h on 2 ranks.
 *
 * Every collective gives the same result when the count limit per MPI call
 * is lowered to a few elements (the chunked paths that counts over INT_MAX
 * take) as with one call; an MPI failure comes back as ST_ERR_MPI with MPI's
 * message instead of aborting the job (MPI_ERRORS_RETURN, set by
 * st_job_start); a size that differs across ranks fails on every rank; the dp
 * reduction of extra parameter sets sums them. */
#include <stdlib.h>
#include <string.h>

#include "cmd/options.h"
#include "mpi/comm.h"
#include "mpi/dp.h"
#include "mpi/job.h"
#include "mpi_check.h"

static int RANK, SIZE;

/* x(r, i): what rank r holds at i; small integers keep float sums exact */
static double x(int r, int64_t i) { return (double)((i * 5 + r * 11) % 13); }

static void allreduce_case(int64_t n, int64_t limit)
{
    st_comm_set_max_count(limit);
    double *d = malloc(sizeof *d * (size_t)n);
    float *f = malloc(sizeof *f * (size_t)n);
    for (int64_t i = 0; i < n; i++) d[i] = x(RANK, i), f[i] = (float)x(RANK, i);
    ck_assert_int_eq(st_allreduce(MPI_COMM_WORLD, d, n, ST_M_F64, ST_OP_SUM), ST_OK);
    ck_assert_int_eq(st_allreduce(MPI_COMM_WORLD, f, n, ST_M_F32, ST_OP_MAX), ST_OK);
    for (int64_t i = 0; i < n; i++) {
        double sum = 0, max = 0;
        for (int r = 0; r < SIZE; r++) sum += x(r, i), max = x(r, i) > max ? x(r, i) : max;
        ck_assert_msg(d[i] == sum && f[i] == (float)max, "limit %lld, element %lld: %g %g, expected %g %g",
                      (long long)limit, (long long)i, d[i], (double)f[i], sum, max);
    }
    free(d);
    free(f);
    st_comm_set_max_count(0);
}

START_TEST(allreduce_chunked_equals_whole)
{
    allreduce_case(1000, 0);  /* one call */
    allreduce_case(1000, 7);  /* 143 calls, the last short */
    allreduce_case(5, 1);
}
END_TEST

START_TEST(gathers_chunked_equal_whole)
{
    for (int limit = 0; limit <= 3; limit += 3) {
        st_comm_set_max_count(limit);
        /* bcast of 10 bytes and a string */
        char b[10];
        for (int i = 0; i < 10; i++) b[i] = RANK == 1 ? (char)('a' + i) : 0;
        ck_assert_int_eq(st_bcast(MPI_COMM_WORLD, b, 10, ST_M_U8, 1), ST_OK);
        ck_assert(!memcmp(b, "abcdefghij", 10));
        char *s = NULL;
        ck_assert_int_eq(st_bcast_str(MPI_COMM_WORLD, 0, RANK == 0 ? "a longer string" : NULL, &s), ST_OK);
        ck_assert_str_eq(s, "a longer string");
        free(s);
        /* allgather / gather of 5 each */
        int64_t mine[5], all[10] = {0}, root_all[10] = {0};
        for (int i = 0; i < 5; i++) mine[i] = 100 * RANK + i;
        ck_assert_int_eq(st_allgather(MPI_COMM_WORLD, mine, all, 5, ST_M_I64), ST_OK);
        ck_assert_int_eq(st_gather(MPI_COMM_WORLD, mine, root_all, 5, ST_M_I64, 1), ST_OK);
        for (int r = 0; r < SIZE; r++)
            for (int i = 0; i < 5; i++) {
                ck_assert_int_eq(all[5 * r + i], 100 * r + i);
                if (RANK == 1) ck_assert_int_eq(root_all[5 * r + i], 100 * r + i);
            }
        /* allgatherv in place: rank 0 owns [0, 4), rank 1 owns [4, 11) */
        int64_t counts[2] = {4, 7}, displs[2] = {0, 4};
        float v[11] = {0};
        for (int i = 0; i < counts[RANK]; i++) v[displs[RANK] + i] = (float)(RANK + 1) * 10 + (float)i;
        ck_assert_int_eq(st_allgatherv(MPI_COMM_WORLD, v, counts, displs, ST_M_F32), ST_OK);
        for (int r = 0; r < SIZE; r++)
            for (int i = 0; i < counts[r]; i++) ck_assert(v[displs[r] + i] == (float)(r + 1) * 10 + (float)i);
        /* gatherv to rank 0 */
        char text[2][8] = {"abc", "defghij"}, got[11] = {0};
        int64_t tl[2] = {3, 7}, td[2] = {0, 3};
        ck_assert_int_eq(st_gatherv(MPI_COMM_WORLD, text[RANK], tl[RANK], got, tl, td, ST_M_U8, 0), ST_OK);
        if (RANK == 0) ck_assert_str_eq(got, "abcdefghij");
        /* exscan */
        int64_t in[2] = {RANK + 1, 10 * (RANK + 1)}, before[2];
        ck_assert_int_eq(st_exscan_sum_i64(MPI_COMM_WORLD, in, before, 2), ST_OK);
        ck_assert_int_eq(before[0], RANK ? 1 : 0);
        ck_assert_int_eq(before[1], RANK ? 10 : 0);
    }
    st_comm_set_max_count(0);
}
END_TEST

/* An MPI failure is an st_err with MPI's message, and the job goes on. */
START_TEST(mpi_errors_are_returned)
{
    double v = 1;
    st_error_clear();
    st_err e = st_allreduce(MPI_COMM_NULL, &v, 1, ST_M_F64, ST_OP_SUM);
    ck_assert_int_eq(e, ST_ERR_MPI);
    ck_assert_msg(strstr(st_error_message(), "MPI_Allreduce") && strstr(st_error_message(), "MPI_ERR_COMM"),
                  "message: %s", st_error_message());
    st_error_clear();
    ck_assert_int_eq(st_barrier(MPI_COMM_WORLD), ST_OK); /* still usable */
}
END_TEST

START_TEST(different_sizes_fail_everywhere)
{
    st_error_clear();
    ck_assert_int_eq(st_same_everywhere(MPI_COMM_WORLD, 42, "the answer"), ST_OK);
    st_err e = st_same_everywhere(MPI_COMM_WORLD, 100 + RANK, "the layout size");
    ck_assert_int_eq(e, ST_ERR_ARG);
    ck_assert_msg(strstr(st_error_message(), "the layout size differs across ranks (from 100 to 101"), "%s",
                  st_error_message());
    st_error_clear();
    /* st_dp_init relies on it: a rank with another parameter count cannot start */
    st_dp d;
    ck_assert_int_eq(st_dp_init(&d, MPI_COMM_WORLD, 1000 + (size_t)RANK, 0), ST_ERR_ARG);
    st_dp_free(&d);
    st_error_clear();
}
END_TEST

/* Ranks started with different arguments fail together instead of hanging. */
START_TEST(different_command_lines_fail_everywhere)
{
    st_options o;
    static const st_option none[1];
    ck_assert_int_eq(st_options_init(&o, none, 0, NULL), ST_OK);
    char *same[] = {"train", "--steps", "10"}, *differ[] = {"train", "--steps", RANK ? "11" : "10"};
    ck_assert_int_eq(st_options_same_everywhere(&o, MPI_COMM_WORLD, 3, same), ST_OK);
    st_error_clear();
    ck_assert_int_eq(st_options_same_everywhere(&o, MPI_COMM_WORLD, 3, differ), ST_ERR_ARG);
    ck_assert_msg(strstr(st_error_message(), "started with different arguments"), "%s", st_error_message());
    st_error_clear();
    st_options_free(&o);
}
END_TEST

/* Buckets and an extra set, chunked into many small calls, sum exactly. */
static void dp_case(int zero, int64_t limit)
{
    st_comm_set_max_count(limit);
    const size_t n = 1001, ne = 37;
    st_dp d;
    ck_assert_int_eq(st_dp_init(&d, MPI_COMM_WORLD, n, zero), ST_OK);
    float *g = malloc(sizeof *g * n), *e = malloc(sizeof *e * ne);
    for (size_t i = 0; i < n; i++) g[i] = (float)x(RANK, (int64_t)i);
    for (size_t i = 0; i < ne; i++) e[i] = (float)x(RANK, (int64_t)i + 7);
    st_dp_begin(&d);
    ck_assert_int_eq(st_dp_bucket_ready(&d, g, 500, n), ST_OK);
    ck_assert_int_eq(st_dp_extra_ready(&d, e, ne), ST_OK);
    ck_assert_int_eq(st_dp_finish(&d, g), ST_OK);
    size_t b0, b1;
    st_dp_owned(&d, &b0, &b1);
    for (size_t i = b0; i < b1; i++) {
        double want = 0;
        for (int r = 0; r < SIZE; r++) want += x(r, (int64_t)i);
        ck_assert_msg(g[i] == (float)want, "zero %d limit %lld: element %zu is %g, expected %g", zero,
                      (long long)limit, i, (double)g[i], want);
    }
    for (size_t i = 0; i < ne; i++) {
        double want = 0;
        for (int r = 0; r < SIZE; r++) want += x(r, (int64_t)i + 7);
        ck_assert(e[i] == (float)want);
    }
    for (size_t i = b0; i < b1; i++) g[i] = (float)(RANK + 1);
    ck_assert_int_eq(st_dp_allgather_params(&d, g), ST_OK);
    if (zero)
        for (int r = 0; r < SIZE; r++)
            for (size_t i = n * (size_t)r / (size_t)SIZE; i < n * (size_t)(r + 1) / (size_t)SIZE; i++)
                ck_assert(g[i] == (float)(r + 1));
    free(g);
    free(e);
    st_dp_free(&d);
    st_comm_set_max_count(0);
}

START_TEST(dp_chunked_buckets_and_extras)
{
    dp_case(0, 0);
    dp_case(0, 13);
    dp_case(1, 0);
    dp_case(1, 13);
}
END_TEST

int main(int argc, char **argv)
{
    int rank, size;
    if (st_job_start(&argc, &argv, &rank, &size)) return 1;
    RANK = rank, SIZE = size;
    Suite *s = suite_create("comm");
    TCase *tc = tcase_create("comm");
    tcase_add_test(tc, allreduce_chunked_equals_whole);
    tcase_add_test(tc, gathers_chunked_equal_whole);
    tcase_add_test(tc, mpi_errors_are_returned);
    tcase_add_test(tc, different_sizes_fail_everywhere);
    tcase_add_test(tc, dp_chunked_buckets_and_extras);
    tcase_add_test(tc, different_command_lines_fail_everywhere);
    suite_add_tcase(s, tc);
    int rc = st_run_mpi_suite(s);
    MPI_Finalize();
    return rc;
}
