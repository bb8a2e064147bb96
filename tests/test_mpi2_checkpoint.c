/* test_mpi2_checkpoint.c: checkpoints across grids on 2 ranks (mpirun -np 2).
 *
 * Values are functions of (tensor, global index) only, so the expected
 * contents of any rank's slice on any grid are computed independently of the
 * checkpoint code; the library itself never gathers a tensor.
 */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "grid.h"
#include "harness.h"
#include "mpi_check.h"
#include "params.h"
#include "rng.h"

static char g_dir[256];
static int g_rank;

/* ---- agreement helpers: every rank asserts the same value ------------------ */

static int all_true(int local)
{
    int out = 0;
    MPI_Allreduce(&local, &out, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return out;
}
#define ALL(cond) ck_assert_msg(all_true(!!(cond)), "not true on every rank: %s (rank %d: %s)", #cond, g_rank, \
                                st_error_message())

/* Does rank 0's current error message contain needle? (same answer everywhere) */
static int rank0_msg_has(const char *needle)
{
    int has = g_rank == 0 && strstr(st_error_message(), needle) != NULL;
    MPI_Bcast(&has, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return has;
}
#define MSG_HAS(needle) ck_assert_msg(rank0_msg_has(needle), "rank 0's error lacks '%s': %s", needle, \
                                      g_rank == 0 ? st_error_message() : "")

static void path_in(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

/* ---- model values ---------------------------------------------------------- */

static st_config llama_cfg(void)
{
    st_config c = {0};
    c.family = ST_FAMILY_LLAMA;
    c.n_layer = 2, c.d_model = 32, c.n_head = 4, c.n_kv_head = 2, c.d_ff = 48;
    c.vocab_size = 37, c.max_seq = 16, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f;
    c.tied_embeddings = 0, c.qkv_bias = 1;
    return c;
}

static st_config gpt2_cfg(void)
{
    st_config c = {0};
    c.family = ST_FAMILY_GPT2;
    c.n_layer = 2, c.d_model = 32, c.n_head = 4, c.n_kv_head = 4, c.d_ff = 64;
    c.vocab_size = 37, c.max_seq = 16, c.norm_eps = 1e-5f, c.rope_theta = 0.0f;
    c.tied_embeddings = 1, c.qkv_bias = 0;
    return c;
}

static float value_at(uint64_t salt, const char *name, int64_t gidx)
{
    uint64_t h = st_splitmix64(salt ^ st_hash_str(name) ^ st_splitmix64((uint64_t)gidx));
    return (float)((double)(h >> 40) / (double)(1 << 24) - 0.5);
}

/* Global row-major index of local flat element k of t. */
static int64_t gidx_of(const st_tensor *t, int64_t k)
{
    int64_t W = t->lshape[1];
    return (t->start[0] + k / W) * t->shape[1] + t->start[1] + k % W;
}

/* The whole flat buffer as it should be: salt 0 = parameters (st_params_init
 * plus a perturbation), else moments. Padding rows hold pad. */
static void fill_full(const st_layout *lay, float *x, uint64_t salt, float pad)
{
    if (salt == 0) st_params_init(lay, x, 1234);
    else for (size_t k = 0; k < lay->numel; k++) x[k] = pad;
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i];
        for (int64_t k = 0; k < t->lshape[0] * t->lshape[1]; k++) {
            float v = value_at(salt, t->name, gidx_of(t, k));
            if (salt == 0) x[t->offset + k] += 1e-3f * v;
            else x[t->offset + k] = v;
        }
        if (salt == 0)
            for (size_t k = (size_t)(t->lshape[0] * t->lshape[1]); k < t->numel; k++) x[t->offset + k] = pad;
    }
}

/* 1 where flat index k is a real element of a tensor not matched by skip. */
static uint8_t *real_mask(const st_layout *lay, const char *const *skip)
{
    uint8_t *m = calloc(lay->numel ? lay->numel : 1, 1);
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i];
        int skipped = 0;
        for (const char *const *s = skip; s && *s; s++) {
            size_t n = strlen(*s);
            if ((*s)[n - 1] == '*' ? !strncmp(t->name, *s, n - 1) : !strcmp(t->name, *s)) skipped = 1;
        }
        if (!skipped) memset(m + t->offset, 1, (size_t)(t->lshape[0] * t->lshape[1]));
    }
    return m;
}

