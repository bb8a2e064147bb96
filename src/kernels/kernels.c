/* kernels.c: the rank-local math primitives of kernels.h, on oneDNN 2.x or 3.x
 * (the API differences are in dnnl_compat.h).
 *
 * Each call builds a key (operation kind + every shape, stride, flag and
 * constant that shapes the primitive) and looks it up in the primitive cache.
 * On a miss the primitive and one memory object per argument are created
 * (memory objects start without a buffer); on a hit the call only points the
 * memory objects at the caller's buffers and executes. Scratchpads are owned by
 * the cache entry (user scratchpad mode), so oneDNN allocates nothing per call.
 *
 * The cache is a hash table (64-bit FNV-1a of the key) with a bound: past
 * ST_KERNELS_CACHE_MAX entries the least recently used one is destroyed (LRU
 * list). A training step uses a fixed set of shapes (33 for GPT-2 124M: the
 * layers share them), generation adds about 15 per new prompt length; the
 * bound keeps a long run over many lengths from holding every primitive and
 * scratchpad it ever built, while a step's working set always fits.
 *
 * The cache, the stream and the bf16 scratch are process globals: call these
 * functions from one thread (oneDNN itself runs each primitive on
 * OMP_NUM_THREADS threads).
 */
#include "kernels/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/dnnl_compat.h"

/* ---- the cache ---------------------------------------------------------- */

typedef enum {
    OP_MATMUL,
    OP_COLSUM,      /* db (1,N) += ones (1,M) @ x (M,N): column sums via matmul */
    OP_LN_FWD,
    OP_LN_BWD,
    OP_GELU_FWD,
    OP_GELU_BWD,
    OP_SILU_FWD,
    OP_SILU_BWD,
    OP_MUL,
    OP_ADD,
    OP_SOFTMAX_FWD,
    OP_SOFTMAX_BWD,
    OP_COPY4D,
    OP_NKINDS
} op_kind;

static const struct {
    const char *name;
    int ndims;     /* how many of key.dims are used */
    int nstrided;  /* how many of key.strides are used */
} op_info[OP_NKINDS] = {
    [OP_MATMUL] = {"matmul (B0,B1,M,K,N)", 5, 3},
    [OP_COLSUM] = {"column sum (rows,cols)", 2, 0},
    [OP_LN_FWD] = {"layer_normalization forward (N,C)", 2, 0},
    [OP_LN_BWD] = {"layer_normalization backward (N,C)", 2, 0},
    [OP_GELU_FWD] = {"eltwise gelu_tanh forward (n)", 1, 0},
    [OP_GELU_BWD] = {"eltwise gelu_tanh backward (n)", 1, 0},
    [OP_SILU_FWD] = {"eltwise swish forward (n)", 1, 0},
    [OP_SILU_BWD] = {"eltwise swish backward (n)", 1, 0},
    [OP_MUL] = {"binary mul (n)", 1, 0},
    [OP_ADD] = {"binary add (n)", 1, 0},
    [OP_SOFTMAX_FWD] = {"softmax forward (rows,cols,row stride)", 3, 0},
    [OP_SOFTMAX_BWD] = {"softmax backward (rows,cols,row stride)", 3, 0},
    [OP_COPY4D] = {"reorder (4-D dims)", 4, 2},
};

/* Always memset to zero before filling, so two keys compare with memcmp and
 * hash the same. */
typedef struct {
    int kind;
    int accumulate, has_bias;
    int bf16;              /* matmul: bf16 inputs, fp32 accumulation and output */
    int runtime;           /* matmul: ST_MM_RUNTIME_* mask of the sizes given at execution
                              (0 in dims); the strides are fixed */
    float f;               /* matmul alpha, normalisation eps */
    int64_t dims[5];
    int64_t strides[3][4]; /* matmul: a, b, c; copy4d: dst, src */
} op_key;

#define MAX_ARGS 10

typedef struct op_entry op_entry;
struct op_entry {
    op_key key;
    uint64_t hash;
    op_entry *chain;      /* next entry in the same hash bucket */
    op_entry *newer, *older; /* the LRU list */
    dnnl_primitive_t prim;
    int nargs;   /* args[0..nuser) take the caller's buffers, then fixed ones (alpha, scratchpad) */
    int nuser;
    int nuser_set; /* nuser is final (a runtime-shape matmul has none) */
    dnnl_exec_arg_t args[MAX_ARGS];
    float alpha;    /* the value behind ST_DNNL_ARG_ALPHA (oneDNN 3.x) */
    float *scratch; /* per-kind buffer: ones (COLSUM), bias / alpha (MATMUL), diff scale,
                       diff shift and a zero shift (LN_BWD) */
};

static dnnl_engine_t g_engine;
static dnnl_stream_t g_stream;
static op_entry **g_buckets;    /* ST_KERNELS_CACHE_MAX * 2 heads, a power of two */
static size_t g_nbuckets;
static op_entry *g_newest, *g_oldest;
static int g_ncache, g_limit = ST_KERNELS_CACHE_MAX;
static long g_evictions;

/* "matmul (B0,B1,M,K,N) 1,1,37,53,29 strides [0 0 53 1] [...]": names a key in messages. */
static const char *describe(const op_key *k)
{
    static _Thread_local char buf[512];
    int n = snprintf(buf, sizeof buf, "%s%s%s ", op_info[k->kind].name, k->bf16 ? " bf16" : "",
                     k->runtime ? " (some sizes at execution)" : "");
    for (int i = 0; i < op_info[k->kind].ndims && n < (int)sizeof buf; i++)
        n += snprintf(buf + n, sizeof buf - (size_t)n, "%s%lld", i ? "," : "",
                      (long long)k->dims[i]);
    for (int s = 0; s < op_info[k->kind].nstrided && n < (int)sizeof buf; s++) {
        n += snprintf(buf + n, sizeof buf - (size_t)n, "%s[%lld %lld %lld %lld]",
                      s ? " " : " strides ", (long long)k->strides[s][0],
                      (long long)k->strides[s][1], (long long)k->strides[s][2],
                      (long long)k->strides[s][3]);
    }
    return buf;
}

/* call is the stringified C call; only the function name goes into the message. */
static st_err dnnl_check(dnnl_status_t s, const char *call, const op_key *k)
{
    if (s == dnnl_success) return ST_OK;
    const char *hint = "";
    if (s == dnnl_invalid_arguments && op_info[k->kind].nstrided)
        hint = " (strides must be non-negative)";
    if (s == dnnl_unimplemented && k->bf16)
        hint = " (this oneDNN build has no bf16 matmul for this CPU: use precision fp32)";
    ST_FAIL(ST_ERR_DNNL, "oneDNN %.*s failed (%s) for %s%s", (int)strcspn(call, "("), call,
            dnnl_status2str(s), describe(k), hint);
}

