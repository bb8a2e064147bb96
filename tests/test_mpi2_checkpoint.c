/* test_mpi2_checkpoint.c: checkpoints across grids on 2 ranks (mpirun -np 2),
 * with and without extra parameter sets (a classification head, LoRA-like adapters).
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

#include "core/params.h"
#include "core/rng.h"
#include "harness.h"
#include "io/checkpoint.h"
#include "mpi/grid.h"
#include "mpi_check.h"

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
    ck_assert(th_flip_byte(MPI_COMM_WORLD, path, "/model/model.layers.0.mlp.up_proj.weight", 4 * 100 + 2));
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
    ck_assert(th_flip_byte(MPI_COMM_WORLD, path, "/model/model.layers.0.mlp.up_proj.weight", 4 * 100 + 2));
    ck_assert(th_flip_byte(MPI_COMM_WORLD, path, "/optim/v/model.norm.weight", 5));
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
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p, "/optim/m/model.layers.1.self_attn.k_proj.weight", 9));
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
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p, "/model/model.norm.weight", 1));
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) != 0);
    MSG_HAS("verifies");
    path_in(dir, sizeof dir, "empty");
    ALL(g_rank != 0 || mkdir(dir, 0700) == 0);
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) != 0);
    MSG_HAS("no checkpoint in");
    rig_free(&r);
}
END_TEST

/* A resume's own test of the candidates: the first accepted is taken (one
 * call when the newest will do), a refused one is passed over, a fatal
 * refusal ends the search with its error. */
typedef struct {
    int calls, refuse_step, fatal_step;
} accept_log;

static st_err accept_counting(const char *path, void *ctx, int *fatal)
{
    accept_log *a = ctx;
    a->calls++;
    char mine[32];
    snprintf(mine, sizeof mine, "step_%08d.h5", a->fatal_step);
    if (strstr(path, mine)) {
        *fatal = 1;
        ST_FAIL(ST_ERR_ARG, "fatal at %s", path);
    }
    snprintf(mine, sizeof mine, "step_%08d.h5", a->refuse_step);
    if (strstr(path, mine)) ST_FAIL(ST_ERR_FORMAT, "refused %s", path);
    return ST_OK;
}

START_TEST(test_find_latest_with_accept)
{
    st_config c = gpt2_cfg();
    char dir[512], p[600], found[1024];
    path_in(dir, sizeof dir, "accept");
    rig r;
    rig_init(&r, &c, 1, 1);
    rig_fill(&r);
    st_train_state s = {.step = 10};
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 0) == 0);
    s.step = 20;
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 0) == 0);
    accept_log a = {0, -1, -1};
    ALL(st_ckpt_find_latest_with(dir, MPI_COMM_WORLD, found, sizeof found, accept_counting, &a) == 0);
    snprintf(p, sizeof p, "%s/step_00000020.h5", dir);
    ck_assert_str_eq(found, p);
    ck_assert_int_eq(a.calls, 1);
    a = (accept_log){0, 20, -1};
    ALL(st_ckpt_find_latest_with(dir, MPI_COMM_WORLD, found, sizeof found, accept_counting, &a) == 0);
    snprintf(p, sizeof p, "%s/step_00000010.h5", dir);
    ck_assert_str_eq(found, p);
    ck_assert_int_eq(a.calls, 2);
    a = (accept_log){0, -1, 20};
    ALL(st_ckpt_find_latest_with(dir, MPI_COMM_WORLD, found, sizeof found, accept_counting, &a) != 0);
    MSG_HAS("fatal at");
    ck_assert_int_eq(a.calls, 1);
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

/* ---- extra parameter sets: a classification head and LoRA-like adapters ------ */

/* A set's tensor, to be laid out by hand as st_cls_create and st_lora_create do. */
typedef struct { const char *name; int ndim; int64_t rows, cols; st_split split; } tspec;

/* replicated, like the classification head (K = 3 classes, C = 32) */
static const tspec HEAD[] = {{"score.weight", 2, 3, 32, ST_SPLIT_NONE}, {"score.bias", 1, 3, 1, ST_SPLIT_NONE}};
/* the split kinds of LoRA: A of a column-parallel target replicated, its B
 * split by rows; A of a row-parallel target split by columns, its B
 * replicated; and a split vector */