/* Elements of got (flat range [ob, oe)) that differ bitwise from the expected
 * value: want[k] where the mask is set, the untouched sentinel elsewhere. */
static long mismatches(const st_layout *lay, const float *got, size_t ob, size_t oe, uint64_t salt,
                       float sentinel, const char *const *skip)
{
    float *want = malloc(lay->numel * sizeof *want);
    uint8_t *mask = real_mask(lay, skip);
    fill_full(lay, want, salt, sentinel);
    long bad = 0;
    for (size_t k = ob; k < oe; k++) {
        float w = mask[k] ? want[k] : sentinel;
        bad += memcmp(&got[k - ob], &w, sizeof w) != 0;
    }
    free(want);
    free(mask);
    return bad;
}

/* ---- a rank's model on a grid ---------------------------------------------- */

typedef struct {
    st_grid g;
    st_layout lay;
    float *p, *m, *v;
    st_ckpt_tensors t;
} rig;

#define SENTINEL (-7.25f)

static void rig_init(rig *r, const st_config *cfg, int tp, int with_opt)
{
    memset(r, 0, sizeof *r);
    ALL(st_grid_init(&r->g, MPI_COMM_WORLD, tp) == 0);
    ALL(st_layout_init(&r->lay, cfg, tp, r->g.tp_rank) == 0);
    size_t n = r->lay.numel, ob = n * (size_t)r->g.dp_rank / (size_t)r->g.dp_size;
    size_t oe = n * (size_t)(r->g.dp_rank + 1) / (size_t)r->g.dp_size;
    r->p = malloc(n * sizeof(float));
    r->t.lay = &r->lay;
    r->t.params = r->p;
    r->t.opt_begin = ob, r->t.opt_end = oe;
    if (with_opt) {
        r->m = malloc((oe - ob + 1) * sizeof(float));
        r->v = malloc((oe - ob + 1) * sizeof(float));
        r->t.m = r->m, r->t.v = r->v;
    }
    r->t.adam_step = 77, r->t.beta1 = 0.9f, r->t.beta2 = 0.95f, r->t.eps = 1e-8f, r->t.weight_decay = 0.1f;
}

/* Values as training would hold them (moments only in this rank's range). */
static void rig_fill(rig *r)
{
    const size_t n = r->lay.numel, ob = r->t.opt_begin, oe = r->t.opt_end;
    fill_full(&r->lay, r->p, 0, 0.0f);
    if (!r->m) return;
    float *full = malloc(n * sizeof *full);
    fill_full(&r->lay, full, 1, 0.0f);
    memcpy(r->m, full + ob, (oe - ob) * sizeof *full);
    fill_full(&r->lay, full, 2, 0.0f);
    memcpy(r->v, full + ob, (oe - ob) * sizeof *full);
    free(full);
}

/* Everything set to the sentinel, as a fresh buffer about to be loaded. */
static void rig_clear(rig *r)
{
    for (size_t k = 0; k < r->lay.numel; k++) r->p[k] = SENTINEL;
    for (size_t k = 0; r->m && k < r->t.opt_end - r->t.opt_begin; k++) r->m[k] = r->v[k] = SENTINEL;
    r->t.adam_step = 0, r->t.beta1 = r->t.beta2 = r->t.eps = r->t.weight_decay = 0.0f;
}

static void rig_free(rig *r)
{
    free(r->p);
    free(r->m);
    free(r->v);
    st_layout_free(&r->lay);
    st_grid_free(&r->g);
}

static int rig_params_ok(rig *r, const char *const *skip)
{
    return all_true(mismatches(&r->lay, r->p, 0, r->lay.numel, 0, SENTINEL, skip) == 0);
}

static int rig_moments_ok(rig *r, const char *const *skip)
{
    long bad = mismatches(&r->lay, r->m, r->t.opt_begin, r->t.opt_end, 1, SENTINEL, skip) +
               mismatches(&r->lay, r->v, r->t.opt_begin, r->t.opt_end, 2, SENTINEL, skip);
    return all_true(bad == 0);
}

/* Save cfg from a tp_src grid to path, with moments. */
static void save_model(const st_config *cfg, int tp_src, const char *path, const st_train_state *s)
{
    rig r;
    rig_init(&r, cfg, tp_src, 1);
    rig_fill(&r);
    ALL(st_ckpt_save_file(path, &r.g, &r.t, s, NULL, NULL, 0) == 0);
    rig_free(&r);
}

