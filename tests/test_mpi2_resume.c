/* test_mpi2_resume.c: exact resume. 20 uninterrupted steps against 10 steps,
 * a checkpoint, a fresh trainer that resumes, and 10 more: the losses and the
 * final weights are bitwise identical, on a tensor-parallel and on a ZeRO-1
 * data-parallel grid, for DPO (whose frozen reference the resumed
 * trainer must rebuild as the run's starting point, not the checkpoint), and
 * in bf16 mixed precision (the resumed trainer must round the loaded weights
 * again), and for GRPO and PPO in the middle of a run (the sampler's state
 * from the checkpoint; PPO's value model and its moments as parameter sets).
 * Checkpoints hold fp32 weights whatever the precision, so a run in one
 * precision resumes in the other. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "harness.h"
#include "mpi_check.h"

/* a + b (each NULL-terminated) into out. */
static void join_args(const char **out, const char *const *a, const char *const *b)
{
    int n = 0;
    for (int i = 0; a[i]; i++) out[n++] = a[i];
    for (int i = 0; b && b[i]; i++) out[n++] = b[i];
    out[n] = NULL;
}

/* steps uninterrupted against steps/2, a checkpoint and a resumed trainer:
 * pretraining on text (method NULL), or a method on data of kind with its
 * own arguments; rest_extra: more arguments for the resumed part only.
 * prec: the precision of the uninterrupted run, the first half and the
 * resumed half; bitwise equal results are expected when all three agree, else
 * losses within TOL_CROSS_PRECISION (bf16 against fp32 learning, relative). */
#define TOL_CROSS_PRECISION 1e-2
static void run_pair_in(const char *family, const char *tp, const char *zero, const char *kind,
                        const char *const *method, const char *const *rest_extra, int steps, const char *const prec[3])
{
    const int exact = !strcmp(prec[0], prec[1]) && !strcmp(prec[1], prec[2]);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char dir[256], data[300], full[300], split[300], nsteps[16], half[16], p[400];
    th_tmpdir(MPI_COMM_WORLD, dir, sizeof dir);
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_WORLD, dir, kind), 0);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(full, sizeof full, "%s/full", dir);
    snprintf(split, sizeof split, "%s/split", dir);
    snprintf(nsteps, sizeof nsteps, "%d", steps);
    snprintf(half, sizeof half, "%d", steps / 2);
#define COMMON "--model.family", family, "--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4", \
    "--model.n_kv_head", strcmp(family, "gpt2") ? "2" : "4", "--model.d_ff", "64", "--seq_len", "16",          \
    "--batch_size", "2", "--global_batch", "8", "--steps", nsteps, "--optim.lr", "3e-3",                      \
    "--optim.warmup_steps", "3", "--seed", "11", "--eval_every", "5", "--eval_batches", "1", "--plot", "false", \
    "--grid.tp", tp, "--grid.zero", zero, "--data.train", data, "--keep", "0"
    const char *a[96], *b[96];
    const char *a_full[] = {COMMON, "--out_dir", full, "--save_every", nsteps, "--precision", prec[0], NULL};
    join_args(a, a_full, method);
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    /* interrupted half way (the schedule still runs to the end) ... */
    const char *a_first[] = {COMMON, "--out_dir", split, "--save_every", half, "--stop_after", half,
                             "--precision", prec[1], NULL};
    join_args(a, a_first, method);
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    /* ... and a new trainer that finds the checkpoint and goes on */
    const char *a_rest[] = {COMMON, "--out_dir", split, "--save_every", half, "--resume", "auto",
                            "--precision", prec[2], NULL};
    join_args(b, a_rest, method);
    join_args(a, b, rest_extra);
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    if (rank == 0) {
        double lf[32], ls[32];
        snprintf(p, sizeof p, "%s/metrics.jsonl", full);
        ck_assert_int_eq(th_read_losses(p, lf, 32), steps);
        snprintf(p, sizeof p, "%s/metrics.jsonl", split);
        ck_assert_int_eq(th_read_losses(p, ls, 32), steps); /* appended across the resume */
        for (int i = 0; i < steps; i++)
            ck_assert_msg(exact ? lf[i] == ls[i] : fabs(lf[i] - ls[i]) <= TOL_CROSS_PRECISION * fabs(lf[i]),
                          "%s tp%s zero=%s %s/%s/%s: step %d loss %.9g (uninterrupted) vs %.9g (resumed)",
                          family, tp, zero, prec[0], prec[1], prec[2], i + 1, lf[i], ls[i]);
        st_config c1, c2;
        float *w1, *w2;
        size_t n1, n2;
        snprintf(p, sizeof p, "%s/ckpt/step_%08d.h5", full, steps);
        ck_assert_int_eq(th_load_weights(p, &c1, &w1, &n1), 0);
        snprintf(p, sizeof p, "%s/ckpt/step_%08d.h5", split, steps);
        ck_assert_int_eq(th_load_weights(p, &c2, &w2, &n2), 0);
        ck_assert(n1 == n2);
        if (exact)
            ck_assert_msg(memcmp(w1, w2, n1 * sizeof(float)) == 0, "weights after a resume differ from uninterrupted");
        free(w1);
        free(w2);
        th_rm_rf(dir);
    }
