/* test_rewards.c: the RL rewards' rules (src/cmd/rewards.c) on answers
 * written here, and the RL methods' refusals of settings they cannot run
 * with (each error names the option or the file). */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cmd/rewards.h"
#include "harness.h"
#include "mpi_check.h"

static st_err open_rules(st_rewarder **r, train_opts *o, trainer *t)
{
    memset(t, 0, sizeof *t);
    t->o = o;
    o->rl.max_new = 10;
    return st_rewarder_open(r, t);
}

START_TEST(rules_and_weights)
{
    train_opts o;
    memset(&o, 0, sizeof o);
    o.rl.reward.exact = 2.0f;
    o.rl.reward.contains = 0.5f;
    o.rl.reward.regex = "^(This is about )?{reference}\\.?$";
    o.rl.reward.regex_weight = 1.0f;
    o.rl.reward.length_penalty = 0.1f;
    o.rl.reward.missing_eos = 0.25f;
    trainer t;
    st_rewarder *r = NULL;
    ck_assert_int_eq(open_rules(&r, &o, &t), 0);
    ck_assert_str_eq(st_rewarder_describe(r),
                     "2 * exact + 0.5 * contains + 1 * regex + -0.1 * length / max_new + -0.25 * no stop token");
    ck_assert_ptr_null(st_rewarder_model_path(r));
    /* the reference is matched literally, even with pattern characters and \E in it */
    char *answer[] = {"card_arrival", "This is about card_arrival.", "I think card_arrival", "card.arrival",
                      "a+b\\E(", "nothing"};
    char *refs[] = {"card_arrival", "card_arrival", "card_arrival", "card_arrival", "a+b\\E(", ""};
    const int alen[] = {10, 5, 0, 10, 2, 1}, stopped[] = {1, 1, 0, 1, 1, 0};
    double rw[6];
    ck_assert_int_eq(st_rewarder_score(r, NULL, NULL, 6, 0, alen, stopped, answer, refs, rw, NULL), 0);
    ck_assert_double_eq_tol(rw[0], 2 + 0.5 + 1 - 0.1, 1e-6);            /* exact, contains, regex */
    ck_assert_double_eq_tol(rw[1], 0.5 + 1 - 0.05, 1e-6);               /* contains, regex (the optional words) */
    ck_assert_double_eq_tol(rw[2], 0.5 - 0.25, 1e-6);                   /* contains; did not stop */
    ck_assert_double_eq_tol(rw[3], -0.1, 1e-6);                         /* '.' in the reference is not a wildcard */
    ck_assert_double_eq_tol(rw[4], 2 + 0.5 + 1 - 0.02, 1e-6);           /* \E inside the reference stays literal */
    ck_assert_double_eq_tol(rw[5], -0.01 - 0.25, 1e-6);                 /* an empty reference is never contained */
    st_rewarder_close(r);

    /* invalid UTF-8 in an answer (a byte model writes anything) is no match, not an error */
    o = (train_opts){0};
    o.rl.reward.regex = "arrival";
    o.rl.reward.regex_weight = 1.0f;
    ck_assert_int_eq(open_rules(&r, &o, &t), 0);
    char *bad[] = {"\xff\xfe arrival"}, *none[] = {""};
    const int one[] = {1};
    ck_assert_int_eq(st_rewarder_score(r, NULL, NULL, 1, 0, one, one, bad, none, rw, NULL), 0);
    ck_assert_double_eq(rw[0], 1);
    st_rewarder_close(r);
}
END_TEST

START_TEST(bad_reward_settings)
{
    train_opts o;
    memset(&o, 0, sizeof o);
    trainer t;
    st_rewarder *r = NULL;
    ck_assert_int_eq(open_rules(&r, &o, &t), ST_ERR_ARG); /* no reward at all */
    ck_assert_ptr_nonnull(strstr(st_error_message(), "no reward"));
    st_rewarder_close(r);
    st_error_clear();
    o.rl.reward.regex = "(unclosed";
    o.rl.reward.regex_weight = 1.0f;
    ck_assert_int_eq(open_rules(&r, &o, &t), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "rl.reward.regex '(unclosed'"));
    st_rewarder_close(r);
    st_error_clear();
}
END_TEST

/* Settings the RL methods refuse, through the real `train`. */
START_TEST(refused_settings)
{
    char dir[256], data[300], pref[400], out[300];
    th_tmpdir(MPI_COMM_SELF, dir, sizeof dir);
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_SELF, dir, "rl"), 0);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(out, sizeof out, "%s/run", dir);
    static const struct {
        const char *set[4], *want;
    } cases[] = {
        {{"--rl.group_size", "1"}, "rl.group_size must be at least 2"},
        {{"--rl.group_size", "3"}, "whole groups of rl.group_size 3"},
        {{"--rl.minibatches", "3"}, "rl.minibatches 3 must divide"},
        {{"--rl.max_new", "64"}, "rl.max_new 64"},
        {{"--rl.temperature", "0"}, "option 'rl.temperature' is 0; it must be > 0"},
        {{"--seq_len", "24"}, "are longer than seq_len 24"},
        {{"--rl.stop", "<|no such token|>"}, "rl.stop: '<|no such token|>'"},
        {{"--rl.reward.model", "/nonexistent.h5"}, "/nonexistent.h5"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *a[] = {"--method", "grpo", "--model.n_layer", "1", "--model.d_model", "16", "--model.n_head", "2",
                           "--seq_len", "64", "--batch_size", "4", "--global_batch", "8", "--steps", "1",
                           "--data.train", data, "--out_dir", out, "--plot", "false", "--rl.reward.contains", "1",
                           "--rl.max_new", "8", cases[i].set[0], cases[i].set[1], NULL};
        ck_assert_int_ne(th_train(MPI_COMM_SELF, a), 0);
        ck_assert_msg(strstr(st_error_message(), cases[i].want), "case %zu: '%s' not in: %s", i, cases[i].want,
                      st_error_message());
        st_error_clear();
    }
    /* prompts come from sft or chat data */
    char pdir[300];
    snprintf(pdir, sizeof pdir, "%s/pref", dir);
    ck_assert_int_eq(mkdir(pdir, 0755), 0);
    ck_assert_int_eq(th_make_dataset_kind(MPI_COMM_SELF, pdir, "pref"), 0);
    snprintf(pref, sizeof pref, "%s/data.h5", pdir);
    const char *a[] = {"--method", "ppo", "--model.n_layer", "1", "--model.d_model", "16", "--model.n_head", "2",
                       "--seq_len", "160", "--data.train", pref, "--out_dir", out, "--plot", "false",
                       "--rl.reward.contains", "1", NULL};
    ck_assert_int_ne(th_train(MPI_COMM_SELF, a), 0);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "takes its prompts from sft or chat data"));
    st_error_clear();
    th_rm_rf(dir);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("rewards");
    TCase *tc = tcase_create("rewards");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, rules_and_weights);
    tcase_add_test(tc, bad_reward_settings);
    tcase_add_test(tc, refused_settings);
    suite_add_tcase(s, tc);
    return st_run_serial_mpi_suite(&argc, &argv, s);
}