/* ---- file surgery (rank 0, plain POSIX I/O) -------------------------------- */

static long long dataset_offset(const char *path, const char *dset)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, dset, H5P_DEFAULT);
    haddr_t off = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
    return off == HADDR_UNDEF ? -1 : (long long)off;
}

/* Flip one byte of dataset dset, at byte `at` of its data. Returns 1 on success (all ranks). */
static int flip_byte(const char *path, const char *dset, long long at)
{
    int ok = 1;
    if (g_rank == 0) {
        long long off = dataset_offset(path, dset);
        int fd = open(path, O_RDWR);
        unsigned char b;
        ok = off >= 0 && fd >= 0 && pread(fd, &b, 1, off + at) == 1;
        b ^= 0x10;
        ok = ok && pwrite(fd, &b, 1, off + at) == 1;
        if (fd >= 0) close(fd);
    }
    return all_true(ok);
}

static uint64_t file_hash(const char *path)
{
    uint64_t h = 0;
    if (g_rank == 0) {
        FILE *f = fopen(path, "rb");
        int c;
        h = 1469598103934665603ULL;
        while (f && (c = fgetc(f)) != EOF) h = (h ^ (unsigned char)c) * 1099511628211ULL;
        if (f) fclose(f);
        else h = 0;
    }
    MPI_Bcast(&h, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return h;
}

static int exists(const char *path)
{
    struct stat st;
    int e = g_rank == 0 ? stat(path, &st) == 0 : 0;
    MPI_Bcast(&e, 1, MPI_INT, 0, MPI_COMM_WORLD);
    return e;
}

/* ---- tests ----------------------------------------------------------------- */

/* Save on one grid, load on another: every element and both moments match. */
static void cross_grid(const st_config *cfg, int tp_src, int tp_dst, const char *name)
{
    char path[512];
    path_in(path, sizeof path, name);
    save_model(cfg, tp_src, path, NULL);
    rig d;
    rig_init(&d, cfg, tp_dst, 1);
    rig_clear(&d);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    ck_assert(rig_moments_ok(&d, NULL));
    ALL(d.t.adam_step == 77 && d.t.beta1 == 0.9f && d.t.beta2 == 0.95f && d.t.eps == 1e-8f &&
        d.t.weight_decay == 0.1f);
    rig_free(&d);
}

START_TEST(test_cross_grid_llama)
{
    st_config c = llama_cfg();
    cross_grid(&c, 2, 1, "llama_2to1.h5");
    cross_grid(&c, 1, 2, "llama_1to2.h5");
    cross_grid(&c, 2, 2, "llama_2to2.h5");
}
END_TEST

START_TEST(test_cross_grid_gpt2)
{
    st_config c = gpt2_cfg();
    cross_grid(&c, 2, 1, "gpt2_2to1.h5");
    cross_grid(&c, 1, 2, "gpt2_1to2.h5");
}
END_TEST

/* The stored checksum is the documented sum, computed here from whole tensors. */
START_TEST(test_checksum_definition)
{
    st_config c = llama_cfg();
    char path[512];
    path_in(path, sizeof path, "sum.h5");
    save_model(&c, 2, path, NULL);
    int ok = 1;
    if (g_rank == 0) {
        st_layout full;
        ck_assert_int_eq(st_layout_init(&full, &c, 1, 0), 0);
        float *x = malloc(full.numel * sizeof *x);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        const char *groups[] = {"model", "optim/m", "optim/v"};
        for (uint64_t salt = 0; salt < 3; salt++) {
            fill_full(&full, x, salt, 0.0f);
            for (int i = 0; i < full.n_tensors; i++) {
                const st_tensor *t = &full.tensors[i];
                uint64_t want = 0, have = 0;
                for (int64_t k = 0; k < t->shape[0] * t->shape[1]; k++) {
                    uint32_t bits;
                    memcpy(&bits, &x[t->offset + k], 4);
                    want += st_splitmix64((uint64_t)bits ^ st_splitmix64((uint64_t)k));
                }
                char name[256];
                snprintf(name, sizeof name, "/%s/%s", groups[salt], t->name);
                hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
                hid_t a = H5Aopen(d, "checksum", H5P_DEFAULT);
                ok &= d >= 0 && a >= 0 && H5Aread(a, H5T_NATIVE_UINT64, &have) >= 0 && have == want;
                H5Aclose(a);
                H5Dclose(d);
            }
        }
        H5Fclose(f);
        free(x);
        st_layout_free(&full);
    }
    ALL(ok);
}
END_TEST

START_TEST(test_train_state_and_tokenizer)
{
    st_config c = llama_cfg();
    char path[512];
    path_in(path, sizeof path, "state.h5");
    /* a recipe longer than HDF5's 64 KiB attribute limit, with UTF-8 and newlines */
    size_t rn = 100000;
    char *recipe = malloc(rn + 1);
    static const char line[] = "model: x\nlr: 3e-4 # \xc3\xa9t\xc3\xa9\n";
    for (size_t i = 0; i < rn; i++) recipe[i] = line[i % (sizeof line - 1)];
    recipe[rn] = '\0';
    uint8_t blob[5000];
    for (size_t i = 0; i < sizeof blob; i++) blob[i] = (uint8_t)(i * 7 % 256);
    st_train_state s = {.step = 1234, .tokens_seen = 987654321, .rng = {1, 2, 3, UINT64_MAX},
                        .data_epoch = 3, .data_cursor = 777, .data_seed = 42, .recipe = recipe, .method = "sft"};
    rig r;
    rig_init(&r, &c, 2, 1);
    rig_fill(&r);
    /* only world rank 0's train state and tokenizer are written */
    ALL(st_ckpt_save_file(path, &r.g, &r.t, g_rank == 0 ? &s : NULL, g_rank == 0 ? "bpe" : NULL,
                          g_rank == 0 ? blob : NULL, g_rank == 0 ? sizeof blob : 0) == 0);
    rig_free(&r);

    rig d;
    rig_init(&d, &c, 1, 1);
    st_train_state o;
    char *kind = NULL;
    uint8_t *b = NULL;
    size_t bn = 0;
    ALL(st_ckpt_load(path, &d.g, &d.t, &o, NULL, 0, &kind, &b, &bn) == 0);
    ALL(o.step == 1234 && o.tokens_seen == 987654321 && o.rng[0] == 1 && o.rng[3] == UINT64_MAX &&
        o.data_epoch == 3 && o.data_cursor == 777 && o.data_seed == 42);
    ALL(o.recipe && !strcmp(o.recipe, recipe) && o.method && !strcmp(o.method, "sft"));
    ALL(kind && !strcmp(kind, "bpe") && bn == sizeof blob && b && !memcmp(b, blob, bn));
    st_train_state_free(&o);
    free(kind);
    free(b);
    /* weights only: no state, no tokenizer out-pointers */
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    rig_free(&d);

    /* a file without train state and tokenizer gives zeros and NULLs */
    path_in(path, sizeof path, "bare.h5");
    save_model(&c, 1, path, NULL);
    rig_init(&d, &c, 2, 0);
    kind = (char *)1;
    ALL(st_ckpt_load(path, &d.g, &d.t, &o, NULL, 0, &kind, &b, &bn) == 0);
    ALL(kind == NULL && b == NULL && bn == 0 && o.step == 0 && o.recipe == NULL && o.method == NULL);
    rig_free(&d);
    free(recipe);
}
END_TEST

START_TEST(test_weights_only_and_skip)
{
    st_config c = llama_cfg();
    char path[512];
    path_in(path, sizeof path, "weights.h5");
    rig r;
    rig_init(&r, &c, 2, 0); /* no optimizer state in the file */
    rig_fill(&r);
    ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) == 0);
    rig_free(&r);

    rig d;
    rig_init(&d, &c, 1, 1);
    rig_clear(&d);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS("no optimizer state");
    MSG_HAS(path);
    rig_clear(&d);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    ALL(d.m[0] == SENTINEL && d.v[0] == SENTINEL); /* moments untouched */

    const char *skip[] = {"lm_head.weight", "model.layers.1.*", NULL};
    rig_clear(&d);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, skip, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, skip));
    rig_free(&d);

    /* a new head: another vocabulary. Refused naming the tensor and both shapes... */
    st_config c2 = c;
    c2.vocab_size = 41;
    rig_init(&d, &c2, 2, 0);
    rig_clear(&d);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS("model.embed_tokens.weight");
    MSG_HAS("[37, 32]");
    MSG_HAS("[41, 32]");
    /* ...and loads the body when the head is skipped */
    const char *head[] = {"model.embed_tokens.weight", "lm_head.weight", NULL};
    rig_clear(&d);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, head, 0, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, head));
    rig_free(&d);
}
END_TEST