#define DNNL_TRY(k, call) ST_TRY_GOTO(err, dnnl_check((call), #call, (k)), done)

static void entry_destroy(op_entry *e)
{
    if (!e) return;
    for (int i = 0; i < e->nargs; i++) dnnl_memory_destroy(e->args[i].memory);
    if (e->prim) dnnl_primitive_destroy(e->prim);
    free(e->scratch);
    free(e);
}

/* A memory object for argument arg on data (NULL: the call sets it). */
static st_err add_arg_data(op_entry *e, int arg, const st_md *md, void *data)
{
    ST_ASSERT(e->nargs < MAX_ARGS, "too many oneDNN arguments for %s", describe(&e->key));
    dnnl_memory_t m = NULL;
    st_err err = dnnl_check(dnnl_memory_create(&m, ST_MD(*md), g_engine,
                                               data ? data : DNNL_MEMORY_NONE),
                            "dnnl_memory_create", &e->key);
    if (err) return err;
    e->args[e->nargs].arg = arg;
    e->args[e->nargs].memory = m;
    e->nargs++;
    return ST_OK;
}

/* A user argument: the caller's buffer, set at each call (see run). */
static st_err add_arg(op_entry *e, int arg, const st_md *md) { return add_arg_data(e, arg, md, NULL); }

/* Attributes every primitive here gets: a scratchpad the entry owns. */
static dnnl_status_t new_attr(dnnl_primitive_attr_t *attr)
{
    dnnl_status_t s = dnnl_primitive_attr_create(attr);
    if (s != dnnl_success) return s;
    return dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user);
}

/* After the user arguments: create the primitive and its own scratchpad. */
static st_err finish(op_entry *e, const_dnnl_primitive_desc_t pd)
{
    st_err err = ST_OK;
    const op_key *k = &e->key;
    if (!e->nuser_set) e->nuser = e->nargs;
    e->nuser_set = 1;
    st_md_query smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (smd && dnnl_memory_desc_get_size(smd) > 0) {
        ST_ASSERT(e->nargs < MAX_ARGS, "too many oneDNN arguments for %s", describe(k));
        dnnl_memory_t m = NULL;
        DNNL_TRY(k, dnnl_memory_create(&m, smd, g_engine, DNNL_MEMORY_ALLOCATE));
        e->args[e->nargs].arg = DNNL_ARG_SCRATCHPAD;
        e->args[e->nargs].memory = m;
        e->nargs++;
    }
    DNNL_TRY(k, dnnl_primitive_create(&e->prim, pd));
done:
    return err;
}

static dnnl_status_t md_1d(st_md *md, int64_t n)
{
    const int64_t d[1] = {n}, s[1] = {1};
    return st_md_strided(md, 1, d, dnnl_f32, s);
}

static dnnl_status_t md_2d(st_md *md, int64_t rows, int64_t cols)
{
    const int64_t d[2] = {rows, cols}, s[2] = {cols, 1};
    return st_md_strided(md, 2, d, dnnl_f32, s);
}

typedef st_err (*build_fn)(op_entry *e);

