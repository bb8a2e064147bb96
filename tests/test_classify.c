/* test_classify.c: the classification head. With pooling on the last token, a
 * classifier over K classes is the language model whose vocabulary is the K
 * classes, scored only at each row's last token, so the double reference
 * model checks it exactly; plus freezing, mean pooling and learning a
 * separable task to 100%; the reward head's pairwise loss against finite
 * differences. */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/classify.h"
#include "model/optim.h"
#include "mpi_check.h"
#include "ref.h"

static st_config cfg_k(int K)
{
    st_config c = {.family = ST_FAMILY_LLAMA, .n_layer = 2, .d_model = 16, .n_head = 4, .n_kv_head = 2,
                   .d_ff = 24, .vocab_size = K, .max_seq = 12, .norm_eps = 1e-5f, .rope_theta = 1e4f,
                   .tied_embeddings = 0};
    return c;
}

START_TEST(matches_reference_as_a_k_token_lm)
{
    enum { K = 7, B = 3, T = 9 };
    st_config cfg = cfg_k(K);
    st_model m;
    ck_assert_int_eq(st_model_create(&m, &cfg, MPI_COMM_SELF, B, T, 1), 0);
    st_model_init(&m, 3);
    st_cls_head h;
    ck_assert_int_eq(st_cls_create(&h, &m, K, 0, 5), 0);
    /* the reference: same body, lm_head = score.weight (bias 0) */
    ref_model r;
    ck_assert_int_eq(ref_model_init(&r, &cfg), 0);
    const st_tensor *head = st_layout_find(&m.lay, "lm_head.weight");
    memcpy(m.params + head->offset, h.w, sizeof(float) * K * cfg.d_model);
    ref_model_set_params(&r, m.params);
    int32_t tok[B * T], len[B] = {9, 4, 1}, lab[B] = {2, 6, 0};
    int rt[B * T], rtg[B * T];
    float mask[B * T];
    st_rng g;
    st_rng_seed(&g, 1);
    for (int i = 0; i < B * T; i++) {
        tok[i] = rt[i] = (int)st_rng_below(&g, K);
        int b = i / T, t = i % T;
        mask[i] = t == len[b] - 1 ? 1.0f : 0.0f;
        rtg[i] = t == len[b] - 1 ? lab[b] : 0;
    }
    double loss = 0;
    st_model_zero_grad(&m);
    st_cls_zero_grad(&h);
    int32_t pred[B];
    ck_assert_int_eq(st_cls_forward(&h, &m, tok, len, lab, B, T, 1.0f / B, &loss, pred), 0);
    ck_assert_int_eq(st_cls_backward(&h, &m, tok), 0);
    double *logits = malloc(sizeof(double) * B * T * K);
    double rl = ref_model_forward_backward(&r, rt, rtg, mask, B, T, B, logits, 1);
    ck_assert_msg(fabs(loss - rl) < 1e-5 * fabs(rl), "loss %.9g vs reference %.9g", loss, rl);
    /* predictions are the reference's argmax at the last token */
    for (int b = 0; b < B; b++) {
        const double *lg = logits + ((size_t)b * T + len[b] - 1) * K;
        int best = 0;
        for (int k = 1; k < K; k++) if (lg[k] > lg[best]) best = k;
        ck_assert_int_eq(pred[b], best);
        /* bias gradient: (softmax - onehot) / B summed over rows, checked below */
    }
    double gmax = 0;
    for (size_t i = 0; i < r.numel; i++) gmax = fmax(gmax, fabs(r.grads[i]));
    for (int t = 0; t < m.lay.n_tensors; t++) {
        const st_tensor *ts = &m.lay.tensors[t];
        const float *mine = strcmp(ts->name, "lm_head.weight") ? m.grads + ts->offset : h.dw;
        double d = 0, tm = 0;
        for (size_t i = 0; i < ts->numel; i++) {
            d = fmax(d, fabs(mine[i] - r.grads[ts->offset + i]));
            tm = fmax(tm, fabs(r.grads[ts->offset + i]));
        }
        ck_assert_msg(d / fmax(tm, 1e-3 * gmax) < 1e-4, "%s: gradient error %.3g", ts->name, d);
    }
    for (int k = 0; k < K; k++) {
        double want = 0;
        for (int b = 0; b < B; b++) {
            const double *lg = logits + ((size_t)b * T + len[b] - 1) * K;
            double mx = lg[0], z = 0;
            for (int j = 1; j < K; j++) mx = fmax(mx, lg[j]);
            for (int j = 0; j < K; j++) z += exp(lg[j] - mx);
            want += (exp(lg[k] - mx) / z - (k == lab[b])) / B;
        }
        ck_assert_msg(fabs(h.db[k] - want) < 1e-5, "bias gradient %d: %g vs %g", k, h.db[k], want);
    }
    free(logits);
    ref_model_free(&r);
    st_cls_free(&h);
    st_model_free(&m);
}
END_TEST