START_TEST(test_flipped_byte_refused)
{
    st_config c = gpt2_cfg();
    char path[512];
    path_in(path, sizeof path, "flip.h5");
    save_model(&c, 2, path, NULL);
    const char *victim = "model.layers.0.mlp.up_proj.weight";
    ck_assert(flip_byte(path, "/model/model.layers.0.mlp.up_proj.weight", 4 * 100 + 2));
    rig d;
    rig_init(&d, &c, 1, 1);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS(victim);
    MSG_HAS(path);
    MSG_HAS("damaged");

    /* inspect reports it too (on rank 0 alone, and over both ranks) */
    char *text = NULL;
    size_t tn = 0;
    int rc = 0;
    if (g_rank == 0) {
        FILE *mem = open_memstream(&text, &tn);
        rc = st_ckpt_inspect(path, MPI_COMM_SELF, mem);
        fclose(mem);
        rc = rc != 0 && strstr(text, "CHECKSUM MISMATCH") && strstr(text, victim) &&
             strstr(text, "/model/model.layers.1.mlp.up_proj.weight");
        free(text);
    } else {
        rc = 1;
    }
    ALL(rc);
    ALL(st_ckpt_inspect(path, MPI_COMM_WORLD, NULL) != 0);
    MSG_HAS(victim);

    /* repair it; damage a moment instead: weights-only loads, a resume does not */
    ck_assert(flip_byte(path, "/model/model.layers.0.mlp.up_proj.weight", 4 * 100 + 2));
    ck_assert(flip_byte(path, "/optim/v/model.norm.weight", 5));
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) == 0);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS("/optim/v/model.norm.weight");
    rig_free(&d);
}
END_TEST