static uint64_t key_hash(const op_key *k)
{
    const unsigned char *p = (const unsigned char *)k;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < sizeof *k; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void lru_unlink(op_entry *e)
{
    if (e->newer) e->newer->older = e->older; else g_newest = e->older;
    if (e->older) e->older->newer = e->newer; else g_oldest = e->newer;
    e->newer = e->older = NULL;
}

static void lru_push_newest(op_entry *e)
{
    e->older = g_newest;
    e->newer = NULL;
    if (g_newest) g_newest->newer = e; else g_oldest = e;
    g_newest = e;
}

/* Take e out of its bucket and the LRU list and destroy it. */
static void cache_remove(op_entry *e)
{
    op_entry **p = &g_buckets[e->hash & (g_nbuckets - 1)];
    while (*p != e) p = &(*p)->chain;
    *p = e->chain;
    lru_unlink(e);
    entry_destroy(e);
    g_ncache--;
}

/* The cached entry for key k, built by build on a miss. */
static st_err get_entry(const op_key *k, build_fn build, op_entry **out)
{
    const uint64_t h = key_hash(k);
    if (g_buckets) {
        for (op_entry *e = g_buckets[h & (g_nbuckets - 1)]; e; e = e->chain) {
            if (e->hash == h && memcmp(&e->key, k, sizeof *k) == 0) {
                if (e != g_newest) { lru_unlink(e); lru_push_newest(e); }
                *out = e;
                return ST_OK;
            }
        }
    }
    ST_TRY(st_kernels_init());
    if (!g_buckets) {
        size_t n = 16;
        while (n < 2 * (size_t)g_limit) n *= 2;
        g_buckets = calloc(n, sizeof *g_buckets);
        if (!g_buckets) ST_FAIL(ST_ERR_MEM, "out of memory for the oneDNN primitive cache");
        g_nbuckets = n;
    }
    op_entry *e = calloc(1, sizeof *e);
    if (!e) ST_FAIL(ST_ERR_MEM, "out of memory caching a oneDNN primitive");
    memcpy(&e->key, k, sizeof *k);
    e->hash = h;
    st_err err = build(e);
    if (err) {
        entry_destroy(e);
        st_error_trace(__FILE__, __LINE__, __func__);
        return err;
    }
    while (g_ncache >= g_limit && g_oldest) {
        cache_remove(g_oldest);
        g_evictions++;
    }
    op_entry **bucket = &g_buckets[h & (g_nbuckets - 1)];
    e->chain = *bucket;
    *bucket = e;
    lru_push_newest(e);
    g_ncache++;
    *out = e;
    return ST_OK;
}

/* Point the user arguments at ptrs (in the order the builder added them) and run. */
static st_err run(op_entry *e, void *const *ptrs)
{
    st_err err = ST_OK;
    for (int i = 0; i < e->nuser; i++)
        DNNL_TRY(&e->key, dnnl_memory_set_data_handle(e->args[i].memory, ptrs[i]));
    DNNL_TRY(&e->key, dnnl_primitive_execute(e->prim, g_stream, e->nargs, e->args));
    DNNL_TRY(&e->key, dnnl_stream_wait(g_stream));
done:
    return err;
}

static void key_init(op_key *k, op_kind kind)
{
    memset(k, 0, sizeof *k);
    k->kind = kind;
}

/* ---- lifetime ----------------------------------------------------------- */

st_err st_kernels_init(void)
{
    if (g_stream) return ST_OK;
    dnnl_status_t s;
    if (!g_engine && (s = dnnl_engine_create(&g_engine, dnnl_cpu, 0)) != dnnl_success)
        ST_FAIL(ST_ERR_DNNL, "oneDNN dnnl_engine_create (cpu) failed (%s)", dnnl_status2str(s));
    if ((s = dnnl_stream_create(&g_stream, g_engine, dnnl_stream_default_flags)) != dnnl_success) {
        g_stream = NULL;
        ST_FAIL(ST_ERR_DNNL, "oneDNN dnnl_stream_create failed (%s)", dnnl_status2str(s));
    }
    return ST_OK;
}

static void bf16_scratch_free(void);

void st_kernels_shutdown(void)
{
    while (g_oldest) cache_remove(g_oldest);
    free(g_buckets);
    g_buckets = NULL;
    g_nbuckets = 0;
    g_evictions = 0;
    bf16_scratch_free();
    if (g_stream) dnnl_stream_destroy(g_stream);
    if (g_engine) dnnl_engine_destroy(g_engine);
    g_stream = NULL;
    g_engine = NULL;
}

int st_kernels_cache_size(void) { return g_ncache; }
long st_kernels_cache_evictions(void) { return g_evictions; }

st_err st_kernels_set_cache_limit(int limit)
{
    if (limit < 1) ST_FAIL(ST_ERR_ARG, "primitive cache limit %d: expected at least 1", limit);
    while (g_ncache > limit) cache_remove(g_oldest);
    if (g_buckets && (size_t)limit > g_nbuckets / 2) { /* rehash into more buckets */
        size_t n = g_nbuckets;
        while (n < 2 * (size_t)limit) n *= 2;
        op_entry **b = calloc(n, sizeof *b);
        if (!b) ST_FAIL(ST_ERR_MEM, "out of memory growing the oneDNN primitive cache");
        for (op_entry *e = g_newest; e; e = e->older) {
            e->chain = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
        free(g_buckets);
        g_buckets = b;
        g_nbuckets = n;
    }
    g_limit = limit;
    return ST_OK;
}

/* ---- bf16 --------------------------------------------------------------- */

/* Round to nearest even, as the AVX512_BF16 instructions and oneDNN's
 * reorders do; NaN stays NaN (quiet). Branch-free, so the loop vectorizes. */
static inline st_bf16 to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, nan = (u >> 16) | 0x40u;
    return (st_bf16)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

float st_bf16_to_float(st_bf16 x)
{
    uint32_t u = (uint32_t)x << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void st_to_bf16(st_bf16 *dst, const float *src, int64_t n)
{
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; i++) dst[i] = to_bf16(src[i]);
}

/* Grow-only buffers for f32 operands rounded to bf16 before a bf16 product
 * (two: a matmul rounds at most its two inputs). */
static st_bf16 *g_b16[2];
static size_t g_b16_cap[2];

static void bf16_scratch_free(void)
{
    for (int i = 0; i < 2; i++) { free(g_b16[i]); g_b16[i] = NULL; g_b16_cap[i] = 0; }
}

/* Elements a 4-D strided operand spans when it is stored densely in some
 * order of its dims (no gaps, no overlap), else 0. */
static int64_t dense_span(const int64_t dims[4], const int64_t strides[4])
{
    int64_t count = 1;
    int used[4] = {0};
    for (int n = 0; n < 4; n++) {   /* the dim with stride == count is next, innermost first */
        int found = -1;
        for (int i = 0; i < 4 && found < 0; i++)
            if (!used[i] && (dims[i] == 1 || strides[i] == count)) found = i;
        if (found < 0) return 0;
        used[found] = 1;
        count *= dims[found];
    }
    return count;
}

/* ptr rounded to bf16 in scratch slot: same strides, for an operand stored densely. */
static st_err round_operand(const st_bf16 **out, const float *ptr, const int64_t dims[4],
                            const int64_t strides[4], int slot, const char *name)
{
    const int64_t span = dense_span(dims, strides);
    if (!span)
        ST_FAIL(ST_ERR_ARG, "st_matmul: a bf16 product needs its f32 operand %s stored densely "
                "(dims %lld,%lld,%lld,%lld strides %lld,%lld,%lld,%lld)", name,
                (long long)dims[0], (long long)dims[1], (long long)dims[2], (long long)dims[3],
                (long long)strides[0], (long long)strides[1], (long long)strides[2],
                (long long)strides[3]);
    if ((size_t)span > g_b16_cap[slot]) {
        st_bf16 *grown = realloc(g_b16[slot], (size_t)span * sizeof *grown);
        if (!grown) ST_FAIL(ST_ERR_MEM, "out of memory rounding %lld floats to bf16", (long long)span);
        g_b16[slot] = grown;
        g_b16_cap[slot] = (size_t)span;
    }
    st_to_bf16(g_b16[slot], ptr, span);
    *out = g_b16[slot];
    return ST_OK;
}

st_err st_bf16_matmul_available(const char **impl)
{
    /* a bf16 product of a typical shape: which implementation oneDNN picks */
    static char name[128];
    st_err err = ST_OK;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    st_md a = ST_MD_NONE, b = ST_MD_NONE, c = ST_MD_NONE;
    const int64_t d[2] = {256, 256}, s[2] = {256, 1};
    op_key k;
    key_init(&k, OP_MATMUL);
    k.bf16 = 1;
    *impl = NULL;
    ST_TRY(st_kernels_init());
    DNNL_TRY(&k, st_md_strided(&a, 2, d, dnnl_bf16, s));
    DNNL_TRY(&k, st_md_strided(&b, 2, d, dnnl_bf16, s));
    DNNL_TRY(&k, st_md_strided(&c, 2, d, dnnl_f32, s));
    DNNL_TRY(&k, dnnl_primitive_attr_create(&attr));
    if (st_pd_matmul(&pd, g_engine, a, b, NULL, c, attr) == dnnl_success) {
        const char *info = NULL;
        if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &info) == dnnl_success && info) {
            snprintf(name, sizeof name, "%s", info);
            *impl = name;
        }
    }
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&a), st_md_free(&b), st_md_free(&c);
    return err;
}

int st_cpu_has_bf16(void)
{
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    /* the ISA values are bit sets that grow with the ISA: bf16 dot products
     * from avx512_core_bf16 on (AMX parts include it) */
    return (isa & dnnl_cpu_isa_avx512_core_bf16) == dnnl_cpu_isa_avx512_core_bf16;
}

