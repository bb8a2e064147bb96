/* checkpoint.c: parallel HDF5 checkpoints, one file per save, global view.
 *
 * The file layout and the checksum are described in checkpoint.h. Here:
 *   slices       which elements of a global tensor a rank holds, as HDF5
 *                hyperslabs, and their checksum terms
 *   groups       the model's parameters and moments and each extra set's
 *                parameters and moments, as "tensor groups": one HDF5
 *                group, a layout, and the part of a flat buffer a rank holds
 *   save         write PATH.tmp collectively, then rename (atomic)
 *   load         read any grid's slices back, verifying shapes and checksums
 *   verify       check a whole file with the reading spread over a
 *                communicator: find_latest and inspect
 *
 * Every step that one rank alone could fail ends in st_agree, so all ranks
 * leave each function together with the same status and nobody is left
 * waiting in a collective HDF5 call.
 */
#include "io/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "core/rng.h"
#include "io/h5util.h"

/* Elements per rank per H5Dwrite/H5Dread call: keeps every MPI-IO request
 * below 2 GiB, where some MPI-IO layers still count bytes in an int. */
#define XFER_CAP ((int64_t)1 << 28)
/* Elements per read when verifying a whole file. */
#define VERIFY_BLOCK ((int64_t)1 << 20)
/* Limits on what a (possibly hostile) file may make us allocate. */
#define MAX_SHORT_STR 4096
#define MAX_RECIPE ((size_t)64 << 20)
#define MAX_TOKENIZER ((size_t)1 << 30)
#define MAX_SET_TENSORS 65536          /* tensors per set group a file may list */
#define MAX_DIM ((int64_t)1 << 40)     /* any dimension of a tensor found in a file */
/* the model's parameters and two moments, then three per set */
#define MAX_TGROUPS (3 + 3 * ST_CKPT_MAX_SETS)
/* Room for a group path ("optim/<set>/m") and for "/<group path>/<tensor name>". */
#define GPATH_CAP 160
#define WHAT_CAP (GPATH_CAP + 100)

/* ---- slices and checksums ------------------------------------------------ */

/* The per-element terms of the checksum (see checkpoint.h). */
#define CHECKSUM_LOOP(x, n, first, s)                                  \
    do {                                                               \
        _Pragma("omp simd reduction(+ : s)")                           \
        for (size_t k_ = 0; k_ < (n); k_++) {                          \
            uint32_t bits_;                                            \
            memcpy(&bits_, &(x)[k_], sizeof bits_);                    \
            s += st_splitmix64((uint64_t)bits_ ^ st_splitmix64((first) + k_)); \
        }                                                              \
    } while (0)

static uint64_t checksum_plain(const float *x, size_t n, uint64_t first)
{
    uint64_t s = 0;
    CHECKSUM_LOOP(x, n, first, s);
    return s;
}

/* The checksum was a third of a save's time: with AVX-512DQ (64-bit vector
 * multiplies) the same loop runs at twice the scalar rate. The sum is the
 * same on either path (integer arithmetic). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define CHECKSUM_AVX512 1
__attribute__((target("avx512f,avx512dq"))) static uint64_t checksum_avx512(const float *x, size_t n,
                                                                            uint64_t first)
{
    uint64_t s = 0;
    CHECKSUM_LOOP(x, n, first, s);
    return s;
}
#endif

static uint64_t checksum_serial(const float *x, size_t n, uint64_t first)
{
#ifdef CHECKSUM_AVX512
    if (__builtin_cpu_supports("avx512dq")) return checksum_avx512(x, n, first);
#endif
    return checksum_plain(x, n, first);
}

uint64_t st_ckpt_checksum_run(const float *x, size_t n, uint64_t first)
{
    const size_t chunk = 1 << 16;
    const size_t nchunks = (n + chunk - 1) / chunk;
    uint64_t s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (nchunks > 1)
    for (size_t c = 0; c < nchunks; c++) {
        size_t k = c * chunk, m = n - k < chunk ? n - k : chunk;
        s += checksum_serial(x + k, m, first + k);
    }
    return s;
}

/* Elements of t this rank really holds (vocab padding rows excluded). */
static int64_t real_numel(const st_tensor *t) { return t->lshape[0] * t->lshape[1]; }
static int64_t global_numel(const st_tensor *t) { return t->shape[0] * t->shape[1]; }

/* Replicated tensors are held by every tp rank; only tp rank 0's copy is
 * written and counted in checksums, so each element counts once. */
static int tp_owner(const st_tensor *t, int tp_rank) { return t->split != ST_SPLIT_NONE || tp_rank == 0; }

/* A "piece" is a local flat range [a, b) of t's real elements: local element
 * k sits at row k / W, column k % W of the slice (W = lshape[1]), i.e. at
 * global (start[0] + k / W, start[1] + k % W). */

/* Checksum terms of the piece; x points at local element a. */
static uint64_t piece_checksum(const st_tensor *t, const float *x, int64_t a, int64_t b)
{
    if (b <= a) return 0;
    const int64_t W = t->lshape[1];
    /* whole rows (every split but ROW): the piece is one run of global indices */
    if (W == t->shape[1]) return st_ckpt_checksum_run(x, (size_t)(b - a), (uint64_t)(t->start[0] * W + a));
    uint64_t s = 0;
    /* a ROW slice: each of its rows is a run of consecutive global indices */
#pragma omp parallel for reduction(+ : s) schedule(static) if (b - a > (1 << 16))
    for (int64_t r = a / W; r <= (b - 1) / W; r++) {
        int64_t c0 = r == a / W ? a % W : 0;
        int64_t c1 = r == (b - 1) / W ? (b - 1) % W + 1 : W;
        uint64_t g = (uint64_t)((t->start[0] + r) * t->shape[1] + t->start[1] + c0);
        s += checksum_serial(x + (r * W + c0 - a), (size_t)(c1 - c0), g);
    }
    return s;
}

/* Sum of the integers [g, g + n) mod 2^64. */
static uint64_t run_index_sum(uint64_t g, uint64_t n)
{
    uint64_t tri = n % 2 ? n * ((n - 1) / 2) : (n / 2) * (n - 1);
    return n * g + tri;
}

/* Sum of the global indices of the piece's elements mod 2^64: with the
 * element count, what tells that the ranks' slices cover a tensor once
 * (overlapping slices of the right total size change it). */
static uint64_t piece_index_sum(const st_tensor *t, int64_t a, int64_t b)
{
    if (b <= a) return 0;
    const int64_t W = t->lshape[1];
    if (W == t->shape[1]) return run_index_sum((uint64_t)(t->start[0] * W + a), (uint64_t)(b - a));
    uint64_t s = 0;
    for (int64_t r = a / W; r <= (b - 1) / W; r++) {
        int64_t c0 = r == a / W ? a % W : 0, c1 = r == (b - 1) / W ? (b - 1) % W + 1 : W;
        s += run_index_sum((uint64_t)((t->start[0] + r) * t->shape[1] + t->start[1] + c0), (uint64_t)(c1 - c0));
    }
    return s;
}

/* Select the piece in fspace (the global dataspace of t). A flat range cuts
 * the slice into at most a partial first row, whole rows and a partial last
 * row; HDF5 visits the union in row-major order, which is the local order. */
static st_err select_piece(hid_t fspace, const st_tensor *t, int64_t a, int64_t b)
{
    if (b <= a) {
        if (H5Sselect_none(fspace) < 0) ST_H5_FAIL("cannot clear a selection");
        return ST_OK;
    }
    if (t->ndim == 1) {
        hsize_t st = (hsize_t)(t->start[0] + a), cnt = (hsize_t)(b - a);
        if (H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &st, NULL, &cnt, NULL) < 0)
            ST_H5_FAIL("cannot select elements [%lld, %lld) of %s", (long long)a, (long long)b, t->name);
        return ST_OK;
    }
    const int64_t W = t->lshape[1];
    int64_t r0 = a / W, c0 = a % W, r1 = b / W, c1 = b % W;
    int64_t blocks[3][4]; /* row, col, rows, cols */
    int nb = 0;
    if (r0 == r1) {
        blocks[nb][0] = r0, blocks[nb][1] = c0, blocks[nb][2] = 1, blocks[nb][3] = c1 - c0, nb++;
    } else {
        if (c0) blocks[nb][0] = r0, blocks[nb][1] = c0, blocks[nb][2] = 1, blocks[nb][3] = W - c0, nb++, r0++;
        if (r1 > r0) blocks[nb][0] = r0, blocks[nb][1] = 0, blocks[nb][2] = r1 - r0, blocks[nb][3] = W, nb++;
        if (c1) blocks[nb][0] = r1, blocks[nb][1] = 0, blocks[nb][2] = 1, blocks[nb][3] = c1, nb++;
    }
    for (int i = 0; i < nb; i++) {
        hsize_t st[2] = {(hsize_t)(t->start[0] + blocks[i][0]), (hsize_t)(t->start[1] + blocks[i][1])};
        hsize_t cnt[2] = {(hsize_t)blocks[i][2], (hsize_t)blocks[i][3]};
        if (H5Sselect_hyperslab(fspace, i ? H5S_SELECT_OR : H5S_SELECT_SET, st, NULL, cnt, NULL) < 0)
            ST_H5_FAIL("cannot select elements [%lld, %lld) of %s", (long long)a, (long long)b, t->name);
    }
    return ST_OK;
}

/* Collective transfer of the piece [a, b) between buf (local element a) and
 * dataset d. Every rank calls it, with an empty piece if it has nothing; the
 * number of calls depends only on the global size, so it matches everywhere. */
static st_err xfer_piece(hid_t d, const st_tensor *t, int64_t a, int64_t b, float *buf, hid_t dxpl,
                         int write, const char *path, const char *what)
{
    st_err e = ST_OK;
    hid_t fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
    const int64_t calls = (global_numel(t) + XFER_CAP - 1) / XFER_CAP, n = b > a ? b - a : 0;
    if ((fspace = H5Dget_space(d)) < 0) ST_H5_GOTO(e, done, "%s: cannot get the dataspace of %s", path, what);
    for (int64_t k = 0; k < calls; k++) {
        int64_t x = a + n * k / calls, y = a + n * (k + 1) / calls;
        ST_TRY_GOTO(e, select_piece(fspace, t, x, y), done);
        hsize_t cnt = (hsize_t)(y > x ? y - x : 1);
        if ((mspace = H5Screate_simple(1, &cnt, NULL)) < 0 || (y <= x && H5Sselect_none(mspace) < 0))
            ST_H5_GOTO(e, done, "cannot create a memory dataspace for %s", what);
        float *p = y > x ? buf + (x - a) : buf;
        herr_t rc = write ? H5Dwrite(d, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, p)
                          : H5Dread(d, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, p);
        if (rc < 0) ST_H5_GOTO(e, done, "%s: cannot %s %s", path, write ? "write" : "read", what);
        st_h5_close(&mspace);
    }
done:
    st_h5_close(&mspace);
    st_h5_close(&fspace);
    return e;
}

/* The real elements of t inside the optimizer range [ob, oe) of the flat
 * buffer, as a piece [*a, *b) (empty when they do not meet). */
static void opt_piece(const st_tensor *t, size_t ob, size_t oe, int64_t *a, int64_t *b)
{
    int64_t lo = (int64_t)t->offset, hi = lo + real_numel(t);
    int64_t x = lo > (int64_t)ob ? lo : (int64_t)ob, y = hi < (int64_t)oe ? hi : (int64_t)oe;
    *a = *b = 0;
    if (y > x) *a = x - lo, *b = y - lo;
}

static const char *shape_str(int ndim, const int64_t *d, char *buf, size_t cap)
{
    if (ndim == 1) snprintf(buf, cap, "[%lld]", (long long)d[0]);
    else snprintf(buf, cap, "[%lld, %lld]", (long long)d[0], (long long)d[1]);
    return buf;
}

/* ---- tensor groups ---------------------------------------------------------- */

/* One HDF5 group of float32 tensors described by a layout, and the part of a
 * flat buffer of that layout this rank holds. */
typedef struct {
    char path[GPATH_CAP];       /* "model", "optim/m", "head", "optim/head/v" */
    const st_layout *lay;
    float *buf;                 /* flat elements [ob, oe) of the layout's buffer; buf[0] is ob */
    size_t ob, oe;
    int zero;                   /* 1: the dp ranks hold disjoint ranges (ZeRO-1 moments) and each
                                   writes its own; 0: every dp group holds [ob, oe) whole and the
                                   dp rank 0 group writes it */
    const char *const *skip;    /* names left as they are on load (the model's groups only) */
} tgroup;

enum { W_PARAMS = 0, W_M, W_V };

/* The model's parameters (which = W_PARAMS) or one of its moments. */
static tgroup model_group(const st_ckpt_tensors *t, int which, const char *const *skip)
{
    tgroup gr = {.lay = t->lay, .skip = skip};
    if (which == W_PARAMS) {
        snprintf(gr.path, sizeof gr.path, "model");
        gr.buf = t->params, gr.ob = 0, gr.oe = t->lay->numel;
    } else {
        snprintf(gr.path, sizeof gr.path, "optim/%s", which == W_M ? "m" : "v");
        gr.buf = which == W_M ? t->m : t->v, gr.ob = t->opt_begin, gr.oe = t->opt_end, gr.zero = 1;
    }
    return gr;
}

/* A set's parameters or one of its moments: whole on every dp group. */
static tgroup set_group(const st_ckpt_set *s, int which)
{
    tgroup gr = {.lay = s->lay, .ob = 0, .oe = s->lay->numel};
    if (which == W_PARAMS) snprintf(gr.path, sizeof gr.path, "%s", s->group);
    else snprintf(gr.path, sizeof gr.path, "optim/%s/%s", s->group, which == W_M ? "m" : "v");
    gr.buf = which == W_PARAMS ? s->params : which == W_M ? s->m : s->v;
    return gr;
}

/* This rank's piece [*a, *b) of tensor ti in group gr and where it sits in gr->buf. */
static float *group_piece(const tgroup *gr, const st_tensor *ti, int64_t *a, int64_t *b)
{
    opt_piece(ti, gr->ob, gr->oe, a, b);
    return *b > *a ? gr->buf + (ti->offset + (size_t)*a - gr->ob) : gr->buf;
}

/* Does this rank write its piece of ti in gr? Each element is written once. */
static int group_writer(const tgroup *gr, const st_tensor *ti, const st_grid *g)
{
    return tp_owner(ti, g->tp_rank) && (gr->zero || g->dp_rank == 0);
}

/* A set group name: 1..ST_CKPT_MAX_SET_NAME of [A-Za-z0-9_-], not a name the
 * file uses for anything else. */
static int valid_set_name(const char *s)
{
    static const char *reserved[] = {"model", "optim", "config", "tokenizer", "train"};
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > ST_CKPT_MAX_SET_NAME) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (!strcmp(s, reserved[i])) return 0;
    return 1;
}

