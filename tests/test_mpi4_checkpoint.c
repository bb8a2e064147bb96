/* test_mpi4_checkpoint.c: checkpoints across 4-rank grids (mpirun -np 4).
 *
 * Saved on tp2 x dp2 with ZeRO-1 moment ranges, loaded on tp1 x dp4 and
 * tp4 x dp1 (and back), with and without a LoRA-like parameter set (whole
 * on every dp group, tp-split as its own layout says). Values are functions
 * of (tensor, global index) only, so every rank computes what its slice must
 * hold on any grid.
 */
#include <check.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/params.h"
#include "core/rng.h"
#include "harness.h"
#include "io/checkpoint.h"
#include "mpi/grid.h"
#include "mpi_check.h"

static char g_dir[256];
static int g_rank;

static int all_true(int local)
{
    int out = 0;
    MPI_Allreduce(&local, &out, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return out;
}
#define ALL(cond) ck_assert_msg(all_true(!!(cond)), "not true on every rank: %s (rank %d: %s)", #cond, g_rank, \
                                st_error_message())

/* llama with grouped-query attention; n_head, n_kv_head and d_ff divide 4;
 * vocab 37 over tp4 leaves 7 real rows on the last rank. */
static st_config llama_cfg(void)
{
    st_config c = {0};
    c.family = ST_FAMILY_LLAMA;
    c.n_layer = 2, c.d_model = 32, c.n_head = 8, c.n_kv_head = 4, c.d_ff = 64;
    c.vocab_size = 37, c.max_seq = 16, c.norm_eps = 1e-5f, c.rope_theta = 10000.0f;
    c.qkv_bias = 1;
    return c;
}

/* gpt2 with a 5-token vocabulary: over tp4 the ranks hold 2, 2, 1 and 0 rows. */
static st_config tiny_vocab_cfg(void)
{
    st_config c = {0};
    c.family = ST_FAMILY_GPT2;
    c.n_layer = 1, c.d_model = 16, c.n_head = 4, c.n_kv_head = 4, c.d_ff = 32;
    c.vocab_size = 5, c.max_seq = 8, c.norm_eps = 1e-5f, c.tied_embeddings = 1;
    return c;
}

static float value_at(uint64_t salt, const char *name, int64_t gidx)
{
    uint64_t h = st_splitmix64(salt ^ st_hash_str(name) ^ st_splitmix64((uint64_t)gidx));
    return (float)((double)(h >> 40) / (double)(1 << 24) - 0.5);
}

/* This rank's flat buffer as it should be (salt 0 params, 1 m, 2 v); pad in padding rows. */
static void fill_full(const st_layout *lay, float *x, uint64_t salt, float pad)
{
    for (size_t k = 0; k < lay->numel; k++) x[k] = pad;
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i];
        const int64_t W = t->lshape[1];
        for (int64_t k = 0; k < t->lshape[0] * W; k++)
            x[t->offset + k] = value_at(salt, t->name, (t->start[0] + k / W) * t->shape[1] + t->start[1] + k % W);
    }
}

#define SENTINEL (-3.5f)

typedef struct {
    st_grid g;
    st_layout lay;
    float *p, *m, *v;
    st_ckpt_tensors t;
} rig;

/* A grid of tp x (4 / tp); moments: the dp ranks split each flat buffer evenly. */
static void rig_init(rig *r, const st_config *cfg, int tp, int fill)
{
    memset(r, 0, sizeof *r);
    ALL(st_grid_init(&r->g, MPI_COMM_WORLD, tp) == 0);
    ALL(st_layout_init(&r->lay, cfg, tp, r->g.tp_rank) == 0);
    const size_t n = r->lay.numel, dp = (size_t)r->g.dp_size, d = (size_t)r->g.dp_rank;
    const size_t ob = n * d / dp, oe = n * (d + 1) / dp;
    float *full = malloc(n * sizeof *full);
    r->p = malloc(n * sizeof *r->p);
    r->m = malloc((oe - ob + 1) * sizeof *r->m);
    r->v = malloc((oe - ob + 1) * sizeof *r->v);
    /* a fresh buffer (fill == 0) holds other values (salt 99) and SENTINEL padding */
    fill_full(&r->lay, r->p, fill ? 0 : 99, SENTINEL);
    fill_full(&r->lay, full, fill ? 1 : 99, SENTINEL);
    memcpy(r->m, full + ob, (oe - ob) * sizeof *full);
    fill_full(&r->lay, full, fill ? 2 : 99, SENTINEL);
    memcpy(r->v, full + ob, (oe - ob) * sizeof *full);
    free(full);
    st_ckpt_tensors t = {.lay = &r->lay, .params = r->p, .m = r->m, .v = r->v, .opt_begin = ob, .opt_end = oe,
                         .adam_step = 5, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-6f, .weight_decay = 0.01f};
    r->t = t;
}