static const tspec LORA[] = {
    {"model.layers.0.self_attn.q_proj.lora_A.weight", 2, 4, 32, ST_SPLIT_NONE},
    {"model.layers.0.self_attn.q_proj.lora_B.weight", 2, 32, 4, ST_SPLIT_COL},
    {"model.layers.1.self_attn.o_proj.lora_A.weight", 2, 4, 32, ST_SPLIT_ROW},
    {"model.layers.1.self_attn.o_proj.lora_B.weight", 2, 32, 4, ST_SPLIT_NONE},
    {"model.layers.1.mlp.up_proj.lora_scale", 1, 48, 1, ST_SPLIT_COL},
};
#define N_HEAD ((int)(sizeof HEAD / sizeof HEAD[0]))
#define N_LORA ((int)(sizeof LORA / sizeof LORA[0]))
#define HEAD_SALT 10
#define LORA_SALT 20
static const char HEAD_META[] = "{\"labels\":[\"neg\",\"pos\",\"neutral\"],\"pool\":\"last\"}";
static const char LORA_META[] = "{\"rank\":4,\"alpha\":8,\"targets\":\"q,o\"}";

typedef struct {
    st_layout lay;
    float *p, *m, *v;
} pset;

/* The layout of tp rank r of T: COL splits rows, ROW splits columns. */
static void pset_init(pset *s, const st_config *cfg, const tspec *sp, int n, int T, int r, int with_opt)
{
    memset(s, 0, sizeof *s);
    st_layout *lay = &s->lay;
    lay->cfg = *cfg;
    lay->tp_size = T, lay->tp_rank = r, lay->n_tensors = n;
    lay->tensors = calloc((size_t)n, sizeof *lay->tensors);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        st_tensor *t = &lay->tensors[i];
        snprintf(t->name, sizeof t->name, "%s", sp[i].name);
        t->ndim = sp[i].ndim, t->split = sp[i].split, t->layer = -1;
        t->shape[0] = t->lshape[0] = sp[i].rows;
        t->shape[1] = t->lshape[1] = sp[i].cols;
        if (t->split == ST_SPLIT_COL) t->lshape[0] = sp[i].rows / T, t->start[0] = r * t->lshape[0];
        if (t->split == ST_SPLIT_ROW) t->lshape[1] = sp[i].cols / T, t->start[1] = r * t->lshape[1];
        t->offset = off;
        t->numel = (size_t)(t->lshape[0] * t->lshape[1]);
        off += t->numel;
    }
    lay->numel = off;
    s->p = malloc(off * sizeof(float));
    if (with_opt) s->m = malloc(off * sizeof(float)), s->v = malloc(off * sizeof(float));
}

static void pset_free(pset *s)
{
    free(s->p);
    free(s->m);
    free(s->v);
    st_layout_free(&s->lay);
}

/* Parameters from salt, moments from salt + 1 and salt + 2: values depend only on (tensor, global index). */
static void pset_fill(pset *s, uint64_t salt)
{
    float *bufs[3] = {s->p, s->m, s->v};
    for (int b = 0; b < 3; b++)
        for (int i = 0; bufs[b] && i < s->lay.n_tensors; i++) {
            const st_tensor *t = &s->lay.tensors[i];
            for (int64_t k = 0; k < (int64_t)t->numel; k++)
                bufs[b][t->offset + k] = value_at(salt + (uint64_t)b, t->name, gidx_of(t, k));
        }
}

static void pset_clear(pset *s)
{
    for (size_t k = 0; k < s->lay.numel; k++) {
        s->p[k] = SENTINEL;
        if (s->m) s->m[k] = s->v[k] = SENTINEL;
    }
}

/* Elements that differ bitwise from pset_fill(salt) (params, and moments when asked). */
static long pset_mismatches(const pset *s, uint64_t salt, int moments)
{
    pset want = *s;
    want.p = malloc(s->lay.numel * sizeof(float) + 1);
    want.m = moments ? malloc(s->lay.numel * sizeof(float) + 1) : NULL;
    want.v = moments ? malloc(s->lay.numel * sizeof(float) + 1) : NULL;
    pset_fill(&want, salt);
    long bad = 0;
    for (size_t k = 0; k < s->lay.numel; k++) {
        bad += memcmp(&s->p[k], &want.p[k], sizeof(float)) != 0;
        if (moments) bad += memcmp(&s->m[k], &want.m[k], 4) != 0 || memcmp(&s->v[k], &want.v[k], 4) != 0;
    }
    free(want.p);
    free(want.m);
    free(want.v);
    return bad;
}

