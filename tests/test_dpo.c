/* test_dpo.c: the DPO loss and gradient (src/model/dpo.c) against the double
 * reference model of tests/ref.c and against finite differences. The
 * reference's per-sequence log-probabilities come from one double forward
 * per row; the DPO gradient in double is the reference's cross-entropy
 * gradient with each row's tokens weighted by -d loss / d log pi(row). */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/dpo.h"
#include "mpi_check.h"
#include "ref.h"

enum { B = 4, T = 9 };

static st_config cfg_small(void)
{
    st_config c = {.family = ST_FAMILY_LLAMA, .n_layer = 2, .d_model = 16, .n_head = 4, .n_kv_head = 2,
                   .d_ff = 24, .vocab_size = 23, .max_seq = 16, .norm_eps = 1e-5f, .rope_theta = 1e4f,
                   .tied_embeddings = 0};
    return c;
}

typedef struct {
    int32_t tok[B * T], tgt[B * T];
    int itok[B * T], itgt[B * T];
    float mask[B * T];
} pairs;

/* Two pairs sharing prompts; responses (mask 1) from position 3 or 5 on. */
static pairs make_pairs(void)
{
    pairs p;
    st_rng g;
    st_rng_seed(&g, 31);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int i = b * T + t, start = b < 2 ? 3 : 5;
            /* a pair's rows share the prompt */
            p.tok[i] = (b % 2 && t < start) ? p.tok[i - T] : (int32_t)st_rng_below(&g, 23);
            p.mask[i] = t >= start ? 1.0f : 0.0f;
        }
    for (int i = 0; i < B * T; i++) {
        p.tgt[i] = (i + 1) % T ? p.tok[i + 1] : 0;   /* next token; the last position's target is masked */
        if ((i + 1) % T == 0) p.mask[i] = 0;
        p.itok[i] = p.tok[i], p.itgt[i] = p.tgt[i];
    }
    return p;
}

/* The reference starts elsewhere than the policy, so z != 0. */
static void perturb(st_model *m, float amount)
{
    for (size_t i = 0; i < m->lay.numel; i++) m->params[i] *= 1.0f + amount * (float)sin(0.7 * (double)i);
}

/* Sum over row b's masked positions of log p(target), in double. */
static double ref_row_logprob(ref_model *r, const pairs *p, int b)
{
    return -ref_model_forward_backward(r, p->itok + b * T, p->itgt + b * T, p->mask + b * T, 1, T, 1.0, NULL, 0);
}