/* ---- matrix products ---------------------------------------------------- */

/* The four memory descriptors of a matmul with key k: a, b, c with their
 * strides (the sizes in k->runtime given at execution), and the bias (1,1,1,N). */
static st_err matmul_mds(const op_key *k, st_md *a_md, st_md *b_md, st_md *c_md, st_md *bias_md)
{
    st_err err = ST_OK;
    const int64_t R = DNNL_RUNTIME_DIM_VAL;
    const int64_t B0 = k->dims[0], B1 = k->dims[1];
    const int64_t M = k->runtime & ST_MM_RUNTIME_M ? R : k->dims[2],
                  K = k->runtime & ST_MM_RUNTIME_K ? R : k->dims[3],
                  N = k->runtime & ST_MM_RUNTIME_N ? R : k->dims[4];
    const int64_t adims[4] = {B0, B1, M, K}, bdims[4] = {B0, B1, K, N}, cdims[4] = {B0, B1, M, N};
    const int64_t biasdims[4] = {1, 1, 1, N}, biasstrides[4] = {N, N, N, 1};
    const dnnl_data_type_t in = k->bf16 ? dnnl_bf16 : dnnl_f32;
    DNNL_TRY(k, st_md_strided(a_md, 4, adims, in, k->strides[0]));
    DNNL_TRY(k, st_md_strided(b_md, 4, bdims, in, k->strides[1]));
    DNNL_TRY(k, st_md_strided(c_md, 4, cdims, dnnl_f32, k->strides[2]));
    if (k->has_bias) DNNL_TRY(k, st_md_strided(bias_md, 4, biasdims, dnnl_f32, biasstrides));
done:
    return err;
}

/* A matmul primitive for the OP_MATMUL key k, in entry e.
 * args: dst, src, weights[, bias] (none for runtime shapes: made per call). */
static st_err build_matmul_as(op_entry *e, const op_key *k)
{
    st_err err = ST_OK;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    dnnl_primitive_desc_t pd = NULL;
    st_md a_md = ST_MD_NONE, b_md = ST_MD_NONE, c_md = ST_MD_NONE, bias_md = ST_MD_NONE;
    if (k->has_bias && k->f != 1.0f && ST_DNNL_BIAS_SCALED) { /* room for bias / alpha */
        ST_ASSERT(!e->scratch, "matmul entry scratch used twice for %s", describe(k));
        e->scratch = malloc((size_t)k->dims[4] * sizeof(float));
        if (!e->scratch) ST_FAIL(ST_ERR_MEM, "out of memory for the bias of %s", describe(k));
    }
    ST_TRY_GOTO(err, matmul_mds(k, &a_md, &b_md, &c_md, &bias_md), done);
    DNNL_TRY(k, new_attr(&attr));
    if (k->runtime) /* the scratchpad depends on the sizes: oneDNN keeps it */
        DNNL_TRY(k, dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_library));
    if (k->f != 1.0f) DNNL_TRY(k, st_attr_scale(attr, k->f));
    if (k->accumulate) {
        DNNL_TRY(k, dnnl_post_ops_create(&po));
        DNNL_TRY(k, st_post_ops_sum(po));
        DNNL_TRY(k, dnnl_primitive_attr_set_post_ops(attr, po));
    }
    DNNL_TRY(k, st_pd_matmul(&pd, g_engine, a_md, b_md, k->has_bias ? &bias_md : NULL, c_md, attr));
    if (!k->runtime) {
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DST, &c_md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC, &a_md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_WEIGHTS, &b_md), done);
        if (k->has_bias) ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_BIAS, &bias_md), done);
    }
    e->nuser = e->nargs;
    e->nuser_set = 1;
    if (k->f != 1.0f && ST_DNNL_ARG_ALPHA) {
        st_md one = ST_MD_NONE;
        e->alpha = k->f;
        err = dnnl_check(md_1d(&one, 1), "md_1d", k);
        if (!err) err = add_arg_data(e, ST_DNNL_ARG_ALPHA, &one, &e->alpha);
        st_md_free(&one);
        if (err) goto done;
    }
    ST_TRY_GOTO(err, finish(e, pd), done);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (po) dnnl_post_ops_destroy(po);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&a_md), st_md_free(&b_md), st_md_free(&c_md), st_md_free(&bias_md);
    return err;
}

static st_err build_matmul(op_entry *e) { return build_matmul_as(e, &e->key); }

/* Run a matmul with sizes given at execution: memory objects for this call's
 * sizes, then the fixed arguments (alpha) of the entry. */
static st_err run_runtime_matmul(op_entry *e, const st_matmul_desc *d, float *c, const void *a,
                                 const void *b)
{
    st_err err = ST_OK;
    op_key k = e->key; /* with this call's sizes, for the descriptors */
    k.runtime = 0;
    k.dims[2] = d->M, k.dims[3] = d->K, k.dims[4] = d->N;
    st_md a_md = ST_MD_NONE, b_md = ST_MD_NONE, c_md = ST_MD_NONE, bias_md = ST_MD_NONE;
    dnnl_exec_arg_t args[MAX_ARGS];
    int n = 0;
    ST_TRY_GOTO(err, matmul_mds(&k, &a_md, &b_md, &c_md, &bias_md), done);
    void *ptrs[3] = {c, (void *)a, (void *)b};
    st_md *mds[3] = {&c_md, &a_md, &b_md};
    const int which[3] = {DNNL_ARG_DST, DNNL_ARG_SRC, DNNL_ARG_WEIGHTS};
    for (; n < 3; n++) {
        args[n].arg = which[n];
        args[n].memory = NULL;
        DNNL_TRY(&k, dnnl_memory_create(&args[n].memory, ST_MD(*mds[n]), g_engine, ptrs[n]));
    }
    for (int i = e->nuser; i < e->nargs; i++) args[n + i - e->nuser] = e->args[i];
    DNNL_TRY(&k, dnnl_primitive_execute(e->prim, g_stream, n + e->nargs - e->nuser, args));
    DNNL_TRY(&k, dnnl_stream_wait(g_stream));
done:
    for (int i = 0; i < n; i++) if (args[i].memory) dnnl_memory_destroy(args[i].memory);
    st_md_free(&a_md), st_md_free(&b_md), st_md_free(&c_md), st_md_free(&bias_md);
    return err;
}

/* The stride a size-1 batch dim gets in the key: the span of the dims inside it,
 * as a dense tensor would have. Callers may pass anything there; this keeps one
 * cache entry per real layout. */