static void rig_free(rig *r)
{
    free(r->p);
    free(r->m);
    free(r->v);
    st_layout_free(&r->lay);
    st_grid_free(&r->g);
}

/* Bitwise equality of the loaded buffers with the expected ones (padding untouched). */
static long rig_mismatches(const rig *r)
{
    const size_t n = r->lay.numel, ob = r->t.opt_begin, oe = r->t.opt_end;
    float *want = malloc(n * sizeof *want);
    long bad = 0;
    fill_full(&r->lay, want, 0, SENTINEL);
    bad += memcmp(want, r->p, n * sizeof *want) != 0;
    fill_full(&r->lay, want, 1, SENTINEL);
    bad += memcmp(want + ob, r->m, (oe - ob) * sizeof *want) != 0;
    fill_full(&r->lay, want, 2, SENTINEL);
    bad += memcmp(want + ob, r->v, (oe - ob) * sizeof *want) != 0;
    free(want);
    return bad;
}

static void roundtrip(const st_config *cfg, int tp_src, int tp_dst, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    rig s, d;
    rig_init(&s, cfg, tp_src, 1);
    st_train_state ts = {.step = 3, .tokens_seen = 300};
    ALL(st_ckpt_save_file(path, &s.g, &s.t, &ts, NULL, NULL, 0) == 0);
    rig_free(&s);
    rig_init(&d, cfg, tp_dst, 0);
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ALL(rig_mismatches(&d) == 0);
    ALL(d.t.adam_step == 5 && d.t.beta2 == 0.999f);
    rig_free(&d);
}

START_TEST(test_tp2dp2_to_tp1dp4)
{
    st_config c = llama_cfg();
    roundtrip(&c, 2, 1, "a.h5");
}
END_TEST

START_TEST(test_tp2dp2_to_tp4dp1)
{
    st_config c = llama_cfg();
    roundtrip(&c, 2, 4, "b.h5");
}
END_TEST

START_TEST(test_tp4dp1_to_tp2dp2)
{
    st_config c = llama_cfg();
    roundtrip(&c, 4, 2, "c.h5");
}
END_TEST

START_TEST(test_tp1dp4_to_tp4dp1)
{
    st_config c = llama_cfg();
    roundtrip(&c, 1, 4, "d.h5");
}
END_TEST

START_TEST(test_empty_vocab_slice)
{
    st_config c = tiny_vocab_cfg();
    roundtrip(&c, 4, 1, "e.h5");
    roundtrip(&c, 2, 4, "f.h5");
}
END_TEST

/* find_latest and inspect spread their verification over four ranks. */
START_TEST(test_verify_on_four_ranks)
{
    st_config c = llama_cfg();
    char dir[512], found[1024], want[1024];
    snprintf(dir, sizeof dir, "%s/run", g_dir);
    rig s;
    rig_init(&s, &c, 2, 1);
    st_train_state ts = {.step = 8};
    ALL(st_ckpt_save(dir, &s.g, &s.t, &ts, NULL, NULL, 0, 1) == 0);
    rig_free(&s);
    ALL(st_ckpt_find_latest(dir, MPI_COMM_WORLD, found, sizeof found) == 0);
    snprintf(want, sizeof want, "%s/step_00000008.h5", dir);
    ck_assert_str_eq(found, want);
    ALL(st_ckpt_inspect(want, MPI_COMM_WORLD, NULL) == 0);
}
END_TEST

/* ---- extra parameter sets on four ranks -------------------------------------- */

/* A LoRA-like set built by hand for tp rank r of T: replicated, row-split
 * (COL), column-split (ROW) and a split vector; whole on every dp group. */
typedef struct { const char *name; int ndim; int64_t rows, cols; st_split split; } tspec;
static const tspec LORA[] = {
    {"model.layers.0.self_attn.q_proj.lora_A.weight", 2, 4, 32, ST_SPLIT_NONE},
    {"model.layers.0.self_attn.q_proj.lora_B.weight", 2, 64, 4, ST_SPLIT_COL},
    {"model.layers.1.mlp.down_proj.lora_A.weight", 2, 4, 64, ST_SPLIT_ROW},
    {"model.layers.1.mlp.down_proj.lora_B.weight", 2, 32, 4, ST_SPLIT_NONE},
    {"model.layers.1.mlp.up_proj.lora_scale", 1, 64, 1, ST_SPLIT_COL},
    {"score.bias", 1, 5, 1, ST_SPLIT_NONE},
};
#define N_LORA ((int)(sizeof LORA / sizeof LORA[0]))

typedef struct {
    st_layout lay;
    float *p, *m, *v;
} pset;