#undef COMMON
}

static void run_pair(const char *family, const char *tp, const char *zero, const char *kind,
                     const char *const *method, const char *const *rest_extra, int steps)
{
    static const char *const fp32[3] = {"fp32", "fp32", "fp32"};
    run_pair_in(family, tp, zero, kind, method, rest_extra, steps, fp32);
}

/* --resume auto reads each candidate once, with its load: a damaged newest
 * checkpoint is passed over for the one before (and the steps after it are
 * redone exactly); when every checkpoint is damaged the run stops instead of
 * starting again from nothing. */
START_TEST(resume_auto_passes_over_a_damaged_checkpoint)
{
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char dir[256], data[300], out[300], p10[400], p20[400], metrics[400];
    th_tmpdir(MPI_COMM_WORLD, dir, sizeof dir);
    ck_assert_int_eq(th_make_dataset(MPI_COMM_WORLD, dir), 0);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(out, sizeof out, "%s/run", dir);
    snprintf(p10, sizeof p10, "%s/ckpt/step_00000010.h5", out);
    snprintf(p20, sizeof p20, "%s/ckpt/step_00000020.h5", out);
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", out);
    const char *a[] = {"--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4", "--model.d_ff", "64",
                       "--seq_len", "16", "--batch_size", "2", "--steps", "20", "--save_every", "10", "--keep", "0",
                       "--eval_batches", "0", "--plot", "false", "--grid.tp", "2", "--data.train", data,
                       "--out_dir", out, "--resume", "auto", NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    double first[40];
    if (rank == 0) ck_assert_int_eq(th_read_losses(metrics, first, 40), 20);
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p20, "/model/model.layers.1.mlp.up_proj.weight", 4 * 7 + 1));
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0); /* from step 10: steps 11-20 again */
    if (rank == 0) { /* metrics.jsonl keeps each step once: the redone lines replace the first ones */
        double l[40];
        ck_assert_int_eq(th_read_losses(metrics, l, 40), 20);
        for (int i = 10; i < 20; i++)
            ck_assert_msg(l[i] == first[i], "step %d: %.9g before, %.9g redone", i + 1, first[i], l[i]);
    }
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p20, "/model/model.norm.weight", 2));
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p10, "/optim/v/model.norm.weight", 2));
    ck_assert_int_ne(th_train(MPI_COMM_WORLD, a), 0);
    if (rank == 0) {
        double l[40];
        ck_assert_int_eq(th_read_losses(metrics, l, 40), 20); /* no fresh start */
        th_rm_rf(dir);
    }
}
END_TEST

/* init_from loads every tensor but the init_skip ones, which hold the
 * values a new model of the run's seed has (tp 2: each rank its slice). */
START_TEST(init_from_draws_only_init_skip)
{
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char dir[256], data[300], base[300], tuned[300], p[400];
    th_tmpdir(MPI_COMM_WORLD, dir, sizeof dir);
    ck_assert_int_eq(th_make_dataset(MPI_COMM_WORLD, dir), 0);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(base, sizeof base, "%s/base", dir);
    snprintf(tuned, sizeof tuned, "%s/tuned", dir);
    const char *a[] = {"--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4", "--model.d_ff", "64",
                       "--model.tied_embeddings", "false", "--seq_len", "16", "--batch_size", "2", "--steps", "0",
                       "--eval_batches", "0", "--plot", "false", "--data.train", data, "--seed", "5",
                       "--out_dir", base, NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, a), 0);
    snprintf(p, sizeof p, "%s/ckpt/step_00000000.h5", base);
    const char *b[] = {"--init_from", p, "--init_skip", "lm_head.weight,model.layers.1.mlp.*", "--seq_len", "16",
                       "--batch_size", "2", "--steps", "0", "--eval_batches", "0", "--plot", "false",
                       "--data.train", data, "--seed", "7", "--grid.tp", "2", "--out_dir", tuned, NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, b), 0);
    if (rank == 0) {
        st_config cfg;
        float *w0, *w1, *fresh;
        size_t n0, n1;
        ck_assert_int_eq(th_load_weights(p, &cfg, &w0, &n0), 0);
        snprintf(p, sizeof p, "%s/ckpt/step_00000000.h5", tuned);
        ck_assert_int_eq(th_load_weights(p, &cfg, &w1, &n1), 0);
        ck_assert(n0 == n1);
        st_layout lay;
        ck_assert_int_eq(st_layout_init(&lay, &cfg, 1, 0), ST_OK);
        ck_assert_ptr_nonnull(fresh = malloc(lay.numel * sizeof *fresh));
        st_params_init(&lay, fresh, 7);
        int drawn = 0;
        for (int i = 0; i < lay.n_tensors; i++) {
            const st_tensor *t = &lay.tensors[i];
            const int skip = !strcmp(t->name, "lm_head.weight") || !strncmp(t->name, "model.layers.1.mlp.", 19);
            const float *want = skip ? fresh : w0;
            drawn += skip;
            ck_assert_msg(!memcmp(w1 + t->offset, want + t->offset, t->numel * sizeof(float)), "%s: not the %s", t->name,
                          skip ? "seed's values" : "base's weights");
        }
        ck_assert_int_eq(drawn, 4); /* lm_head, gate, up, down */
        free(w0), free(w1), free(fresh);
        st_layout_free(&lay);
        th_rm_rf(dir);
    }
}
END_TEST