START_TEST(dpo_matches_double_reference)
{
    const st_config cfg = cfg_small();
    const float beta = 0.7f, scale = 0.5f;   /* scale: 1 / pairs */
    st_model pol, ref;
    ck_assert_int_eq(st_model_create(&pol, &cfg, MPI_COMM_SELF, B, T, 1), 0);
    st_model_init(&pol, 42);
    ck_assert_int_eq(st_model_create(&ref, &cfg, MPI_COMM_SELF, B, T, ST_MODEL_INFER), 0);
    st_model_init(&ref, 42);
    perturb(&pol, 0.3f);
    perturb(&ref, -0.2f);
    pairs p = make_pairs();
    float *work = malloc(sizeof(float) * 2 * B * T);
    double loss = 0, correct = 0, margin = 0;
    st_model_zero_grad(&pol);
    ck_assert_int_eq(st_dpo_forward(&pol, &ref, p.tok, p.tgt, p.mask, B, T, beta, scale, work, &loss, &correct,
                                    &margin), 0);
    ck_assert_int_eq(st_model_backward(&pol, p.tok), 0);

    /* the loss in double */
    ref_model rp, rr;
    ck_assert_int_eq(ref_model_init(&rp, &cfg), 0);
    ck_assert_int_eq(ref_model_init(&rr, &cfg), 0);
    ref_model_set_params(&rp, pol.params);
    ref_model_set_params(&rr, ref.params);
    double want = 0, want_correct = 0, want_margin = 0, wrow[B];
    float wmask[B * T];
    for (int i = 0; i < B; i += 2) {
        double h = (ref_row_logprob(&rp, &p, i) - ref_row_logprob(&rr, &p, i)) -
                   (ref_row_logprob(&rp, &p, i + 1) - ref_row_logprob(&rr, &p, i + 1));
        double z = beta * h, sig_neg = 1 / (1 + exp(z));
        want += scale * log(1 + exp(-z));
        want_correct += z > 0;
        want_margin += h;
        wrow[i] = beta * sig_neg * scale;        /* -d loss / d log pi(chosen) */
        wrow[i + 1] = -beta * sig_neg * scale;   /* -d loss / d log pi(rejected) */
    }
    ck_assert_msg(fabs(loss - want) < 1e-5 * fabs(want), "loss %.9g vs reference %.9g", loss, want);
    ck_assert_double_eq(correct, want_correct);
    ck_assert_msg(fabs(margin - want_margin) < 1e-4 * (1 + fabs(want_margin)), "margin %.9g vs %.9g", margin,
                  want_margin);
    ck_assert_msg(fabs(want_margin) > 1e-2, "policy and reference too alike: margin %g", want_margin);

    /* the gradient in double: cross-entropy weighted per row */
    for (int i = 0; i < B * T; i++) wmask[i] = (float)(p.mask[i] * wrow[i / T]);
    ref_model_forward_backward(&rp, p.itok, p.itgt, wmask, B, T, 1.0, NULL, 1);
    double gmax = 0;
    for (size_t i = 0; i < rp.numel; i++) gmax = fmax(gmax, fabs(rp.grads[i]));
    ck_assert(gmax > 1e-6);
    const char *worst;
    double gerr = ref_grad_error(&pol.lay, pol.grads, rp.grads, &worst);
    ck_assert_msg(gerr < 1e-4, "%s: gradient error %.3g (relative)", worst, gerr);

    /* and by finite differences of the whole DPO forward, on a spread of parameters */
    float *g = malloc(sizeof(float) * pol.lay.numel);
    memcpy(g, pol.grads, sizeof(float) * pol.lay.numel);
    const float eps = 1e-3f;
    int checked = 0;
    for (size_t i = 0; i < pol.lay.numel; i += pol.lay.numel / 30 + 1) {
        float x = pol.params[i];
        double up, dn;
        pol.params[i] = x + eps;
        ck_assert_int_eq(st_dpo_forward(&pol, &ref, p.tok, p.tgt, p.mask, B, T, beta, scale, work, &up, &correct,
                                        &margin), 0);
        pol.params[i] = x - eps;
        ck_assert_int_eq(st_dpo_forward(&pol, &ref, p.tok, p.tgt, p.mask, B, T, beta, scale, work, &dn, &correct,
                                        &margin), 0);
        pol.params[i] = x;
        double fd = (up - dn) / (2 * eps);
        ck_assert_msg(fabs(fd - g[i]) < 1e-3 + 2e-2 * fabs(fd), "param %zu: grad %.6g vs finite difference %.6g", i,
                      (double)g[i], fd);
        checked += fabs(fd) > 1e-3;
    }
    ck_assert_int_gt(checked, 5);
    free(g);
    free(work);
    ref_model_free(&rp);
    ref_model_free(&rr);
    st_model_free(&pol);
    st_model_free(&ref);
}
END_TEST

/* Policy == reference: z = 0 for every pair, the loss is log 2 per pair. */
START_TEST(dpo_starts_at_log_2)
{
    const st_config cfg = cfg_small();
    st_model pol, ref;
    ck_assert_int_eq(st_model_create(&pol, &cfg, MPI_COMM_SELF, B, T, 1), 0);
    st_model_init(&pol, 42);
    ck_assert_int_eq(st_model_create(&ref, &cfg, MPI_COMM_SELF, B, T, ST_MODEL_INFER), 0);
    st_model_init(&ref, 42);
    pairs p = make_pairs();
    float *work = malloc(sizeof(float) * 2 * B * T);
    double loss = 0, correct = 0, margin = 0;
    ck_assert_int_eq(st_dpo_forward(&pol, &ref, p.tok, p.tgt, p.mask, B, T, 0.1f, 1.0f, work, &loss, &correct,
                                    &margin), 0);
    ck_assert_msg(fabs(loss - 2 * log(2.0)) < 1e-6, "loss %.9g", loss);
    ck_assert_int_eq(st_model_backward(&ref, p.tok), ST_ERR_INTERNAL);   /* the reference runs forward only */
    ck_assert_double_eq(correct, 0);
    ck_assert_int_ne(st_dpo_forward(&pol, &ref, p.tok, p.tgt, p.mask, 3, T, 0.1f, 1.0f, work, &loss, &correct,
                                    &margin), ST_OK);   /* odd rows: not pairs */
    free(work);
    st_model_free(&pol);
    st_model_free(&ref);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("dpo");
    TCase *tc = tcase_create("dpo");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, dpo_matches_double_reference);
    tcase_add_test(tc, dpo_starts_at_log_2);
    suite_add_tcase(s, tc);
    return st_run_serial_mpi_suite(&argc, &argv, s);
}
