/* harness.c: see harness.h. */
#include "harness.h"
#include "mpi_check.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "core/params.h"
#include "io/checkpoint.h"
#include "mpi/grid.h"

void th_tmpdir(MPI_Comm comm, char *out, size_t cap)
{
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    char buf[256] = "";
    if (!rank) {
        snprintf(buf, sizeof buf, "/tmp/shardtune-test-XXXXXX");
        if (!mkdtemp(buf)) buf[0] = 0;
    }
    MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, comm);
    snprintf(out, cap, "%s", buf);
}

/* Sentences of varied length, so documents and windows cut differently. */
static const char *const words[] = {"the", "card", "payment", "arrived", "bank", "transfer", "is",
                                    "pending", "why", "my", "account", "was", "charged", "twice",
                                    "please", "help", "refund", "exchange", "rate", "top", "up"};

int th_make_dataset(MPI_Comm comm, const char *dir) { return th_make_dataset_kind(comm, dir, "text"); }

int th_make_dataset_kind(MPI_Comm comm, const char *dir, const char *kind)
{
    int rank = 0;
    MPI_Comm_rank(comm, &rank);
    char in[512], out[512];
    snprintf(in, sizeof in, "%s/corpus.jsonl", dir);
    snprintf(out, sizeof out, "%s/data.h5", dir);
    if (!rank) {
        FILE *f = fopen(in, "w");
        if (!f) return 1;
        unsigned s = 12345;
        const int sft = !strcmp(kind, "sft"), cls = !strcmp(kind, "classify"), pref = !strcmp(kind, "pref");
        const int rl = !strcmp(kind, "rl"); /* short prompt/response records: RL prompts */
        for (int d = 0; d < 200; d++) {
            fprintf(f, sft || pref || rl ? "{\"prompt\": \"" : "{\"text\": \"");
            int n = rl ? 1 + d % 3 : 4 + d % 13;
            unsigned first = 0;
            for (int w = 0; w < n; w++) {
                s = s * 1103515245u + 12345u;
                unsigned k = (s >> 16) % (sizeof words / sizeof words[0]);
                if (!w) first = k;
                fprintf(f, "%s%s", w ? " " : "", words[k]);
            }
            if (cls) fprintf(f, ".\", \"label\": \"L%u\"}\n", first % 3);
            else if (sft || rl) fprintf(f, "?\", \"response\": \"%s\"}\n", words[(first * 7) % 5]);
            else if (pref) /* the chosen answer is the sft rule's, the rejected another word */
                fprintf(f, "?\", \"chosen\": \"%s\", \"rejected\": \"%s\"}\n", words[(first * 7) % 5],
                        words[(first * 7) % 5 + 1 + d % 7]);
            else fprintf(f, ".\"}\n");
        }
        fclose(f);
    }
    MPI_Barrier(comm);
    char *argv[] = {"prepare", "--input", in, "--out", out, "--tokenizer", "byte", "--val-fraction", "0.1", NULL};
    st_grid g;
    if (st_grid_init(&g, comm, 1)) return 1;
    st_err e = st_cmd_prepare(9, argv, &g);
    st_grid_free(&g);
    if (e) st_error_print(stderr, rank);
    return e;
}

int th_train(MPI_Comm comm, const char *const *args)
{
    char *argv[128];
    int argc = 0;
    argv[argc++] = "train";
    for (int i = 0; args[i] && argc < 127; i++) argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    setenv("SHARDTUNE_PEAK_GFLOPS", "10", 0); /* skip the measurement in tests */
    st_err e = st_cmd_train(argc, argv, comm);
    if (e && e != ST_STOPPED) {
        int rank = 0;
        MPI_Comm_rank(comm, &rank);
        st_error_print(stderr, rank);
    }
    return e;
}

int th_read_losses(const char *path, double *loss, int max)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[4096];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        cJSON *l = j ? cJSON_GetObjectItem(j, "loss") : NULL;
        if (cJSON_IsNumber(l)) loss[n++] = l->valuedouble;
        cJSON_Delete(j);
    }
    fclose(f);
    return n;
}