/* Rows whose class is written in their tokens: the head learns them all. */
static double learn(int pool_mean, int freeze, float *before, float *after, size_t *nfrozen)
{
    enum { K = 4, B = 8, T = 6 };
    st_config cfg = cfg_k(11);
    st_model m;
    ck_assert_int_eq(st_model_create(&m, &cfg, MPI_COMM_SELF, B, T, 1), 0);
    st_model_init(&m, 9);
    st_cls_head h;
    ck_assert_int_eq(st_cls_create(&h, &m, K, pool_mean, 2), 0);
    uint8_t *tr = calloc(m.lay.n_tensors, 1);
    for (int t = 0; t < m.lay.n_tensors; t++) tr[t] = !(freeze && m.lay.tensors[t].layer == 0) &&
                                                      !(freeze && m.lay.tensors[t].layer < 0 && m.lay.tensors[t].offset < m.lay.layer_begin[0]);
    st_model_set_trainable(&m, tr, 0);
    size_t lo = m.lay.tensors[0].offset, hi = m.lay.layer_begin[1];
    *nfrozen = hi - lo;
    if (before) memcpy(before, m.params, sizeof(float) * hi);
    st_optim_config oc;
    st_optim_config_default(&oc);
    oc.lr = 1e-2f;
    st_adamw om, oh;
    ck_assert_int_eq(st_adamw_init(&om, &m.lay, 0, m.lay.numel, &oc), 0);
    om.trainable = tr;
    ck_assert_int_eq(st_adamw_init(&oh, &h.lay, 0, h.lay.numel, &oc), 0);
    int32_t tok[B * T], len[B], lab[B], pred[B];
    st_rng g;
    st_rng_seed(&g, 4);
    for (int b = 0; b < B; b++) {
        lab[b] = b % K;
        len[b] = 3 + b % 4;
        for (int t = 0; t < T; t++) tok[b * T + t] = (int32_t)(4 + st_rng_below(&g, 7));
        tok[b * T + (int)st_rng_below(&g, (uint64_t)len[b])] = lab[b]; /* the class token, somewhere */
    }
    double loss = 0;
    for (int s = 0; s < 120; s++) {
        st_model_zero_grad(&m);
        st_cls_zero_grad(&h);
        ck_assert_int_eq(st_cls_forward(&h, &m, tok, len, lab, B, T, 1.0f / B, &loss, pred), 0);
        ck_assert_int_eq(st_cls_backward(&h, &m, tok), 0);
        st_adamw_update(&om, m.params, m.grads, oc.lr);
        st_adamw_update(&oh, h.params, h.grads, oc.lr);
    }
    ck_assert_int_eq(st_cls_forward(&h, &m, tok, len, lab, B, T, 1.0f / B, &loss, pred), 0);
    int correct = 0;
    for (int b = 0; b < B; b++) correct += pred[b] == lab[b];
    if (after) memcpy(after, m.params, sizeof(float) * hi);
    st_adamw_free(&om);
    st_adamw_free(&oh);
    free(tr);
    st_cls_free(&h);
    st_model_free(&m);
    return (double)correct / B;
}

START_TEST(learns_a_separable_task_to_100_percent)
{
    size_t n;
    ck_assert_double_eq(learn(0, 0, NULL, NULL, &n), 1.0);
    ck_assert_double_eq(learn(1, 0, NULL, NULL, &n), 1.0);
}
END_TEST

START_TEST(frozen_layers_stay_bitwise_unchanged)
{
    float *before = malloc(sizeof(float) * 100000), *after = malloc(sizeof(float) * 100000);
    size_t n;
    double acc = learn(0, 1, before, after, &n);
    ck_assert(memcmp(before, after, n * sizeof(float)) == 0);
    ck_assert_double_eq(acc, 1.0); /* the upper layer and head still learn it */
    free(before);
    free(after);
}
END_TEST