/* A hand-built layout (a set's) must describe slices inside its own buffer. */
static st_err check_set_layout(const st_ckpt_set *s, const char *path)
{
    const st_layout *lay = s->lay;
    if (lay->n_tensors < 0 || (lay->n_tensors > 0 && !lay->tensors))
        ST_FAIL(ST_ERR_ARG, "%s: set '%s' has a layout without a tensor table", path, s->group);
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i];
        const char *nm = t->name;
        if (!memchr(nm, '\0', sizeof t->name) || !nm[0] || strchr(nm, '/') || !strcmp(nm, ".") || !strcmp(nm, ".."))
            ST_FAIL(ST_ERR_ARG, "%s: set '%s' tensor %d has an empty or invalid name (no '/', not '.')", path,
                    s->group, i);
        int ok = (t->ndim == 1 || t->ndim == 2) && (t->ndim == 2 || (t->shape[1] == 1 && t->lshape[1] == 1 &&
                                                                      t->start[1] == 0));
        for (int d = 0; d < 2 && ok; d++)
            ok = t->shape[d] >= 0 && t->shape[d] <= MAX_DIM && t->lshape[d] >= 0 && t->start[d] >= 0 &&
                 t->start[d] + t->lshape[d] <= t->shape[d];
        ok = ok && (uint64_t)real_numel(t) <= t->numel && t->offset <= lay->numel && t->numel <= lay->numel - t->offset;
        if (!ok)
            ST_FAIL(ST_ERR_ARG, "%s: set '%s' tensor %s: its shape, slice or offset is inconsistent "
                    "(ndim %d, shape [%lld, %lld], slice [%lld, %lld] at [%lld, %lld], offset %zu + %zu of %zu)",
                    path, s->group, nm, t->ndim, (long long)t->shape[0], (long long)t->shape[1],
                    (long long)t->lshape[0], (long long)t->lshape[1], (long long)t->start[0],
                    (long long)t->start[1], t->offset, t->numel, lay->numel);
        for (int k = 0; k < i; k++)
            if (!strcmp(lay->tensors[k].name, nm))
                ST_FAIL(ST_ERR_ARG, "%s: set '%s' has two tensors named %s", path, s->group, nm);
    }
    return ST_OK;
}

/* ---- small shared pieces ------------------------------------------------- */

static int64_t layout_bytes(const st_layout *lay)
{
    int64_t n = 0;
    for (int i = 0; i < lay->n_tensors; i++) n += global_numel(&lay->tensors[i]);
    return n * (int64_t)sizeof(float);
}

int64_t st_ckpt_tensor_bytes(const st_ckpt_tensors *t, int flags)
{
    const int moments = !(flags & ST_CKPT_WEIGHTS_ONLY);
    int64_t n = layout_bytes(t->lay) * (moments && t->m ? 3 : 1);
    for (int i = 0; i < t->n_sets; i++)
        n += layout_bytes(t->sets[i].lay) * (moments && t->sets[i].m ? 3 : 1);
    return n;
}

int st_ckpt_skipped(const char *name, const char *const *skip)
{
    for (; skip && *skip; skip++) {
        size_t n = strlen(*skip);
        if (n && (*skip)[n - 1] == '*') {
            if (!strncmp(name, *skip, n - 1)) return 1;
        } else if (!strcmp(name, *skip)) {
            return 1;
        }
    }
    return 0;
}

/* The first line of the current error message (the part a user reads). */
static void error_headline(char *buf, size_t cap)
{
    const char *m = st_error_message(), *nl = strstr(m, "\n    at ");
    size_t n = nl ? (size_t)(nl - m) : strlen(m);
    if (n >= cap) n = cap - 1;
    memcpy(buf, m, n);
    buf[n] = '\0';
}

/* Is v the same on every rank of comm? */
static st_err same_everywhere(MPI_Comm comm, uint64_t v, int *same)
{
    uint64_t x[2] = {v, ~v};
    ST_TRY(st_allreduce(comm, x, 2, ST_M_U64, ST_OP_MAX));
    *same = x[0] == ~x[1];
    return ST_OK;
}

static uint64_t config_hash(const st_config *c)
{
    char s[512];
    snprintf(s, sizeof s, "%d %d %d %d %d %d %d %d %a %a %d %d", (int)c->family, c->n_layer, c->d_model,
             c->n_head, c->n_kv_head, c->d_ff, c->vocab_size, c->max_seq, (double)c->norm_eps,
             (double)c->rope_theta, c->tied_embeddings, c->qkv_bias);
    return st_hash_str(s);
}

/* The grid, the layout and the buffers belong together, identically on every rank. */
static st_err check_tensors_arg(const st_grid *g, const st_ckpt_tensors *t, const char *path)
{
    if (!t || !t->lay || !t->params)
        ST_FAIL(ST_ERR_ARG, "%s: no layout or parameter buffer given", path);
    if (t->lay->tp_size != g->tp_size || t->lay->tp_rank != g->tp_rank)
        ST_FAIL(ST_ERR_ARG, "%s: layout is for tp rank %d of %d but this rank is tp rank %d of %d",
                path, t->lay->tp_rank, t->lay->tp_size, g->tp_rank, g->tp_size);
    if ((t->m == NULL) != (t->v == NULL))
        ST_FAIL(ST_ERR_ARG, "%s: give both AdamW moments m and v, or neither", path);
    if (t->m && (t->opt_begin > t->opt_end || t->opt_end > t->lay->numel))
        ST_FAIL(ST_ERR_ARG, "%s: optimizer range [%zu, %zu) is not inside the %zu-float buffer",
                path, t->opt_begin, t->opt_end, t->lay->numel);
    if (t->n_sets < 0 || t->n_sets > ST_CKPT_MAX_SETS)
        ST_FAIL(ST_ERR_ARG, "%s: %d parameter sets; at most %d (ST_CKPT_MAX_SETS)", path, t->n_sets, ST_CKPT_MAX_SETS);
    for (int i = 0; i < t->n_sets; i++) {
        const st_ckpt_set *s = &t->sets[i];
        if (!valid_set_name(s->group))
            ST_FAIL(ST_ERR_ARG, "%s: parameter set %d has group name '%.40s'; expected 1 to %d of [A-Za-z0-9_-], "
                    "not model, optim, config, tokenizer or train", path, i, s->group ? s->group : "(null)",
                    ST_CKPT_MAX_SET_NAME);
        for (int k = 0; k < i; k++)
            if (!strcmp(t->sets[k].group, s->group))
                ST_FAIL(ST_ERR_ARG, "%s: two parameter sets are named '%s'", path, s->group);
        if (!s->lay || !s->params) ST_FAIL(ST_ERR_ARG, "%s: set '%s' has no layout or parameter buffer", path, s->group);
        if (s->lay->tp_size != g->tp_size || s->lay->tp_rank != g->tp_rank)
            ST_FAIL(ST_ERR_ARG, "%s: set '%s' layout is for tp rank %d of %d but this rank is tp rank %d of %d",
                    path, s->group, s->lay->tp_rank, s->lay->tp_size, g->tp_rank, g->tp_size);
        if ((s->m == NULL) != (s->v == NULL))
            ST_FAIL(ST_ERR_ARG, "%s: set '%s': give both AdamW moments m and v, or neither", path, s->group);
        ST_TRY(check_set_layout(s, path));
    }
    return ST_OK;
}

/* The sets' structure (names, tensor tables, which have moments). */
static uint64_t sets_hash(const st_ckpt_tensors *t)
{
    uint64_t h = st_splitmix64((uint64_t)t->n_sets);
    for (int i = 0; i < t->n_sets; i++) {
        const st_ckpt_set *s = &t->sets[i];
        h = st_splitmix64(h ^ st_hash_str(s->group) ^ (s->m != NULL));
        for (int k = 0; k < s->lay->n_tensors; k++) {
            const st_tensor *ti = &s->lay->tensors[k];
            h = st_splitmix64(h ^ st_hash_str(ti->name));
            h = st_splitmix64(h ^ (uint64_t)ti->shape[0] ^ ((uint64_t)ti->shape[1] << 32) ^ ((uint64_t)ti->split << 60));
        }
    }
    return h;
}

/* Everything that decides the sequence of collective calls is the same on
 * every rank: the model, whether moments are given, the sets, the flags. */
static st_err check_same_model(const st_grid *g, const st_ckpt_tensors *t, int flags, const char *path)
{
    int same1, same2, same3;
    uint64_t h = config_hash(&t->lay->cfg) ^ st_splitmix64((uint64_t)t->lay->n_tensors);
    ST_TRY(same_everywhere(g->world, h, &same1));
    ST_TRY(same_everywhere(g->world, t->m != NULL, &same2));
    ST_TRY(same_everywhere(g->world, sets_hash(t) ^ st_splitmix64((uint64_t)flags), &same3));
    if (!same1) ST_FAIL(ST_ERR_ARG, "%s: ranks disagree on the model config", path);
    if (!same2) ST_FAIL(ST_ERR_ARG, "%s: some ranks pass optimizer moments and others do not", path);
    if (!same3) ST_FAIL(ST_ERR_ARG, "%s: ranks disagree on the parameter sets (groups, tensor tables, moments) "
                        "or the flags", path);
    return ST_OK;
}

static st_err hook_ms(const char *name, long *out)
{
    const char *env = getenv(name);
    *out = -1;
    if (!env || !*env) return ST_OK;
    char *end;
    errno = 0;
    long v = strtol(env, &end, 10);
    if (errno || *end || v < 0) ST_FAIL(ST_ERR_ARG, "%s='%s' is not a non-negative integer", name, env);
    *out = v;
    return ST_OK;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* The phases of a save, in order, where the pause test hook can stop. */
static const char *const pause_phases[] = {"tensor", "checksums", "closed", "renamed", "latest", "prune"};

static st_err check_pause_at(void)
{
    const char *at = getenv("SHARDTUNE_CKPT_TEST_PAUSE_AT");
    if (!at || !*at) return ST_OK;
    for (size_t i = 0; i < sizeof pause_phases / sizeof pause_phases[0]; i++)
        if (!strcmp(at, pause_phases[i])) return ST_OK;
    ST_FAIL(ST_ERR_ARG, "SHARDTUNE_CKPT_TEST_PAUSE_AT='%s': expected tensor, checksums, closed, renamed, latest or "
            "prune", at);
}

/* Test hook: sleep ms at this phase when SHARDTUNE_CKPT_TEST_PAUSE_AT names
 * it (unset: "tensor"), saying so on stderr (say: one rank) so that a test
 * knows when to kill the job. */
static void test_pause(const char *phase, long ms, const char *path, int say)
{
    const char *at = getenv("SHARDTUNE_CKPT_TEST_PAUSE_AT");
    if (ms <= 0 || strcmp(at && *at ? at : "tensor", phase)) return;
    if (say) {
        fprintf(stderr, "shardtune: test hook: pausing %ld ms at '%s' of %s\n", ms, phase, path);
        fflush(stderr);
    }
    sleep_ms(ms);
}

/* The pause of the phases only rank 0 goes through (after the file is written). */
static long rank0_pause_ms(void)
{
    long ms = -1;
    if (hook_ms("SHARDTUNE_CKPT_TEST_PAUSE_MS", &ms)) st_error_clear(); /* checked when the save began */
    return ms;
}

/* ---- format checks --------------------------------------------------------- */

static st_err check_header_sum(hid_t file, const char *path);

static st_err check_format(hid_t file, const char *path)
{
    char *fmt = NULL;
    int version;
    if (!st_h5_has_attr(file, "format"))
        ST_FAIL(ST_ERR_FORMAT, "%s is not a shardtune checkpoint: its root group has no 'format' attribute", path);
    ST_TRY(st_h5_attr_read_str(file, "format", MAX_SHORT_STR, &fmt));
    int ok = !strcmp(fmt, ST_CKPT_FORMAT);
    if (!ok) {
        st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                     "%s is not a shardtune checkpoint: format is '%.64s', expected '%s'", path, fmt, ST_CKPT_FORMAT);
        free(fmt);
        return ST_ERR_FORMAT;
    }
    free(fmt);
    ST_TRY(st_h5_attr_read_int(file, "version", INT_MIN, INT_MAX, &version));
    if (version != ST_CKPT_VERSION)
        ST_FAIL(ST_ERR_FORMAT, "%s is checkpoint format version %d; this shardtune reads version %d%s",
                path, version, ST_CKPT_VERSION, version > ST_CKPT_VERSION ? " (upgrade shardtune)" : "");
    return check_header_sum(file, path);
}