START_TEST(test_truncated_refused)
{
    st_config c = llama_cfg();
    char path[512];
    path_in(path, sizeof path, "trunc.h5");
    save_model(&c, 1, path, NULL);
    int ok = 1;
    if (g_rank == 0) {
        struct stat st;
        ok = stat(path, &st) == 0 && truncate(path, st.st_size / 2) == 0;
    }
    ALL(ok);
    rig d;
    rig_init(&d, &c, 2, 1);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS(path);
    st_config got;
    ALL(st_ckpt_read_config(path, MPI_COMM_WORLD, &got) != 0);
    rig_free(&d);
}
END_TEST

START_TEST(test_failed_save_keeps_previous)
{
    st_config c = llama_cfg();
    char path[512], tmp[600], bad[512];
    path_in(path, sizeof path, "keep.h5");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    st_train_state s1 = {.step = 1};
    save_model(&c, 2, path, &s1);
    uint64_t before = file_hash(path);

    rig r;
    rig_init(&r, &c, 1, 1);
    rig_fill(&r);
    r.p[0] += 1.0f;
    st_train_state s2 = {.step = 2};

    /* the temporary cannot be created (a directory is in the way) */
    int ok = g_rank != 0 || mkdir(tmp, 0700) == 0;
    ALL(ok);
    ALL(st_ckpt_save_file(path, &r.g, &r.t, &s2, NULL, NULL, 0) != 0);
    MSG_HAS(tmp);
    ALL(file_hash(path) == before);
    ok = g_rank != 0 || rmdir(tmp) == 0;
    ALL(ok);

    /* a failure on rank 0 in the middle of writing: every rank fails, no .tmp left */
    setenv("SHARDTUNE_CKPT_TEST_FAIL_AFTER", "3", 1);
    ALL(st_ckpt_save_file(path, &r.g, &r.t, &s2, NULL, NULL, 0) != 0);
    unsetenv("SHARDTUNE_CKPT_TEST_FAIL_AFTER");
    MSG_HAS("injected failure");
    ALL(file_hash(path) == before);
    ALL(!exists(tmp));

    /* a path in a directory that does not exist */
    path_in(bad, sizeof bad, "no/such/dir/x.h5");
    ALL(st_ckpt_save_file(bad, &r.g, &r.t, &s2, NULL, NULL, 0) != 0);
    MSG_HAS("no/such/dir/x.h5");

    /* the previous checkpoint still loads, with its own step */
    rig d;
    rig_init(&d, &c, 2, 1);
    rig_clear(&d);
    st_train_state o;
    ALL(st_ckpt_load(path, &d.g, &d.t, &o, NULL, 0, NULL, NULL, NULL) == 0);
    ALL(o.step == 1);
    ck_assert(rig_params_ok(&d, NULL));
    rig_free(&d);
    rig_free(&r);
}
END_TEST

