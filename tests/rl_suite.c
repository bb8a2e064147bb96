/* rl_suite.c: the RL methods' parallel equivalence, run by test_mpi2_rl and
 * test_mpi4_rl on their grids: grpo, rloo and ppo train like one rank for 5
 * steps: the same answers (their rewards and lengths agree at every step;
 * entropies, the KL to the reference and the clip fraction within 1e-4), the same losses and the same weights
 * (within 1e-5 relative). Two passes over each rollout (grpo, ppo) make the
 * ratio move away from 1, so the clip is exercised too; ppo scores with a
 * small reward model trained first and starts its value model from it. */
#include <stdio.h>
#include <string.h>

#include "harness.h"
#include "mpi_check.h"

static const th_grid *g_grids;
static int g_n;

/* the answers: 8 new tokens at most; a rule reward that varies from answer to answer */
#define RL_COMMON                                                                                                    \
    "--seq_len", "64", "--rl.max_new", "8", "--rl.reward.regex", "^[a-m]", "--rl.reward.length_penalty", "0.5",     \
        "--rl.reward.missing_eos", "0.2"

/* keys: first the answers' reward (within 1e-6: a reward model's score has
 * tp's rounding) and length (exact): equal answers give equal values; then
 * numbers computed from them (float rounding of tp and dp) */
static void check(const char *family, const char *const *extra, const char *const *keys)
{
    double dl = 1, dw = 1, dk[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_int_eq(th_check_grids_keys(MPI_COMM_WORLD, family, g_grids, g_n, "rl", extra, keys, 5, &dl, &dw, dk), 0);
    for (int k = 0; keys[k]; k++)
        ck_assert_msg(dk[k] <= (k == 1 ? 0 : k == 0 ? 1e-6 : 1e-4), "%s %s: %s differs from 1x1 by %.3g (relative)", family, extra[1],
                      keys[k], dk[k]);
    ck_assert_msg(dl < 1e-5, "%s %s: losses differ from 1x1 by %.3g (relative)", family, extra[1], dl);
    ck_assert_msg(dw < 1e-5, "%s %s: weights differ from 1x1 by %.3g (relative)", family, extra[1], dw);
}

START_TEST(grpo_grids_equal_one_rank)
{
    static const char *const x[] = {"--method", "grpo", RL_COMMON, "--rl.group_size", "2", "--rl.kl_coef", "0.1",
                                    "--rl.epochs", "2", NULL};
    static const char *const keys[] = {"reward", "answer_len", "entropy", "kl", "clip_frac", NULL};
    check("llama", x, keys);
}
END_TEST

START_TEST(rloo_grids_equal_one_rank)
{
    static const char *const x[] = {"--method", "rloo", RL_COMMON, "--rl.group_size", "2", NULL};
    static const char *const keys[] = {"reward", "answer_len", "entropy", "kl", NULL};
    check("gpt2", x, keys);
}
END_TEST

START_TEST(ppo_grids_equal_one_rank)
{
    /* a reward model of the same tokenizer (bytes), 3 steps on preference pairs */
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char dir[256], data[300], out[300], rm[400];
    th_tmpdir(MPI_COMM_WORLD, dir, sizeof dir);
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_WORLD, dir, "pref"), 0);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(out, sizeof out, "%s/rm", dir);
    snprintf(rm, sizeof rm, "%s/rm/ckpt/step_00000003.h5", dir);
    const char *const a[] = {"--method", "reward", "--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4",
                             "--model.d_ff", "64", "--seq_len", "160", "--batch_size", "4", "--steps", "3",
                             "--data.train", data, "--out_dir", out, "--plot", "false", "--eval_batches", "1", NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    const char *const x[] = {"--method", "ppo", RL_COMMON, "--rl.reward.model", rm, "--rl.epochs", "2", NULL};
    static const char *const keys[] = {"reward", "answer_len", "entropy", "kl", "value_loss", "clip_frac", NULL};
    check("llama", x, keys);
    if (!rank) th_rm_rf(dir);
}
END_TEST

int th_rl_suite_main(int argc, char **argv, const char *name, const th_grid *grids, int n)
{
    g_grids = grids;
    g_n = n;
    MPI_Init(&argc, &argv);
    Suite *s = suite_create(name);
    TCase *tc = tcase_create("rl");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, grpo_grids_equal_one_rank);
    tcase_add_test(tc, rloo_grids_equal_one_rank);
    tcase_add_test(tc, ppo_grids_equal_one_rank);
    suite_add_tcase(s, tc);
    int rc = st_run_mpi_suite(s);
    MPI_Finalize();
    return rc;
}