static st_err read_config_attrs(hid_t file, const char *path, st_config *cfg)
{
    st_err e = ST_OK;
    char *fam = NULL;
    memset(cfg, 0, sizeof *cfg);
    if (!st_h5_has_link(file, "config"))
        ST_FAIL(ST_ERR_FORMAT, "%s has no /config group", path);
    hid_t g = H5Gopen2(file, "config", H5P_DEFAULT);
    if (g < 0) ST_H5_FAIL("%s: cannot open /config", path);
    ST_TRY_GOTO(e, st_h5_attr_read_str(g, "family", MAX_SHORT_STR, &fam), done);
    if (st_family_parse(fam, &cfg->family))
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: /config family '%.64s' is neither gpt2 nor llama", path, fam);
    /* bounds far beyond any real model, so a hostile file cannot make the
     * layout (and everything sized from it) absurdly large */
    struct { const char *name; int *v; int hi; } ints[] = {
        {"n_layer", &cfg->n_layer, 1 << 16}, {"d_model", &cfg->d_model, 1 << 20},
        {"n_head", &cfg->n_head, 1 << 16}, {"n_kv_head", &cfg->n_kv_head, 1 << 16},
        {"d_ff", &cfg->d_ff, 1 << 22}, {"vocab_size", &cfg->vocab_size, 1 << 26},
        {"max_seq", &cfg->max_seq, 1 << 26}, {"tied_embeddings", &cfg->tied_embeddings, 1},
        {"qkv_bias", &cfg->qkv_bias, 1}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        ST_TRY_GOTO(e, st_h5_attr_read_int(g, ints[i].name, 0, ints[i].hi, ints[i].v), done);
    ST_TRY_GOTO(e, st_h5_attr_read_f32(g, "norm_eps", &cfg->norm_eps), done);
    ST_TRY_GOTO(e, st_h5_attr_read_f32(g, "rope_theta", &cfg->rope_theta), done);
    if (st_config_validate(cfg, 1)) {
        char why[512];
        error_headline(why, sizeof why);
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: /config is not a valid model: %s", path, why);
    }
done:
    free(fam);
    H5Gclose(g);
    return e;
}

static st_err write_config_attrs(hid_t file, const st_config *c)
{
    hid_t g = H5Gcreate2(file, "config", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) ST_H5_FAIL("cannot create /config");
    st_err e = ST_OK;
    ST_TRY_GOTO(e, st_h5_attr_write_str(g, "family", st_family_name(c->family)), done);
    struct { const char *name; int v; } ints[] = {
        {"n_layer", c->n_layer}, {"d_model", c->d_model}, {"n_head", c->n_head},
        {"n_kv_head", c->n_kv_head}, {"d_ff", c->d_ff}, {"vocab_size", c->vocab_size},
        {"max_seq", c->max_seq}, {"tied_embeddings", c->tied_embeddings}, {"qkv_bias", c->qkv_bias}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        ST_TRY_GOTO(e, st_h5_attr_write_i32(g, ints[i].name, ints[i].v), done);
    ST_TRY_GOTO(e, st_h5_attr_write_f32(g, "norm_eps", c->norm_eps), done);
    ST_TRY_GOTO(e, st_h5_attr_write_f32(g, "rope_theta", c->rope_theta), done);
done:
    H5Gclose(g);
    return e;
}

/* Open tensor t in group gname of file, checking it is float32 at t's global shape. */
static st_err open_tensor(hid_t grp, const char *gname, const st_tensor *t, const char *path, hid_t *out)
{
    st_err e = ST_OK;
    char want[64], have[64];
    hid_t d = H5I_INVALID_HID, type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    *out = H5I_INVALID_HID;
    shape_str(t->ndim, t->shape, want, sizeof want);
    if (!st_h5_has_link(grp, t->name))
        ST_FAIL(ST_ERR_FORMAT, "%s has no tensor /%s/%s (expected shape %s)", path, gname, t->name, want);
    if ((d = H5Dopen2(grp, t->name, H5P_DEFAULT)) < 0 || (type = H5Dget_type(d)) < 0 || (space = H5Dget_space(d)) < 0)
        ST_H5_GOTO(e, done, "%s: cannot open tensor /%s/%s", path, gname, t->name);
    if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: tensor /%s/%s is not float32", path, gname, t->name);
    hsize_t dims[H5S_MAX_RANK];
    int nd = H5Sget_simple_extent_ndims(space);
    if (nd < 0 || nd > H5S_MAX_RANK || H5Sget_simple_extent_dims(space, dims, NULL) < 0)
        ST_H5_GOTO(e, done, "%s: cannot read the shape of /%s/%s", path, gname, t->name);
    int64_t found[2] = {nd > 0 ? (int64_t)dims[0] : 0, nd > 1 ? (int64_t)dims[1] : 1};
    if (nd != t->ndim || found[0] != t->shape[0] || found[1] != t->shape[1]) {
        if (nd <= 2) shape_str(nd == 2 ? 2 : 1, found, have, sizeof have);
        else snprintf(have, sizeof have, "a %d-D array", nd);
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: tensor /%s/%s has shape %s, expected %s "
                     "(the checkpoint is of a different model; compare configs with 'shardtune inspect')",
                     path, gname, t->name, have, want);
    }
    *out = d;
    d = H5I_INVALID_HID;
done:
    st_h5_close(&space);
    st_h5_close(&type);
    st_h5_close(&d);
    return e;
}

/* ---- save ------------------------------------------------------------------ */

/* What world rank 0 decides and every rank writes identically. */
typedef struct {
    int64_t step, tokens_seen, data_epoch, data_cursor, adam_step;
    int64_t set_step[ST_CKPT_MAX_SETS];
    uint64_t rng[4], data_seed, tok_n;
    int64_t total_steps;
    float beta1, beta2, eps, weight_decay;
    int has_train, has_tok;
    long pause_ms, fail_after;
} save_meta;

typedef struct {
    save_meta meta;
    char *created, *git, *recipe, *method, *tok_kind;
    char *set_meta[ST_CKPT_MAX_SETS];
    char sets[ST_CKPT_MAX_SETS * (ST_CKPT_MAX_SET_NAME + 1) + 1]; /* "head,lora" */
    const uint8_t *tok_blob;    /* world rank 0 only */
    int has_optim;              /* the model's moments */
    int any_optim;              /* the model's or a set's moments: /optim exists */
    const st_ckpt_tensors *t;
    tgroup groups[MAX_TGROUPS]; /* in file order */
    int n_groups;
    uint64_t *sums[MAX_TGROUPS];/* per tensor of each group; sums[0] owns the allocation */
    int n_sums;                 /* tensors in all groups */
} save_job;

static void save_job_free(save_job *j)
{
    free(j->created);
    free(j->git);
    free(j->recipe);
    free(j->method);
    free(j->tok_kind);
    for (int i = 0; i < ST_CKPT_MAX_SETS; i++) free(j->set_meta[i]);
    free(j->sums[0]);
}

/* The groups of t in file order: the model, its moments, then each set and its moments. */
static void save_job_groups(save_job *j, const st_ckpt_tensors *t)
{
    j->t = t;
    j->n_groups = 0;
    j->groups[j->n_groups++] = model_group(t, W_PARAMS, NULL);
    if (t->m) {
        j->groups[j->n_groups++] = model_group(t, W_M, NULL);
        j->groups[j->n_groups++] = model_group(t, W_V, NULL);
    }
    j->has_optim = j->any_optim = t->m != NULL;
    j->sets[0] = '\0';
    for (int i = 0; i < t->n_sets; i++) {
        const st_ckpt_set *s = &t->sets[i];
        j->groups[j->n_groups++] = set_group(s, W_PARAMS);
        if (s->m) {
            j->groups[j->n_groups++] = set_group(s, W_M);
            j->groups[j->n_groups++] = set_group(s, W_V);
            j->any_optim = 1;
        }
        size_t at = strlen(j->sets);
        snprintf(j->sets + at, sizeof j->sets - at, "%s%s", i ? "," : "", s->group);
    }
}

/* Collective; fails only where every rank fails (MPI, memory agreed in st_bcast_str). */
static st_err save_job_init(save_job *j, const st_grid *g, const st_ckpt_tensors *t, const st_train_state *s,
                            const char *tok_kind, const uint8_t *tok_blob, size_t tok_n, long pause_ms,
                            long fail_after)
{
    const int root = g->world_rank == 0;
    save_meta *m = &j->meta;
    char created[64] = "", *git = NULL;
    if (root) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);
        git = getenv("SHARDTUNE_GIT_REV");
        if (!git || !*git) git = "unknown";
        if (s) {
            m->step = s->step, m->tokens_seen = s->tokens_seen;
            m->data_epoch = s->data_epoch, m->data_cursor = s->data_cursor, m->data_seed = s->data_seed;
            m->total_steps = s->total_steps;
            memcpy(m->rng, s->rng, sizeof m->rng);
            m->has_train = 1;
        }
        m->adam_step = t->adam_step, m->beta1 = t->beta1, m->beta2 = t->beta2;
        m->eps = t->eps, m->weight_decay = t->weight_decay;
        for (int i = 0; i < t->n_sets; i++) m->set_step[i] = t->sets[i].adam_step;
        m->has_tok = tok_kind != NULL;
        m->tok_n = tok_kind ? tok_n : 0;
        j->tok_blob = tok_blob;
    }
    m->pause_ms = pause_ms, m->fail_after = fail_after;
    ST_TRY(st_bcast(g->world, m, (int64_t)sizeof *m, ST_M_U8, 0));
    ST_TRY(st_bcast_str(g->world, 0, created, &j->created));
    ST_TRY(st_bcast_str(g->world, 0, git, &j->git));
    ST_TRY(st_bcast_str(g->world, 0, root && s ? s->recipe : NULL, &j->recipe));
    ST_TRY(st_bcast_str(g->world, 0, root && s ? s->method : NULL, &j->method));
    ST_TRY(st_bcast_str(g->world, 0, root ? tok_kind : NULL, &j->tok_kind));
    for (int i = 0; i < t->n_sets; i++)
        ST_TRY(st_bcast_str(g->world, 0, root ? t->sets[i].meta : NULL, &j->set_meta[i]));
    save_job_groups(j, t);
    return ST_OK;
}

/* Room for every tensor's checksum, and the check that the slices the ranks
 * will write cover every tensor once (element counts and sums of global
 * indices add up); no pass over the data. The sums themselves are taken
 * while writing (write_tensors). */
static st_err save_coverage(save_job *j, const st_grid *g, const char *path)
{
    int total = 0;
    for (int gi = 0; gi < j->n_groups; gi++) total += j->groups[gi].lay->n_tensors;
    uint64_t *sums = calloc((size_t)total + 1, sizeof *sums);
    /* per tensor: element count, index sum; then the same reduced */
    uint64_t *counts = calloc(4 * (size_t)total + 1, sizeof *counts), *all = counts ? counts + 2 * total : NULL;
    st_err e = ST_OK;
    j->sums[0] = sums;
    j->n_sums = total;
    if (!sums || !counts) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for checksums");
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    for (int gi = 0, at = 0; gi < j->n_groups; at += j->groups[gi].lay->n_tensors, gi++) {
        const tgroup *gr = &j->groups[gi];
        j->sums[gi] = sums + at;
        for (int i = 0; i < gr->lay->n_tensors; i++) {
            const st_tensor *ti = &gr->lay->tensors[i];
            int64_t a, b;
            if (!group_writer(gr, ti, g)) continue;
            (void)group_piece(gr, ti, &a, &b);
            if (b <= a) continue;
            counts[2 * (at + i)] = (uint64_t)(b - a);
            counts[2 * (at + i) + 1] = piece_index_sum(ti, a, b);
        }
    }
    memcpy(all, counts, sizeof *all * 2 * (size_t)total);
    ST_TRY_GOTO(e, st_allreduce(g->world, all, 2 * total, ST_M_U64, ST_OP_SUM), done);
    for (int gi = 0, at = 0; gi < j->n_groups; at += j->groups[gi].lay->n_tensors, gi++) {
        const tgroup *gr = &j->groups[gi];
        for (int i = 0; i < gr->lay->n_tensors; i++) {
            const st_tensor *ti = &gr->lay->tensors[i];
            const uint64_t n = (uint64_t)global_numel(ti);
            if (all[2 * (at + i)] != n || all[2 * (at + i) + 1] != run_index_sum(0, n))
                ST_FAIL_GOTO(e, done, ST_ERR_ARG,
                             "%s: the ranks' slices hold %llu elements of the %llu of /%s/%s%s; %s", path,
                             (unsigned long long)all[2 * (at + i)], (unsigned long long)n, gr->path, ti->name,
                             all[2 * (at + i)] == n ? ", but not each element once" : "",
                             !gr->zero ? "the layouts do not match the grid"
                                       : "the optimizer ranges [opt_begin, opt_end) of the dp ranks must "
                                         "split each tp rank's flat buffer into disjoint covering ranges");
        }
    }
done:
    free(counts);
    return e;
}