/* The names of dir's entries, sorted and joined by spaces (same everywhere). */
static void listing(const char *dir, char *out, size_t cap)
{
    out[0] = '\0';
    if (g_rank == 0) {
        struct dirent **ents;
        int n = scandir(dir, &ents, NULL, alphasort);
        for (int i = 0; i < n; i++) {
            if (ents[i]->d_name[0] != '.') {
                strncat(out, ents[i]->d_name, cap - strlen(out) - 1);
                strncat(out, " ", cap - strlen(out) - 1);
            }
            free(ents[i]);
        }
        if (n >= 0) free(ents);
    }
    MPI_Bcast(out, (int)cap, MPI_CHAR, 0, MPI_COMM_WORLD);
}

static void read_first_line(const char *path, char *out, size_t cap)
{
    out[0] = '\0';
    if (g_rank == 0) {
        FILE *f = fopen(path, "r");
        if (f && fgets(out, (int)cap, f)) out[strcspn(out, "\n")] = '\0';
        if (f) fclose(f);
    }
    MPI_Bcast(out, (int)cap, MPI_CHAR, 0, MPI_COMM_WORLD);
}

START_TEST(test_retention_and_latest)
{
    st_config c = gpt2_cfg();
    char dir[512], text[1024], p[600];
    path_in(dir, sizeof dir, "run");
    rig r;
    rig_init(&r, &c, 2, 1);
    rig_fill(&r);
    st_train_state s = {0};
    for (int step = 1; step <= 4; step++) {
        if (step == 4 && g_rank == 0) { /* a crashed save's leftover */
            snprintf(p, sizeof p, "%s/step_00000002.h5.tmp", dir);
            FILE *f = fopen(p, "w");
            if (f) fclose(f);
        }
        s.step = step;
        ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 2) == 0);
    }
    listing(dir, text, sizeof text);
    ck_assert_str_eq(text, "latest step_00000003.h5 step_00000004.h5 ");
    snprintf(p, sizeof p, "%s/latest", dir);
    read_first_line(p, text, sizeof text);
    ck_assert_str_eq(text, "step_00000004.h5");
    char found[1024];
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) == 0);
    snprintf(p, sizeof p, "%s/step_00000004.h5", dir);
    ck_assert_str_eq(found, p);

    /* keep <= 0 keeps everything */
    path_in(dir, sizeof dir, "run_all");
    for (int step = 5; step <= 7; step++) {
        s.step = step;
        ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 0) == 0);
    }
    listing(dir, text, sizeof text);
    ck_assert_str_eq(text, "latest step_00000005.h5 step_00000006.h5 step_00000007.h5 ");
    rig_free(&r);
}
END_TEST

START_TEST(test_find_latest_skips_damaged)
{
    st_config c = llama_cfg();
    char dir[512], p[600], found[1024];
    path_in(dir, sizeof dir, "resume");
    rig r;
    rig_init(&r, &c, 1, 1);
    rig_fill(&r);
    st_train_state s = {.step = 10};
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 0) == 0);
    s.step = 20;
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 0) == 0);
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) == 0);
    snprintf(p, sizeof p, "%s/step_00000020.h5", dir);
    ck_assert_str_eq(found, p);

    /* the newest (named by latest) is damaged; a garbage step file and a partial
     * temporary are newer still: all are passed over for step 10 */
    ck_assert(flip_byte(p, "/optim/m/model.layers.1.self_attn.k_proj.weight", 9));
    if (g_rank == 0) {
        snprintf(p, sizeof p, "%s/step_00000030.h5", dir);
        FILE *f = fopen(p, "w");
        if (f) fputs("not a checkpoint\n", f), fclose(f);
        snprintf(p, sizeof p, "%s/step_00000040.h5.tmp", dir);
        f = fopen(p, "w");
        if (f) fputs("\x89HDF\r\n", f), fclose(f);
    }
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) == 0);
    snprintf(p, sizeof p, "%s/step_00000010.h5", dir);
    ck_assert_str_eq(found, p);

    /* nothing usable at all */
    ck_assert(flip_byte(p, "/model/model.norm.weight", 1));
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) != 0);
    MSG_HAS("no complete checkpoint");
    path_in(dir, sizeof dir, "empty");
    ALL(g_rank != 0 || mkdir(dir, 0700) == 0);
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) != 0);
    MSG_HAS("no checkpoint in");
    rig_free(&r);
}
END_TEST