int th_load_weights(const char *path, st_config *cfg, float **params, size_t *n)
{
    st_layout lay;
    st_err e = st_ckpt_load_whole(path, cfg, &lay, params, NULL, NULL, NULL);
    if (e) {
        st_error_print(stderr, 0);
        return e;
    }
    *n = lay.numel;
    st_layout_free(&lay);
    return ST_OK;
}

double th_max_rel_diff(const st_config *cfg, const float *a, const float *b, char *worst, size_t cap)
{
    st_layout lay;
    if (st_layout_init(&lay, cfg, 1, 0)) return INFINITY;
    double w = 0;
    for (int t = 0; t < lay.n_tensors; t++) {
        const st_tensor *ts = &lay.tensors[t];
        /* GPT-2's key bias adds the same amount to every score of a query, which
         * the softmax cancels: its true gradient is exactly 0 and what moves it
         * is rounding noise that AdamW normalises into real steps. Nothing the
         * model computes depends on it, so it is no evidence either way. */
        if (cfg->family == ST_FAMILY_GPT2 && strstr(ts->name, "k_proj.bias")) continue;
        double d = 0, m = 1e-60;
        for (size_t i = 0; i < ts->numel; i++) {
            double x = (double)a[ts->offset + i] - b[ts->offset + i];
            d += x * x;
            m += (double)b[ts->offset + i] * b[ts->offset + i];
        }
        d = sqrt(d);
        m = sqrt(m);
        if (d / m > w) {
            w = d / m;
            snprintf(worst, cap, "%s", ts->name);
        }
    }
    st_layout_free(&lay);
    return w;
}

void th_rm_rf(const char *dir)
{
    if (!dir[0] || strncmp(dir, "/tmp/shardtune-test-", 20)) return;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) { /* best effort */ }
}

/* Common settings of the equivalence runs. */
/* rows: the global batch (8; 16 for pairs, so every rank's micro-batch holds whole pairs). */
static void grid_args(const char **a, int *n, const char *family, const char *dir, const char *data,
                      char *tpbuf, int tp, int zero, char *bsbuf, int dp, const char *const *extra, int rows,
                      const char *steps)
{
    static const char *fixed[] = {
        "--model.n_layer", "2", "--model.d_model", "32", "--model.n_head", "8", "--model.n_kv_head", "4",
        "--model.d_ff", "64", "--seq_len", "16",
        "--optim.lr", "3e-3", "--optim.warmup_steps", "2", "--optim.grad_clip", "0.5", "--seed", "7",
        "--log_every", "1", "--eval_every", "0", "--eval_batches", "1", "--plot", "false", "--keep", "1"};
    int k = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) a[k++] = fixed[i];
    a[k++] = "--steps";
    a[k++] = steps;
    a[k++] = "--model.family";
    a[k++] = family;
    /* gpt2 has no grouped-query attention; llama uses 8 query heads over 4 kv heads */
    if (!strcmp(family, "gpt2")) { a[k++] = "--model.n_head"; a[k++] = "4"; a[k++] = "--model.n_kv_head"; a[k++] = "4"; }
    a[k++] = "--data.train";
    a[k++] = data;
    a[k++] = "--out_dir";
    a[k++] = dir;
    sprintf(tpbuf, "%d", tp);
    a[k++] = "--grid.tp";
    a[k++] = tpbuf;
    a[k++] = "--grid.zero";
    a[k++] = zero ? "true" : "false";
    /* rows per step: micro-batches of rows/dp/2 rows, or fewer ranks accumulate more */
    sprintf(bsbuf, "%d", rows / dp / 2 > 0 ? rows / dp / 2 : 1);
    a[k++] = "--batch_size";
    a[k++] = bsbuf;
    a[k++] = "--global_batch";
    a[k++] = rows == 16 ? "16" : "8";
    for (int i = 0; extra && extra[i]; i++) a[k++] = extra[i];
    a[k] = NULL;
    *n = k;
}

int th_check_grids(MPI_Comm world, const char *family, const th_grid *grids, int n_grids,
                   double *worst_loss, double *worst_weight)
{
    return th_check_grids_method(world, family, grids, n_grids, "text", NULL, worst_loss, worst_weight);
}