static int pset_all_sentinel(const pset *s)
{
    int ok = 1;
    for (size_t k = 0; k < s->lay.numel; k++) ok &= s->p[k] == SENTINEL && (!s->m || s->m[k] == SENTINEL);
    return ok;
}

/* Attach head and lora to r's tensors (either may be NULL); meta from world rank 0 only. */
static void attach_sets(rig *r, pset *head, pset *lora, int64_t head_step, int64_t lora_step)
{
    r->t.n_sets = 0;
    if (head)
        r->t.sets[r->t.n_sets++] = (st_ckpt_set){.group = "head", .lay = &head->lay, .params = head->p, .m = head->m,
                                                  .v = head->v, .adam_step = head_step,
                                                  .meta = g_rank == 0 ? (char *)HEAD_META : NULL};
    if (lora)
        r->t.sets[r->t.n_sets++] = (st_ckpt_set){.group = "lora", .lay = &lora->lay, .params = lora->p, .m = lora->m,
                                                  .v = lora->v, .adam_step = lora_step,
                                                  .meta = g_rank == 0 ? (char *)LORA_META : NULL};
}

/* Save model + head + lora (all with moments) from a tp_src grid. dp ranks
 * other than 0 hold other values: only the dp rank 0 group writes sets. */
static void save_with_sets(const st_config *c, int tp_src, const char *path)
{
    rig r;
    pset h, l;
    rig_init(&r, c, tp_src, 1);
    rig_fill(&r);
    pset_init(&h, c, HEAD, N_HEAD, tp_src, r.g.tp_rank, 1);
    pset_init(&l, c, LORA, N_LORA, tp_src, r.g.tp_rank, 1);
    pset_fill(&h, r.g.dp_rank == 0 ? HEAD_SALT : 99);
    pset_fill(&l, r.g.dp_rank == 0 ? LORA_SALT : 99);
    attach_sets(&r, &h, &l, 11, 12);
    ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) == 0);
    pset_free(&h);
    pset_free(&l);
    rig_free(&r);
}

/* Load model + both sets on a tp_dst grid and compare everything. */
static void load_with_sets(const st_config *c, int tp_dst, const char *path)
{
    rig d;
    pset h, l;
    rig_init(&d, c, tp_dst, 1);
    rig_clear(&d);
    pset_init(&h, c, HEAD, N_HEAD, tp_dst, d.g.tp_rank, 1);
    pset_init(&l, c, LORA, N_LORA, tp_dst, d.g.tp_rank, 1);
    pset_clear(&h);
    pset_clear(&l);
    attach_sets(&d, &h, &l, 0, 0);
    d.t.sets[0].meta = d.t.sets[1].meta = NULL;
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    ck_assert(rig_moments_ok(&d, NULL));
    ALL(pset_mismatches(&h, HEAD_SALT, 1) == 0);
    ALL(pset_mismatches(&l, LORA_SALT, 1) == 0);
    ALL(d.t.adam_step == 77 && d.t.sets[0].adam_step == 11 && d.t.sets[1].adam_step == 12);
    ALL(d.t.sets[0].meta && !strcmp(d.t.sets[0].meta, HEAD_META));
    ALL(d.t.sets[1].meta && !strcmp(d.t.sets[1].meta, LORA_META));
    free(d.t.sets[0].meta);
    free(d.t.sets[1].meta);
    pset_free(&h);
    pset_free(&l);
    rig_free(&d);
}