static st_err create_group(hid_t loc, const char *name, hid_t *out)
{
    *out = H5Gcreate2(loc, name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (*out < 0) ST_H5_FAIL("cannot create group /%s", name);
    return ST_OK;
}

/* The sets' groups with their attributes: /<group> (meta; n_tensors, so a
 * check without the caller's layout notices a tensor gone) and, for a set
 * with moments, /optim/<group> (step). Collective. */
static st_err write_set_headers(hid_t file, const save_job *j)
{
    st_err e = ST_OK;
    hid_t grp = H5I_INVALID_HID;
    char name[GPATH_CAP];
    for (int i = 0; i < j->t->n_sets; i++) {
        const st_ckpt_set *s = &j->t->sets[i];
        ST_TRY(create_group(file, s->group, &grp));
        ST_TRY_GOTO(e, st_h5_attr_write_i64(grp, "n_tensors", s->lay->n_tensors), done);
        if (j->set_meta[i]) ST_TRY_GOTO(e, st_h5_attr_write_str(grp, "meta", j->set_meta[i]), done);
        st_h5_close(&grp);
        if (!s->m) continue;
        snprintf(name, sizeof name, "optim/%s", s->group);
        ST_TRY(create_group(file, name, &grp));
        ST_TRY_GOTO(e, st_h5_attr_write_i64(grp, "step", j->meta.set_step[i]), done);
        st_h5_close(&grp);
    }
done:
    st_h5_close(&grp);
    return e;
}

static st_err header_sum(hid_t file, const char *path, uint64_t *sum);
static const char path_of_header[] = "the checkpoint being written";

/* Root, /config, /tokenizer, /train, /optim and the sets' attributes, and
 * their checksum. Collective. */
static st_err write_header(hid_t file, const save_job *j, const st_config *cfg, int root, hid_t dxpl)
{
    const save_meta *m = &j->meta;
    st_err e = ST_OK;
    hid_t grp = H5I_INVALID_HID;
    ST_TRY(st_h5_attr_write_str(file, "format", ST_CKPT_FORMAT));
    ST_TRY(st_h5_attr_write_i32(file, "version", ST_CKPT_VERSION));
    ST_TRY(st_h5_attr_write_i64(file, "step", m->step));
    ST_TRY(st_h5_attr_write_i64(file, "tokens_seen", m->tokens_seen));
    ST_TRY(st_h5_attr_write_str(file, "created", j->created));
    ST_TRY(st_h5_attr_write_str(file, "git", j->git));
    if (j->sets[0]) ST_TRY(st_h5_attr_write_str(file, "sets", j->sets));
    ST_TRY(write_config_attrs(file, cfg));
    if (m->has_tok) {
        ST_TRY(create_group(file, "tokenizer", &grp));
        ST_TRY_GOTO(e, st_h5_attr_write_str(grp, "kind", j->tok_kind), done);
        ST_TRY_GOTO(e, st_h5_bytes_write(grp, "blob", j->tok_blob, (size_t)m->tok_n, root, dxpl), done);
        st_h5_close(&grp);
    }
    if (m->has_train) {
        ST_TRY(create_group(file, "train", &grp));
        ST_TRY_GOTO(e, st_h5_attr_write_u64s(grp, "rng", m->rng, 4), done);
        ST_TRY_GOTO(e, st_h5_attr_write_i64(grp, "data_epoch", m->data_epoch), done);
        ST_TRY_GOTO(e, st_h5_attr_write_i64(grp, "data_cursor", m->data_cursor), done);
        ST_TRY_GOTO(e, st_h5_attr_write_u64(grp, "data_seed", m->data_seed), done);
        if (m->total_steps > 0) ST_TRY_GOTO(e, st_h5_attr_write_i64(grp, "steps", m->total_steps), done);
        if (j->method) ST_TRY_GOTO(e, st_h5_attr_write_str(grp, "method", j->method), done);
        if (j->recipe) ST_TRY_GOTO(e, st_h5_str_dataset_write(grp, "recipe", j->recipe, root, dxpl), done);
        st_h5_close(&grp);
    }
    if (j->any_optim) {
        ST_TRY(create_group(file, "optim", &grp));
        /* the AdamW attributes belong to the model's moments (a set only has its step) */
        if (j->has_optim) {
            ST_TRY_GOTO(e, st_h5_attr_write_i64(grp, "step", m->adam_step), done);
            ST_TRY_GOTO(e, st_h5_attr_write_f32(grp, "beta1", m->beta1), done);
            ST_TRY_GOTO(e, st_h5_attr_write_f32(grp, "beta2", m->beta2), done);
            ST_TRY_GOTO(e, st_h5_attr_write_f32(grp, "eps", m->eps), done);
            ST_TRY_GOTO(e, st_h5_attr_write_f32(grp, "weight_decay", m->weight_decay), done);
        }
        st_h5_close(&grp);
    }
    ST_TRY(write_set_headers(file, j));
    /* last: the checksum of what was just written, read back as a reader will */
    uint64_t sum;
    ST_TRY(header_sum(file, path_of_header, &sum));
    ST_TRY(st_h5_attr_write_u64(file, "header_sum", sum));
done:
    st_h5_close(&grp);
    return e;
}

/* Write this rank's piece of tensor ti of group gr into its dataset d
 * (independent I/O); *sum = the piece's checksum terms. */
static st_err write_piece(hid_t d, const tgroup *gr, const st_tensor *ti, const st_grid *g, hid_t dxpl,
                          const char *path, uint64_t *sum, size_t *bytes)
{
    char what[WHAT_CAP];
    snprintf(what, sizeof what, "/%s/%s", gr->path, ti->name);
    int64_t a = 0, b = 0;
    float *buf = gr->buf;
    if (group_writer(gr, ti, g)) buf = group_piece(gr, ti, &a, &b);
    *bytes = 0;
    if (b <= a) return ST_OK; /* nothing of it here */
    ST_TRY(xfer_piece(d, ti, a, b, buf, dxpl, 1, path, what));
    /* after the write: the disk works on it (write_kick) while this runs */
    *sum = piece_checksum(ti, buf, a, b);
    *bytes = (size_t)(b - a) * sizeof(float);
    return ST_OK;
}

/* Start the kernel writing the file back once 64 MiB more are dirty, so the
 * disk works while the save goes on instead of all at the final fsync (Linux
 * only starts on its own at 10% of RAM). A hint: failures are ignored. */
typedef struct {
    int fd;
    size_t pending;
} write_kick;

static void write_kick_add(write_kick *k, size_t bytes)
{
    k->pending += bytes;
#ifdef SYNC_FILE_RANGE_WRITE
    if (k->fd >= 0 && k->pending >= ((size_t)64 << 20)) {
        (void)sync_file_range(k->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        k->pending = 0;
    }
#endif
}

/* The reduced checksums as attributes of the written tensors (dsets, in
 * group order). Collective. */
static st_err write_checksums(const save_job *j, const st_grid *g, const hid_t *dsets)
{
    ST_TRY(st_allreduce(g->world, j->sums[0], j->n_sums, ST_M_U64, ST_OP_SUM));
    st_err e = ST_OK;
    for (int k = 0; k < j->n_sums && !e; k++) e = st_h5_attr_write_u64(dsets[k], "checksum", j->sums[0][k]);
    return e;
}

/* Open group name of loc, creating it when absent (the sets' groups exist
 * already, with their attributes). */
static st_err open_or_create_group(hid_t loc, const char *name, hid_t *out)
{
    if (!st_h5_has_link(loc, name)) return create_group(loc, name, out);
    *out = H5Gopen2(loc, name, H5P_DEFAULT);
    if (*out < 0) ST_H5_FAIL("cannot open group /%s", name);
    return ST_OK;
}

/* Every group and tensor dataset of the job, created by every rank (HDF5's
 * collective metadata calls), into dsets (j->n_sums handles, in group
 * order). A rank that fails goes on creating, so that the ranks' calls stay
 * matched; the status is agreed once at the end. */
static st_err create_datasets(hid_t file, const save_job *j, const st_grid *g, const char *path, hid_t *dsets)
{
    st_err e = ST_OK;
    hid_t grp = H5I_INVALID_HID, dcpl = H5Pcreate(H5P_DATASET_CREATE), space = H5I_INVALID_HID;
    /* Contiguous, allocated at creation, never filled: plain fast I/O. */
    if (dcpl < 0 || H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 || H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0)
        ST_H5_GOTO(e, done, "cannot set up the tensor dataset properties");
    for (int gi = 0, at = 0; gi < j->n_groups; at += j->groups[gi].lay->n_tensors, gi++) {
        const tgroup *gr = &j->groups[gi];
        st_err ge = open_or_create_group(file, gr->path, &grp);
        if (ge && !e) e = ge;
        for (int i = 0; i < gr->lay->n_tensors; i++) {
            const st_tensor *ti = &gr->lay->tensors[i];
            hsize_t dims[2] = {(hsize_t)ti->shape[0], (hsize_t)ti->shape[1]};
            dsets[at + i] = H5I_INVALID_HID;
            if ((space = H5Screate_simple(ti->ndim, dims, NULL)) < 0 || grp < 0 ||
                (dsets[at + i] = H5Dcreate2(grp, ti->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0) {
                if (!e) {
                    st_h5_snapshot();
                    e = st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot create tensor /%s/%s", path,
                                        gr->path, ti->name);
                }
            }
            st_h5_close(&space);
        }
        st_h5_close(&grp);
    }
done:
    st_h5_close(&space);
    st_h5_close(&grp);
    if (dcpl >= 0) st_h5_close(&dcpl);
    return st_agree(g->world, e);
}

/* The tensors: every dataset created, then each rank writes its pieces with
 * independent MPI-IO (no synchronisation per tensor: under busy cores each
 * collective call waited for a descheduled rank, which made a small
 * checkpoint's save take seconds), then one agreement and the checksums. */
static st_err write_tensors(hid_t file, const save_job *j, const st_grid *g, const char *path)
{
    st_err e = ST_OK;
    long written = 0;
    hid_t dxpl = H5I_INVALID_HID, *dsets = calloc((size_t)j->n_sums + 1, sizeof *dsets);
    write_kick kick = {open(path, O_RDONLY | O_CLOEXEC), 0};
    if (!dsets) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for %d tensors", j->n_sums);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    for (int k = 0; k < j->n_sums; k++) dsets[k] = H5I_INVALID_HID;
    ST_TRY_GOTO(e, create_datasets(file, j, g, path, dsets), done);
    e = st_h5_dxpl_mpio(0, &dxpl);
    for (int gi = 0, at = 0; gi < j->n_groups && !e; at += j->groups[gi].lay->n_tensors, gi++) {
        const tgroup *gr = &j->groups[gi];
        for (int i = 0; i < gr->lay->n_tensors && !e; i++) {
            size_t bytes = 0;
            e = write_piece(dsets[at + i], gr, &gr->lay->tensors[i], g, dxpl, path, &j->sums[gi][i], &bytes);
            write_kick_add(&kick, bytes);
            written++;
            if (!e && written == 1) test_pause("tensor", j->meta.pause_ms, path, g->world_rank == 0);
            if (!e && g->world_rank == 0 && j->meta.fail_after >= 0 && written == j->meta.fail_after + 1)
                e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__,
                                 "%s: injected failure after %ld tensors (SHARDTUNE_CKPT_TEST_FAIL_AFTER)",
                                 path, j->meta.fail_after);
        }
    }
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    test_pause("checksums", j->meta.pause_ms, path, g->world_rank == 0);
    e = write_checksums(j, g, dsets);
done:
    if (kick.fd >= 0) close(kick.fd);
    for (int k = 0; dsets && k < j->n_sums; k++) st_h5_close(&dsets[k]);
    free(dsets);
    st_h5_close(&dxpl);
    return st_agree(g->world, e);
}

static st_err write_source_tensors(hid_t file, st_model_source *src, const save_job *j, const st_grid *g,
                                   const char *path);

static void dir_of(const char *path, char *dir, size_t cap);

/* Bytes of the float32 tensors of a layout at their global shapes. */
static uint64_t layout_file_bytes(const st_layout *lay)
{
    uint64_t n = 0;
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i];
        n += (uint64_t)t->shape[0] * (uint64_t)(t->ndim > 1 ? t->shape[1] : 1) * sizeof(float);
    }
    return n;
}

/* Rank 0 reserves the tensors' bytes of tmp on disk before anything is
 * written, so a full file system fails here, early and named, rather than
 * as a short write deep in MPI-IO (which OMPIO reports without errno). File
 * systems without fallocate are left to the writes. Collective; agreed. */
static st_err reserve_space(const char *tmp, uint64_t bytes, const st_grid *g)
{
    st_err e = ST_OK;
    if (g->world_rank == 0 && bytes) {
        int fd = open(tmp, O_WRONLY | O_CLOEXEC);
        int rc = fd < 0 ? errno : posix_fallocate(fd, 0, (off_t)bytes);
        if (fd >= 0) close(fd);
        if (rc == ENOSPC || rc == EDQUOT) {
            struct statvfs fs;
            char dir[PATH_MAX];
            dir_of(tmp, dir, sizeof dir);
            double free_mb = statvfs(dir, &fs) ? -1 : (double)fs.f_bavail * (double)fs.f_frsize / 1e6;
            e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__,
                             "%s: %s: the checkpoint needs %.1f MB, %s has %.1f MB free", tmp, strerror(rc),
                             (double)bytes / 1e6, dir, free_mb);
        } else if (rc && rc != EOPNOTSUPP && rc != EINVAL && rc != ENOSYS) {
            e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "%s: cannot reserve %.1f MB: %s", tmp,
                             (double)bytes / 1e6, strerror(rc));
        }
    }
    return st_agree(g->world, e);
}

static uint64_t job_file_bytes(const save_job *j)
{
    uint64_t n = 0;
    for (int gi = 0; gi < j->n_groups; gi++) n += layout_file_bytes(j->groups[gi].lay);
    return n;
}

/* Write everything into tmp: the header, then the tensors of j (src NULL) or
 * of a model source. Collective; the status is agreed. */
static st_err write_tmp(const char *tmp, const save_job *j, const st_grid *g, const st_config *cfg,
                        st_model_source *src)
{
    st_err e = ST_OK;
    hid_t fapl = H5I_INVALID_HID, file = H5I_INVALID_HID, dxpl = H5I_INVALID_HID;
    e = st_h5_fapl_mpio(g->world, &fapl);
    if (!e && H5Pset_coll_metadata_write(fapl, 1) < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "cannot enable collective metadata writes");
    }
    if (!e && (file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl)) < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__,
                            "cannot create checkpoint file %s (does the directory exist and is it writable?)", tmp);
    }
    if (!e) e = st_h5_dxpl_mpio(1, &dxpl);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    e = reserve_space(tmp, src ? layout_file_bytes(&src->lay) : job_file_bytes(j), g);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    e = write_header(file, j, cfg, g->world_rank == 0, dxpl);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    e = src ? write_source_tensors(file, src, j, g, tmp) : write_tensors(file, j, g, tmp);
done:
    st_h5_close(&dxpl);
    if (file >= 0 && H5Fclose(file) < 0 && !e) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "closing checkpoint file %s failed", tmp);
    }
    st_h5_close(&fapl);
    return st_agree(g->world, e);
}

static st_err fsync_path(const char *p, int dir)
{
    int fd = open(p, O_RDONLY | (dir ? O_DIRECTORY : 0));
    if (fd < 0) ST_FAIL(ST_ERR_IO, "cannot open %s to sync it: %s", p, strerror(errno));
    /* some file systems cannot sync a directory (EINVAL): nothing to do then */
    if (fsync(fd) && !(dir && (errno == EINVAL || errno == EROFS))) {
        int err = errno;
        close(fd);
        ST_FAIL(ST_ERR_IO, "fsync of %s failed: %s", p, strerror(err));
    }
    close(fd);
    return ST_OK;
}

static void dir_of(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, cap, ".");
    else if (slash == path) snprintf(dir, cap, "/");
    else snprintf(dir, cap, "%.*s", (int)(slash - path), path);
}

/* Rank 0 only: make tmp durable, then rename it over path. */
static st_err commit(const char *tmp, const char *path)
{
    char dir[PATH_MAX];
    ST_TRY(fsync_path(tmp, 0));
    if (rename(tmp, path))
        ST_FAIL(ST_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    dir_of(path, dir, sizeof dir);
    ST_TRY(fsync_path(dir, 1));
    return ST_OK;
}

/* After tmp is written (status e, agreed): rank 0 commits it as path; on any
 * error tmp goes. Collective; the status is agreed. */
static st_err finish_save(const char *tmp, const char *path, const st_grid *g, st_err e)
{
    if (!e && (e = st_barrier(g->world))) st_error_trace(__FILE__, __LINE__, __func__);
    if (!e && g->world_rank == 0) {
        test_pause("closed", rank0_pause_ms(), tmp, 1);
        e = commit(tmp, path);
    }
    e = st_agree(g->world, e);
    if (e && g->world_rank == 0) unlink(tmp); /* a directory in its place is not ours: unlink leaves it */
    return e;
}

st_err st_ckpt_save_file(const char *path, const st_grid *g, const st_ckpt_tensors *t, const st_train_state *s,
                         const char *tok_kind, const uint8_t *tok_blob, size_t tok_n)
{
    st_h5_quiet();
    save_job j;
    memset(&j, 0, sizeof j);
    char tmp[PATH_MAX];
    st_err e = ST_OK;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "checkpoint path too long: %s", path);
    if (!e) e = check_tensors_arg(g, t, path);
    if (!e && g->world_rank == 0 && tok_kind && tok_n && !tok_blob)
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "%s: tokenizer '%s' has %zu bytes but no data",
                         path, tok_kind, tok_n);
    for (int i = 0; !e && g->world_rank == 0 && i < t->n_sets; i++)
        if (t->sets[i].meta && strlen(t->sets[i].meta) > ST_CKPT_MAX_META)
            e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__,
                             "%s: the meta text of set '%s' has %zu bytes; at most %zu fit (ST_CKPT_MAX_META)",
                             path, t->sets[i].group, strlen(t->sets[i].meta), ST_CKPT_MAX_META);
    long pause_ms = -1, fail_after = -1;
    if (!e) e = hook_ms("SHARDTUNE_CKPT_TEST_PAUSE_MS", &pause_ms);
    if (!e) e = hook_ms("SHARDTUNE_CKPT_TEST_FAIL_AFTER", &fail_after);
    if (!e) e = check_pause_at();
    ST_TRY(st_agree(g->world, e));
    ST_TRY(check_same_model(g, t, 0, path));
    e = save_job_init(&j, g, t, s, tok_kind, tok_blob, tok_n, pause_ms, fail_after);
    if (!e) e = save_coverage(&j, g, path);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    e = finish_save(tmp, path, g, write_tmp(tmp, &j, g, &t->lay->cfg, NULL));
done:
    save_job_free(&j);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ---- streaming a model source into a checkpoint ----------------------------- */

/* Deal the units to the ranks by size: largest first, each to the rank with
 * the fewest bytes so far (ties: the lower rank). Same result on every rank. */
static st_err deal_units(const st_model_source *src, int size, int *owner)
{
    int n = src->n_units;
    int *order = malloc((size_t)n * sizeof *order + 1);
    int64_t *load = calloc((size_t)size, sizeof *load);
    if (!order || !load) {
        free(order), free(load);
        ST_FAIL(ST_ERR_MEM, "out of memory dealing %d tensors to %d ranks", n, size);
    }
    for (int u = 0; u < n; u++) order[u] = u;
    for (int a = 1; a < n; a++)   /* insertion sort, largest first, stable: n is a few hundred */
        for (int b = a; b > 0; b--) {
            int64_t x = st_model_source_unit_bytes(src, order[b - 1]), y = st_model_source_unit_bytes(src, order[b]);
            if (x >= y) break;
            int t = order[b - 1];
            order[b - 1] = order[b], order[b] = t;
        }
    for (int k = 0; k < n; k++) {
        int r = 0;
        for (int q = 1; q < size; q++)
            if (load[q] < load[r]) r = q;
        owner[order[k]] = r;
        load[r] += st_model_source_unit_bytes(src, order[k]);
    }
    free(order);
    free(load);
    return ST_OK;
}

/* The index of the first NaN or infinity of x[0, n), or -1. */
static int64_t first_nonfinite(const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return i;
    return -1;
}

