/* test_mpi2_dp.c: the data-parallel pieces on their own. Buckets arriving
 * top-down reduce to the exact sums, with and without ZeRO-1; ZeRO-1 keeps
 * 1/dp of the AdamW state per rank; the all-gather restores whole params. */
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "model/optim.h"
#include "mpi/dp.h"
#include "mpi_check.h"

static void check_reduction(int zero)
{
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const size_t n = 1001; /* odd: slices of unequal size */
    st_dp d;
    ck_assert_int_eq(st_dp_init(&d, MPI_COMM_WORLD, n, zero), 0);
    float *g = malloc(n * sizeof(float));
    /* small integers: sums are exact in float whatever the order */
    for (size_t i = 0; i < n; i++) g[i] = (float)((i * 7 + (size_t)rank * 13) % 17);
    st_dp_begin(&d);
    const size_t cuts[] = {n, 900, 640, 639, 200, 3};
    for (int b = 0; b + 1 < (int)(sizeof cuts / sizeof cuts[0]); b++)
        ck_assert_int_eq(st_dp_bucket_ready(&d, g, cuts[b + 1], cuts[b]), 0);
    ck_assert_int_eq(st_dp_finish(&d, g), 0);
    size_t b0, b1;
    st_dp_owned(&d, &b0, &b1);
    if (zero) {
        ck_assert_uint_eq(b0, n * (size_t)rank / (size_t)size);
        ck_assert_uint_eq(b1, n * (size_t)(rank + 1) / (size_t)size);
    } else {
        ck_assert(b0 == 0 && b1 == n);
    }
    for (size_t i = b0; i < b1; i++) {
        float want = 0;
        for (int r = 0; r < size; r++) want += (float)((i * 7 + (size_t)r * 13) % 17);
        ck_assert_msg(g[i] == want, "element %zu: %g, expected %g", i, g[i], want);
    }
    /* an out-of-order bucket is an internal error, not a silent wrong sum */
    st_dp_begin(&d);
    ck_assert_int_eq(st_dp_bucket_ready(&d, g, 10, 20), ST_ERR_INTERNAL);
    /* ZeRO-1 all-gather: each rank's slice lands everywhere */
    for (size_t i = b0; i < b1; i++) g[i] = (float)(rank + 1);
    ck_assert_int_eq(st_dp_allgather_params(&d, g), 0);
    if (zero)
        for (int r = 0; r < size; r++)
            for (size_t i = n * (size_t)r / size; i < n * (size_t)(r + 1) / size; i++) ck_assert(g[i] == (float)(r + 1));
    free(g);
    st_dp_free(&d);
}

START_TEST(buckets_sum_exactly) { check_reduction(0); }
END_TEST
START_TEST(zero_buckets_sum_exactly) { check_reduction(1); }
END_TEST

/* With ZeRO-1 the AdamW moments of a rank cover 1/dp of the parameters. */
START_TEST(zero_shards_optimizer_state)
{
    int size;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    st_config cfg = {.family = ST_FAMILY_LLAMA, .n_layer = 3, .d_model = 64, .n_head = 4, .n_kv_head = 2,
                     .d_ff = 160, .vocab_size = 300, .max_seq = 32, .norm_eps = 1e-5f, .rope_theta = 1e4f,
                     .tied_embeddings = 0};
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), 0);
    st_dp d;
    ck_assert_int_eq(st_dp_init(&d, MPI_COMM_WORLD, lay.numel, 1), 0);
    size_t b0, b1;
    st_dp_owned(&d, &b0, &b1);
    st_optim_config oc;
    st_optim_config_default(&oc);
    st_adamw o;
    ck_assert_int_eq(st_adamw_init(&o, &lay, b0, b1, &oc), 0);
    size_t mine = o.end - o.begin, total = 0;
    MPI_Allreduce(&mine, &total, 1, MPI_UNSIGNED_LONG, MPI_SUM, MPI_COMM_WORLD);
    ck_assert_uint_eq(total, lay.numel);                  /* the slices cover the model once */
    ck_assert(mine <= lay.numel / (size_t)size + 1);      /* each is 1/dp of it */
    st_adamw_free(&o);
    st_dp_free(&d);
    st_layout_free(&lay);
}
END_TEST

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    Suite *s = suite_create("dp");
    TCase *tc = tcase_create("dp");
    tcase_add_test(tc, buckets_sum_exactly);
    tcase_add_test(tc, zero_buckets_sum_exactly);
    tcase_add_test(tc, zero_shards_optimizer_state);
    suite_add_tcase(s, tc);
    int rc = st_run_mpi_suite(s);
    MPI_Finalize();
    return rc;
}
