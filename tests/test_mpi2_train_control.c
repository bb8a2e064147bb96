/* test_mpi2_train_control.c: a training run stopped early (issue 13): a stop
 * request (what the SIGTERM/SIGUSR1/SIGINT handlers record) on one rank only
 * stops every rank after the same step with a checkpoint and ST_STOPPED, and
 * the resumed run ends bitwise equal to the uninterrupted one; time_limit and
 * SLURM_JOB_END_TIME stop the run in time; save_minutes saves by the clock;
 * a run that diverges (NaN) stops or skips the step and never saves it;
 * --resume auto refuses checkpoints that all fail verification, and one
 * flipped bit in a header attribute (the step) fails verification;
 * init_from must carry the dataset's tokenizer, and init_skip names must
 * name tensors; resumed runs log each step once, refuse another `steps`,
 * and a finished run resubmitted does nothing; the validation loss is the
 * same on one rank and on dp 2; a run directory in use is refused; a tp group
 * over two nodes is seen.
 * (tests/faults/run.sh sends real signals to real processes.) */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <hdf5.h>

#include "cmd/commands.h"
#include "cmd/runctl.h"
#include "io/checkpoint.h"
#include "io/runlock.h"
#include "mpi/grid.h"
#include "harness.h"
#include "mpi_check.h"

static int rank;
static char dir[256], data[300];

/* the tiny run's settings, then extra (NULL-terminated) */
static int train(const char *out, const char *const *extra)
{
    const char *a[64] = {"--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4",
                         "--model.n_kv_head", "2", "--model.d_ff", "64", "--seq_len", "16", "--batch_size", "2",
                         "--global_batch", "4", "--steps", "12", "--optim.lr", "3e-3", "--seed", "5",
                         "--eval_every", "0", "--eval_batches", "1", "--plot", "false", "--keep", "0",
                         "--save_every", "0", "--data.train", data, "--out_dir", out};
    int n = 0;
    while (a[n]) n++;
    for (int i = 0; extra && extra[i]; i++) a[n++] = extra[i];
    a[n] = NULL;
    return th_train(MPI_COMM_WORLD, a);
}

static int exists(const char *d, const char *name)
{
    char p[600];
    snprintf(p, sizeof p, "%s/ckpt/%s", d, name);
    return access(p, F_OK) == 0;
}

static void setup_data(void)
{
    if (!data[0]) {
        ck_assert_int_eq(th_make_dataset(MPI_COMM_WORLD, dir), 0);
        snprintf(data, sizeof data, "%s/data.h5", dir);
    }
}

START_TEST(stop_on_one_rank_saves_and_resumes_exactly)
{
    setup_data();
    char full[300], split[300];
    snprintf(full, sizeof full, "%s/full", dir);
    snprintf(split, sizeof split, "%s/split", dir);
    ck_assert_int_eq(train(full, NULL), 0);
    /* SIGTERM seen by rank 1 alone, before the first step ends */
    if (rank == 1) st_runctl_request_stop(SIGTERM);
    ck_assert_int_eq(train(split, NULL), ST_STOPPED);
    if (rank == 0) {
        ck_assert_msg(exists(split, "step_00000001.h5"), "no checkpoint of the step the stop came after");
        ck_assert(!exists(split, "step_00000002.h5"));
    }
    const char *resume[] = {"--resume", "auto", NULL};
    ck_assert_int_eq(train(split, resume), 0);
    if (rank == 0) {
        char p[400];
        double lf[16], ls[16];
        snprintf(p, sizeof p, "%s/metrics.jsonl", full);
        ck_assert_int_eq(th_read_losses(p, lf, 16), 12);
        snprintf(p, sizeof p, "%s/metrics.jsonl", split);
        ck_assert_int_eq(th_read_losses(p, ls, 16), 12);
        for (int i = 0; i < 12; i++) ck_assert_msg(lf[i] == ls[i], "step %d: %.9g vs %.9g", i + 1, lf[i], ls[i]);
        st_config c1, c2;
        float *w1, *w2;
        size_t n1, n2;
        snprintf(p, sizeof p, "%s/ckpt/step_00000012.h5", full);
        ck_assert_int_eq(th_load_weights(p, &c1, &w1, &n1), 0);
        snprintf(p, sizeof p, "%s/ckpt/step_00000012.h5", split);
        ck_assert_int_eq(th_load_weights(p, &c2, &w2, &n2), 0);
        ck_assert(n1 == n2 && memcmp(w1, w2, n1 * sizeof(float)) == 0);
        free(w1);
        free(w2);
    }
}
END_TEST

