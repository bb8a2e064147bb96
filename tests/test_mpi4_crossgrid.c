/* test_mpi4_crossgrid.c: a checkpoint saved by tp2 x dp2 (ZeRO-1) resumes on
 * 1x1, 1x2, 2x1 and 2x2: the next two steps' losses agree within 1e-5 (the
 * second one after an AdamW update that used the loaded moments), since every
 * tensor and every moment is stored whole. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mpi_check.h"

START_TEST(checkpoint_loads_on_other_grids)
{
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char dir[256], data[300], src[300], ckpt[400];
    th_tmpdir(MPI_COMM_WORLD, dir, sizeof dir);
    ck_assert_int_eq(th_make_dataset(MPI_COMM_WORLD, dir), 0);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(src, sizeof src, "%s/src", dir);
#define COMMON "--model.family", "llama", "--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4", \
    "--model.n_kv_head", "2", "--model.d_ff", "64", "--seq_len", "16", "--batch_size", "2", "--global_batch", "8", \
    "--steps", "12", "--optim.lr", "3e-3", "--seed", "5", "--eval_every", "0", "--eval_batches", "1",            \
    "--plot", "false", "--data.train", data, "--keep", "0"
    const char *a_src[] = {COMMON, "--grid.tp", "2", "--grid.zero", "true", "--out_dir", src, "--stop_after", "10", NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a_src), 0);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_00000010.h5", src);

    /* the step-11 loss on each grid; ranks 0-1 form the 2-rank grids */
    const struct { int ranks; const char *tp, *zero; } grids[] = {
        {1, "1", "false"}, {2, "1", "true"}, {2, "2", "false"}, {4, "2", "true"}, {4, "1", "false"}};
    double loss[5][2] = {{0}};
    for (int g = 0; g < 5; g++) {
        MPI_Comm sub;
        MPI_Comm_split(MPI_COMM_WORLD, rank < grids[g].ranks ? 0 : MPI_UNDEFINED, rank, &sub);
        char out[320];
        snprintf(out, sizeof out, "%s/g%d", dir, g);
        if (sub != MPI_COMM_NULL) {
            const char *a[] = {COMMON, "--grid.tp", grids[g].tp, "--grid.zero", grids[g].zero, "--out_dir", out,
                               "--resume", ckpt, NULL};
            ck_assert_int_eq(th_train(sub, a), 0);
            MPI_Comm_free(&sub);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        if (!rank) {
            char p[400];
            snprintf(p, sizeof p, "%s/metrics.jsonl", out);
            ck_assert_int_eq(th_read_losses(p, loss[g], 2), 2);
            printf("steps 11, 12 on %d rank(s), tp %s, zero %s: loss %.9g, %.9g\n", grids[g].ranks,
                   grids[g].tp, grids[g].zero, loss[g][0], loss[g][1]);
        }
    }
    if (!rank) {
        for (int g = 1; g < 5; g++)
            for (int k = 0; k < 2; k++)
                ck_assert_msg(fabs(loss[g][k] - loss[0][k]) / fabs(loss[0][k]) < 1e-5,
                              "grid %d step %d: %.9g vs 1x1 %.9g", g, 11 + k, loss[g][k], loss[0][k]);
        th_rm_rf(dir);
    }
#undef COMMON
}
END_TEST

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    Suite *s = suite_create("crossgrid");
    TCase *tc = tcase_create("crossgrid");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, checkpoint_loads_on_other_grids);
    suite_add_tcase(s, tc);
    int rc = st_run_mpi_suite(s);
    MPI_Finalize();
    return rc;
}
