/* bench_tokenize.c: encoding throughput of one tokenizer on one core.
 *
 *   build/benchmarks/bench_tokenize SPEC FILE [reps]
 *
 * Encodes FILE line by line (one record at a time, as `shardtune prepare`
 * encodes one record at a time) on one thread. A rep is as many passes over
 * the file as fill about half a second (a small file alone is too short to
 * time); the best of reps is reported as MB/s of input text and tokens/s.
 * Tokenizer loading is timed apart.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timer.h"
#include "io/tok/tokenizer.h"

static st_err read_all(const char *path, char **buf, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open %s", path);
    size_t cap = 1 << 20, len = 0;
    char *b = malloc(cap);
    while (b) {
        len += fread(b + len, 1, cap - len, f);
        if (len < cap) break;
        char *nb = realloc(b, cap *= 2);
        if (!nb) free(b);
        b = nb;
    }
    int bad = ferror(f);
    fclose(f);
    if (!b) ST_FAIL(ST_ERR_MEM, "out of memory reading %s", path);
    if (bad) {
        free(b);
        ST_FAIL(ST_ERR_IO, "error reading %s", path);
    }
    *buf = b;
    *n = len;
    return ST_OK;
}

static st_err run(int argc, char **argv)
{
    if (argc < 3) ST_FAIL(ST_ERR_ARG, "usage: bench_tokenize SPEC FILE [reps]");
    int reps = argc > 3 ? atoi(argv[3]) : 3;
    if (reps < 1) reps = 1;
    char *text = NULL;
    size_t n = 0;
    ST_TRY(read_all(argv[2], &text, &n));
    st_tokenizer *tok;
    double t0 = st_now();
    st_err e = st_tokenizer_load(&tok, argv[1]);
    double t_load = st_now() - t0;
    if (e) {
        free(text);
        ST_TRY(e);
    }
    int32_t *ids = NULL;
    size_t nid = 0, cap = 0, lines = 0;
    double best = 1e30;
    int passes = 1;
    for (int r = -1; r < reps && !e; r++) { /* rep -1 times one pass to choose passes */
        size_t total = 0;
        lines = 0;
        t0 = st_now();
        for (int p = 0; p < (r < 0 ? 1 : passes) && !e; p++)
            for (size_t a = 0; a < n && !e;) {
                const char *nl = memchr(text + a, '\n', n - a);
                size_t b = nl ? (size_t)(nl - text) + 1 : n;
                nid = 0;
                e = st_tokenizer_encode(tok, text + a, b - a, 0, &ids, &nid, &cap);
                total += nid;
                lines++;
                a = b;
            }
        double dt = st_now() - t0;
        if (r < 0) {
            passes = dt > 0.5 ? 1 : (int)(0.5 / (dt > 1e-4 ? dt : 1e-4)) + 1;
            continue;
        }
        dt /= passes;
        if (dt < best) best = dt;
        nid = total / passes;
        lines /= passes;
    }
    if (!e) {
        printf("tokenizer %s on %s: %.2f MB, %zu lines, %zu tokens (%.2f bytes/token); load %.3f s; "
               "encode %.4f s = %.2f MB/s, %.0f tokens/s (1 core, best of %d reps of %d passes)\n",
               argv[1], argv[2], n / 1e6, lines, nid, (double)n / (double)(nid ? nid : 1), t_load, best,
               n / 1e6 / best, nid / best, reps, passes);
        printf("RESULT tokenize spec=%s file=%s bytes=%zu tokens=%zu load_s=%.4f encode_s=%.4f MB_s=%.3f tok_s=%.0f\n",
               argv[1], argv[2], n, nid, t_load, best, n / 1e6 / best, nid / best);
    }
    free(ids);
    free(text);
    st_tokenizer_free(tok);
    return e;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    st_err e = run(argc, argv);
    if (e) st_error_print(stderr, 0);
    MPI_Finalize();
    return e ? 1 : 0;
}