/* The pairwise reward loss: value against softplus(r_r - r_c) in double from
 * the scores, and gradients of the head and of body parameters against
 * central finite differences of the whole forward (body, head, pair loss). */
static double pair_loss_of(st_cls_head *h, st_model *m, const int32_t *tok, const int32_t *len, int B, int T,
                           double *correct)
{
    double loss = 0, none = 0;
    ck_assert_int_eq(st_cls_forward(h, m, tok, len, NULL, B, T, 1.0f, &none, NULL), 0);
    ck_assert_int_eq(st_cls_pair_loss(h, B, 1.0f / (B / 2), &loss, correct), 0);
    return loss;
}

START_TEST(reward_pair_loss_matches_finite_differences)
{
    enum { B = 6, T = 7 };
    st_config cfg = cfg_k(11);
    st_model m;
    ck_assert_int_eq(st_model_create(&m, &cfg, MPI_COMM_SELF, B, T, 1), 0);
    st_model_init(&m, 3);
    st_cls_head h;
    ck_assert_int_eq(st_cls_create(&h, &m, 1, 0, 5), 0);
    for (int c = 0; c < cfg.d_model; c++) h.w[c] *= 20;   /* scores of order 1, not 0.01 */
    int32_t tok[B * T], len[B] = {7, 5, 3, 3, 6, 1};
    st_rng g;
    st_rng_seed(&g, 9);
    for (int i = 0; i < B * T; i++) tok[i] = (int)st_rng_below(&g, 11);
    /* the value: scores from a forward, the loss in double here */
    double none = 0, correct = 0, want = 0, want_correct = 0;
    ck_assert_int_eq(st_cls_forward(&h, &m, tok, len, NULL, B, T, 1.0f, &none, NULL), 0);
    for (int i = 0; i < B; i += 2) {
        double d = (double)h.logits[i + 1] - h.logits[i];
        want += log(1 + exp(d)) / (B / 2);
        want_correct += d < 0;
    }
    st_model_zero_grad(&m);
    st_cls_zero_grad(&h);
    double loss = pair_loss_of(&h, &m, tok, len, B, T, &correct);
    ck_assert_msg(fabs(loss - want) < 1e-6 * want, "loss %.9g vs %.9g", loss, want);
    ck_assert_double_eq(correct, want_correct);
    ck_assert_int_eq(st_cls_backward(&h, &m, tok), 0);
    /* gradients: every head parameter and a spread of body parameters */
    float *gh = malloc(sizeof(float) * h.lay.numel), *gm = malloc(sizeof(float) * m.lay.numel);
    memcpy(gh, h.grads, sizeof(float) * h.lay.numel);
    memcpy(gm, m.grads, sizeof(float) * m.lay.numel);
    const float eps = 1e-3f;
    int checked = 0;
    for (int which = 0; which < 2; which++) {
        float *p = which ? m.params : h.params;
        const float *ga = which ? gm : gh;
        size_t n = which ? m.lay.numel : h.lay.numel, step = which ? n / 40 + 1 : 1;
        for (size_t i = 0; i < n; i += step) {
            float x = p[i];
            p[i] = x + eps;
            double up = pair_loss_of(&h, &m, tok, len, B, T, &none);
            p[i] = x - eps;
            double dn = pair_loss_of(&h, &m, tok, len, B, T, &none);
            p[i] = x;
            double fd = (up - dn) / (2 * eps);
            ck_assert_msg(fabs(fd - ga[i]) < 2e-3 + 2e-2 * fabs(fd), "%s param %zu: grad %.6g vs finite difference %.6g",
                          which ? "body" : "head", i, (double)ga[i], fd);
            checked += fabs(fd) > 1e-3;
        }
    }
    ck_assert_int_gt(checked, 20);   /* the comparison is not all zeros */
    free(gh);
    free(gm);
    st_cls_free(&h);
    st_model_free(&m);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("classify");
    TCase *tc = tcase_create("classify");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, matches_reference_as_a_k_token_lm);
    tcase_add_test(tc, learns_a_separable_task_to_100_percent);
    tcase_add_test(tc, frozen_layers_stay_bitwise_unchanged);
    tcase_add_test(tc, reward_pair_loss_matches_finite_differences);
    suite_add_tcase(s, tc);
    return st_run_serial_mpi_suite(&argc, &argv, s);
}