/* The stored layout: the 'sets' attribute and a set tensor's documented checksum. */
static int sets_layout_ok(const char *path)
{
    int ok = 1;
    if (g_rank == 0) {
        st_config c = llama_cfg();
        pset l;
        pset_init(&l, &c, LORA, N_LORA, 1, 0, 1);
        pset_fill(&l, LORA_SALT);
        hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
        char sets[64] = "";
        hid_t a = H5Aopen(f, "sets", H5P_DEFAULT), ty = a >= 0 ? H5Aget_type(a) : -1;
        ok &= a >= 0 && H5Tget_size(ty) < sizeof sets && H5Aread(a, ty, sets) >= 0 && !strcmp(sets, "head,lora");
        H5Tclose(ty);
        H5Aclose(a);
        const char *groups[] = {"lora", "optim/lora/m", "optim/lora/v"};
        const float *bufs[] = {l.p, l.m, l.v};
        for (int gi = 0; gi < 3; gi++)
            for (int i = 0; i < N_LORA; i++) {
                const st_tensor *t = &l.lay.tensors[i];
                uint64_t want = 0, have = 0;
                for (int64_t k = 0; k < (int64_t)t->numel; k++) {
                    uint32_t bits;
                    memcpy(&bits, &bufs[gi][t->offset + k], 4);
                    want += st_splitmix64((uint64_t)bits ^ st_splitmix64((uint64_t)k));
                }
                char name[256];
                snprintf(name, sizeof name, "/%s/%s", groups[gi], t->name);
                hid_t d = H5Dopen2(f, name, H5P_DEFAULT), s = H5Aopen(d, "checksum", H5P_DEFAULT);
                ok &= d >= 0 && s >= 0 && H5Aread(s, H5T_NATIVE_UINT64, &have) >= 0 && have == want;
                H5Aclose(s);
                H5Dclose(d);
            }
        H5Fclose(f);
        pset_free(&l);
    }
    return all_true(ok);
}

START_TEST(test_sets_cross_grid)
{
    st_config c = llama_cfg();
    char path[512];
    /* tp2 x dp1 -> tp1 x dp2 */
    path_in(path, sizeof path, "sets_tp2.h5");
    save_with_sets(&c, 2, path);
    ck_assert(sets_layout_ok(path));
    load_with_sets(&c, 1, path);
    /* tp1 x dp2 (dp rank 1 holds other values) -> tp2 x dp1 */
    path_in(path, sizeof path, "sets_tp1.h5");
    save_with_sets(&c, 1, path);
    ck_assert(sets_layout_ok(path));
    load_with_sets(&c, 2, path);
    load_with_sets(&c, 1, path);
}
END_TEST