static void canon_batch_strides(int64_t s[4], int64_t B0, int64_t B1, int64_t rows,
                                int64_t cols)
{
    int64_t span = rows * s[2] > cols * s[3] ? rows * s[2] : cols * s[3];
    if (B1 == 1) s[1] = span;
    if (B1 > 1 && B1 * s[1] > span) span = B1 * s[1];
    if (B0 == 1) s[0] = span;
}

/* The cache key of a (non-empty) matmul. */
static void matmul_key(op_key *k, const st_matmul_desc *d)
{
    key_init(k, OP_MATMUL);
    k->accumulate = d->accumulate != 0;
    k->has_bias = d->has_bias != 0;
    k->bf16 = d->bf16 != 0;
    k->f = d->alpha == 0.0f ? 1.0f : d->alpha;
    k->dims[0] = d->B0;
    k->dims[1] = d->B1;
    k->dims[2] = d->M, k->dims[3] = d->K, k->dims[4] = d->N;
    memcpy(k->strides[0], d->sa, sizeof d->sa);
    memcpy(k->strides[1], d->sb, sizeof d->sb);
    memcpy(k->strides[2], d->sc, sizeof d->sc);
    if (d->runtime_dims) { /* one primitive for every value of these sizes */
        k->runtime = d->runtime_dims;
        if (k->runtime & ST_MM_RUNTIME_M) k->dims[2] = 0;
        if (k->runtime & ST_MM_RUNTIME_K) k->dims[3] = 0;
        if (k->runtime & ST_MM_RUNTIME_N) k->dims[4] = 0;
        return; /* strides as given: canonical ones would depend on the sizes */
    }
    canon_batch_strides(k->strides[0], d->B0, d->B1, d->M, d->K);
    canon_batch_strides(k->strides[1], d->B0, d->B1, d->K, d->N);
    canon_batch_strides(k->strides[2], d->B0, d->B1, d->M, d->N);
}

st_err st_matmul(const st_matmul_desc *d, float *c, const void *a, const void *b,
                 const float *bias)
{
    const int64_t B0 = d->B0, B1 = d->B1, M = d->M, K = d->K, N = d->N;
    if (B0 < 0 || B1 < 0 || M < 0 || K < 0 || N < 0)
        ST_FAIL(ST_ERR_ARG, "st_matmul: negative size in (B0,B1,M,K,N) = (%lld,%lld,%lld,%lld,%lld)",
                (long long)B0, (long long)B1, (long long)M, (long long)K, (long long)N);
    if (d->has_bias && !bias) ST_FAIL(ST_ERR_ARG, "st_matmul: has_bias is set but bias is NULL");
    if ((d->a_bf16 || d->b_bf16) && !d->bf16)
        ST_FAIL(ST_ERR_ARG, "st_matmul: a bf16 operand needs a bf16 product (set bf16)");
    if (d->runtime_dims && (d->bf16 || d->has_bias || (d->runtime_dims & ~7)))
        ST_FAIL(ST_ERR_ARG, "st_matmul: sizes at execution (runtime_dims %d) are for fp32 products "
                "without bias, and a mask of ST_MM_RUNTIME_M, _K, _N", d->runtime_dims);
    if (B0 == 0 || B1 == 0 || M == 0 || N == 0) return ST_OK;
    if (K == 0) {
        /* An empty product (e.g. a weight gradient over zero tokens): c = (c +) bias. */
        for (int64_t i = 0; i < B0; i++)
            for (int64_t j = 0; j < B1; j++)
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++) {
                        float *x = c + i * d->sc[0] + j * d->sc[1] + m * d->sc[2] + n * d->sc[3];
                        *x = (d->accumulate ? *x : 0.0f) + (d->has_bias ? bias[n] : 0.0f);
                    }
        return ST_OK;
    }
    if (d->bf16) { /* f32 operands are rounded to bf16 first */
        const int64_t adims[4] = {B0, B1, M, K}, bdims[4] = {B0, B1, K, N};
        if (!d->a_bf16) ST_TRY(round_operand((const st_bf16 **)&a, a, adims, d->sa, 0, "a"));
        if (!d->b_bf16) ST_TRY(round_operand((const st_bf16 **)&b, b, bdims, d->sb, 1, "b"));
    }
    op_key k;
    matmul_key(&k, d);
    op_entry *e;
    ST_TRY(get_entry(&k, build_matmul, &e));
    if (k.runtime) {
        ST_TRY(run_runtime_matmul(e, d, c, a, b));
        return ST_OK;
    }
    if (k.has_bias && k.f != 1.0f && ST_DNNL_BIAS_SCALED) {
        /* oneDNN 2.x scales the bias with the product, alpha (a@b + bias); the
         * contract is alpha a@b + bias, so it gets bias / alpha. (A binary-add
         * post-op would avoid the division but crashes oneDNN 2.6's gemm matmul
         * on some layouts.) */
        for (int64_t n = 0; n < N; n++) e->scratch[n] = bias[n] / k.f;
        bias = e->scratch;
    }
    void *ptrs[] = {c, (void *)a, (void *)b, (void *)bias};
    ST_TRY(run(e, ptrs));
    return ST_OK;
}

/* A plain 2-D product c (M,N) [+]= a (M,K) @ b (K,N) given row and column strides. */
static st_matmul_desc mm2d(int64_t M, int64_t K, int64_t N, int64_t a_row, int64_t a_col,
                           int64_t b_row, int64_t b_col, int accumulate)
{
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = M, .K = K, .N = N, .alpha = 1.0f,
                        .accumulate = accumulate};
    d.sa[2] = a_row, d.sa[3] = a_col;
    d.sb[2] = b_row, d.sb[3] = b_col;
    d.sc[2] = N, d.sc[3] = 1;
    return d;
}

st_err st_linear_forward(float *out, const float *inp, const float *w, const st_bf16 *w16,
                         const float *bias, int64_t N, int64_t IC, int64_t OC)
{
    /* out (N,OC) = inp (N,IC) @ w^T (IC,OC): w^T is w with swapped strides. */
    st_matmul_desc d = mm2d(N, IC, OC, IC, 1, 1, IC, 0);
    d.has_bias = bias != NULL;
    d.bf16 = d.b_bf16 = w16 != NULL;
    ST_TRY(st_matmul(&d, out, inp, w16 ? (const void *)w16 : (const void *)w, bias));
    return ST_OK;
}

