/* test_mpi2_lora.c: LoRA adapters under tensor parallelism (2 ranks, tp = 2)
 * against the same model and adapters on one rank: initial values, loss,
 * adapter gradients (with dropout on, so the masks must agree across grids)
 * and the merged weights, slice by slice. */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/lora.h"
#include "model/model.h"
#include "mpi/grid.h"
#include "mpi_check.h"
#include "testcfg.h"


/* Element (r, c) of this rank's slice of tensor t, in the whole tensor g of a 1-rank layout. */
static size_t global_index(const st_tensor *t, const st_tensor *g, int64_t r, int64_t c)
{
    return g->offset + (size_t)((t->start[0] + r) * g->shape[1] + t->start[1] + c);
}

/* dst (laid out by lay) = the slices of src (laid out by whole, 1 rank). */
static void scatter(const st_layout *lay, float *dst, const st_layout *whole, const float *src)
{
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i], *g = st_layout_find(whole, t->name);
        ck_assert_ptr_nonnull(g);
        for (int64_t r = 0; r < t->lshape[0]; r++)
            for (int64_t c = 0; c < t->lshape[1]; c++)
                dst[t->offset + r * t->lshape[1] + c] = src[global_index(t, g, r, c)];
    }
}

/* Worst over tensors of max |slice - whole| / max(max |whole|, floor). */
static double compare(const st_layout *lay, const float *part, const st_layout *whole, const float *all,
                      double floor, char *worst, size_t cap)
{
    double e = 0;
    for (int i = 0; i < lay->n_tensors; i++) {
        const st_tensor *t = &lay->tensors[i], *g = st_layout_find(whole, t->name);
        ck_assert_ptr_nonnull(g);
        double d = 0, mx = floor;
        for (int64_t r = 0; r < t->lshape[0]; r++)
            for (int64_t c = 0; c < t->lshape[1]; c++) {
                float w = all[global_index(t, g, r, c)];
                d = fmax(d, fabs(part[t->offset + r * t->lshape[1] + c] - w));
                mx = fmax(mx, fabs(w));
            }
        if (d / mx > e) {
            e = d / mx;
            snprintf(worst, cap, "%s", t->name);
        }
    }
    return e;
}

static void freeze(st_model *m)
{
    uint8_t *zeros = calloc((size_t)m->lay.n_tensors, 1);
    st_model_set_trainable(m, zeros, 1);
    free(zeros);
}