START_TEST(test_read_config_and_inspect)
{
    st_config c = llama_cfg(), got;
    char path[512];
    path_in(path, sizeof path, "cfg.h5");
    save_model(&c, 2, path, NULL);
    ALL(st_ckpt_read_config(path, MPI_COMM_WORLD, &got) == 0);
    ALL(got.family == c.family && got.n_layer == c.n_layer && got.d_model == c.d_model && got.n_head == c.n_head &&
        got.n_kv_head == c.n_kv_head && got.d_ff == c.d_ff && got.vocab_size == c.vocab_size &&
        got.max_seq == c.max_seq && got.norm_eps == c.norm_eps && got.rope_theta == c.rope_theta &&
        got.tied_embeddings == c.tied_embeddings && got.qkv_bias == c.qkv_bias);
    char *text = NULL;
    size_t tn = 0;
    FILE *mem = open_memstream(&text, &tn);
    ALL(st_ckpt_inspect(path, MPI_COMM_WORLD, mem) == 0);
    fclose(mem);
    int ok = g_rank != 0 || (strstr(text, "all checksums verified") && strstr(text, "family=llama") &&
                             strstr(text, "/optim/m/lm_head.weight") && strstr(text, "[37, 32]") &&
                             !strstr(text, "MISMATCH"));
    ALL(ok);
    free(text);

    /* not a checkpoint at all */
    path_in(path, sizeof path, "junk.h5");
    if (g_rank == 0) {
        FILE *f = fopen(path, "w");
        if (f) fputs("hello", f), fclose(f);
    }
    ALL(st_ckpt_read_config(path, MPI_COMM_WORLD, &got) != 0);
    MSG_HAS(path);
}
END_TEST

/* The pause hook (for the kill-mid-save test driven from a script) only delays. */
START_TEST(test_pause_hook)
{
    st_config c = gpt2_cfg();
    char path[512];
    path_in(path, sizeof path, "pause.h5");
    setenv("SHARDTUNE_CKPT_TEST_PAUSE_MS", "5", 1);
    save_model(&c, 2, path, NULL);
    unsetenv("SHARDTUNE_CKPT_TEST_PAUSE_MS");
    rig d;
    rig_init(&d, &c, 1, 1);
    rig_clear(&d);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    rig_free(&d);
}
END_TEST

/* ---- a crash in the middle of a save ----------------------------------------- */

/* Child mode (`--crash-child DIR`): a one-process MPI job of its own (a
 * singleton) that saves step 2 into DIR. SHARDTUNE_CKPT_TEST_PAUSE_MS makes
 * it sleep inside the save, where the parent kills it with SIGKILL. */
static int crash_child(const char *dir)
{
    st_grid g;
    st_layout lay;
    st_config c = gpt2_cfg();
    MPI_Init(NULL, NULL);
    if (st_grid_init(&g, MPI_COMM_WORLD, 1) || st_layout_init(&lay, &c, 1, 0)) return 2;
    float *p = malloc(lay.numel * sizeof *p);
    fill_full(&lay, p, 0, 0.0f);
    st_ckpt_tensors t = {.lay = &lay, .params = p};
    st_train_state s = {.step = 2};
    st_ckpt_save(dir, &g, &t, &s, NULL, NULL, 0, 1);
    MPI_Finalize();
    return 3; /* not killed: the parent reports it */
}