/* Column sums of x (rows,cols), added to out (cols): out += ones (1,rows) @ x. */
static st_err build_colsum(op_entry *e)
{
    const int64_t rows = e->key.dims[0];
    e->scratch = malloc((size_t)rows * sizeof(float));
    if (!e->scratch)
        ST_FAIL(ST_ERR_MEM, "out of memory allocating %lld floats of ones for a column sum",
                (long long)rows);
    for (int64_t i = 0; i < rows; i++) e->scratch[i] = 1.0f;
    /* ones (1,rows) @ x (rows,cols), accumulated into out (1,cols) */
    st_matmul_desc d = mm2d(1, rows, e->key.dims[1], rows, 1, e->key.dims[1], 1, 1);
    op_key mk;
    matmul_key(&mk, &d);
    ST_TRY(build_matmul_as(e, &mk));
    return ST_OK;
}

static st_err colsum_add(float *out, const float *x, int64_t rows, int64_t cols)
{
    if (rows == 0 || cols == 0) return ST_OK;
    op_key k;
    key_init(&k, OP_COLSUM);
    k.dims[0] = rows;
    k.dims[1] = cols;
    op_entry *e;
    ST_TRY(get_entry(&k, build_colsum, &e));
    void *ptrs[] = {out, e->scratch, (void *)x};
    ST_TRY(run(e, ptrs));
    return ST_OK;
}

st_err st_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const st_bf16 *w16, int64_t N, int64_t IC, int64_t OC,
                          int accumulate_dinp)
{
    if (dinp) {
        /* dinp (N,IC) [+]= dout (N,OC) @ w (OC,IC) */
        st_matmul_desc d = mm2d(N, OC, IC, OC, 1, IC, 1, accumulate_dinp);
        d.bf16 = d.b_bf16 = w16 != NULL;
        ST_TRY(st_matmul(&d, dinp, dout, w16 ? (const void *)w16 : (const void *)w, NULL));
    }
    if (dw) {
        /* dw (OC,IC) += dout^T (OC,N) @ inp (N,IC): dout^T by swapped strides */
        st_matmul_desc d = mm2d(OC, N, IC, 1, OC, IC, 1, 1);
        d.bf16 = w16 != NULL;
        ST_TRY(st_matmul(&d, dw, dout, inp, NULL));
    }
    if (db) ST_TRY(colsum_add(db, dout, N, OC));
    return ST_OK;
}

/* ---- normalisation ------------------------------------------------------ */

/* Descriptors shared by the layer-norm builders: data (N,C), stats (N), scale/shift (C). */
static st_err ln_descs(const op_key *k, st_md *data, st_md *stat, st_md *wmd)
{
    st_err err = ST_OK;
    DNNL_TRY(k, md_2d(data, k->dims[0], k->dims[1]));
    DNNL_TRY(k, md_1d(stat, k->dims[0]));
    DNNL_TRY(k, md_1d(wmd, k->dims[1]));
done:
    return err;
}

/* args: dst, mean, variance, src, scale, shift. */
static st_err build_ln_fwd(op_entry *e)
{
    st_err err = ST_OK;
    const op_key *k = &e->key;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    st_md data = ST_MD_NONE, stat = ST_MD_NONE, wmd = ST_MD_NONE;
    ST_TRY_GOTO(err, ln_descs(k, &data, &stat, &wmd), done);
    DNNL_TRY(k, new_attr(&attr));
    DNNL_TRY(k, st_pd_layernorm_fwd(&pd, g_engine, data, stat, k->f, dnnl_use_scale | dnnl_use_shift,
                                    attr));
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DST, &data), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_MEAN, &stat), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_VARIANCE, &stat), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC, &data), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SCALE, &wmd), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SHIFT, &wmd), done);
    ST_TRY_GOTO(err, finish(e, pd), done);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&data), st_md_free(&stat), st_md_free(&wmd);
    return err;
}

st_err st_layernorm_forward(float *out, float *mean, float *var, const float *inp,
                            const float *w, const float *b, int64_t N, int64_t C, float eps)
{
    if (N < 0 || C <= 0)
        ST_FAIL(ST_ERR_ARG, "st_layernorm_forward: bad shape (N,C) = (%lld,%lld)", (long long)N,
                (long long)C);
    if (!w || !b) ST_FAIL(ST_ERR_ARG, "st_layernorm_forward: weight and bias are required");
    if (N == 0) return ST_OK;
    op_key k;
    key_init(&k, OP_LN_FWD);
    k.dims[0] = N;
    k.dims[1] = C;
    k.f = eps;
    op_entry *e;
    ST_TRY(get_entry(&k, build_ln_fwd, &e));
    void *ptrs[] = {out, mean, var, (void *)inp, (void *)w, (void *)b};
    ST_TRY(run(e, ptrs));
    return ST_OK;
}

/* args: diff_src, diff_scale, diff_shift, diff_dst, src, mean, variance, scale, shift.
 * e->scratch (3C) holds diff_scale and diff_shift, which are then added to dw and
 * db, and C zeros for the shift: oneDNN 2.6 wants a shift argument in backward
 * although the gradient does not depend on it. */
static st_err build_ln_bwd(op_entry *e)
{
    st_err err = ST_OK;
    const op_key *k = &e->key;
    const unsigned flags = dnnl_use_scale | dnnl_use_shift;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t fwd_pd = NULL, pd = NULL;
    st_md data = ST_MD_NONE, stat = ST_MD_NONE, wmd = ST_MD_NONE;
    e->scratch = calloc(3 * (size_t)k->dims[1], sizeof(float));
    if (!e->scratch) ST_FAIL(ST_ERR_MEM, "out of memory for %s", describe(k));
    ST_TRY_GOTO(err, ln_descs(k, &data, &stat, &wmd), done);
    DNNL_TRY(k, st_pd_layernorm_fwd(&fwd_pd, g_engine, data, stat, k->f, flags, NULL));
    DNNL_TRY(k, new_attr(&attr));
    DNNL_TRY(k, st_pd_layernorm_bwd(&pd, g_engine, data, stat, k->f, flags, fwd_pd, attr));
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_SRC, &data), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_SCALE, &wmd), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_SHIFT, &wmd), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_DST, &data), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC, &data), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_MEAN, &stat), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_VARIANCE, &stat), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SCALE, &wmd), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SHIFT, &wmd), done);
    ST_TRY_GOTO(err, finish(e, pd), done);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (fwd_pd) dnnl_primitive_desc_destroy(fwd_pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&data), st_md_free(&stat), st_md_free(&wmd);
    return err;
}