/* salt 0 = SENTINEL everywhere (a fresh buffer), else params/m/v from salt, salt+1, salt+2 */
static void pset_init(pset *s, const st_config *cfg, int T, int r, uint64_t salt)
{
    memset(s, 0, sizeof *s);
    st_layout *lay = &s->lay;
    lay->cfg = *cfg;
    lay->tp_size = T, lay->tp_rank = r, lay->n_tensors = N_LORA;
    lay->tensors = calloc(N_LORA, sizeof *lay->tensors);
    for (int i = 0; i < N_LORA; i++) {
        st_tensor *t = &lay->tensors[i];
        snprintf(t->name, sizeof t->name, "%s", LORA[i].name);
        t->ndim = LORA[i].ndim, t->split = LORA[i].split, t->layer = -1;
        t->shape[0] = t->lshape[0] = LORA[i].rows;
        t->shape[1] = t->lshape[1] = LORA[i].cols;
        if (t->split == ST_SPLIT_COL) t->lshape[0] = LORA[i].rows / T, t->start[0] = r * t->lshape[0];
        if (t->split == ST_SPLIT_ROW) t->lshape[1] = LORA[i].cols / T, t->start[1] = r * t->lshape[1];
        t->offset = lay->numel;
        t->numel = (size_t)(t->lshape[0] * t->lshape[1]);
        lay->numel += t->numel;
    }
    float **bufs[3] = {&s->p, &s->m, &s->v};
    for (int b = 0; b < 3; b++) {
        float *x = *bufs[b] = malloc(lay->numel * sizeof *x);
        for (int i = 0; i < N_LORA; i++) {
            const st_tensor *t = &lay->tensors[i];
            const int64_t W = t->lshape[1];
            for (int64_t k = 0; k < (int64_t)t->numel; k++)
                x[t->offset + k] = salt ? value_at(salt + (uint64_t)b, t->name,
                                                   (t->start[0] + k / W) * t->shape[1] + t->start[1] + k % W)
                                        : SENTINEL;
        }
    }
}

static void pset_free(pset *s)
{
    free(s->p);
    free(s->m);
    free(s->v);
    st_layout_free(&s->lay);
}

static void sets_roundtrip(int tp_src, int tp_dst, const char *name)
{
    st_config c = llama_cfg();
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    rig s, d;
    pset ls, ld, want;
    rig_init(&s, &c, tp_src, 1);
    pset_init(&ls, &c, tp_src, s.g.tp_rank, 30);
    s.t.n_sets = 1;
    s.t.sets[0] = (st_ckpt_set){.group = "lora", .lay = &ls.lay, .params = ls.p, .m = ls.m, .v = ls.v,
                                .adam_step = 42, .meta = g_rank == 0 ? "{\"rank\":4}" : NULL};
    ALL(st_ckpt_save_file(path, &s.g, &s.t, NULL, NULL, NULL, 0) == 0);
    pset_free(&ls);
    rig_free(&s);
    rig_init(&d, &c, tp_dst, 0);
    pset_init(&ld, &c, tp_dst, d.g.tp_rank, 0);
    pset_init(&want, &c, tp_dst, d.g.tp_rank, 30);
    d.t.n_sets = 1;
    d.t.sets[0] = (st_ckpt_set){.group = "lora", .lay = &ld.lay, .params = ld.p, .m = ld.m, .v = ld.v};
    ALL(st_ckpt_load(path, &d.g, &d.t, NULL, NULL, 0, NULL, NULL, NULL) == 0);
    ALL(rig_mismatches(&d) == 0);
    const size_t n = ld.lay.numel * sizeof(float);
    ALL(!memcmp(ld.p, want.p, n) && !memcmp(ld.m, want.m, n) && !memcmp(ld.v, want.v, n));
    ALL(d.t.sets[0].adam_step == 42 && d.t.sets[0].meta && !strcmp(d.t.sets[0].meta, "{\"rank\":4}"));
    free(d.t.sets[0].meta);
    ALL(st_ckpt_inspect(path, MPI_COMM_WORLD, NULL) == 0);
    pset_free(&ld);
    pset_free(&want);
    rig_free(&d);
}

START_TEST(test_sets_across_grids)
{
    sets_roundtrip(2, 4, "s1.h5");
    sets_roundtrip(2, 1, "s2.h5");
    sets_roundtrip(4, 2, "s3.h5");
    sets_roundtrip(1, 4, "s4.h5");
}
END_TEST

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    th_tmpdir(MPI_COMM_WORLD, g_dir, sizeof g_dir);
    if (!g_dir[0]) MPI_Abort(MPI_COMM_WORLD, 1);
    Suite *su = suite_create("checkpoint_mpi4");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_tp2dp2_to_tp1dp4);
    tcase_add_test(tc, test_tp2dp2_to_tp4dp1);
    tcase_add_test(tc, test_tp4dp1_to_tp2dp2);
    tcase_add_test(tc, test_tp1dp4_to_tp4dp1);
    tcase_add_test(tc, test_empty_vocab_slice);
    tcase_add_test(tc, test_verify_on_four_ranks);
    tcase_add_test(tc, test_sets_across_grids);
    suite_add_tcase(su, tc);
    int failed = st_run_mpi_suite(su);
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_rank == 0) th_rm_rf(g_dir);
    MPI_Finalize();
    return failed;
}