int th_read_metric(const char *path, const char *key, double *out, int max)
{
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[8192];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        cJSON *v = j ? cJSON_GetObjectItem(j, key) : NULL;
        if (cJSON_IsNumber(v)) out[n++] = v->valuedouble;
        cJSON_Delete(j);
    }
    fclose(f);
    return n;
}

/* The largest relative difference of metric key between two runs' metrics.jsonl
 * (-1 when either lacks it at some step). */
static double metric_diff(const char *a, const char *b, const char *key, int steps)
{
    double x[64], y[64], d = 0;
    if (th_read_metric(a, key, x, 64) != steps || th_read_metric(b, key, y, 64) != steps) return -1;
    for (int i = 0; i < steps; i++) d = fmax(d, fabs(x[i] - y[i]) / fmax(fabs(y[i]), 1e-3));
    return d;
}

int th_check_grids_method(MPI_Comm world, const char *family, const th_grid *grids, int n_grids,
                          const char *kind, const char *const *extra, double *worst_loss,
                          double *worst_weight)
{
    return th_check_grids_keys(world, family, grids, n_grids, kind, extra, NULL, 10, worst_loss, worst_weight, NULL);
}

int th_check_grids_keys(MPI_Comm world, const char *family, const th_grid *grids, int n_grids, const char *kind,
                        const char *const *extra, const char *const *keys, int steps, double *worst_loss,
                        double *worst_weight, double *worst_key)
{
    int n_keys = 0;
    while (keys && keys[n_keys]) n_keys++;
    int rank = 0, size = 1;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &size);
    char dir[256], data[300], refdir[320], ckpt[400], nsteps[16], refm[400];
    th_tmpdir(world, dir, sizeof dir);
    snprintf(data, sizeof data, "%s/data.h5", dir);
    snprintf(nsteps, sizeof nsteps, "%d", steps);
    if (th_make_dataset_kind(world, dir, kind)) return 1;
    const int rows = strcmp(kind, "pref") ? 8 : 16;
    const char *a[96];
    int n;
    char tpbuf[16], bsbuf[16];
    double ref_loss[64] = {0};
    float *ref_w = NULL;
    size_t nw = 0;
    st_config cfg;
    int err = 0;
    snprintf(refdir, sizeof refdir, "%s/ref", dir);
    snprintf(refm, sizeof refm, "%s/metrics.jsonl", refdir);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_%08d.h5", refdir, steps);
    if (!rank) {
        grid_args(a, &n, family, refdir, data, tpbuf, 1, 0, bsbuf, 1, extra, rows, nsteps);
        err = th_train(MPI_COMM_SELF, a);
        if (!err && th_read_losses(refm, ref_loss, 64) != steps) err = 1;
        if (!err) err = th_load_weights(ckpt, &cfg, &ref_w, &nw);
    }
    MPI_Bcast(&err, 1, MPI_INT, 0, world);
    if (err) return err;
    *worst_loss = *worst_weight = 0;
    for (int k = 0; k < n_keys; k++) worst_key[k] = 0;
    for (int g = 0; g < n_grids && !err; g++) {
        char gdir[320];
        snprintf(gdir, sizeof gdir, "%s/grid%d", dir, g);
        grid_args(a, &n, family, gdir, data, tpbuf, grids[g].tp, grids[g].zero, bsbuf, size / grids[g].tp, extra,
                  rows, nsteps);
        err = th_train(world, a);
        if (err || rank) continue;
        double loss[64];
        char mp[400], worst[128] = "";
        snprintf(mp, sizeof mp, "%s/metrics.jsonl", gdir);
        if (th_read_losses(mp, loss, 64) != steps) { err = 1; continue; }
        double dl = 0;
        /* relative, but RL losses may be near 0: then within 1e-3 x ... absolute */
        for (int i = 0; i < steps; i++) dl = fmax(dl, fabs(loss[i] - ref_loss[i]) / fmax(fabs(ref_loss[i]), 1e-3));
        float *w = NULL;
        size_t nw2 = 0;
        st_config c2;
        snprintf(ckpt, sizeof ckpt, "%s/ckpt/step_%08d.h5", gdir, steps);
        if (th_load_weights(ckpt, &c2, &w, &nw2) || nw2 != nw) { err = 1; continue; }
        double dw = th_max_rel_diff(&cfg, w, ref_w, worst, sizeof worst);
        printf("%s %s grid tp%d x dp%d%s: loss rel diff %.2e, weights rel diff %.2e (%s); losses %.5f -> %.5f\n",
               family, extra && extra[0] ? extra[1] : "pretrain", grids[g].tp, size / grids[g].tp,
               grids[g].zero ? " ZeRO-1" : "", dl, dw, worst, loss[0], loss[steps - 1]);
        for (int k = 0; keys && keys[k]; k++) {
            const double dk = metric_diff(mp, refm, keys[k], steps);
            printf("    %s: rel diff %.2e\n", keys[k], dk);
            if (dk < 0) err = 1;
            else if (dk > worst_key[k]) worst_key[k] = dk;
        }
        fflush(stdout);
        if (dl > *worst_loss) *worst_loss = dl;
        if (dw > *worst_weight) *worst_weight = dw;
        free(w);
    }
    MPI_Bcast(&err, 1, MPI_INT, 0, world);
    MPI_Bcast(worst_loss, 1, MPI_DOUBLE, 0, world);
    MPI_Bcast(worst_weight, 1, MPI_DOUBLE, 0, world);
    if (n_keys) MPI_Bcast(worst_key, n_keys, MPI_DOUBLE, 0, world);
    free(ref_w);
    if (!rank && !err) th_rm_rf(dir);
    return err;
}