/* time_limit 0.0001 minutes: no time for a second step and a save */
START_TEST(time_limit_stops_with_a_checkpoint)
{
    setup_data();
    char out[300];
    snprintf(out, sizeof out, "%s/limit", dir);
    const char *extra[] = {"--time_limit", "0.0001", NULL};
    ck_assert_int_eq(train(out, extra), ST_STOPPED);
    if (rank == 0) ck_assert(exists(out, "step_00000001.h5") && !exists(out, "step_00000002.h5"));
}
END_TEST

START_TEST(slurm_end_time_stops_and_is_checked)
{
    setup_data();
    char out[300], end[32];
    snprintf(out, sizeof out, "%s/endtime", dir);
    snprintf(end, sizeof end, "%lld", (long long)time(NULL) + 2);
    setenv("SLURM_JOB_END_TIME", end, 1);
    ck_assert_int_eq(train(out, NULL), ST_STOPPED);
    if (rank == 0) ck_assert(exists(out, "step_00000001.h5") && !exists(out, "step_00000012.h5"));
    setenv("SLURM_JOB_END_TIME", "tomorrow", 1);
    ck_assert_int_eq(train(out, NULL), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "SLURM_JOB_END_TIME"));
    unsetenv("SLURM_JOB_END_TIME");
}
END_TEST

/* save_minutes tiny, save_every 0: a checkpoint after every step */
START_TEST(save_minutes_saves_by_the_clock)
{
    setup_data();
    char out[300];
    snprintf(out, sizeof out, "%s/interval", dir);
    const char *extra[] = {"--save_minutes", "0.000001", "--steps", "3", NULL};
    ck_assert_int_eq(train(out, extra), 0);
    if (rank == 0) ck_assert(exists(out, "step_00000001.h5") && exists(out, "step_00000002.h5"));
}
END_TEST

/* Every line of metrics.jsonl parses as JSON; returns how many say "nonfinite". */
static int metrics_nonfinite(const char *out, int *lines)
{
    char p[400];
    snprintf(p, sizeof p, "%s/metrics.jsonl", out);
    char *text = th_read_file(p, NULL), *save = NULL;
    int bad = 0;
    *lines = 0;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        cJSON *j = cJSON_Parse(l);
        ck_assert_msg(j != NULL, "metrics.jsonl line is not JSON: %s", l);
        bad += cJSON_IsTrue(cJSON_GetObjectItem(j, "nonfinite"));
        cJSON_Delete(j);
        (*lines)++;
    }
    free(text);
    return bad;
}

/* optim.lr 1e6 after 4 good steps: the loss turns NaN within a few steps */
START_TEST(nonfinite_stops_and_saves_nothing)
{
    setup_data();
    char out[300];
    snprintf(out, sizeof out, "%s/nan", dir);
    const char *first[] = {"--stop_after", "4", NULL};
    ck_assert_int_eq(train(out, first), 0);
    const char *diverge[] = {"--resume", "auto", "--optim.lr", "1e6", NULL};
    ck_assert_int_eq(train(out, diverge), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "not applied"));
    if (rank == 0) {
        int lines;
        ck_assert_int_eq(metrics_nonfinite(out, &lines), 1);
        ck_assert(exists(out, "step_00000004.h5") && !exists(out, "step_00000012.h5"));
    }
    /* skip: each such step is left out, and 10 in a row stop the run */
    char out2[300];
    snprintf(out2, sizeof out2, "%s/nan-skip", dir);
    const char *skip[] = {"--optim.lr", "1e6", "--on_nonfinite", "skip", "--steps", "40", NULL};
    ck_assert_int_eq(train(out2, skip), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "10 such steps in a row"));
    if (rank == 0) {
        int lines;
        ck_assert_int_eq(metrics_nonfinite(out2, &lines), 10);
    }
}
END_TEST