/* Read this rank's units and write each of their tensors whole with
 * independent MPI-IO; sums[i] = checksum of layout tensor i (0 elsewhere).
 * Not collective: the first error stops this rank's loop. */
static st_err write_own_units(st_model_source *src, const int *owner, int rank, const hid_t *dsets,
                              uint64_t *sums, const char *path, write_kick *kick)
{
    hid_t dxpl = H5I_INVALID_HID;
    ST_TRY(st_h5_dxpl_mpio(0, &dxpl));
    st_err e = ST_OK;
    for (int u = 0; u < src->n_units && !e; u++) {
        if (owner[u] != rank) continue;
        const st_src_unit *un = &src->units[u];
        float *out[ST_SRC_MAX_DST] = {0};
        for (int p = 0; p < un->n_dst && !e; p++)
            if (!(out[p] = malloc(un->dst[p]->numel * sizeof(float) + 1)))
                e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for tensor %s",
                                 un->dst[p]->name);
        if (!e) e = src->read(src, u, out);
        for (int p = 0; p < un->n_dst && !e; p++) {
            const st_tensor *t = un->dst[p];
            int64_t bad = first_nonfinite(out[p], real_numel(t));
            if (bad >= 0)
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "the %s source: tensor %s holds %s at element %lld: "
                                 "refusing to import a damaged or diverged model", src->format,
                                 t->name, isnan(out[p][bad]) ? "NaN" : "an infinity", (long long)bad);
        }
        for (int p = 0; p < un->n_dst && !e; p++) {
            const st_tensor *t = un->dst[p];
            const int i = (int)(t - src->lay.tensors);
            char what[WHAT_CAP];
            snprintf(what, sizeof what, "/model/%s", t->name);
            e = xfer_piece(dsets[i], t, 0, real_numel(t), out[p], dxpl, 1, path, what);
            if (!e) sums[i] = piece_checksum(t, out[p], 0, real_numel(t));
            write_kick_add(kick, (size_t)real_numel(t) * sizeof(float));
        }
        for (int p = 0; p < un->n_dst; p++) free(out[p]);
    }
    st_h5_close(&dxpl);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* The model's datasets (created collectively, every one by every rank), this
 * rank's units written into them, then the checksums. Collective. */
static st_err write_source_tensors(hid_t file, st_model_source *src, const save_job *j, const st_grid *g,
                                   const char *path)
{
    const st_layout *lay = &src->lay;
    st_err e = ST_OK;
    hid_t grp = H5I_INVALID_HID, dcpl = H5I_INVALID_HID, space = H5I_INVALID_HID;
    hid_t *dsets = malloc((size_t)lay->n_tensors * sizeof *dsets + 1);
    int *owner = malloc((size_t)src->n_units * sizeof *owner + 1);
    int n_open = 0;
    write_kick kick = {open(path, O_RDONLY | O_CLOEXEC), 0};
    if (!dsets || !owner) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    if (!e) e = deal_units(src, g->world_size, owner);
    if (!e) e = create_group(file, "model", &grp);
    if (!e && ((dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 || H5Pset_layout(dcpl, H5D_CONTIGUOUS) < 0 ||
               H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) < 0 || H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0))
        ST_H5_GOTO(e, done, "cannot set up the tensor dataset properties");
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    for (; n_open < lay->n_tensors && !e; n_open++) {
        const st_tensor *t = &lay->tensors[n_open];
        hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
        if ((space = H5Screate_simple(t->ndim, dims, NULL)) < 0 ||
            (dsets[n_open] = H5Dcreate2(grp, t->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT)) < 0) {
            st_h5_snapshot();
            e = st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot create tensor /model/%s", path, t->name);
            break;
        }
        st_h5_close(&space);
    }
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    e = write_own_units(src, owner, g->world_rank, dsets, j->sums[0], path, &kick);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    ST_TRY_GOTO(e, st_allreduce(g->world, j->sums[0], lay->n_tensors, ST_M_U64, ST_OP_SUM), done);
    for (int i = 0; i < lay->n_tensors && !e; i++) e = st_h5_attr_write_u64(dsets[i], "checksum", j->sums[0][i]);
done:
    for (int i = 0; i < n_open; i++) st_h5_close(&dsets[i]);
    if (kick.fd >= 0) close(kick.fd);
    st_h5_close(&space);
    st_h5_close(&dcpl);
    st_h5_close(&grp);
    free(dsets);
    free(owner);
    return st_agree(g->world, e);
}

st_err st_ckpt_save_source(const char *path, MPI_Comm comm, st_model_source *src, const char *tok_kind,
                           const uint8_t *tok_blob, size_t tok_n)
{
    st_h5_quiet();
    char tmp[PATH_MAX];
    st_err e = ST_OK;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "checkpoint path too long: %s", path);
    ST_TRY(st_agree(comm, e));
    st_grid g;
    ST_TRY(st_grid_init(&g, comm, 1));
    save_job j;
    memset(&j, 0, sizeof j);
    st_ckpt_tensors t = {.lay = &src->lay};
    e = save_job_init(&j, &g, &t, NULL, tok_kind, tok_blob, tok_n, -1, -1);
    if (!e && !(j.sums[0] = calloc((size_t)src->lay.n_tensors + 1, sizeof *j.sums[0])))
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for checksums");
    e = st_agree(comm, e);
    if (!e) e = finish_save(tmp, path, &g, write_tmp(tmp, &j, &g, &src->cfg, src));
    save_job_free(&j);
    st_grid_free(&g);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ---- run directory: step files, latest, retention --------------------------- */

/* Step number of a name "step_<digits>.h5" (suffix ".h5.tmp" when tmp), or -1. */
static long long step_of(const char *name, int tmp)
{
    const char *suffix = tmp ? ".h5.tmp" : ".h5";
    if (strncmp(name, "step_", 5)) return -1;
    const char *p = name + 5, *q = p;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p || q - p > 18 || strcmp(q, suffix)) return -1;
    return strtoll(p, NULL, 10);
}

typedef struct { long long step; char name[256]; } step_file;

static int by_step_desc(const void *a, const void *b)
{
    long long x = ((const step_file *)a)->step, y = ((const step_file *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Files of dir named step_N.h5 (or .h5.tmp), newest first. */
static st_err list_steps(const char *dir, int tmp, step_file **out, int *n)
{
    DIR *d = opendir(dir);
    *out = NULL;
    *n = 0;
    if (!d) ST_FAIL(ST_ERR_IO, "cannot open checkpoint directory %s: %s", dir, strerror(errno));
    step_file *v = NULL;
    int cap = 0, cnt = 0;
    struct dirent *ent;
    while ((ent = readdir(d))) {
        long long st = step_of(ent->d_name, tmp);
        if (st < 0 || strlen(ent->d_name) >= sizeof v->name) continue;
        if (cnt == cap) {
            cap = cap ? 2 * cap : 16;
            step_file *nv = realloc(v, (size_t)cap * sizeof *nv);
            if (!nv) {
                free(v);
                closedir(d);
                ST_FAIL(ST_ERR_MEM, "out of memory listing %s", dir);
            }
            v = nv;
        }
        v[cnt].step = st;
        snprintf(v[cnt].name, sizeof v[cnt].name, "%s", ent->d_name);
        cnt++;
    }
    closedir(d);
    if (cnt) qsort(v, (size_t)cnt, sizeof *v, by_step_desc);
    *out = v;
    *n = cnt;
    return ST_OK;
}

static st_err join_path(char *out, size_t cap, const char *dir, const char *name)
{
    if (snprintf(out, cap, "%s/%s", dir, name) >= (int)cap)
        ST_FAIL(ST_ERR_ARG, "path too long: %s/%s", dir, name);
    return ST_OK;
}

/* Rank 0: DIR/latest <- name, through latest.tmp and a rename. */
static st_err write_latest(const char *dir, const char *name)
{
    char tmp[PATH_MAX], dst[PATH_MAX];
    ST_TRY(join_path(tmp, sizeof tmp, dir, "latest.tmp"));
    ST_TRY(join_path(dst, sizeof dst, dir, "latest"));
    FILE *f = fopen(tmp, "w");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    int bad = fprintf(f, "%s\n", name) < 0;
    bad |= fflush(f) != 0;
    bad |= fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad) {
        unlink(tmp);
        ST_FAIL(ST_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
    }
    test_pause("latest", rank0_pause_ms(), tmp, 1);
    if (rename(tmp, dst)) {
        int err = errno;
        unlink(tmp);
        ST_FAIL(ST_ERR_IO, "cannot rename %s to %s: %s", tmp, dst, strerror(err));
    }
    return fsync_path(dir, 1);
}

/* Rank 0: keep the newest `keep` step files (never removing `current`) and
 * drop temporaries of crashed saves. Failing to delete only warns. */
static void prune(const char *dir, const char *current, int keep)
{
    char p[PATH_MAX];
    step_file *v;
    int n;
    for (int tmp = 0; tmp <= 1; tmp++) {
        if (tmp == 0 && keep <= 0) continue;
        if (list_steps(dir, tmp, &v, &n)) {
            fprintf(stderr, "shardtune: warning: %s\n", st_error_message());
            st_error_clear();
            return;
        }
        /* newest first: keep `current` and the keep - 1 newest others */
        int others = 0;
        for (int i = 0; i < n; i++) {
            if (!tmp && (!strcmp(v[i].name, current) || others++ < keep - 1)) continue;
            if (snprintf(p, sizeof p, "%s/%s", dir, v[i].name) >= (int)sizeof p) continue;
            if (unlink(p) && errno != ENOENT)
                fprintf(stderr, "shardtune: warning: cannot remove old checkpoint %s: %s\n", p, strerror(errno));
        }
        free(v);
    }
}

st_err st_ckpt_save(const char *dir, const st_grid *g, const st_ckpt_tensors *t, const st_train_state *s,
                    const char *tok_kind, const uint8_t *tok_blob, size_t tok_n, int keep)
{
    st_err e = ST_OK;
    int64_t step = 0;
    if (g->world_rank == 0) {
        if (!s) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "saving into %s needs the train state (its step names the file)", dir);
        else if (s->step < 0) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "negative step %lld", (long long)s->step);
        else step = s->step;
        if (!e && mkdir(dir, 0777) && errno != EEXIST)
            e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot create checkpoint directory %s: %s",
                             dir, strerror(errno));
    }
    ST_TRY(st_agree(g->world, e));
    ST_TRY(st_bcast(g->world, &step, 1, ST_M_I64, 0));
    char name[64], path[PATH_MAX];
    snprintf(name, sizeof name, "step_%08lld.h5", (long long)step);
    e = join_path(path, sizeof path, dir, name);
    ST_TRY(st_agree(g->world, e));
    ST_TRY(st_ckpt_save_file(path, g, t, s, tok_kind, tok_blob, tok_n));
    if (g->world_rank == 0) {
        test_pause("renamed", rank0_pause_ms(), path, 1);
        e = write_latest(dir, name);
        if (!e) test_pause("prune", rank0_pause_ms(), dir, 1);
        if (!e) prune(dir, name, keep);
    }
    ST_TRY(st_agree(g->world, e));
    return ST_OK;
}

/* ---- read config ------------------------------------------------------------ */

/* Serial open (one rank) of a checkpoint, its format checked. */
static st_err open_serial(const char *path, hid_t *file)
{
    /* read-only: no need for file locks (absent on some network file systems) */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_file_locking(fapl, 0, 1) < 0) {
        st_h5_snapshot();
        st_h5_close(&fapl);
        return st_h5_error_set(__FILE__, __LINE__, __func__, "cannot set up reading %s", path);
    }
    st_err reg = st_h5_check_regular(path);
    *file = reg ? H5I_INVALID_HID : H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    ST_TRY(reg);
    if (*file < 0) ST_H5_FAIL("cannot open checkpoint %s", path);
    st_err e = check_format(*file, path);
    if (e) {
        st_h5_close(file);
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

st_err st_ckpt_read_config(const char *path, MPI_Comm comm, st_config *cfg)
{
    st_h5_quiet();
    const int me = st_comm_rank(comm);
    st_err e = ST_OK;
    memset(cfg, 0, sizeof *cfg);
    if (me == 0) {
        hid_t file;
        e = open_serial(path, &file);
        if (!e) {
            e = read_config_attrs(file, path, cfg);
            H5Fclose(file);
        }
    }
    ST_TRY(st_agree(comm, e));
    ST_TRY(st_bcast(comm, cfg, (int64_t)sizeof *cfg, ST_M_U8, 0));
    return ST_OK;
}

st_err st_ckpt_read_set_meta(const char *path, MPI_Comm comm, const char *group, char **meta, int *present)
{
    st_h5_quiet();
    const int me = st_comm_rank(comm);
    int32_t here = 0;
    st_err e = ST_OK;
    char *text = NULL;
    *meta = NULL;
    *present = 0;
    if (!valid_set_name(group))
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "%s: '%.40s' is not a parameter set name", path,
                         group ? group : "(null)");
    if (!e && me == 0) {
        hid_t file, grp;
        e = open_serial(path, &file);
        if (!e) {
            if ((here = st_h5_has_link(file, group)) && (grp = H5Gopen2(file, group, H5P_DEFAULT)) < 0) {
                st_h5_snapshot();
                e = st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot open parameter set /%s", path, group);
            } else if (here) {
                if (st_h5_has_attr(grp, "meta")) e = st_h5_attr_read_str(grp, "meta", ST_CKPT_MAX_META, &text);
                H5Gclose(grp);
            }
            H5Fclose(file);
        }
    }
    e = st_agree(comm, e);
    if (e) {
        free(text);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    ST_TRY(st_bcast(comm, &here, 1, ST_M_I32, 0));
    e = st_bcast_str(comm, 0, text, meta);
    free(text);
    ST_TRY(e);
    *present = here;
    return ST_OK;
}

/* ---- load ------------------------------------------------------------------- */

/* Read this rank's pieces of one group's tensors (collective over the world,
 * one tensor at a time), then compare checksums reduced over the ranks that
 * together hold each tensor once. */
/* The pages a load is about to fill, made present first on every thread.
 * Left to fault one at a time inside the kernel's copy from the page cache,
 * they cost more than the copy itself (0.22 against 0.13 s of CPU for 600 MB
 * here). MADV_POPULATE_WRITE (Linux 5.14) maps them without writing to them;
 * where it is missing nothing happens and the copy faults them as before. */
static void prefault(void *p, size_t bytes)
{
#ifdef MADV_POPULATE_WRITE
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + page - 1) / page * page,
                    z = ((uintptr_t)p + bytes) / page * page;
    if (z <= a) return;
    const size_t chunk = (size_t)64 << 20, n = (z - a + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic) if (n > 1)
    for (size_t c = 0; c < n; c++) {
        uintptr_t lo = a + c * chunk, hi = lo + chunk < z ? lo + chunk : z;
        (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
    }
#else
    (void)p, (void)bytes;
#endif
}

static st_err load_group(hid_t file, const tgroup *gr, const char *path, const st_grid *g, hid_t dxpl)
{
    const st_layout *lay = gr->lay;
    const int nt = lay->n_tensors;
    st_err e = ST_OK;
    hid_t grp = H5I_INVALID_HID, d = H5I_INVALID_HID;
    uint64_t *sum = calloc(2 * (size_t)nt + 1, sizeof *sum), *stored = sum ? sum + nt : NULL;
    char what[WHAT_CAP];
    if (!sum) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for checksums");
    else if (!st_h5_has_link(file, gr->path) || (grp = H5Gopen2(file, gr->path, H5P_DEFAULT)) < 0)
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s has no group /%s", path, gr->path);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    prefault(gr->buf, (gr->oe - gr->ob) * sizeof(float));
    for (int i = 0; i < nt; i++) {
        const st_tensor *ti = &lay->tensors[i];
        if (st_ckpt_skipped(ti->name, gr->skip)) continue;
        snprintf(what, sizeof what, "/%s/%s", gr->path, ti->name);
        e = open_tensor(grp, gr->path, ti, path, &d);
        if (!e) e = st_h5_attr_read_u64(d, "checksum", &stored[i]);
        ST_TRY_GOTO(e, st_agree(g->world, e), done);
        int64_t a, b;
        float *buf = group_piece(gr, ti, &a, &b);
        e = xfer_piece(d, ti, a, b, buf, dxpl, 0, path, what);
        if (!e && tp_owner(ti, g->tp_rank)) sum[i] = piece_checksum(ti, buf, a, b);
        st_h5_close(&d);
        ST_TRY_GOTO(e, st_agree(g->world, e), done);
    }
    /* whole-on-every-dp-group groups: each tp group holds a whole copy; ZeRO moments: the world does */
    MPI_Comm red = gr->zero ? g->world : g->tp;
    ST_TRY_GOTO(e, st_allreduce(red, sum, nt, ST_M_U64, ST_OP_SUM), agree);
    for (int i = 0; i < nt; i++) {
        if (st_ckpt_skipped(lay->tensors[i].name, gr->skip) || sum[i] == stored[i]) continue;
        ST_FAIL_GOTO(e, agree, ST_ERR_FORMAT,
                     "%s: tensor /%s/%s is damaged: its data has checksum %016" PRIx64 " but the file "
                     "recorded %016" PRIx64 " (the file was modified or corrupted after it was written)",
                     path, gr->path, lay->tensors[i].name, sum[i], stored[i]);
    }
agree:
    e = st_agree(g->world, e);
done:
    st_h5_close(&d);
    st_h5_close(&grp);
    free(sum);
    return e;
}

/* Does the file hold the model's moments? (/optim alone may hold only sets'.) */
static int has_model_optim(hid_t file)
{
    if (!st_h5_has_link(file, "optim")) return 0;
    return st_h5_has_link(file, "optim/m") || st_h5_has_link(file, "optim/v");
}

/* Does the file hold /optim/<group>? */
static int has_set_optim(hid_t file, const char *group)
{
    char name[GPATH_CAP];
    snprintf(name, sizeof name, "optim/%s", group);
    return st_h5_has_link(file, "optim") && st_h5_has_link(file, name);
}

/* The set groups named by the root attribute "sets" (n = 0 when it is
 * absent), each checked like a name given to save. */
static st_err read_sets_attr(hid_t file, const char *path, char names[ST_CKPT_MAX_SETS][ST_CKPT_MAX_SET_NAME + 1],
                             int *n)
{
    char *list = NULL;
    *n = 0;
    if (!st_h5_has_attr(file, "sets")) return ST_OK;
    ST_TRY(st_h5_attr_read_str(file, "sets", MAX_SHORT_STR, &list));
    st_err e = ST_OK;
    for (char *p = list, *q; *p && !e; p = *q ? q + 1 : q) {
        q = p + strcspn(p, ",");
        char c = *q;
        *q = '\0';
        if (!valid_set_name(p))
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: the root attribute 'sets' names an invalid group '%.40s'", path, p);
        else if (*n == ST_CKPT_MAX_SETS)
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s: the root attribute 'sets' names more than %d sets; this shardtune reads at most %d",
                             path, ST_CKPT_MAX_SETS, ST_CKPT_MAX_SETS);
        for (int k = 0; k < *n && !e; k++)
            if (!strcmp(names[k], p))
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                 "%s: the root attribute 'sets' names '%s' twice", path, p);
        if (!e) snprintf(names[(*n)++], ST_CKPT_MAX_SET_NAME + 1, "%s", p);
        *q = c;
    }
    free(list);
    return e;
}