START_TEST(test_sets_missing_and_optional)
{
    st_config c = llama_cfg();
    char path[512], hpath[512];
    path_in(path, sizeof path, "nosets.h5");
    save_model(&c, 2, path, NULL);
    path_in(hpath, sizeof hpath, "headonly.h5");
    rig r;
    pset h, l;
    /* a head without moments; the model without moments either */
    rig_init(&r, &c, 1, 0);
    rig_fill(&r);
    pset_init(&h, &c, HEAD, N_HEAD, 1, 0, 0);
    pset_fill(&h, HEAD_SALT);
    attach_sets(&r, &h, NULL, 0, 0);
    ALL(st_ckpt_save_file(hpath, &r.g, &r.t, NULL, NULL, NULL, 0) == 0);
    pset_free(&h);
    rig_free(&r);

    rig d;
    rig_init(&d, &c, 2, 1);
    pset_init(&h, &c, HEAD, N_HEAD, 2, d.g.tp_rank, 1);
    pset_init(&l, &c, LORA, N_LORA, 2, d.g.tp_rank, 1);
    pset_clear(&h);
    pset_clear(&l);
    attach_sets(&d, &h, &l, 0, 0);
    d.t.sets[0].meta = d.t.sets[1].meta = NULL;
    /* a file without sets: the missing set is named */
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS(path);
    MSG_HAS("no parameter set 'head'");
    MSG_HAS("the file's sets: none");
    ALL(d.t.sets[0].meta == NULL && d.t.sets[1].meta == NULL);
    /* optional: the model loads, the sets stay as they were, meta NULL */
    rig_clear(&d);
    d.t.sets[0].adam_step = d.t.sets[1].adam_step = 999;
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, ST_CKPT_SETS_OPTIONAL, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    ck_assert(rig_moments_ok(&d, NULL));
    ALL(pset_all_sentinel(&h) && pset_all_sentinel(&l));
    ALL(d.t.sets[0].adam_step == 999 && d.t.sets[1].adam_step == 999);
    ALL(d.t.sets[0].meta == NULL && d.t.sets[1].meta == NULL);

    /* a file with the head only: lora is named as missing, the head is listed */
    ALL(st_ckpt_load(hpath, &d.g, &d.t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) != 0);
    MSG_HAS("no parameter set 'lora'");
    MSG_HAS("the file's sets: head");
    ALL(d.t.sets[0].meta == NULL);
    ALL(st_ckpt_load(hpath, &d.g, &d.t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY | ST_CKPT_SETS_OPTIONAL, NULL, NULL,
                     NULL) == 0);
    ALL(pset_mismatches(&h, HEAD_SALT, 0) == 0 && pset_all_sentinel(&l));
    ALL(d.t.sets[0].meta && !strcmp(d.t.sets[0].meta, HEAD_META) && d.t.sets[1].meta == NULL);
    free(d.t.sets[0].meta);
    d.t.sets[0].meta = NULL;
    /* the head has no moments in the file: a resume is refused naming it */
    d.t.n_sets = 1;
    rig_free(&d);
    rig_init(&d, &c, 2, 0);
    attach_sets(&d, &h, NULL, 0, 0);
    d.t.sets[0].meta = NULL;
    ALL(st_ckpt_load(hpath, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS("parameter set 'head' has no optimizer state (/optim/head)");
    ALL(d.t.sets[0].meta == NULL);

    /* sets in the file that were not asked for are ignored */
    rig_clear(&d);
    d.t.n_sets = 0;
    ALL(st_ckpt_load(hpath, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    pset_free(&h);
    pset_free(&l);
    rig_free(&d);

    /* read_set_meta: present with meta, absent; the same on every rank */
    char *meta = (char *)1;
    int present = -1;
    ALL(st_ckpt_read_set_meta(hpath, MPI_COMM_WORLD, "head", &meta, &present) == 0);
    ALL(present == 1 && meta && !strcmp(meta, HEAD_META));
    free(meta);
    ALL(st_ckpt_read_set_meta(hpath, MPI_COMM_WORLD, "lora", &meta, &present) == 0);
    ALL(present == 0 && meta == NULL);
    ALL(st_ckpt_read_set_meta(path, MPI_COMM_WORLD, "head", &meta, &present) == 0);
    ALL(present == 0 && meta == NULL);
    ALL(st_ckpt_read_set_meta(hpath, MPI_COMM_WORLD, "optim", &meta, &present) != 0);
    MSG_HAS("not a parameter set name");
}
END_TEST

START_TEST(test_sets_bad_arguments)
{
    st_config c = llama_cfg();
    char path[512], tmp[600];
    path_in(path, sizeof path, "badsets.h5");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    rig r;
    pset h, l;
    rig_init(&r, &c, 2, 1);
    rig_fill(&r);
    pset_init(&h, &c, HEAD, N_HEAD, 2, r.g.tp_rank, 1);
    pset_init(&l, &c, LORA, N_LORA, 2, r.g.tp_rank, 1);
    pset_fill(&h, HEAD_SALT);
    pset_fill(&l, LORA_SALT);
    const char *bad_names[] = {"optim", "a/b", "", "model"};
    for (int i = 0; i < 4; i++) {
        attach_sets(&r, &h, NULL, 0, 0);
        r.t.sets[0].group = bad_names[i];
        ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) != 0);
        MSG_HAS("group name");
    }
    attach_sets(&r, &h, &l, 0, 0);
    r.t.sets[1].group = "head";
    ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) != 0);
    MSG_HAS("two parameter sets are named 'head'");
    /* a slice outside the set's buffer */
    attach_sets(&r, &h, &l, 0, 0);
    l.lay.tensors[2].offset = l.lay.numel;
    ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) != 0);
    MSG_HAS("model.layers.1.self_attn.o_proj.lora_A.weight");
    l.lay.tensors[2].offset = l.lay.tensors[1].offset + l.lay.tensors[1].numel;
    /* a split that does not cover the tensor over the grid */
    l.lay.tensors[1].start[0] = 0;
    ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) != 0);
    MSG_HAS("/lora/model.layers.0.self_attn.q_proj.lora_B.weight");
    l.lay.tensors[1].start[0] = r.g.tp_rank * l.lay.tensors[1].lshape[0];
    /* meta beyond what an attribute holds */
    size_t big = ST_CKPT_MAX_META + 1;
    char *meta = malloc(big + 1);
    memset(meta, 'x', big);
    meta[big] = '\0';
    r.t.sets[0].meta = g_rank == 0 ? meta : NULL;
    ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) != 0);
    MSG_HAS("ST_CKPT_MAX_META");
    ALL(!exists(path) && !exists(tmp));
    /* exactly the limit is stored and read back */
    meta[big - 1] = '\0';
    ALL(st_ckpt_save_file(path, &r.g, &r.t, NULL, NULL, NULL, 0) == 0);
    char *got = NULL;
    int present = 0;
    ALL(st_ckpt_read_set_meta(path, MPI_COMM_WORLD, "head", &got, &present) == 0);
    ALL(present && got && strlen(got) == ST_CKPT_MAX_META);
    free(got);
    free(meta);
    pset_free(&h);
    pset_free(&l);
    rig_free(&r);
}
END_TEST