/* Fork and exec this binary in child mode, outside our MPI job. */
static pid_t spawn_crash_child(const char *dir)
{
    pid_t pid = fork();
    if (pid) return pid;
    extern char **environ;
    static char *envp[1024];
    int n = 0;
    for (char **e = environ; *e && n < 1020; e++) {
        int ours = (!strncmp(*e, "OMPI_", 5) && strncmp(*e, "OMPI_ALLOW_RUN_AS_ROOT", 22)) ||
                   !strncmp(*e, "PMIX_", 5) || !strncmp(*e, "ORTE_", 5) || !strncmp(*e, "OPAL_", 5);
        if (!ours) envp[n++] = *e;
    }
    envp[n++] = "SHARDTUNE_CKPT_TEST_PAUSE_MS=120000";
    envp[n] = NULL;
    char *argv[] = {"test_mpi2_checkpoint", "--crash-child", (char *)dir, NULL};
    execve("/proc/self/exe", argv, envp);
    _exit(127);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Rank 0: start the child, wait until its save has created the temporary,
 * SIGKILL it. 1 on success; a child that exits by itself or never starts
 * writing within two minutes is a failure. */
static int kill_child_mid_save(const char *dir)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s/step_00000002.h5.tmp", dir);
    pid_t pid = spawn_crash_child(dir);
    if (pid < 0) return 0;
    int status, seen = 0;
    for (int i = 0; i < 2400 && !seen; i++) {
        struct stat st;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "crash child exited by itself (status %d)\n", status);
            return 0;
        }
        seen = stat(tmp, &st) == 0 && st.st_size > 0;
        if (!seen) sleep_ms(50);
    }
    sleep_ms(200); /* let it get into the pause; any point of the save must be safe anyway */
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return seen && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

/* Like MPI_Barrier, but waiting ranks sleep instead of spinning (the child
 * process needs the cores). */
static void lazy_barrier(void)
{
    MPI_Request rq;
    int done = 0;
    MPI_Ibarrier(MPI_COMM_WORLD, &rq);
    while (MPI_Test(&rq, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done) sleep_ms(2);
}

START_TEST(test_killed_mid_save)
{
    st_config c = gpt2_cfg();
    char dir[512], p[700], found[1024], text[1024];
    path_in(dir, sizeof dir, "crash");
    rig r;
    rig_init(&r, &c, 2, 0);
    rig_fill(&r);
    st_train_state s = {.step = 1};
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 1) == 0);
    int ok = g_rank != 0 || kill_child_mid_save(dir);
    lazy_barrier();
    ALL(ok);
    /* the killed save left its temporary; latest and step 1 are untouched */
    snprintf(p, sizeof p, "%s/step_00000002.h5.tmp", dir);
    ALL(exists(p));
    snprintf(p, sizeof p, "%s/latest", dir);
    read_first_line(p, text, sizeof text);
    ck_assert_str_eq(text, "step_00000001.h5");
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) == 0);
    snprintf(p, sizeof p, "%s/step_00000001.h5", dir);
    ck_assert_str_eq(found, p);
    rig d;
    rig_init(&d, &c, 1, 0);
    rig_clear(&d);
    ALL(st_ckpt_load(found, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    rig_free(&d);
    /* the next good save cleans the leftover up */
    s.step = 3;
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 1) == 0);
    listing(dir, text, sizeof text);
    ck_assert_str_eq(text, "latest step_00000003.h5 ");
    rig_free(&r);
}
END_TEST

/* ---- runner ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--crash-child")) return crash_child(argv[2]);
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    th_tmpdir(MPI_COMM_WORLD, g_dir, sizeof g_dir);
    if (!g_dir[0]) {
        if (g_rank == 0) fprintf(stderr, "cannot create a temporary directory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    Suite *su = suite_create("checkpoint_mpi2");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_cross_grid_llama);
    tcase_add_test(tc, test_cross_grid_gpt2);
    tcase_add_test(tc, test_checksum_definition);
    tcase_add_test(tc, test_train_state_and_tokenizer);
    tcase_add_test(tc, test_weights_only_and_skip);
    tcase_add_test(tc, test_flipped_byte_refused);
    tcase_add_test(tc, test_truncated_refused);
    tcase_add_test(tc, test_failed_save_keeps_previous);
    tcase_add_test(tc, test_retention_and_latest);
    tcase_add_test(tc, test_find_latest_skips_damaged);
    tcase_add_test(tc, test_read_config_and_inspect);
    tcase_add_test(tc, test_pause_hook);
    tcase_add_test(tc, test_killed_mid_save);
    suite_add_tcase(su, tc);
    int failed = st_run_mpi_suite(su);
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_rank == 0) th_rm_rf(g_dir);
    MPI_Finalize();
    return failed;
}