/* The numbers a resume trusts besides the tensors -- the step, the tokens
 * seen, the RNG and data position, the AdamW step and hyper-parameters, the
 * sets' steps, the model config -- have their own checksum, the root
 * attribute header_sum: splitmix64 folded over each present attribute's
 * name and values (integers as 64-bit, floats as doubles). Files written
 * before it existed have none and are not checked. */
static const struct { const char *group, *attrs; } header_attrs[] = {
    {"/", "version step tokens_seen"},
    {"/config", "n_layer d_model n_head n_kv_head d_ff vocab_size max_seq tied_embeddings qkv_bias norm_eps rope_theta"},
    {"/train", "rng data_epoch data_cursor data_seed steps"},
    {"/optim", "step beta1 beta2 eps weight_decay"},
};

static uint64_t fold(uint64_t h, uint64_t x) { return st_splitmix64(h ^ st_splitmix64(x)); }

static uint64_t fold_str(uint64_t h, const char *s)
{
    for (; *s; s++) h = fold(h, (unsigned char)*s);
    return fold(h, 0);
}

/* Fold attribute name of loc (when present) into *h. */
static st_err fold_attr(hid_t loc, const char *group, const char *name, const char *path, uint64_t *h)
{
    if (!st_h5_has_attr(loc, name)) return ST_OK;
    st_err e = ST_OK;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT), type = a < 0 ? -1 : H5Aget_type(a), space = a < 0 ? -1 : H5Aget_space(a);
    hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    H5T_class_t cls = type < 0 ? H5T_NO_CLASS : H5Tget_class(type);
    union { long long i; unsigned long long u; double d; } v[8];
    if (a < 0 || type < 0 || n < 1 || n > 8 || (cls != H5T_INTEGER && cls != H5T_FLOAT))
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: attribute %s of %s is not 1 to 8 numbers", path, name, group);
    hid_t mem = cls == H5T_FLOAT ? H5T_NATIVE_DOUBLE : H5Tget_sign(type) == H5T_SGN_NONE ? H5T_NATIVE_ULLONG : H5T_NATIVE_LLONG;
    if (H5Aread(a, mem, v) < 0) ST_H5_GOTO(e, done, "%s: cannot read attribute %s of %s", path, name, group);
    *h = fold_str(fold_str(*h, group), name);
    for (hssize_t k = 0; k < n; k++) {
        uint64_t bits;
        memcpy(&bits, &v[k], sizeof bits);
        *h = fold(*h, bits);
    }
done:
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (a >= 0) H5Aclose(a);
    return e;
}

static st_err header_sum(hid_t file, const char *path, uint64_t *sum)
{
    char names[ST_CKPT_MAX_SETS][ST_CKPT_MAX_SET_NAME + 1], words[256], group[GPATH_CAP];
    int n_sets = 0;
    uint64_t h = 0x5eedc0de;
    st_err e = ST_OK;
    for (size_t g = 0; g < sizeof header_attrs / sizeof header_attrs[0] && !e; g++) {
        if (header_attrs[g].group[1] && !st_h5_has_link(file, header_attrs[g].group + 1)) continue;
        hid_t loc = header_attrs[g].group[1] ? H5Gopen2(file, header_attrs[g].group + 1, H5P_DEFAULT) : file;
        if (loc < 0) ST_H5_FAIL("%s: cannot open %s", path, header_attrs[g].group);
        snprintf(words, sizeof words, "%s", header_attrs[g].attrs);
        char *save = NULL;
        for (char *w = strtok_r(words, " ", &save); w && !e; w = strtok_r(NULL, " ", &save))
            e = fold_attr(loc, header_attrs[g].group, w, path, &h);
        if (loc != file) H5Gclose(loc);
    }
    if (!e) e = read_sets_attr(file, path, names, &n_sets);
    for (int i = 0; i < n_sets && !e; i++) {
        snprintf(group, sizeof group, "optim/%s", names[i]);
        if (!st_h5_has_link(file, "optim") || !st_h5_has_link(file, group)) continue;
        hid_t loc = H5Gopen2(file, group, H5P_DEFAULT);
        if (loc < 0) ST_H5_FAIL("%s: cannot open /%s", path, group);
        e = fold_attr(loc, group, "step", path, &h);
        H5Gclose(loc);
    }
    *sum = h;
    return e;
}

static st_err check_header_sum(hid_t file, const char *path)
{
    if (!st_h5_has_attr(file, "header_sum")) return ST_OK;
    uint64_t want, got;
    ST_TRY(st_h5_attr_read_u64(file, "header_sum", &want));
    ST_TRY(header_sum(file, path, &got));
    if (got != want)
        ST_FAIL(ST_ERR_FORMAT, "%s is damaged: its header attributes (step, tokens seen, RNG and data position, "
                "optimizer step and settings, model config) do not match their checksum", path);
    return ST_OK;
}

/* "head, lora" or "none": the sets of the file, for messages. */
static void sets_in_file(hid_t file, char *buf, size_t cap)
{
    char names[ST_CKPT_MAX_SETS][ST_CKPT_MAX_SET_NAME + 1];
    int n = 0;
    if (read_sets_attr(file, "", names, &n)) st_error_clear();
    snprintf(buf, cap, "%s", n ? "" : "none");
    for (int i = 0; i < n; i++) {
        size_t at = strlen(buf);
        snprintf(buf + at, cap - at, "%s%s", i ? ", " : "", names[i]);
    }
}

static st_err load_optim_attrs(hid_t file, st_ckpt_tensors *t)
{
    st_err e = ST_OK;
    hid_t grp = H5Gopen2(file, "optim", H5P_DEFAULT);
    if (grp < 0) ST_H5_FAIL("cannot open /optim");
    ST_TRY_GOTO(e, st_h5_attr_read_i64(grp, "step", &t->adam_step), done);
    ST_TRY_GOTO(e, st_h5_attr_read_f32(grp, "beta1", &t->beta1), done);
    ST_TRY_GOTO(e, st_h5_attr_read_f32(grp, "beta2", &t->beta2), done);
    ST_TRY_GOTO(e, st_h5_attr_read_f32(grp, "eps", &t->eps), done);
    ST_TRY_GOTO(e, st_h5_attr_read_f32(grp, "weight_decay", &t->weight_decay), done);
done:
    H5Gclose(grp);
    return e;
}

/* Root step counters and /train (absent in converted base models: zeros). */
static st_err load_train_state(hid_t file, st_train_state *s)
{
    st_err e = ST_OK;
    memset(s, 0, sizeof *s);
    ST_TRY(st_h5_attr_read_i64(file, "step", &s->step));
    ST_TRY(st_h5_attr_read_i64(file, "tokens_seen", &s->tokens_seen));
    if (!st_h5_has_link(file, "train")) return ST_OK;
    hid_t grp = H5Gopen2(file, "train", H5P_DEFAULT);
    if (grp < 0) ST_H5_FAIL("cannot open /train");
    ST_TRY_GOTO(e, st_h5_attr_read_u64s(grp, "rng", s->rng, 4), done);
    ST_TRY_GOTO(e, st_h5_attr_read_i64(grp, "data_epoch", &s->data_epoch), done);
    ST_TRY_GOTO(e, st_h5_attr_read_i64(grp, "data_cursor", &s->data_cursor), done);
    ST_TRY_GOTO(e, st_h5_attr_read_u64(grp, "data_seed", &s->data_seed), done);
    if (st_h5_has_attr(grp, "steps")) ST_TRY_GOTO(e, st_h5_attr_read_i64(grp, "steps", &s->total_steps), done);
    if (st_h5_has_attr(grp, "method"))
        ST_TRY_GOTO(e, st_h5_attr_read_str(grp, "method", MAX_SHORT_STR, &s->method), done);
    if (st_h5_has_link(grp, "recipe"))
        ST_TRY_GOTO(e, st_h5_str_dataset_read(grp, "recipe", MAX_RECIPE, &s->recipe), done);
done:
    H5Gclose(grp);
    if (e) st_train_state_free(s);
    return e;
}

static st_err load_tokenizer(hid_t file, char **kind, uint8_t **blob, size_t *n)
{
    if (!st_h5_has_link(file, "tokenizer")) return ST_OK;
    st_err e = ST_OK;
    hid_t grp = H5Gopen2(file, "tokenizer", H5P_DEFAULT);
    uint8_t *b = NULL;
    size_t bn = 0;
    if (grp < 0) ST_H5_FAIL("cannot open /tokenizer");
    if (kind) ST_TRY_GOTO(e, st_h5_attr_read_str(grp, "kind", MAX_SHORT_STR, kind), done);
    if (blob || n) ST_TRY_GOTO(e, st_h5_bytes_read(grp, "blob", MAX_TOKENIZER, &b, &bn), done);
    if (blob) *blob = b, b = NULL;
    if (n) *n = bn;
done:
    free(b);
    H5Gclose(grp);
    if (e && kind) free(*kind), *kind = NULL;
    return e;
}

st_err st_ckpt_read_tokenizer(const char *path, char **kind, uint8_t **blob, size_t *n)
{
    hid_t file;
    *kind = NULL, *blob = NULL, *n = 0;
    st_h5_quiet();
    ST_TRY(open_serial(path, &file));
    st_err e = load_tokenizer(file, kind, blob, n);
    H5Fclose(file);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* One requested set: its meta, parameters and (unless weights only) moments
 * and step. Collective; the status is agreed. A set the file lacks is left as
 * it is under ST_CKPT_SETS_OPTIONAL. On error s->meta is NULL. */
static st_err load_set(hid_t file, const char *path, const st_grid *g, st_ckpt_set *s, int flags, hid_t dxpl)
{
    st_err e = ST_OK;
    char have[256], oname[GPATH_CAP];
    int32_t present = st_h5_has_link(file, s->group);
    ST_TRY(st_allreduce(g->world, &present, 1, ST_M_I32, ST_OP_MIN));
    if (!present) {
        if (flags & ST_CKPT_SETS_OPTIONAL) return ST_OK;
        sets_in_file(file, have, sizeof have);
        ST_FAIL(ST_ERR_FORMAT, "%s has no parameter set '%s' (no group /%s; the file's sets: %s): it was saved "
                "without one; load it without this set or start the set fresh", path, s->group, s->group, have);
    }
    hid_t grp = H5Gopen2(file, s->group, H5P_DEFAULT);
    if (grp < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot open parameter set /%s", path, s->group);
    } else {
        if (st_h5_has_attr(grp, "meta")) e = st_h5_attr_read_str(grp, "meta", ST_CKPT_MAX_META, &s->meta);
        H5Gclose(grp);
    }
    ST_TRY_GOTO(e, st_agree(g->world, e), fail);
    tgroup gp = set_group(s, W_PARAMS), gm = set_group(s, W_M), gv = set_group(s, W_V);
    ST_TRY_GOTO(e, load_group(file, &gp, path, g, dxpl), fail);
    if (!s->m || (flags & ST_CKPT_WEIGHTS_ONLY)) return ST_OK;
    snprintf(oname, sizeof oname, "optim/%s", s->group);
    if (!has_set_optim(file, s->group)) {
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                         "%s: parameter set '%s' has no optimizer state (/%s): it was saved with weights only; "
                         "load it weights only (fresh AdamW moments) or resume from a training checkpoint",
                         path, s->group, oname);
    } else if ((grp = H5Gopen2(file, oname, H5P_DEFAULT)) < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot open /%s", path, oname);
    } else {
        e = st_h5_attr_read_i64(grp, "step", &s->adam_step);
        H5Gclose(grp);
    }
    ST_TRY_GOTO(e, st_agree(g->world, e), fail);
    ST_TRY_GOTO(e, load_group(file, &gm, path, g, dxpl), fail);
    ST_TRY_GOTO(e, load_group(file, &gv, path, g, dxpl), fail);
    return ST_OK;
fail:
    free(s->meta);
    s->meta = NULL;
    return e;
}