/* Remove one link of a checkpoint (rank 0, serial HDF5). */
static int delete_link(const char *path, const char *name)
{
    int ok = 1;
    if (g_rank == 0) {
        hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        ok = f >= 0 && H5Ldelete(f, name, H5P_DEFAULT) >= 0;
        if (f >= 0) H5Fclose(f);
    }
    return all_true(ok);
}

/* inspect on rank 0 alone into a string; 1 if it returned rc_ok (0 = success) and the text has every needle */
static int inspect_has(const char *path, int want_ok, const char *const *needles)
{
    int ok = 1;
    if (g_rank == 0) {
        char *text = NULL;
        size_t tn = 0;
        FILE *mem = open_memstream(&text, &tn);
        int rc = st_ckpt_inspect(path, MPI_COMM_SELF, mem);
        fclose(mem);
        ok = (rc == 0) == want_ok;
        for (const char *const *n = needles; *n; n++)
            if (!strstr(text, *n)) {
                fprintf(stderr, "inspect output lacks '%s':\n%s\n", *n, text);
                ok = 0;
            }
        free(text);
    }
    return all_true(ok);
}

START_TEST(test_sets_damage_refused)
{
    st_config c = llama_cfg();
    char dir[512], p1[600], p2[600], found[1024];
    path_in(dir, sizeof dir, "setsrun");
    rig r;
    pset h, l;
    rig_init(&r, &c, 2, 1);
    rig_fill(&r);
    pset_init(&h, &c, HEAD, N_HEAD, 2, r.g.tp_rank, 1);
    pset_init(&l, &c, LORA, N_LORA, 2, r.g.tp_rank, 1);
    pset_fill(&h, HEAD_SALT);
    pset_fill(&l, LORA_SALT);
    attach_sets(&r, &h, &l, 11, 12);
    st_train_state s = {.step = 1};
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 0) == 0);
    s.step = 2;
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 0) == 0);
    snprintf(p1, sizeof p1, "%s/step_00000001.h5", dir);
    snprintf(p2, sizeof p2, "%s/step_00000002.h5", dir);
    const char *good[] = {"all checksums verified", "set head: 2 tensors, 99 parameters, optimizer step 11",
                          "set lora: 5 tensors, 560 parameters, optimizer step 12", HEAD_META, LORA_META,
                          "/lora/model.layers.0.self_attn.q_proj.lora_B.weight", "[32, 4]",
                          "/optim/lora/v/model.layers.1.mlp.up_proj.lora_scale", "/optim/head/m/score.bias", NULL};
    ck_assert(inspect_has(p2, 1, good));
    ALL(st_ckpt_inspect(p2, MPI_COMM_WORLD, NULL) == 0);

    /* a flipped byte in a split set tensor */
    const char *victim = "/lora/model.layers.1.self_attn.o_proj.lora_A.weight";
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p2, victim, 4 * 37 + 1));
    rig d;
    pset dh, dl;
    rig_init(&d, &c, 1, 1);
    pset_init(&dh, &c, HEAD, N_HEAD, 1, 0, 1);
    pset_init(&dl, &c, LORA, N_LORA, 1, 0, 1);
    attach_sets(&d, &dh, &dl, 0, 0);
    d.t.sets[0].meta = d.t.sets[1].meta = NULL;
    ALL(st_ckpt_load(p2, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS(victim);
    MSG_HAS(p2);
    MSG_HAS("damaged");
    ALL(d.t.sets[0].meta == NULL && d.t.sets[1].meta == NULL);
    const char *bad[] = {"CHECKSUM MISMATCH", victim, "SOME TENSORS FAILED", NULL};
    ck_assert(inspect_has(p2, 0, bad));
    ALL(st_ckpt_inspect(p2, MPI_COMM_WORLD, NULL) != 0);
    MSG_HAS(victim);
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) == 0);
    ck_assert_str_eq(found, p1);

    /* a damaged moment of the head: weights-only loads, a resume and find_latest refuse */
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p2, victim, 4 * 37 + 1));
    ck_assert(th_flip_byte(MPI_COMM_WORLD, p1, "/optim/head/v/score.bias", 2));
    ALL(st_ckpt_load(p1, &d.g, &d.t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) == 0);
    ALL(pset_mismatches(&dh, HEAD_SALT, 0) == 0 && pset_mismatches(&dl, LORA_SALT, 0) == 0);
    free(d.t.sets[0].meta);
    free(d.t.sets[1].meta);
    d.t.sets[0].meta = d.t.sets[1].meta = NULL;
    ALL(st_ckpt_load(p1, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS("/optim/head/v/score.bias");

    /* a set tensor gone: the load names it, whole-file checks notice it too */
    ck_assert(delete_link(p2, "/head/score.bias"));
    ALL(st_ckpt_load(p2, &d.g, &d.t, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL) != 0);
    MSG_HAS("/head/score.bias");
    ALL(st_ckpt_inspect(p2, MPI_COMM_WORLD, NULL) != 0);
    MSG_HAS("parameter set /head holds 1 objects but was saved with 2 tensors");
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) != 0);
    MSG_HAS("verifies");
    /* the whole set group gone while the root still names it */
    ck_assert(delete_link(p1, "/lora"));
    ALL(st_ckpt_inspect(p1, MPI_COMM_WORLD, NULL) != 0);
    MSG_HAS("parameter set /lora (named by the root attribute 'sets') is missing");

    pset_free(&dh);
    pset_free(&dl);
    rig_free(&d);
    pset_free(&h);
    pset_free(&l);
    rig_free(&r);
}
END_TEST