/* Rank 0 damages, then every rank goes on. */
static void flip_middle_byte(const char *path)
{
    if (rank == 0) {
        FILE *f = fopen(path, "r+b");
        ck_assert_ptr_nonnull(f);
        fseek(f, 0, SEEK_END);
        long mid = ftell(f) / 2;
        fseek(f, mid, SEEK_SET);
        int c = fgetc(f);
        fseek(f, mid, SEEK_SET);
        fputc(c ^ 0xff, f);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

static void flip_step_attribute(const char *path)
{
    if (rank == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT), a = H5Aopen(f, "step", H5P_DEFAULT);
        long long step;
        ck_assert(f >= 0 && a >= 0 && H5Aread(a, H5T_NATIVE_LLONG, &step) >= 0);
        step ^= 1;
        ck_assert(H5Awrite(a, H5T_NATIVE_LLONG, &step) >= 0);
        H5Aclose(a);
        H5Fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
}

START_TEST(damaged_checkpoints_are_never_trusted)
{
    setup_data();
    char out[300], p2[400], p4[400], found[600];
    snprintf(out, sizeof out, "%s/damaged", dir);
    const char *first[] = {"--stop_after", "4", "--save_every", "2", NULL};
    ck_assert_int_eq(train(out, first), 0);
    snprintf(p2, sizeof p2, "%s/ckpt/step_00000002.h5", out);
    snprintf(p4, sizeof p4, "%s/ckpt/step_00000004.h5", out);
    /* one bit of the root attribute step: the newest no longer verifies */
    flip_step_attribute(p4);
    char ckdir[400];
    snprintf(ckdir, sizeof ckdir, "%s/ckpt", out);
    ck_assert_int_eq(st_ckpt_find_latest(ckdir, MPI_COMM_WORLD, found, sizeof found), 0);
    ck_assert_str_eq(found, p2);
    /* every one damaged: resume auto refuses, names them, deletes nothing */
    flip_middle_byte(p2);
    const char *resume[] = {"--resume", "auto", NULL};
    ck_assert_int_eq(train(out, resume), ST_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "step_00000002.h5"));
    ck_assert_ptr_nonnull(strstr(st_error_message(), "step_00000004.h5"));
    if (rank == 0) ck_assert(exists(out, "step_00000002.h5") && exists(out, "step_00000004.h5"));
}
END_TEST

/* An option error before the grid exists ends train with the message on
 * every rank (teardown of a zero-filled grid used to abort in MPI_Comm_free:
 * Open MPI's MPI_COMM_NULL is not 0). */
START_TEST(option_errors_return_on_every_rank)
{
    const char *typo[] = {"--set", "stpes=10", NULL}, *recipe[] = {"no-such-recipe.yaml", NULL};
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, typo), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "'stpes'"));
    ck_assert_int_eq(th_train(MPI_COMM_WORLD, recipe), ST_ERR_IO);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "no-such-recipe.yaml"));
}
END_TEST

START_TEST(init_from_must_match_the_data)
{
    setup_data();
    char ck[400], out[300], spec[400], base[300];
    /* llama2.c's stories260K with its own 512-token tokenizer: byte-level data do not fit it */
    snprintf(ck, sizeof ck, "%s/stories.h5", dir);
    snprintf(spec, sizeof spec, "llama2c:%s", th_data_path("llama2c/tok512.bin"));
    char *conv[] = {"convert", (char *)th_data_path("llama2c/stories260K.bin"), "--out", ck, "--tokenizer", spec, NULL};
    ck_assert_int_eq(st_cmd_convert(6, conv, MPI_COMM_WORLD), 0);
    snprintf(out, sizeof out, "%s/tokmix", dir);
    const char *mix[] = {"--init_from", ck, "--steps", "1", NULL};
    ck_assert_int_eq(train(out, mix), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "different tokenizer"));
    /* a base of the same tokenizer, and an init_skip that names nothing */
    snprintf(base, sizeof base, "%s/base", dir);
    const char *make_base[] = {"--steps", "1", NULL};
    ck_assert_int_eq(train(base, make_base), 0);
    snprintf(ck, sizeof ck, "%s/ckpt/step_00000001.h5", base);
    snprintf(out, sizeof out, "%s/skip", dir);
    const char *skip[] = {"--init_from", ck, "--init_skip", "model.norm.weight,model.layers.9.*", "--steps", "1", NULL};
    ck_assert_int_eq(train(out, skip), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "'model.layers.9.*'"));
    const char *good[] = {"--init_from", ck, "--init_skip", "model.layers.1.*", "--steps", "1", NULL};
    ck_assert_int_eq(train(out, good), 0);
}
END_TEST

/* The "step" of each metrics.jsonl line, in order; returns how many. */
static int metric_steps(const char *out, int *steps, int max)
{
    char p[400];
    snprintf(p, sizeof p, "%s/metrics.jsonl", out);
    FILE *f = fopen(p, "r");
    ck_assert_ptr_nonnull(f);
    char line[4096];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) ck_assert_int_eq(sscanf(line, "{\"step\":%d,", &steps[n++]), 1);
    fclose(f);
    return n;
}

START_TEST(resumes_log_each_step_once_and_keep_the_schedule)
{
    setup_data();
    char out[300], p[400];
    snprintf(out, sizeof out, "%s/once", dir);
    const char *first[] = {"--stop_after", "8", "--save_every", "4", NULL};
    ck_assert_int_eq(train(out, first), 0);
    /* the newest checkpoint is damaged: the run goes back to step 4 and logs 5..12 again, once */
    snprintf(p, sizeof p, "%s/ckpt/step_00000008.h5", out);
    flip_middle_byte(p);
    const char *resume[] = {"--resume", "auto", NULL};
    ck_assert_int_eq(train(out, resume), 0);
    if (rank == 0) {
        int steps[40];
        ck_assert_int_eq(metric_steps(out, steps, 40), 12);
        for (int i = 0; i < 12; i++) ck_assert_int_eq(steps[i], i + 1);
    }
    /* the same command again: nothing to do, nothing logged */
    ck_assert_int_eq(train(out, resume), 0);
    if (rank == 0) {
        int steps[40];
        ck_assert_int_eq(metric_steps(out, steps, 40), 12);
    }
    /* another schedule length is refused */
    const char *longer[] = {"--resume", "auto", "--steps", "20", NULL};
    ck_assert_int_eq(train(out, longer), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "schedule of 12 steps"));
}
END_TEST