/* Every skip name (or prefix*) must name a tensor of the model: a typo would
 * silently load what it meant to leave out. */
static st_err check_skip_names(const st_ckpt_tensors *t, const char *const *skip, const char *path)
{
    for (; t && skip && *skip; skip++) {
        const char *one[2] = {*skip, NULL};
        int hit = 0;
        for (int i = 0; i < t->lay->n_tensors && !hit; i++) hit = st_ckpt_skipped(t->lay->tensors[i].name, one);
        if (!hit)
            ST_FAIL(ST_ERR_ARG, "%s: the name '%s' to leave out (init_skip) matches no tensor of the model; names "
                    "look like lm_head.weight or model.layers.0.mlp.* (`shardtune inspect %s` lists them)", path,
                    *skip, path);
    }
    return ST_OK;
}

st_err st_ckpt_load(const char *path, const st_grid *g, st_ckpt_tensors *t, st_train_state *s,
                    const char *const *skip, int flags, char **tok_kind, uint8_t **tok_blob, size_t *tok_n)
{
    st_h5_quiet();
    st_err e = ST_OK;
    hid_t fapl = H5I_INVALID_HID, file = H5I_INVALID_HID, dxpl = H5I_INVALID_HID;
    if (tok_kind) *tok_kind = NULL;
    if (tok_blob) *tok_blob = NULL;
    if (tok_n) *tok_n = 0;
    if (s) memset(s, 0, sizeof *s);
    for (int i = 0; t && i < t->n_sets && i < ST_CKPT_MAX_SETS; i++) t->sets[i].meta = NULL;
    e = check_tensors_arg(g, t, path);
    if (!e) e = check_skip_names(t, skip, path);
    ST_TRY(st_agree(g->world, e));
    ST_TRY(check_same_model(g, t, flags, path));
    e = st_h5_fapl_mpio(g->world, &fapl);
    if (!e) e = st_h5_check_regular(path);
    if (!e && (file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "cannot open checkpoint %s", path);
    }
    if (!e) e = check_format(file, path);
    if (!e) e = st_h5_dxpl_mpio(1, &dxpl);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
    tgroup gp = model_group(t, W_PARAMS, skip), gm = model_group(t, W_M, skip), gv = model_group(t, W_V, skip);
    ST_TRY_GOTO(e, load_group(file, &gp, path, g, dxpl), done);
    if (t->m && !(flags & ST_CKPT_WEIGHTS_ONLY)) {
        if (!has_model_optim(file))
            e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                             "%s has no optimizer state (/optim): it holds weights only; load it with "
                             "weights only (fresh AdamW moments) or resume from a training checkpoint", path);
        if (!e) e = load_optim_attrs(file, t);
        ST_TRY_GOTO(e, st_agree(g->world, e), done);
        ST_TRY_GOTO(e, load_group(file, &gm, path, g, dxpl), done);
        ST_TRY_GOTO(e, load_group(file, &gv, path, g, dxpl), done);
    }
    for (int i = 0; i < t->n_sets; i++) ST_TRY_GOTO(e, load_set(file, path, g, &t->sets[i], flags, dxpl), done);
    if (s) e = load_train_state(file, s);
    if (!e && (tok_kind || tok_blob || tok_n)) e = load_tokenizer(file, tok_kind, tok_blob, tok_n);
    ST_TRY_GOTO(e, st_agree(g->world, e), done);
done:
    st_h5_close(&dxpl);
    if (file >= 0 && H5Fclose(file) < 0 && !e) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "closing %s failed", path);
    }
    st_h5_close(&fapl);
    e = st_agree(g->world, e);
    if (e) {
        if (s) st_train_state_free(s);
        if (tok_kind) free(*tok_kind), *tok_kind = NULL;
        if (tok_blob) free(*tok_blob), *tok_blob = NULL;
        if (tok_n) *tok_n = 0;
        for (int i = 0; i < t->n_sets; i++) free(t->sets[i].meta), t->sets[i].meta = NULL;
    }
    return e;
}

void st_train_state_free(st_train_state *s)
{
    if (!s) return;
    free(s->recipe);
    free(s->method);
    s->recipe = s->method = NULL;
}

/* ---- verify a whole file: find_latest, inspect -------------------------------- */

enum { V_OK = 0, V_MISSING, V_BADSHAPE, V_NOSUM, V_READ, V_MISMATCH };

/* What a whole-file check expects to find: tensors by group with their global
 * shapes, the model's from its config, the sets' from the file itself. */
typedef struct {
    int g;          /* index into vlist.gpath */
    st_tensor t;    /* name, ndim, shape; the rest unused */
    int status;     /* V_BADSHAPE from the start: a set's object that is not a float32 tensor */
} vitem;

typedef struct {
    char gpath[MAX_TGROUPS][GPATH_CAP];
    int ng;
    vitem *v;
    int n, cap;
    st_err err;     /* set by the link-iteration callback */
} vlist;

static int vlist_group(vlist *L, const char *path)
{
    snprintf(L->gpath[L->ng], sizeof L->gpath[0], "%s", path);
    return L->ng++;
}

static st_err vlist_push(vlist *L, int g, const char *name, int ndim, const int64_t *shape, int status)
{
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 64;
        vitem *nv = realloc(L->v, (size_t)cap * sizeof *nv);
        if (!nv) ST_FAIL(ST_ERR_MEM, "out of memory listing the tensors of a checkpoint");
        L->v = nv, L->cap = cap;
    }
    vitem *it = &L->v[L->n++];
    memset(it, 0, sizeof *it);
    it->g = g;
    it->status = strlen(name) < sizeof it->t.name ? status : V_BADSHAPE; /* not a name we write */
    snprintf(it->t.name, sizeof it->t.name, "%s", name);
    it->t.ndim = ndim;
    it->t.shape[0] = shape[0], it->t.shape[1] = shape[1];
    return ST_OK;
}

typedef struct { vlist *L; int g, first, too_many; } list_ctx;

/* H5Literate callback: every link of a set's group becomes an item; links
 * that are not hard links (soft, external: never followed) are bad items. */
static herr_t collect_link(hid_t grp, const char *name, const H5L_info_t *info, void *op)
{
    (void)grp;
    list_ctx *c = op;
    static const int64_t none[2] = {0, 0};
    if (c->L->n - c->first >= MAX_SET_TENSORS) return c->too_many = 1; /* stops the iteration */
    c->L->err = vlist_push(c->L, c->g, name, 0, none, info->type == H5L_TYPE_HARD ? V_OK : V_BADSHAPE);
    return c->L->err ? -1 : 0;
}

/* The shape of dataset name in grp if it is a float32 tensor of rank 1 or 2
 * with sane dimensions; else it->status = V_BADSHAPE. */
static void probe_tensor(hid_t grp, vitem *it)
{
    hid_t d = H5I_INVALID_HID, type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    hsize_t dims[H5S_MAX_RANK];
    int nd;
    it->status = V_BADSHAPE;
    if ((d = H5Dopen2(grp, it->t.name, H5P_DEFAULT)) < 0 || (type = H5Dget_type(d)) < 0 ||
        (space = H5Dget_space(d)) < 0 || H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4 ||
        (nd = H5Sget_simple_extent_ndims(space)) < 1 || nd > 2 || H5Sget_simple_extent_dims(space, dims, NULL) < 0)
        goto done;
    const uint64_t r = dims[0], w = nd == 2 ? dims[1] : 1;
    if (r > (uint64_t)MAX_DIM || w > (uint64_t)MAX_DIM || (w && r > (uint64_t)MAX_DIM / w)) goto done;
    it->t.ndim = nd;
    it->t.shape[0] = (int64_t)r, it->t.shape[1] = (int64_t)w;
    it->status = V_OK;
done:
    st_h5_close(&space);
    st_h5_close(&type);
    st_h5_close(&d);
}

/* Append the objects of set group gpath (group index g) as items. */
static st_err list_set_tensors(hid_t file, const char *path, const char *gpath, vlist *L, int g)
{
    st_err e = ST_OK;
    hid_t grp = H5Gopen2(file, gpath, H5P_DEFAULT);
    if (grp < 0) ST_H5_FAIL("%s: cannot open parameter set /%s", path, gpath);
    const int first = L->n;
    list_ctx c = {L, g, first, 0};
    hsize_t idx = 0;
    L->err = ST_OK;
    herr_t rc = H5Literate(grp, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_link, &c);
    if (L->err) ST_FAIL_GOTO(e, done, L->err, "%s: listing parameter set /%s failed", path, gpath);
    if (c.too_many)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: parameter set /%s holds more than %d objects", path, gpath,
                     MAX_SET_TENSORS);
    if (rc < 0) ST_H5_GOTO(e, done, "%s: cannot list parameter set /%s", path, gpath);
    for (int i = first; i < L->n; i++)
        if (L->v[i].status == V_OK) probe_tensor(grp, &L->v[i]);
done:
    H5Gclose(grp);
    return e;
}

/* A set group holds as many objects as it was saved with. */
static st_err check_set_count(hid_t file, const char *path, const char *name, int found)
{
    int64_t saved;
    hid_t grp = H5Gopen2(file, name, H5P_DEFAULT);
    if (grp < 0) ST_H5_FAIL("%s: cannot open parameter set /%s", path, name);
    st_err e = st_h5_attr_read_i64(grp, "n_tensors", &saved);
    H5Gclose(grp);
    ST_TRY(e);
    if (saved != found)
        ST_FAIL(ST_ERR_FORMAT, "%s: parameter set /%s holds %d objects but was saved with %lld tensors "
                "(the file was modified after it was written)", path, name, found, (long long)saved);
    return ST_OK;
}

/* Every tensor the file should hold: the model's (and its moments when
 * present) from cfg, then each set's named by the root attribute "sets" as
 * the file lists them, and the same names again for its moments. */
static st_err vlist_build(hid_t file, const char *path, const st_config *cfg, vlist *L)
{
    st_layout lay;
    st_err e = ST_OK;
    static const char *mg[] = {"model", "optim/m", "optim/v"};
    ST_TRY(st_layout_init(&lay, cfg, 1, 0));
    for (int k = 0; k < (has_model_optim(file) ? 3 : 1) && !e; k++) {
        int g = vlist_group(L, mg[k]);
        for (int i = 0; i < lay.n_tensors && !e; i++)
            e = vlist_push(L, g, lay.tensors[i].name, lay.tensors[i].ndim, lay.tensors[i].shape, V_OK);
    }
    st_layout_free(&lay);
    ST_TRY(e);
    char names[ST_CKPT_MAX_SETS][ST_CKPT_MAX_SET_NAME + 1], gp[GPATH_CAP];
    int ns;
    ST_TRY(read_sets_attr(file, path, names, &ns));
    for (int s = 0; s < ns; s++) {
        if (!st_h5_has_link(file, names[s]))
            ST_FAIL(ST_ERR_FORMAT, "%s: parameter set /%s (named by the root attribute 'sets') is missing", path,
                    names[s]);
        const int first = L->n;
        ST_TRY(list_set_tensors(file, path, names[s], L, vlist_group(L, names[s])));
        const int last = L->n;
        ST_TRY(check_set_count(file, path, names[s], last - first));
        if (!has_set_optim(file, names[s])) continue;
        for (int w = 0; w < 2; w++) {
            snprintf(gp, sizeof gp, "optim/%s/%c", names[s], "mv"[w]);
            const int g = vlist_group(L, gp);
            for (int i = first; i < last; i++) {
                const vitem it = L->v[i]; /* a copy: the push may move the array */
                ST_TRY(vlist_push(L, g, it.t.name, it.t.ndim, it.t.shape, it.status));
            }
        }
    }
    return ST_OK;
}

static uint64_t vlist_hash(const vlist *L)
{
    uint64_t h = st_splitmix64((uint64_t)L->n);
    for (int i = 0; i < L->n; i++) {
        const vitem *it = &L->v[i];
        h = st_splitmix64(h ^ st_hash_str(it->t.name) ^ st_hash_str(L->gpath[it->g]));
        h = st_splitmix64(h ^ (uint64_t)it->t.shape[0] ^ ((uint64_t)it->t.shape[1] << 24) ^ ((uint64_t)it->status << 56));
    }
    return h;
}

/* One row block of every tensor per rank, read independently (no collective
 * to keep in step), checksummed; results reduced over comm. With out, comm
 * rank 0 prints one line per tensor. Fails on the first problem after all
 * tensors were checked, naming the file and the tensor. */
