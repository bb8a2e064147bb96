/* bench_ckpt.c: checkpoint save and load throughput of io/checkpoint.c for a
 * GPT-2-124M model with its AdamW state (params + m + v), on whatever grid
 * mpirun gives it. The save is synchronous, so its time is the time a save
 * stalls training.
 *
 *   mpirun -np R build/benchmarks/bench_ckpt DIR [tp=1] [zero=1] [reps=3]
 *
 * Each rep: the reference, then the save, then two loads.
 *   reference: world rank 0 writes as many bytes as the checkpoint file with
 *     1 MiB write() calls and fdatasync (what `dd bs=1M conv=fdatasync`
 *     does), into DIR/raw.bin; the same disk, moments before the save, so
 *     each save has its own paired reference on this noisy virtual disk.
 *   save DIR/bench.h5 (atomic: .tmp, fsync, rename), drop the file's pages
 *     from the page cache (posix_fadvise, this file only), load it back cold
 *     (read + every checksum verified), then load it again warm.
 * Before the reference and before the save the previous file is removed and
 * sync() waits for the file system to settle: on a file system mounted with
 * online discard (this machine's ext4), freeing a 1.5 GB file makes the next
 * writes wait for the discards, which would charge one file's deletion to
 * the next one's write. Times are wall times between barriers. Like
 * src/cmd/main.c, this sets OMPI_MCA_fcoll=individual unless the environment sets
 * it (benchmarks/run.sh measures both).
 */
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/params.h"
#include "core/timer.h"
#include "io/checkpoint.h"
#include "mpi/grid.h"

/* Drop path's cached pages (clean after the save's fsync) so a load reads
 * the disk. Affects this file only. */
static void drop_cache(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) return;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
}

/* The dd-like reference: bytes written to path in 1 MiB calls, then
 * fdatasync; seconds taken. The file is removed (and the removal settled). */