/* LoRA on a frozen model: moments for the adapters only (/optim holds no
 * model moments and no AdamW attributes), a head without moments. */
START_TEST(test_sets_frozen_model)
{
    st_config c = llama_cfg();
    char dir[512], path[600], found[1024];
    path_in(dir, sizeof dir, "frozen");
    snprintf(path, sizeof path, "%s/step_00000005.h5", dir);
    rig r;
    pset h, l;
    rig_init(&r, &c, 2, 0);
    rig_fill(&r);
    pset_init(&h, &c, HEAD, N_HEAD, 2, r.g.tp_rank, 0);
    pset_init(&l, &c, LORA, N_LORA, 2, r.g.tp_rank, 1);
    pset_fill(&h, HEAD_SALT);
    pset_fill(&l, LORA_SALT);
    attach_sets(&r, &h, &l, 0, 5);
    st_train_state s = {.step = 5};
    ALL(st_ckpt_save(dir, &r.g, &r.t, &s, NULL, NULL, 0, 1) == 0);
    pset_free(&h);
    pset_free(&l);
    rig_free(&r);
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) == 0);
    ck_assert_str_eq(found, path);
    const char *lines[] = {"optimizer: none", "set head: 2 tensors, 99 parameters, optimizer: none",
                           "set lora: 5 tensors, 560 parameters, optimizer step 5", "all checksums verified", NULL};
    ck_assert(inspect_has(path, 1, lines));

    rig d;
    rig_init(&d, &c, 1, 0);
    rig_clear(&d);
    pset_init(&l, &c, LORA, N_LORA, 1, 0, 1);
    pset_clear(&l);
    attach_sets(&d, NULL, &l, 0, 0);
    d.t.sets[0].meta = NULL;
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ck_assert(rig_params_ok(&d, NULL));
    ALL(pset_mismatches(&l, LORA_SALT, 1) == 0 && d.t.sets[0].adam_step == 5);
    free(d.t.sets[0].meta);
    rig_free(&d);
    /* asking for the model's moments is refused */
    rig_init(&d, &c, 2, 1);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) != 0);
    MSG_HAS("no optimizer state (/optim)");
    rig_free(&d);
    pset_free(&l);
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
    tcase_add_test(tc, test_find_latest_with_accept);
    tcase_add_test(tc, test_read_config_and_inspect);
    tcase_add_test(tc, test_pause_hook);
    tcase_add_test(tc, test_killed_mid_save);
    tcase_add_test(tc, test_sets_cross_grid);
    tcase_add_test(tc, test_sets_missing_and_optional);
    tcase_add_test(tc, test_sets_bad_arguments);
    tcase_add_test(tc, test_sets_damage_refused);
    tcase_add_test(tc, test_sets_frozen_model);
    suite_add_tcase(su, tc);
    int failed = st_run_mpi_suite(su);
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_rank == 0) th_rm_rf(g_dir);
    MPI_Finalize();
    return failed;
}
