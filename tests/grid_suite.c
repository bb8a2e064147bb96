/* grid_suite.c: the parallel-equivalence suite, run by test_mpi2_grid and
 * test_mpi4_grid on their grids: every grid trains exactly like one rank, the
 * same losses over 10 steps and the same weights after them (within 1e-5
 * relative), for both model families, with tensor parallelism, data
 * parallelism (gradient accumulation on fewer ranks) and ZeRO-1, and for the
 * methods: classify, sft, reward and DPO (pairs) and LoRA (with dropout). */
#include <stdio.h>

#include "harness.h"
#include "mpi_check.h"

static const th_grid *g_grids;
static int g_n;

static void check_family(const char *family)
{
    double dl = 1, dw = 1;
    ck_assert_int_eq(th_check_grids(MPI_COMM_WORLD, family, g_grids, g_n, &dl, &dw), 0);
    ck_assert_msg(dl < 1e-5, "%s: losses differ from 1x1 by %.3g (relative)", family, dl);
    ck_assert_msg(dw < 1e-5, "%s: weights differ from 1x1 by %.3g (relative)", family, dw);
}

static void check_method(const char *family, const char *kind, const char *const *extra)
{
    double dl = 1, dw = 1;
    ck_assert_int_eq(th_check_grids_method(MPI_COMM_WORLD, family, g_grids, g_n, kind,
                                           extra, &dl, &dw), 0);
    ck_assert_msg(dl < 1e-5, "%s %s: losses differ from 1x1 by %.3g (relative)", family, extra[1], dl);
    ck_assert_msg(dw < 1e-5, "%s %s: weights differ from 1x1 by %.3g (relative)", family, extra[1], dw);
}

/* the methods: a classification head; sft (loss on responses); LoRA with dropout on a frozen base */
START_TEST(classify_grids_equal_one_rank)
{
    static const char *const x[] = {"--method", "classify", "--seq_len", "24", NULL};
    check_method("llama", "classify", x);
}
END_TEST
START_TEST(sft_grids_equal_one_rank)
{
    static const char *const x[] = {"--method", "sft", "--seq_len", "64", NULL};
    check_method("gpt2", "sft", x);
}
END_TEST
START_TEST(reward_grids_equal_one_rank)
{
    static const char *const x[] = {"--method", "reward", "--seq_len", "160", NULL};
    check_method("gpt2", "pref", x);
}
END_TEST
START_TEST(dpo_grids_equal_one_rank)
{
    static const char *const x[] = {"--method", "dpo", "--seq_len", "160", "--dpo.beta", "0.5", "--optim.lr", "1e-3", NULL};
    check_method("llama", "pref", x);
}
END_TEST
START_TEST(lora_grids_equal_one_rank)
{
    static const char *const x[] = {"--method", "pretrain", "--lora.rank", "4", "--lora.targets", "all",
                                    "--lora.dropout", "0.1", NULL};
    check_method("llama", "text", x);
}
END_TEST

START_TEST(llama_grids_equal_one_rank) { check_family("llama"); }
END_TEST
START_TEST(gpt2_grids_equal_one_rank) { check_family("gpt2"); }
END_TEST

int th_grid_suite_main(int argc, char **argv, const char *name, const th_grid *grids, int n)
{
    g_grids = grids;
    g_n = n;
    MPI_Init(&argc, &argv);
    Suite *s = suite_create(name);
    TCase *tc = tcase_create("grid");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, llama_grids_equal_one_rank);
    tcase_add_test(tc, gpt2_grids_equal_one_rank);
    tcase_add_test(tc, classify_grids_equal_one_rank);
    tcase_add_test(tc, sft_grids_equal_one_rank);
    tcase_add_test(tc, reward_grids_equal_one_rank);
    tcase_add_test(tc, dpo_grids_equal_one_rank);
    tcase_add_test(tc, lora_grids_equal_one_rank);
    suite_add_tcase(s, tc);
    int rc = st_run_mpi_suite(s);
    MPI_Finalize();
    return rc;
}