/* The validation loss after one step on 1x1 (rank 0 alone) and on dp 2. */
START_TEST(validation_rows_do_not_depend_on_dp)
{
    setup_data();
    char one[300], two[300];
    snprintf(one, sizeof one, "%s/val1", dir);
    snprintf(two, sizeof two, "%s/val2", dir);
    const char *a[] = {"--steps", "1", "--eval_batches", "3", NULL};
    if (rank == 0) {
        const char *args[64] = {"--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "4",
                                "--model.n_kv_head", "2", "--model.d_ff", "64", "--seq_len", "16",
                                "--batch_size", "2", "--global_batch", "4", "--steps", "1", "--optim.lr", "3e-3",
                                "--seed", "5", "--eval_batches", "3", "--plot", "false", "--data.train", data,
                                "--out_dir", one, NULL};
        ck_assert_int_eq(th_train(MPI_COMM_SELF, args), 0);
    }
    ck_assert_int_eq(train(two, a), 0);
    if (rank == 0) {
        char p[400];
        snprintf(p, sizeof p, "%s/metrics.jsonl", one);
        char *l1 = th_read_file(p, NULL);
        snprintf(p, sizeof p, "%s/metrics.jsonl", two);
        char *l2 = th_read_file(p, NULL);
        cJSON *j1 = cJSON_Parse(l1), *j2 = cJSON_Parse(l2);
        double v1 = cJSON_GetObjectItem(j1, "val_loss")->valuedouble, v2 = cJSON_GetObjectItem(j2, "val_loss")->valuedouble;
        ck_assert_msg(fabs(v1 - v2) <= 1e-5 * fabs(v1), "validation loss %.9g on 1x1, %.9g on dp 2", v1, v2);
        cJSON_Delete(j1);
        cJSON_Delete(j2);
        free(l1);
        free(l2);
    }
}
END_TEST

START_TEST(a_run_directory_in_use_is_refused)
{
    setup_data();
    char out[300];
    snprintf(out, sizeof out, "%s/locked", dir);
    int fd = -1;
    if (rank == 0) {
        ck_assert_int_eq(mkdir(out, 0755), 0);
        ck_assert_int_eq(st_run_lock(out, &fd), 0); /* another run holds it (flock: per open file) */
        ck_assert_int_ge(fd, 0);
    }
    const char *steps[] = {"--steps", "1", NULL};
    ck_assert_int_eq(train(out, steps), ST_ERR_ARG); /* on every rank */
    if (rank == 0) {
        ck_assert_ptr_nonnull(strstr(st_error_message(), "in use by another run (pid "));
        st_run_unlock(&fd);
    }
    ck_assert_int_eq(train(out, steps), 0);
}
END_TEST

/* Slurm's node names tell two nodes apart even on one host. */
START_TEST(a_tp_group_over_two_nodes_is_seen)
{
    st_grid g;
    int32_t nodes = 0;
    ck_assert_int_eq(st_grid_init(&g, MPI_COMM_WORLD, 2), 0);
    setenv("SLURMD_NODENAME", rank ? "node2" : "node1", 1);
    ck_assert_int_eq(st_grid_tp_nodes(&g, &nodes), 0);
    ck_assert_int_eq(nodes, 2);
    setenv("SLURMD_NODENAME", "node1", 1);
    ck_assert_int_eq(st_grid_tp_nodes(&g, &nodes), 0);
    ck_assert_int_eq(nodes, 1);
    unsetenv("SLURMD_NODENAME");
    st_grid_free(&g);
}
END_TEST

int main(int argc, char **argv)
{
    const TTest *const tests[] = {stop_on_one_rank_saves_and_resumes_exactly, time_limit_stops_with_a_checkpoint,
                                         slurm_end_time_stops_and_is_checked, save_minutes_saves_by_the_clock,
                                  nonfinite_stops_and_saves_nothing, damaged_checkpoints_are_never_trusted,
                                  init_from_must_match_the_data, option_errors_return_on_every_rank,
                                  resumes_log_each_step_once_and_keep_the_schedule,
                                  validation_rows_do_not_depend_on_dp, a_run_directory_in_use_is_refused,
                                  a_tp_group_over_two_nodes_is_seen};
    return th_mpi_dir_main(&argc, &argv, "train_control", 300, &rank, dir, sizeof dir, tests,
                           (int)(sizeof tests / sizeof tests[0]));
}