st_err st_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                             const float *inp, const float *mean, const float *var,
                             const float *w, int64_t N, int64_t C, float eps)
{
    if (N < 0 || C <= 0)
        ST_FAIL(ST_ERR_ARG, "st_layernorm_backward: bad shape (N,C) = (%lld,%lld)", (long long)N,
                (long long)C);
    if (!w) ST_FAIL(ST_ERR_ARG, "st_layernorm_backward: the weight is required");
    if (N == 0) return ST_OK;
    op_key k;
    key_init(&k, OP_LN_BWD);
    k.dims[0] = N;
    k.dims[1] = C;
    k.f = eps;
    op_entry *e;
    ST_TRY(get_entry(&k, build_ln_bwd, &e));
    float *dscale = e->scratch, *dshift = e->scratch + C, *zeros = e->scratch + 2 * C;
    void *ptrs[] = {dinp,        dscale,       dshift,      (void *)dout, (void *)inp,
                    (void *)mean, (void *)var, (void *)w,   zeros};
    ST_TRY(run(e, ptrs));
    /* oneDNN writes the parameter gradients; the contract accumulates them. */
    for (int64_t c = 0; c < C; c++) {
        if (dw) dw[c] += dscale[c];
        if (db) db[c] += dshift[c];
    }
    return ST_OK;
}

void st_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w,
                        int64_t N, int64_t C, float eps)
{
#pragma omp parallel for
    for (int64_t i = 0; i < N; i++) {
        const float *x = inp + i * C;
        float *o = out + i * C;
        double ss = 0.0;
        for (int64_t c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / (double)C + (double)eps));
        rstd[i] = r;
        for (int64_t c = 0; c < C; c++) o[c] = x[c] * r * w[c];
    }
}

void st_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                         const float *rstd, const float *w, int64_t N, int64_t C)
{
    /* dinp = rstd * (w*dout - x * rstd^2 * mean(w*dout*x)) */
#pragma omp parallel for
    for (int64_t i = 0; i < N; i++) {
        const float *x = inp + i * C, *g = dout + i * C;
        float *dx = dinp + i * C;
        double dot = 0.0;
        for (int64_t c = 0; c < C; c++) dot += (double)w[c] * g[c] * x[c];
        double r = rstd[i];
        double k = r * r * dot / (double)C;
        for (int64_t c = 0; c < C; c++) dx[c] = (float)(r * ((double)w[c] * g[c] - x[c] * k));
    }
    /* dw += sum over rows of dout * x * rstd; a block of columns per thread so the
     * sum order (and result) does not depend on the thread count. */
    enum { BLK = 64 };
    if (!dw) return; /* a frozen norm */
#pragma omp parallel for
    for (int64_t c0 = 0; c0 < C; c0 += BLK) {
        int64_t c1 = c0 + BLK < C ? c0 + BLK : C;
        double acc[BLK] = {0};
        for (int64_t i = 0; i < N; i++) {
            const float *x = inp + i * C, *g = dout + i * C;
            double r = rstd[i];
            for (int64_t c = c0; c < c1; c++) acc[c - c0] += (double)g[c] * x[c] * r;
        }
        for (int64_t c = c0; c < c1; c++) dw[c] += (float)acc[c - c0];
    }
}

/* ---- elementwise -------------------------------------------------------- */

static dnnl_alg_kind_t eltwise_alg(int kind)
{
    return (kind == OP_GELU_FWD || kind == OP_GELU_BWD) ? dnnl_eltwise_gelu_tanh
                                                        : dnnl_eltwise_swish;
}

/* swish with alpha 1 is silu; gelu_tanh takes no alpha. */
static float eltwise_alpha(int kind)
{
    return (kind == OP_GELU_FWD || kind == OP_GELU_BWD) ? 0.0f : 1.0f;
}

/* forward args: dst, src.  backward args: diff_src, diff_dst, src. */
static st_err build_eltwise(op_entry *e)
{
    st_err err = ST_OK;
    const op_key *k = &e->key;
    const int backward = k->kind == OP_GELU_BWD || k->kind == OP_SILU_BWD;
    const dnnl_alg_kind_t alg = eltwise_alg(k->kind);
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t fwd_pd = NULL, pd = NULL;
    st_md md = ST_MD_NONE;
    DNNL_TRY(k, md_1d(&md, k->dims[0]));
    DNNL_TRY(k, new_attr(&attr));
    if (!backward) {
        DNNL_TRY(k, st_pd_eltwise_fwd(&pd, g_engine, alg, md, eltwise_alpha(k->kind), attr));
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DST, &md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC, &md), done);
    } else {
        DNNL_TRY(k, st_pd_eltwise_fwd(&fwd_pd, g_engine, alg, md, eltwise_alpha(k->kind), NULL));
        DNNL_TRY(k, st_pd_eltwise_bwd(&pd, g_engine, alg, md, eltwise_alpha(k->kind), fwd_pd, attr));
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_SRC, &md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_DST, &md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC, &md), done);
    }
    ST_TRY_GOTO(err, finish(e, pd), done);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (fwd_pd) dnnl_primitive_desc_destroy(fwd_pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&md);
    return err;
}

/* args: dst, src0, src1. */
static st_err build_binary(op_entry *e)
{
    st_err err = ST_OK;
    const op_key *k = &e->key;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    st_md md = ST_MD_NONE;
    DNNL_TRY(k, md_1d(&md, k->dims[0]));
    DNNL_TRY(k, new_attr(&attr));
    DNNL_TRY(k, st_pd_binary(&pd, g_engine, k->kind == OP_MUL ? dnnl_binary_mul : dnnl_binary_add,
                             md, attr));
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DST, &md), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC_0, &md), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC_1, &md), done);
    ST_TRY_GOTO(err, finish(e, pd), done);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&md);
    return err;
}

/* Run an elementwise kind of length n on ptrs (order as in its builder). */
static st_err elementwise(op_kind kind, build_fn build, int64_t n, void *const *ptrs)
{
    if (n < 0) ST_FAIL(ST_ERR_ARG, "%s: negative length %lld", op_info[kind].name, (long long)n);
    if (n == 0) return ST_OK;
    op_key k;
    key_init(&k, kind);
    k.dims[0] = n;
    op_entry *e;
    ST_TRY(get_entry(&k, build, &e));
    ST_TRY(run(e, ptrs));
    return ST_OK;
}

st_err st_gelu_forward(float *out, const float *inp, int64_t n)
{
    void *ptrs[] = {out, (void *)inp};
    ST_TRY(elementwise(OP_GELU_FWD, build_eltwise, n, ptrs));
    return ST_OK;
}

st_err st_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n)
{
    void *ptrs[] = {dinp, (void *)dout, (void *)inp};
    ST_TRY(elementwise(OP_GELU_BWD, build_eltwise, n, ptrs));
    return ST_OK;
}