static void check_tp2(st_config cfg)
{
    st_grid g;
    ck_assert_int_eq(st_grid_init(&g, MPI_COMM_WORLD, 2), 0);
    ck_assert_int_eq(g.tp_size, 2);
    const int B = 2, T = 6, N = B * T;
    char worst[128] = "";
    /* the whole model on this rank alone, and the tp2 model */
    st_model one, two;
    ck_assert_int_eq(st_model_create(&one, &cfg, MPI_COMM_SELF, B, T, 1), 0);
    st_model_init(&one, 42);
    ck_assert_int_eq(st_model_create(&two, &cfg, g.tp, B, T, 1), 0);
    st_model_init(&two, 42);
    st_rng r;
    st_rng_seed(&r, 7); /* same stream on every rank */
    for (size_t i = 0; i < one.lay.numel; i++) one.params[i] += 0.05f * (float)(st_rng_uniform(&r) - 0.5);
    scatter(&two.lay, two.params, &one.lay, one.params);

    st_lora_config lc = {.rank = 4, .alpha = 6.0f, .dropout = 0.25f,
                         .targets = cfg.family == ST_FAMILY_GPT2 ? 0x7fu & ~(1u << ST_T_GATE) : 0x7fu};
    st_lora *l1, *l2;
    ck_assert_int_eq(st_lora_create(&l1, &one.lay, &lc, N, 11), 0);
    ck_assert_int_eq(st_lora_create(&l2, &two.lay, &lc, N, 11), 0);
    const st_layout *y1 = st_lora_layout(l1), *y2 = st_lora_layout(l2);
    ck_assert_int_eq(y1->n_tensors, y2->n_tensors);
    ck_assert_int_eq(y2->tp_size, 2);
    ck_assert_int_eq(y2->tp_rank, g.tp_rank);
    /* the tp2 adapters start as slices of the 1-rank ones */
    ck_assert_msg(compare(y2, st_lora_params(l2), y1, st_lora_params(l1), 1e-30, worst, sizeof worst) == 0,
                  "initial %s differs between grids", worst);
    /* non-zero B, the same global values on both */
    float *p1 = st_lora_params(l1);
    for (int t = 0; t < y1->n_tensors; t++)
        if (strstr(y1->tensors[t].name, "lora_B"))
            for (size_t i = 0; i < y1->tensors[t].numel; i++)
                p1[y1->tensors[t].offset + i] = 0.1f * (float)(st_rng_uniform(&r) - 0.5);
    scatter(y2, st_lora_params(l2), y1, p1);
    one.adapter = st_lora_adapter(l1);
    two.adapter = st_lora_adapter(l2);
    freeze(&one);
    freeze(&two);

    int32_t tok[N], tgt[N];
    float mask[N];
    for (int i = 0; i < N; i++) {
        tok[i] = (int32_t)st_rng_below(&r, (uint64_t)cfg.vocab_size);
        tgt[i] = (int32_t)st_rng_below(&r, (uint64_t)cfg.vocab_size);
        mask[i] = i % 4 == 1 ? 0.0f : 1.0f;
    }
    /* with dropout (step 2) and without (evaluation) */
    for (int training = 1; training >= 0; training--) {
        double loss1 = 0, loss2 = 0;
        st_lora_set_step(l1, 2, training);
        st_lora_set_step(l2, 2, training);
        st_lora_zero_grad(l1);
        st_lora_zero_grad(l2);
        ck_assert_int_eq(st_model_forward(&one, tok, tgt, mask, B, T, 1.0f / N, &loss1), 0);
        ck_assert_int_eq(st_model_backward(&one, tok), 0);
        ck_assert_int_eq(st_model_forward(&two, tok, tgt, mask, B, T, 1.0f / N, &loss2), 0);
        ck_assert_int_eq(st_model_backward(&two, tok), 0);
        ck_assert_msg(fabs(loss1 - loss2) / fabs(loss1) < 1e-5, "training %d: loss tp2 %.9g vs 1 rank %.9g",
                      training, loss2, loss1);
        /* relative to the tensor's largest entry, or to a small fraction of
         * the largest adapter gradient for tensors whose gradient is ~0 */
        double gmax = 0;
        for (size_t i = 0; i < st_lora_numel(l1); i++) gmax = fmax(gmax, fabs(st_lora_grads(l1)[i]));
        double e = compare(y2, st_lora_grads(l2), y1, st_lora_grads(l1), 1e-3 * gmax, worst, sizeof worst);
        ck_assert_msg(e < 1e-4, "training %d: gradient of %s differs by %.3g between grids", training, worst, e);
    }
    /* merged weights, slice by slice */
    ck_assert_int_eq(st_lora_merge(l1, &one.lay, one.params), 0);
    ck_assert_int_eq(st_lora_merge(l2, &two.lay, two.params), 0);
    double e = compare(&two.lay, two.params, &one.lay, one.params, 1e-30, worst, sizeof worst);
    ck_assert_msg(e < 1e-6, "merged %s differs by %.3g between grids", worst, e);

    st_lora_free(l1);
    st_lora_free(l2);
    st_model_free(&one);
    st_model_free(&two);
    st_grid_free(&g);
}

START_TEST(llama_tp2_matches_one_rank) { check_tp2(cfg_llama()); }
END_TEST
START_TEST(gpt2_tp2_matches_one_rank) { check_tp2(cfg_gpt2()); }
END_TEST

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    Suite *s = suite_create("mpi2_lora");
    TCase *tc = tcase_create("tp2");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, llama_tp2_matches_one_rank);
    tcase_add_test(tc, gpt2_tp2_matches_one_rank);
    suite_add_tcase(s, tc);
    int failed = st_run_mpi_suite(s);
    MPI_Finalize();
    return failed;
}