int th_mpi_dir_main(int *argc, char ***argv, const char *name, int timeout, int *rank, char *dir, size_t cap,
                    const TTest *const *tests, int n_tests)
{
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    th_tmpdir(MPI_COMM_WORLD, dir, cap);
    Suite *s = suite_create(name);
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    for (int i = 0; i < n_tests; i++) tcase_add_test(tc, tests[i]);
    suite_add_tcase(s, tc);
    int failed = st_run_mpi_suite(s);
    MPI_Barrier(MPI_COMM_WORLD);
    if (*rank == 0) th_rm_rf(dir);
    MPI_Finalize();
    return failed;
}

void th_write_file(const char *path, const void *data, size_t n)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, n, fp), n);
    ck_assert_int_eq(fclose(fp), 0);
}

char *th_read_file(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *b = malloc((size_t)size + 1);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(fread(b, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    b[size] = '\0';
    if (n) *n = (size_t)size;
    return b;
}

void th_gpt2_stand_in(int b, char out[3])
{
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    int cp = b;
    if (!printable) {
        cp = 256;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) cp++;
    }
    if (cp < 128) out[0] = (char)cp, out[1] = 0;
    else out[0] = (char)(0xC0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 63)), out[2] = 0;
}

const char *th_data_path(const char *rel)
{
    static char buf[8][4096];
    static int k;
    char *b = buf[k++ % 8];
    snprintf(b, sizeof buf[0], "data/%s", rel);
    if (access(b, R_OK) == 0) return b;
    const char *root = getenv("SHARDTUNE_ROOT");
    if (root) {
        snprintf(b, sizeof buf[0], "%s/data/%s", root, rel);
        if (access(b, R_OK) == 0) return b;
    }
    ck_abort_msg("data/%s not found: run from the repository root or set SHARDTUNE_ROOT", rel);
    return NULL;
}

/* Where dataset dset's data starts in the file (contiguous layout), or -1. */
static long long dataset_offset(const char *path, const char *dset)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f < 0 ? -1 : H5Dopen2(f, dset, H5P_DEFAULT);
    haddr_t off = d < 0 ? HADDR_UNDEF : H5Dget_offset(d);
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    return off == HADDR_UNDEF ? -1 : (long long)off;
}

int th_flip_byte(MPI_Comm comm, const char *path, const char *dset, long long at)
{
    int rank = 0, ok = 1, all = 0;
    MPI_Comm_rank(comm, &rank);
    if (rank == 0) {
        long long off = dataset_offset(path, dset);
        int fd = open(path, O_RDWR);
        unsigned char b;
        ok = off >= 0 && fd >= 0 && pread(fd, &b, 1, off + at) == 1;
        b ^= 0x10;
        ok = ok && pwrite(fd, &b, 1, off + at) == 1;
        if (fd >= 0) close(fd);
    }
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm);
    return all;
}