st_err st_swiglu_forward(float *out, float *act, const float *gate, const float *up, int64_t n)
{
    void *silu[] = {act, (void *)gate};               /* act = silu(gate) */
    ST_TRY(elementwise(OP_SILU_FWD, build_eltwise, n, silu));
    void *mul[] = {out, act, (void *)up};             /* out = act * up */
    ST_TRY(elementwise(OP_MUL, build_binary, n, mul));
    return ST_OK;
}

st_err st_swiglu_backward(float *dgate, float *dup, const float *dout, const float *act,
                          const float *gate, const float *up, int64_t n)
{
    void *mul_up[] = {dup, (void *)dout, (void *)act}; /* dup = dout * act */
    ST_TRY(elementwise(OP_MUL, build_binary, n, mul_up));
    void *mul_gate[] = {dgate, (void *)dout, (void *)up}; /* dgate = dout * up ... */
    ST_TRY(elementwise(OP_MUL, build_binary, n, mul_gate));
    void *silu[] = {dgate, dgate, (void *)gate};      /* ... * silu'(gate), in place */
    ST_TRY(elementwise(OP_SILU_BWD, build_eltwise, n, silu));
    return ST_OK;
}

st_err st_add(float *out, const float *a, const float *b, int64_t n)
{
    /* oneDNN allows dst to alias src0; addition commutes, so put an aliased b first. */
    if (out == b) {
        const float *t = a;
        a = b;
        b = t;
    }
    void *ptrs[] = {out, (void *)a, (void *)b};
    ST_TRY(elementwise(OP_ADD, build_binary, n, ptrs));
    return ST_OK;
}

/* ---- softmax ------------------------------------------------------------ */

/* forward args: dst, src.  backward args: diff_src, diff_dst, dst. */
static st_err build_softmax(op_entry *e)
{
    st_err err = ST_OK;
    const op_key *k = &e->key;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t fwd_pd = NULL, pd = NULL;
    st_md md = ST_MD_NONE;
    const int64_t sd[2] = {k->dims[0], k->dims[1]}, ss[2] = {k->dims[2], 1};
    DNNL_TRY(k, st_md_strided(&md, 2, sd, dnnl_f32, ss));
    DNNL_TRY(k, new_attr(&attr));
    if (k->kind == OP_SOFTMAX_FWD) {
        DNNL_TRY(k, st_pd_softmax_fwd(&pd, g_engine, md, 1, attr));
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DST, &md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_SRC, &md), done);
    } else {
        DNNL_TRY(k, st_pd_softmax_fwd(&fwd_pd, g_engine, md, 1, NULL));
        DNNL_TRY(k, st_pd_softmax_bwd(&pd, g_engine, md, 1, fwd_pd, attr));
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_SRC, &md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DIFF_DST, &md), done);
        ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_DST, &md), done);
    }
    ST_TRY_GOTO(err, finish(e, pd), done);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (fwd_pd) dnnl_primitive_desc_destroy(fwd_pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&md);
    return err;
}

static st_err softmax(op_kind kind, int64_t rows, int64_t cols, int64_t ld, void *const *ptrs)
{
    if (rows < 0 || cols < 0 || ld < cols)
        ST_FAIL(ST_ERR_ARG, "%s: bad shape (%lld,%lld), row stride %lld", op_info[kind].name,
                (long long)rows, (long long)cols, (long long)ld);
    if (rows == 0 || cols == 0) return ST_OK;
    op_key k;
    key_init(&k, kind);
    k.dims[0] = rows;
    k.dims[1] = cols;
    k.dims[2] = ld;
    op_entry *e;
    ST_TRY(get_entry(&k, build_softmax, &e));
    ST_TRY(run(e, ptrs));
    return ST_OK;
}

st_err st_softmax_forward(float *out, const float *inp, int64_t rows, int64_t cols)
{
    return st_softmax_forward_ld(out, inp, rows, cols, cols);
}

st_err st_softmax_forward_ld(float *out, const float *inp, int64_t rows, int64_t cols, int64_t ld)
{
    void *ptrs[] = {out, (void *)inp};
    ST_TRY(softmax(OP_SOFTMAX_FWD, rows, cols, ld, ptrs));
    return ST_OK;
}

st_err st_softmax_backward(float *dinp, const float *dout, const float *out, int64_t rows,
                           int64_t cols)
{
    void *ptrs[] = {dinp, (void *)dout, (void *)out};
    ST_TRY(softmax(OP_SOFTMAX_BWD, rows, cols, cols, ptrs));
    return ST_OK;
}

/* ---- layout ------------------------------------------------------------- */

/* args: dst, src. */
static st_err build_copy4d(op_entry *e)
{
    st_err err = ST_OK;
    const op_key *k = &e->key;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL;
    st_md dst = ST_MD_NONE, src = ST_MD_NONE;
    DNNL_TRY(k, st_md_strided(&dst, 4, k->dims, dnnl_f32, k->strides[0]));
    DNNL_TRY(k, st_md_strided(&src, 4, k->dims, dnnl_f32, k->strides[1]));
    DNNL_TRY(k, new_attr(&attr));
    DNNL_TRY(k, dnnl_reorder_primitive_desc_create(&pd, ST_MD(src), g_engine, ST_MD(dst), g_engine,
                                                   attr));
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_TO, &dst), done);
    ST_TRY_GOTO(err, add_arg(e, DNNL_ARG_FROM, &src), done);
    ST_TRY_GOTO(err, finish(e, pd), done);
done:
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (attr) dnnl_primitive_attr_destroy(attr);
    st_md_free(&dst), st_md_free(&src);
    return err;
}

st_err st_copy4d(float *dst, const int64_t dst_strides[4], const float *src,
                 const int64_t src_strides[4], const int64_t dims[4])
{
    for (int i = 0; i < 4; i++) {
        if (dims[i] < 0)
            ST_FAIL(ST_ERR_ARG, "st_copy4d: negative dims (%lld,%lld,%lld,%lld)",
                    (long long)dims[0], (long long)dims[1], (long long)dims[2],
                    (long long)dims[3]);
        if (dims[i] == 0) return ST_OK;
    }
    op_key k;
    key_init(&k, OP_COPY4D);
    memcpy(k.dims, dims, 4 * sizeof *dims);
    memcpy(k.strides[0], dst_strides, 4 * sizeof *dst_strides);
    memcpy(k.strides[1], src_strides, 4 * sizeof *src_strides);
    op_entry *e;
    ST_TRY(get_entry(&k, build_copy4d, &e));
    void *ptrs[] = {dst, (void *)src};
    ST_TRY(run(e, ptrs));
    return ST_OK;
}