static const char *const dpo[] = {"--method", "dpo", "--seq_len", "160", "--global_batch", "16", "--batch_size", "4",
                                  NULL};
/* RL: the sampler's state comes from the checkpoint, so a resumed run given
 * another rl.seed still draws the answers the uninterrupted run drew */
static const char *const other_seed[] = {"--rl.seed", "999", NULL};
#define RL_ARGS "--seq_len", "64", "--rl.max_new", "8", "--rl.reward.regex", "^[a-m]", \
    "--rl.reward.length_penalty", "0.5", "--rl.epochs", "2"

START_TEST(resume_is_exact_tp2) { run_pair("llama", "2", "false", "text", NULL, NULL, 20); }
END_TEST
START_TEST(resume_is_exact_dp2_zero) { run_pair("gpt2", "1", "true", "text", NULL, NULL, 20); }
END_TEST
START_TEST(resume_is_exact_dpo_tp2) { run_pair("llama", "2", "false", "pref", dpo, NULL, 20); }
END_TEST
START_TEST(resume_is_exact_grpo_tp2)
{
    static const char *const grpo[] = {"--method", "grpo", RL_ARGS, "--rl.group_size", "4", "--rl.kl_coef", "0.1",
                                       NULL};
    run_pair("llama", "2", "false", "rl", grpo, other_seed, 6);
}
END_TEST
START_TEST(resume_is_exact_ppo_dp2_zero)
{
    /* the value model (its own parameter sets and moments) starts from the policy's start */
    static const char *const ppo[] = {"--method", "ppo", RL_ARGS, "--rl.reward.missing_eos", "1", NULL};
    run_pair("llama", "1", "true", "rl", ppo, other_seed, 6);
}
END_TEST
START_TEST(resume_is_exact_bf16_tp2)
{
    static const char *const bf16[3] = {"bf16", "bf16", "bf16"};
    run_pair_in("llama", "2", "false", "text", NULL, NULL, 20, bf16);
}
END_TEST
START_TEST(precisions_resume_each_other)
{
    /* bf16 then fp32 against fp32 throughout, and fp32 then bf16 against bf16 */
    static const char *const a[3] = {"fp32", "bf16", "fp32"}, *const b[3] = {"bf16", "fp32", "bf16"};
    run_pair_in("gpt2", "1", "true", "text", NULL, NULL, 20, a);
    run_pair_in("gpt2", "1", "true", "text", NULL, NULL, 20, b);
}
END_TEST

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    Suite *s = suite_create("resume");
    TCase *tc = tcase_create("resume");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, resume_is_exact_tp2);
    tcase_add_test(tc, resume_is_exact_dp2_zero);
    tcase_add_test(tc, resume_is_exact_dpo_tp2);
    tcase_add_test(tc, resume_is_exact_grpo_tp2);
    tcase_add_test(tc, resume_is_exact_ppo_dp2_zero);
    tcase_add_test(tc, resume_is_exact_bf16_tp2);
    tcase_add_test(tc, precisions_resume_each_other);
    tcase_add_test(tc, resume_auto_passes_over_a_damaged_checkpoint);
    tcase_add_test(tc, init_from_draws_only_init_skip);
    suite_add_tcase(s, tc);
    int rc = st_run_mpi_suite(s);
    MPI_Finalize();
    return rc;
}