static st_err raw_write(const char *path, long long bytes, double *secs)
{
    const size_t chunk = (size_t)1 << 20;
    char *buf = malloc(chunk);
    if (!buf) ST_FAIL(ST_ERR_MEM, "out of memory for the reference write");
    memset(buf, 0x5a, chunk);
    double t0 = st_now();
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    st_err e = ST_OK;
    if (fd < 0) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot create %s", path);
    for (long long done = 0; !e && done < bytes;) {
        size_t n = bytes - done < (long long)chunk ? (size_t)(bytes - done) : chunk;
        ssize_t w = write(fd, buf, n);
        if (w <= 0) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "writing %s failed", path);
        else done += w;
    }
    if (!e && fdatasync(fd)) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "fdatasync %s", path);
    *secs = st_now() - t0;
    if (fd >= 0) close(fd);
    unlink(path);
    sync();
    free(buf);
    return e;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static st_err run(int argc, char **argv)
{
    if (argc < 2) ST_FAIL(ST_ERR_ARG, "usage: bench_ckpt DIR [tp=1] [zero=1] [reps=3]");
    int tp = 1, zero = 1, reps = 3;
    for (int i = 2; i < argc; i++) {
        if (!strncmp(argv[i], "tp=", 3)) tp = atoi(argv[i] + 3);
        else if (!strncmp(argv[i], "zero=", 5)) zero = atoi(argv[i] + 5);
        else if (!strncmp(argv[i], "reps=", 5)) reps = atoi(argv[i] + 5);
        else ST_FAIL(ST_ERR_ARG, "unknown argument '%s' (tp= zero= reps=)", argv[i]);
    }
    if (reps < 1 || reps > 100) ST_FAIL(ST_ERR_ARG, "reps=%d: expected 1..100", reps);
    char path[4096];
    snprintf(path, sizeof path, "%s/bench.h5", argv[1]);
    st_grid g;
    ST_TRY(st_grid_init(&g, MPI_COMM_WORLD, tp));
    st_config cfg = {.family = ST_FAMILY_GPT2, .n_layer = 12, .d_model = 768, .n_head = 12, .n_kv_head = 12,
                     .d_ff = 3072, .vocab_size = 50257, .max_seq = 1024, .norm_eps = 1e-5f, .tied_embeddings = 1};
    st_layout lay;
    ST_TRY(st_layout_init(&lay, &cfg, g.tp_size, g.tp_rank));
    /* moments: this rank's ZeRO-1 slice over dp, or (no ZeRO) all of them on
     * dp rank 0 only, as src/cmd/train.c saves them */
    size_t n = lay.numel, d = (size_t)g.dp_size, r = (size_t)g.dp_rank;
    size_t ob = zero ? n * r / d : 0, oe = zero ? n * (r + 1) / d : (r == 0 ? n : 0);
    float *params, *m, *v;
    ST_ALLOC(params, n, "parameters");
    ST_ALLOC(m, oe - ob + 1, "first moments");
    ST_ALLOC(v, oe - ob + 1, "second moments");
    for (size_t i = 0; i < n; i++) params[i] = (float)((i * 2654435761u) % 2001) * 1e-3f - 1.0f;
    for (size_t i = 0; i < oe - ob; i++) m[i] = params[ob + i] * 0.1f, v[i] = params[ob + i] * params[ob + i];
    st_ckpt_tensors t = {.lay = &lay, .params = params, .m = m, .v = v, .opt_begin = ob, .opt_end = oe,
                         .adam_step = 10, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f};
    st_train_state s = {.step = 10};
    double *ts, *tl, *tw, *tr, *ratio;
    ST_ALLOC(tr, reps, "reference write times");
    ST_ALLOC(ratio, reps, "save / reference rates");
    ST_ALLOC(ts, reps, "save times");
    ST_ALLOC(tl, reps, "load times");
    ST_ALLOC(tw, reps, "warm load times");
    char raw[4200];
    snprintf(raw, sizeof raw, "%s/raw.bin", argv[1]);
    /* the file's size: 4 bytes per element of params + m + v, plus HDF5's metadata */
    long long bytes = 12LL * (long long)st_config_num_params(&cfg);
    for (int k = 0; k < reps; k++) {
        st_err e = ST_OK;
        if (g.world_rank == 0) {
            unlink(path);
            sync();
            e = raw_write(raw, bytes, &tr[k]);
        }
        ST_TRY(st_agree(g.world, e));
        ST_MPI(MPI_Barrier(g.world));
        double t0 = st_now();
        ST_TRY(st_ckpt_save_file(path, &g, &t, g.world_rank == 0 ? &s : NULL, NULL, NULL, 0));
        ST_MPI(MPI_Barrier(g.world));
        ts[k] = st_now() - t0;
        if (g.world_rank == 0) {
            struct stat sb;
            if (stat(path, &sb)) ST_FAIL(ST_ERR_IO, "cannot stat %s after saving it", path);
            bytes = (long long)sb.st_size;
            ratio[k] = tr[k] / ts[k];   /* save rate / reference rate (same bytes +- metadata) */
            drop_cache(path);
        }
        for (int warm = 0; warm < 2; warm++) {
            memset(params, 0, n * sizeof(float));
            ST_MPI(MPI_Barrier(g.world));
            t0 = st_now();
            st_train_state ls = {0};
            ST_TRY(st_ckpt_load(path, &g, &t, &ls, NULL, 0, NULL, NULL, NULL));
            ST_MPI(MPI_Barrier(g.world));
            (warm ? tw : tl)[k] = st_now() - t0;
            st_train_state_free(&ls);
        }
    }
    if (g.world_rank == 0) {
        const char *fcoll = getenv("OMPI_MCA_fcoll");
        qsort(ts, reps, sizeof *ts, cmp_double);
        qsort(tl, reps, sizeof *tl, cmp_double);
        qsort(tw, reps, sizeof *tw, cmp_double);
        qsort(tr, reps, sizeof *tr, cmp_double);
        qsort(ratio, reps, sizeof *ratio, cmp_double);
        double gb = bytes / 1e9, ms = ts[reps / 2], ml = tl[reps / 2], mw = tw[reps / 2], mr = tr[reps / 2];
        printf("checkpoint gpt2-124M + AdamW (%.3f GB file), grid %dx%d (tp x dp)%s, fcoll=%s, %d reps (median; min..max)\n",
               gb, g.tp_size, g.dp_size, zero && g.dp_size > 1 ? " ZeRO-1" : "", fcoll ? fcoll : "default", reps);
        printf("  save (= training stall) %.2f s  %.2f GB/s  (%.2f..%.2f s)\n", ms, gb / ms, ts[0], ts[reps - 1]);
        printf("  reference write (dd-like, rank 0)  %.2f s  %.2f GB/s  (%.2f..%.2f s)\n", mr, gb / mr, tr[0],
               tr[reps - 1]);
        printf("  save / reference rate, paired per rep: median %.0f%%  (%.0f..%.0f%%)\n", 100 * ratio[reps / 2],
               100 * ratio[0], 100 * ratio[reps - 1]);
        printf("  load cold               %.2f s  %.2f GB/s  (%.2f..%.2f s)\n", ml, gb / ml, tl[0], tl[reps - 1]);
        printf("  load warm (page cache)  %.2f s  %.2f GB/s  (%.2f..%.2f s)\n", mw, gb / mw, tw[0], tw[reps - 1]);
        printf("RESULT ckpt tp=%d dp=%d zero=%d fcoll=%s bytes=%lld save_s=%.3f save_GBs=%.3f load_s=%.3f "
               "load_GBs=%.3f warm_load_s=%.3f warm_load_GBs=%.3f ref_GBs=%.3f save_vs_ref=%.3f\n",
               g.tp_size, g.dp_size, zero, fcoll ? fcoll : "default", bytes, ms, gb / ms, ml, gb / ml, mw, gb / mw,
               gb / mr, ratio[reps / 2]);
        fflush(stdout);
        unlink(path);
    }
    free(tr);
    free(ratio);
    free(ts);
    free(tl);
    free(tw);
    free(params);
    free(m);
    free(v);
    st_layout_free(&lay);
    st_grid_free(&g);
    return ST_OK;
}

int main(int argc, char **argv)
{
    int provided = 0, rank = 0;
    setenv("OMPI_MCA_fcoll", "individual", 0); /* src/cmd/main.c's default */
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    st_err e = run(argc, argv);
    if (e) {
        st_error_print(stderr, rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Finalize();
    return 0;
}