static st_err verify_tensors(hid_t file, const char *path, const st_config *cfg, MPI_Comm comm, FILE *out)
{
    st_err e = ST_OK;
    vlist L;
    int me, np, same;
    uint64_t *sum = NULL, *stored = NULL;
    int32_t *status = NULL;
    float *buf = NULL;
    size_t buf_n = 0;
    hid_t grp = H5I_INVALID_HID, d = H5I_INVALID_HID, fspace = H5I_INVALID_HID, mspace = H5I_INVALID_HID;
    memset(&L, 0, sizeof L);
    me = st_comm_rank(comm);
    np = st_comm_size(comm);
    e = vlist_build(file, path, cfg, &L);
    ST_TRY_GOTO(e, st_agree(comm, e), done);
    ST_TRY_GOTO(e, same_everywhere(comm, vlist_hash(&L), &same), done);
    if (!same) ST_FAIL_GOTO(e, done, ST_ERR_IO, "%s: the ranks read different tensor lists from the file", path);
    const int nt = L.n;
    sum = calloc(2 * (size_t)nt + 1, sizeof *sum), stored = sum ? sum + nt : NULL;
    status = calloc((size_t)nt + 1, sizeof *status);
    if (!sum || !status) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory verifying %s", path);
    ST_TRY_GOTO(e, st_agree(comm, e), done);
    for (int i = 0, gcur = -1; i < nt; i++) {
        const st_tensor *ti = &L.v[i].t;
        int *st = &status[i];
        *st = L.v[i].status;
        if (L.v[i].g != gcur) { /* items come group by group */
            gcur = L.v[i].g;
            st_h5_close(&grp);
            if (st_h5_has_link(file, L.gpath[gcur])) grp = H5Gopen2(file, L.gpath[gcur], H5P_DEFAULT);
        }
        if (*st != V_OK) continue;
        if (grp < 0 || !st_h5_has_link(grp, ti->name)) { *st = V_MISSING; continue; }
        if (open_tensor(grp, L.gpath[gcur], ti, path, &d)) { *st = V_BADSHAPE; continue; }
        if (st_h5_attr_read_u64(d, "checksum", &stored[i])) *st = V_NOSUM;
        const int64_t R = ti->shape[0], W = ti->shape[1];
        const int64_t r_end = W ? R * (me + 1) / np : 0, step = W >= VERIFY_BLOCK ? 1 : VERIFY_BLOCK / (W ? W : 1);
        for (int64_t r = R * me / np; r < r_end && *st == V_OK; r += step) {
            int64_t nr = r_end - r < step ? r_end - r : step;
            size_t n = (size_t)(nr * W);
            if (n > buf_n) {
                free(buf);
                buf_n = (buf = malloc(n * sizeof *buf)) ? n : 0;
                if (!buf) { *st = V_READ; break; } /* reported after the reduction */
            }
            hsize_t fst[2] = {(hsize_t)r, 0}, cnt[2] = {(hsize_t)nr, (hsize_t)W}, mn = n;
            if ((fspace = H5Dget_space(d)) < 0 ||
                H5Sselect_hyperslab(fspace, H5S_SELECT_SET, fst, NULL, cnt, NULL) < 0 ||
                (mspace = H5Screate_simple(1, &mn, NULL)) < 0 ||
                H5Dread(d, H5T_NATIVE_FLOAT, mspace, fspace, H5P_DEFAULT, buf) < 0)
                *st = V_READ;
            else
                sum[i] += st_ckpt_checksum_run(buf, n, (uint64_t)(r * W));
            st_h5_close(&mspace);
            st_h5_close(&fspace);
        }
        st_h5_close(&d);
    }
    st_h5_close(&grp);
    ST_TRY_GOTO(e, st_allreduce(comm, sum, nt, ST_M_U64, ST_OP_SUM), done);
    ST_TRY_GOTO(e, st_allreduce(comm, status, nt, ST_M_I32, ST_OP_MAX), done);
    int bad = 0, first = -1;
    double bytes = 0;
    for (int k = 0; k < nt; k++) {
        const st_tensor *ti = &L.v[k].t;
        if (status[k] == V_OK && sum[k] != stored[k]) status[k] = V_MISMATCH;
        if (status[k] != V_OK && first < 0) first = k;
        bad += status[k] != V_OK;
        bytes += 4.0 * (double)global_numel(ti);
        if (!out || me) continue;
        char shp[64], name[WHAT_CAP];
        static const char *what[] = {"ok", "MISSING", "WRONG SHAPE OR TYPE", "NO CHECKSUM", "READ ERROR",
                                     "CHECKSUM MISMATCH (damaged)"};
        snprintf(name, sizeof name, "/%s/%s", L.gpath[L.v[k].g], ti->name);
        if (ti->ndim) shape_str(ti->ndim, ti->shape, shp, sizeof shp);
        else snprintf(shp, sizeof shp, "?");
        fprintf(out, "  %-60s %-14s %10.3f MB  %s\n", name, shp, 4.0 * (double)global_numel(ti) / 1e6,
                what[status[k]]);
    }
    if (out && !me)
        fprintf(out, "%d tensors, %.3f MB: %s\n", nt, bytes / 1e6,
                bad ? "SOME TENSORS FAILED VERIFICATION" : "all checksums verified");
    if (first >= 0) {
        static const char *why[] = {"", "is missing", "has the wrong shape or type", "has no checksum attribute",
                                    "could not be read", "is damaged (checksum mismatch)"};
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: tensor /%s/%s %s%s", path, L.gpath[L.v[first].g],
                     L.v[first].t.name, why[status[first]],
                     bad > 1 ? " (and other tensors: see 'shardtune inspect')" : "");
    }
done:
    st_h5_close(&mspace);
    st_h5_close(&fspace);
    st_h5_close(&d);
    st_h5_close(&grp);
    free(buf);
    free(status);
    free(sum);
    free(L.v);
    return e;
}

/* Open path over comm and verify it whole. Collective; the status is agreed. */
static st_err verify_file(const char *path, MPI_Comm comm, FILE *out)
{
    st_err e = ST_OK;
    st_config cfg;
    hid_t fapl = H5I_INVALID_HID, file = H5I_INVALID_HID;
    e = st_h5_fapl_mpio(comm, &fapl);
    if (!e) e = st_h5_check_regular(path);
    if (!e && (file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "cannot open checkpoint %s", path);
    }
    if (!e) e = check_format(file, path);
    if (!e) e = read_config_attrs(file, path, &cfg);
    ST_TRY_GOTO(e, st_agree(comm, e), done);
    e = verify_tensors(file, path, &cfg, comm, out);
done:
    if (file >= 0) H5Fclose(file);
    st_h5_close(&fapl);
    return st_agree(comm, e);
}

st_err st_ckpt_find_latest_with(const char *dir, MPI_Comm comm, char *path_out, size_t cap,
                                st_ckpt_accept_fn accept, void *ctx)
{
    st_h5_quiet();
    const int me = st_comm_rank(comm);
    st_err e = ST_OK;
    char *names = NULL, *all = NULL, path[PATH_MAX];
    if (me == 0) {
        /* candidates, one per line: what `latest` names, then step files newest first */
        step_file *v = NULL;
        int n = 0;
        char latest[256] = "", lp[PATH_MAX];
        e = join_path(lp, sizeof lp, dir, "latest");
        FILE *f = e ? NULL : fopen(lp, "r");
        if (f) {
            if (fgets(latest, sizeof latest, f)) latest[strcspn(latest, "\r\n")] = '\0';
            fclose(f);
            if (strchr(latest, '/') || !strcmp(latest, ".") || !strcmp(latest, "..")) latest[0] = '\0';
        }
        if (!e) e = list_steps(dir, 0, &v, &n);
        size_t len = strlen(latest) + 2;
        for (int i = 0; i < n; i++) len += strlen(v[i].name) + 1;
        if (!e && !(names = malloc(len))) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
        if (!e) {
            size_t at = (size_t)sprintf(names, "%s%s", latest, latest[0] ? "\n" : "");
            for (int i = 0; i < n; i++)
                if (strcmp(v[i].name, latest)) at += (size_t)sprintf(names + at, "%s\n", v[i].name);
        }
        free(v);
    }
    ST_TRY_GOTO(e, st_agree(comm, e), done);
    ST_TRY_GOTO(e, st_bcast_str(comm, 0, names, &all), done);
    int tried = 0;
    char bad[1024] = ""; /* the names that failed, for the error */
    for (char *name = all, *nl; name && *name; name = nl + 1) {
        nl = strchr(name, '\n');
        *nl = '\0';
        tried++;
        if (strlen(bad) + strlen(name) + 8 < sizeof bad)
            snprintf(bad + strlen(bad), sizeof bad - strlen(bad), "%s%s", bad[0] ? ", " : "", name);
        ST_TRY_GOTO(e, join_path(path, sizeof path, dir, name), done);
        if (strlen(path) >= cap) ST_FAIL_GOTO(e, done, ST_ERR_ARG, "checkpoint path %s does not fit %zu bytes", path, cap);
        int fatal = 0;
        if (!(e = accept(path, ctx, &fatal))) {
            memcpy(path_out, path, strlen(path) + 1);
            goto done;
        }
        if (fatal) goto done;
        e = ST_OK;
        if (me == 0) {
            char why[1024];
            error_headline(why, sizeof why);
            /* the reason usually names the file already */
            if (strstr(why, path)) fprintf(stderr, "shardtune: warning: skipping checkpoint: %s\n", why);
            else fprintf(stderr, "shardtune: warning: skipping checkpoint %s: %s\n", path, why);
        }
        st_error_clear();
    }
    if (!tried)
        ST_FAIL_GOTO(e, done, ST_ERR_IO, "no checkpoint in %s: no 'latest' file and no step_*.h5 files "
                     "(is this the run's checkpoint directory?)", dir);
    ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "no checkpoint in %s verifies: %s (the warnings above say why each failed)",
                 dir, bad);
done:
    free(names);
    free(all);
    return e;
}

static st_err accept_verified(const char *path, void *ctx, int *fatal)
{
    (void)fatal;
    return verify_file(path, *(MPI_Comm *)ctx, NULL);
}

st_err st_ckpt_find_latest(const char *dir, MPI_Comm comm, char *path_out, size_t cap)
{
    return st_ckpt_find_latest_with(dir, comm, path_out, cap, accept_verified, &comm);
}

/* Rank 0's line about one set: tensors, parameters, optimizer step, meta. */
static st_err inspect_set(hid_t file, const char *path, const char *name, FILE *out)
{
    st_err e = ST_OK;
    vlist L;
    char *meta = NULL, oname[GPATH_CAP];
    int64_t step = 0;
    long long params = 0;
    hid_t grp = H5I_INVALID_HID;
    memset(&L, 0, sizeof L);
    if (!st_h5_has_link(file, name)) {
        fprintf(out, "set %s: MISSING (named by the root attribute 'sets')\n", name);
        return ST_OK;
    }
    ST_TRY_GOTO(e, list_set_tensors(file, path, name, &L, vlist_group(&L, name)), done);
    for (int i = 0; i < L.n; i++) params += L.v[i].t.shape[0] * L.v[i].t.shape[1];
    if ((grp = H5Gopen2(file, name, H5P_DEFAULT)) < 0) ST_H5_GOTO(e, done, "%s: cannot open /%s", path, name);
    if (st_h5_has_attr(grp, "meta")) ST_TRY_GOTO(e, st_h5_attr_read_str(grp, "meta", ST_CKPT_MAX_META, &meta), done);
    st_h5_close(&grp);
    fprintf(out, "set %s: %d tensors, %lld parameters, ", name, L.n, params);
    snprintf(oname, sizeof oname, "optim/%s", name);
    if (has_set_optim(file, name)) {
        if ((grp = H5Gopen2(file, oname, H5P_DEFAULT)) < 0) ST_H5_GOTO(e, done, "%s: cannot open /%s", path, oname);
        ST_TRY_GOTO(e, st_h5_attr_read_i64(grp, "step", &step), done);
        fprintf(out, "optimizer step %lld\n", (long long)step);
    } else {
        fprintf(out, "optimizer: none\n");
    }
    const int cut = 2000;
    if (meta) fprintf(out, "  meta: %.*s%s\n", cut, meta, strlen(meta) > (size_t)cut ? " ..." : "");
done:
    st_h5_close(&grp);
    free(meta);
    free(L.v);
    return e;
}

/* Rank 0's header lines of inspect. */
static st_err inspect_header(const char *path, FILE *out)
{
    hid_t file;
    st_err e = ST_OK;
    st_config c;
    st_train_state s;
    char *created = NULL, *git = NULL, *kind = NULL;
    size_t tok_n = 0;
    memset(&s, 0, sizeof s);
    ST_TRY(open_serial(path, &file));
    ST_TRY_GOTO(e, read_config_attrs(file, path, &c), done);
    ST_TRY_GOTO(e, load_train_state(file, &s), done);
    if (st_h5_has_attr(file, "created")) ST_TRY_GOTO(e, st_h5_attr_read_str(file, "created", MAX_SHORT_STR, &created), done);
    if (st_h5_has_attr(file, "git")) ST_TRY_GOTO(e, st_h5_attr_read_str(file, "git", MAX_SHORT_STR, &git), done);
    ST_TRY_GOTO(e, load_tokenizer(file, &kind, NULL, &tok_n), done);
    fprintf(out, "checkpoint %s\n", path);
    fprintf(out, "format: %s version %d, created %s, git %s\n", ST_CKPT_FORMAT, ST_CKPT_VERSION,
            created ? created : "?", git ? git : "?");
    fprintf(out, "config: family=%s n_layer=%d d_model=%d n_head=%d n_kv_head=%d d_ff=%d vocab_size=%d "
            "max_seq=%d norm_eps=%g rope_theta=%g tied_embeddings=%d qkv_bias=%d\n",
            st_family_name(c.family), c.n_layer, c.d_model, c.n_head, c.n_kv_head, c.d_ff, c.vocab_size,
            c.max_seq, (double)c.norm_eps, (double)c.rope_theta, c.tied_embeddings, c.qkv_bias);
    fprintf(out, "parameters: %lld\n", st_config_num_params(&c));
    fprintf(out, "step: %lld, tokens seen: %lld\n", (long long)s.step, (long long)s.tokens_seen);
    if (st_h5_has_link(file, "train"))
        fprintf(out, "train: method=%s data epoch %lld cursor %lld seed %llu, recipe %zu bytes\n",
                s.method ? s.method : "-", (long long)s.data_epoch, (long long)s.data_cursor,
                (unsigned long long)s.data_seed, s.recipe ? strlen(s.recipe) : (size_t)0);
    else
        fprintf(out, "train: none (weights only)\n");
    if (kind) fprintf(out, "tokenizer: %s, %zu bytes\n", kind, tok_n);
    else fprintf(out, "tokenizer: none\n");
    if (has_model_optim(file)) {
        st_ckpt_tensors t;
        memset(&t, 0, sizeof t);
        ST_TRY_GOTO(e, load_optim_attrs(file, &t), done);
        fprintf(out, "optimizer: AdamW step %lld, beta1 %g, beta2 %g, eps %g, weight decay %g\n",
                (long long)t.adam_step, (double)t.beta1, (double)t.beta2, (double)t.eps, (double)t.weight_decay);
    } else {
        fprintf(out, "optimizer: none\n");
    }
    char names[ST_CKPT_MAX_SETS][ST_CKPT_MAX_SET_NAME + 1];
    int ns;
    ST_TRY_GOTO(e, read_sets_attr(file, path, names, &ns), done);
    if (!ns) fprintf(out, "sets: none\n");
    for (int i = 0; i < ns; i++) ST_TRY_GOTO(e, inspect_set(file, path, names[i], out), done);
    fprintf(out, "tensors:\n");
done:
    free(created);
    free(git);
    free(kind);
    st_train_state_free(&s);
    H5Fclose(file);
    return e;
}

st_err st_ckpt_inspect(const char *path, MPI_Comm comm, FILE *out)
{
    st_h5_quiet();
    const int me = st_comm_rank(comm);
    st_err e = me == 0 && out ? inspect_header(path, out) : ST_OK;
    ST_TRY(st_agree(comm, e));
    ST_TRY(verify_file(path, comm, out));
    if (out && me == 0) fflush(out);
    return ST_OK;
}

st_err st_ckpt_load_whole(const char *path, st_config *cfg, st_layout *lay, float **params, char **tok_kind,
                          uint8_t **tok_blob, size_t *tok_n)
{
    *params = NULL;
    ST_TRY(st_ckpt_read_config(path, MPI_COMM_SELF, cfg));
    ST_TRY(st_layout_init(lay, cfg, 1, 0));
    st_grid g;
    st_err e = st_grid_init(&g, MPI_COMM_SELF, 1);
    float *p = e ? NULL : calloc(lay->numel, sizeof *p);
    if (!e && !p)
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for the %zu parameters of %s",
                         lay->numel, path);
    if (!e) {
        st_ckpt_tensors t = {.lay = lay, .params = p};
        e = st_ckpt_load(path, &g, &t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, tok_kind, tok_blob, tok_n);
        st_grid_free(&g);
    }
    if (e) {
        free(p);
        st_layout_free(lay);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    *params = p;
    return ST_OK;
}
