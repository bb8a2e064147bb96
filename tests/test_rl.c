/* test_rl.c: the RL math of src/model/rl.c and src/model/value.c against the
 * double reference model (tests/ref.c), against finite differences, and
 * against formulas written out here:
 *   - the clipped policy-gradient loss with the k3 KL penalty (per token:
 *     GRPO, PPO; per answer: RLOO), its clip counts and its gradient;
 *   - log-probabilities and entropies of the answer tokens;
 *   - GRPO's and RLOO's advantages, GAE;
 *   - PPO's value head and clipped value loss. */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/rl.h"
#include "model/value.h"
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

/* Answers (mask 1) from position 3 or 5 on; the last position has no target. */
typedef struct {
    int32_t tok[B * T], tgt[B * T];
    int itok[B * T], itgt[B * T];
    float mask[B * T];
} rows;

static rows make_rows(void)
{
    rows p;
    st_rng g;
    st_rng_seed(&g, 5);
    for (int i = 0; i < B * T; i++) p.tok[i] = (int32_t)st_rng_below(&g, 23);
    for (int i = 0; i < B * T; i++) {
        const int b = i / T, t = i % T;
        p.tgt[i] = t + 1 < T ? p.tok[i + 1] : 0;
        p.mask[i] = t >= (b % 2 ? 5 : 3) - 1 && t + 1 < T ? 1.0f : 0.0f;
        p.itok[i] = p.tok[i], p.itgt[i] = p.tgt[i];
    }
    return p;
}

static void perturb(st_model *m, float amount)
{
    for (size_t i = 0; i < m->lay.numel; i++) m->params[i] *= 1.0f + amount * (float)sin(0.7 * (double)i);
}

/* The reference's log p(target) and entropy at every position. */
static void ref_logprobs(ref_model *r, const rows *p, double *lp, double *ent)
{
    const int V = r->cfg.vocab_size;
    double *lg = malloc(sizeof(double) * B * T * V);
    ref_model_forward_backward(r, p->itok, p->itgt, NULL, B, T, 1.0, lg, 0);
    for (int i = 0; i < B * T; i++) {
        const double *l = lg + (size_t)i * V;
        double mx = l[0], z = 0, el = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, l[v]);
        for (int v = 0; v < V; v++) z += exp(l[v] - mx), el += exp(l[v] - mx) * l[v];
        lp[i] = l[p->itgt[i]] - mx - log(z);
        ent[i] = log(z) + mx - el / z;
    }
    free(lg);
}

/* old_lp, ref_lp and advantages that put tokens well inside and well outside
 * the clip range on both sides (so finite differences never cross a kink). */
static void make_inputs(const double *lp, float *old_lp, float *ref_lp, float *adv, int per_answer)
{
    static const double shift[5] = {0.0, 0.6, -0.6, 0.05, -0.45};
    for (int i = 0; i < B * T; i++) {
        const int b = i / T;
        old_lp[i] = (float)(lp[i] + (per_answer ? shift[b % 5] / 4 : shift[i % 5]));
        ref_lp[i] = (float)(lp[i] + 0.3 * sin(1.3 * i));
        adv[i] = per_answer ? (b % 2 ? -1.3f : 0.8f) : (float)(1.5 * sin(2.1 * i + 0.4));
    }
}

/* The loss, clip count and per-token weights dL/dCE in double. */
static double want_loss(const rows *p, const double *lp, const float *old_lp, const float *ref_lp, const float *adv,
                        const st_pg_config *c, double scale, double *w, double *clipped)
{
    double loss = 0;
    *clipped = 0;
    for (int b = 0; b < B; b++) {
        double s = 0, a = 0;
        for (int t = 0; t < T; t++) {
            const int i = b * T + t;
            if (p->mask[i] != 0) s += lp[i] - old_lp[i], a = adv[i];
        }
        for (int t = 0; t < T; t++) {
            const int i = b * T + t;
            w[i] = 0;
            if (p->mask[i] == 0) continue;
            const double r = exp(c->seq_ratio ? s : lp[i] - old_lp[i]), A = c->seq_ratio ? a : adv[i];
            const double rc = r < 1 - c->clip ? 1 - c->clip : r > 1 + c->clip ? 1 + c->clip : r;
            const int use_clipped = rc * A < r * A;
            if (!c->seq_ratio || t == T - 2) { /* per answer: once (its last answer position) */
                loss += scale * -(use_clipped ? rc * A : r * A);
                *clipped += use_clipped;
            }
            w[i] = use_clipped ? 0 : scale * A * r;
            const double d = ref_lp[i] - lp[i];
            loss += scale * c->kl_coef * (exp(d) - d - 1);
            w[i] += scale * c->kl_coef * (exp(d) - 1);
        }
    }
    return loss;
}

static void check_pg(int per_answer)
{
    const st_config cfg = cfg_small();
    const st_pg_config c = {.clip = 0.2f, .kl_coef = per_answer ? 0.0f : 0.3f, .seq_ratio = per_answer};
    const float scale = 0.25f;
    st_model pol;
    ck_assert_int_eq(st_model_create(&pol, &cfg, MPI_COMM_SELF, B, T, ST_MODEL_TRAIN), 0);
    st_model_init(&pol, 42);
    perturb(&pol, 0.3f);
    rows p = make_rows();
    ref_model r;
    ck_assert_int_eq(ref_model_init(&r, &cfg), 0);
    ref_model_set_params(&r, pol.params);
    double lp[B * T], ent[B * T], w[B * T], clipped_want;
    ref_logprobs(&r, &p, lp, ent);
    float old_lp[B * T], ref_lp[B * T], adv[B * T], work[2 * B * T];
    make_inputs(lp, old_lp, ref_lp, adv, per_answer);

    /* log-probabilities and entropies of the answer positions */
    float flp[B * T], fent[B * T];
    ck_assert_int_eq(st_rl_logprobs(&pol, p.tok, p.tgt, p.mask, B, T, flp, fent), 0);
    for (int i = 0; i < B * T; i++) {
        const double wl = p.mask[i] != 0 ? lp[i] : 0, we = p.mask[i] != 0 ? ent[i] : 0;
        ck_assert_msg(fabs(flp[i] - wl) < 1e-5 * (1 + fabs(wl)), "log p at %d: %.7g vs %.7g", i, flp[i], wl);
        ck_assert_msg(fabs(fent[i] - we) < 1e-5 * (1 + fabs(we)), "entropy at %d: %.7g vs %.7g", i, fent[i], we);
    }

    st_pg_stats s;
    st_model_zero_grad(&pol);
    ck_assert_int_eq(st_pg_forward(&pol, p.tok, p.tgt, p.mask, B, T, old_lp, ref_lp, adv, &c, scale, work, NULL, &s), 0);
    ck_assert_int_eq(st_model_backward(&pol, p.tok), 0);
    const double want = want_loss(&p, lp, old_lp, ref_lp, adv, &c, scale, w, &clipped_want);
    ck_assert_msg(fabs(s.loss - want) < 1e-5 * (1 + fabs(want)), "loss %.9g vs reference %.9g", s.loss, want);
    ck_assert_double_eq(s.clipped, clipped_want);
    ck_assert_msg(clipped_want > 0, "the inputs should clip somewhere");

    /* the gradient: the reference's cross-entropy gradient with weights dL/dCE */
    float wm[B * T];
    for (int i = 0; i < B * T; i++) wm[i] = (float)w[i];
    ref_model_forward_backward(&r, p.itok, p.itgt, wm, B, T, 1.0, NULL, 1);
    const char *worst;
    double gerr = ref_grad_error(&pol.lay, pol.grads, r.grads, &worst);
    ck_assert_msg(gerr < 1e-4, "%s: gradient error %.3g (relative)", worst, gerr);

    /* finite differences of the loss itself, on a spread of parameters */
    float *g = malloc(sizeof(float) * pol.lay.numel);
    memcpy(g, pol.grads, sizeof(float) * pol.lay.numel);
    const float eps = 1e-3f;
    int checked = 0;
    for (size_t i = 0; i < pol.lay.numel; i += pol.lay.numel / 40 + 1) {
        const float x = pol.params[i];
        st_pg_stats up, dn;
        pol.params[i] = x + eps;
        ck_assert_int_eq(st_pg_forward(&pol, p.tok, p.tgt, p.mask, B, T, old_lp, ref_lp, adv, &c, scale, work, NULL, &up), 0);
        pol.params[i] = x - eps;
        ck_assert_int_eq(st_pg_forward(&pol, p.tok, p.tgt, p.mask, B, T, old_lp, ref_lp, adv, &c, scale, work, NULL, &dn), 0);
        pol.params[i] = x;
        const double fd = (up.loss - dn.loss) / (2 * eps);
        ck_assert_msg(fabs(fd - g[i]) < 1e-3 + 2e-2 * fabs(fd), "param %zu: grad %.6g vs finite difference %.6g", i,
                      (double)g[i], fd);
        checked += fabs(fd) > 1e-3;
    }
    ck_assert_int_gt(checked, 5);
    free(g);
    ref_model_free(&r);
    st_model_free(&pol);
}

START_TEST(per_token_loss_matches_reference) { check_pg(0); }
END_TEST
START_TEST(per_answer_loss_matches_reference) { check_pg(1); }
END_TEST

/* On-policy (old = current) with no KL: ratio 1, nothing clipped, and the
 * loss is -sum A: the REINFORCE gradient. */
START_TEST(on_policy_is_reinforce)
{
    const st_config cfg = cfg_small();
    st_model pol;
    ck_assert_int_eq(st_model_create(&pol, &cfg, MPI_COMM_SELF, B, T, ST_MODEL_TRAIN), 0);
    st_model_init(&pol, 3);
    rows p = make_rows();
    float lp[B * T], adv[B * T], work[2 * B * T];
    ck_assert_int_eq(st_rl_logprobs(&pol, p.tok, p.tgt, p.mask, B, T, lp, NULL), 0);
    double want = 0;
    for (int i = 0; i < B * T; i++) adv[i] = (float)(i % 3) - 1.0f, want -= p.mask[i] * adv[i];
    const st_pg_config c = {.clip = 0.2f};
    st_pg_stats s;
    ck_assert_int_eq(st_pg_forward(&pol, p.tok, p.tgt, p.mask, B, T, lp, NULL, adv, &c, 1.0f, work, NULL, &s), 0);
    /* old_lp NULL means this: the same loss, the log-probabilities left in work */
    st_pg_stats s2;
    float ent[B * T];
    ck_assert_int_eq(st_pg_forward(&pol, p.tok, p.tgt, p.mask, B, T, NULL, NULL, adv, &c, 1.0f, work, ent, &s2), 0);
    ck_assert_double_eq(s2.loss, s.loss);
    for (int i = 0; i < B * T; i++) ck_assert(work[i] == lp[i] && (p.mask[i] != 0 || ent[i] == 0));
    ck_assert_double_eq_tol(s.loss, want, 1e-9);
    ck_assert_double_eq(s.clipped, 0);
    ck_assert_double_eq(s.k3, 0);
    const st_pg_config bad = {.clip = 0.2f, .kl_coef = 0.1f};
    ck_assert_int_eq(st_pg_forward(&pol, p.tok, p.tgt, p.mask, B, T, lp, NULL, adv, &bad, 1.0f, work, NULL, &s), ST_ERR_ARG);
    st_model_free(&pol);
}
END_TEST

START_TEST(group_advantages)
{
    const double r[6] = {1, 0, 0, 2, 2, 2};
    double a[6];
    st_grpo_advantages(r, 6, 3, 1, a);
    const double sd = sqrt((4.0 / 9 + 1.0 / 9 + 1.0 / 9) / 2); /* group 1: mean 1/3, unbiased std */
    ck_assert_double_eq_tol(a[0], (2.0 / 3) / (sd + 1e-4), 1e-12);
    ck_assert_double_eq_tol(a[1], (-1.0 / 3) / (sd + 1e-4), 1e-12);
    for (int i = 3; i < 6; i++) ck_assert_double_eq(a[i], 0); /* equal rewards teach nothing */
    st_grpo_advantages(r, 6, 3, 0, a);
    ck_assert_double_eq_tol(a[0], 2.0 / 3, 1e-12);
    st_rloo_advantages(r, 6, 3, a);
    ck_assert_double_eq_tol(a[0], 1 - 0.0, 1e-12);      /* 1 - mean(0, 0) */
    ck_assert_double_eq_tol(a[1], 0 - 0.5, 1e-12);      /* 0 - mean(1, 0) */
    ck_assert_double_eq_tol(a[4], 0, 1e-12);
    const double pair[2] = {3, 1};
    st_rloo_advantages(pair, 2, 2, a);
    ck_assert_double_eq(a[0], 2);
    ck_assert_double_eq(a[1], -2);
}
END_TEST

/* GAE against its closed form A_t = sum_k (gamma lambda)^k delta_{t+k}. */
START_TEST(gae_closed_form)
{
    enum { R = 2, L = 7 };
    float v[R * L], rw[R * L], mask[R * L], adv[R * L], ret[R * L];
    for (int i = 0; i < R * L; i++) {
        const int t = i % L;
        mask[i] = (i / L == 0) ? (t >= 2 && t < 6) : (t >= 1);
        v[i] = (float)sin(0.9 * i) * mask[i];
        rw[i] = (float)cos(1.7 * i) * mask[i];
    }
    const double gamma = 0.9, lambda = 0.8;
    st_gae(v, rw, mask, R, L, (float)gamma, (float)lambda, adv, ret);
    for (int b = 0; b < R; b++)
        for (int t = 0; t < L; t++) {
            const int i = b * L + t;
            if (!mask[i]) {
                ck_assert(adv[i] == 0 && ret[i] == 0);
                continue;
            }
            double want = 0, f = 1;
            for (int k = t; k < L && mask[b * L + k]; k++) {
                const double vn = k + 1 < L && mask[b * L + k + 1] ? v[b * L + k + 1] : 0;
                want += f * (rw[b * L + k] + gamma * vn - v[b * L + k]);
                f *= gamma * lambda;
            }
            ck_assert_msg(fabs(adv[i] - want) < 1e-5, "row %d position %d: %.7g vs %.7g", b, t, adv[i], want);
            ck_assert_msg(fabs(ret[i] - (want + v[i])) < 1e-5, "return at %d", i);
        }
    /* gamma = lambda = 1: the advantage is the return to go minus the value */
    st_gae(v, rw, mask, R, L, 1.0f, 1.0f, adv, ret);
    double togo = 0;
    for (int t = L - 1; t >= 1; t--) {
        togo += rw[L + t];
        ck_assert_msg(fabs(ret[L + t] - togo) < 1e-5, "return to go at %d", t);
    }
}
END_TEST

/* The value head and the clipped value loss: values against the head in
 * double on the body's hidden states; the loss against its formula; its
 * gradient (head and body) by finite differences. */
START_TEST(value_loss_gradient)
{
    const st_config cfg = cfg_small();
    st_model body;
    ck_assert_int_eq(st_model_create(&body, &cfg, MPI_COMM_SELF, B, T, ST_MODEL_TRAIN), 0);
    st_model_init(&body, 8);
    perturb(&body, 0.2f);
    st_value_head h;
    ck_assert_int_eq(st_value_create(&h, &body, 5), 0);
    h.params[cfg.d_model] = 0.3f;
    rows p = make_rows();
    float v[B * T], old_v[B * T], ret[B * T];
    ck_assert_int_eq(st_value_forward(&h, &body, p.tok, B, T, v), 0);
    for (int i = 0; i < B * T; i++) {
        double s = h.params[cfg.d_model];
        for (int c = 0; c < cfg.d_model; c++) s += (double)h.params[c] * body.a.lnf[(size_t)i * cfg.d_model + c];
        ck_assert_msg(fabs(v[i] - s) < 1e-5 * (1 + fabs(s)), "value at %d: %.7g vs %.7g", i, v[i], s);
        /* old values near, on either side, and far (the clip active) */
        old_v[i] = v[i] + (float)(i % 3 == 0 ? 0.5 : i % 3 == 1 ? -0.05 : 0.02);
        ret[i] = v[i] + (float)(0.8 * sin(3.1 * i));
    }
    const float clip = 0.2f, scale = 0.5f;
    double loss, clipped, want = 0, want_clipped = 0;
    st_value_loss(&h, p.mask, old_v, ret, clip, scale, &loss, &clipped);
    for (int i = 0; i < B * T; i++) {
        if (!p.mask[i]) continue;
        const double vi = v[i], ri = ret[i], vc = fmin(fmax(vi, (double)old_v[i] - clip), (double)old_v[i] + clip);
        const double a = (vi - ri) * (vi - ri), b = (vc - ri) * (vc - ri);
        want += scale * 0.5 * fmax(a, b);
        want_clipped += b > a;
    }
    ck_assert_msg(fabs(loss - want) < 1e-6 * (1 + want), "value loss %.9g vs %.9g", loss, want);
    ck_assert_double_eq(clipped, want_clipped);
    ck_assert(want_clipped > 0);
    st_model_zero_grad(&body);
    memset(h.grads, 0, sizeof(float) * h.lay.numel);
    ck_assert_int_eq(st_value_backward(&h, &body, p.tok), 0);
    /* finite differences over the head and a spread of the body */
    const float eps = 1e-3f;
    int checked = 0;
    for (int k = 0; k < 2; k++) {
        float *par = k ? body.params : h.params, *grad = k ? body.grads : h.grads;
        const size_t n = k ? body.lay.numel : h.lay.numel;
        for (size_t i = 0; i < n; i += k ? n / 40 + 1 : 3) {
            const float x = par[i];
            double up, dn, c2;
            par[i] = x + eps;
            ck_assert_int_eq(st_value_forward(&h, &body, p.tok, B, T, NULL), 0);
            st_value_loss(&h, p.mask, old_v, ret, clip, scale, &up, &c2);
            par[i] = x - eps;
            ck_assert_int_eq(st_value_forward(&h, &body, p.tok, B, T, NULL), 0);
            st_value_loss(&h, p.mask, old_v, ret, clip, scale, &dn, &c2);
            par[i] = x;
            const double fd = (up - dn) / (2 * eps);
            ck_assert_msg(fabs(fd - grad[i]) < 1e-3 + 2e-2 * fabs(fd), "%s param %zu: grad %.6g vs finite difference %.6g",
                          k ? "body" : "head", i, (double)grad[i], fd);
            checked += fabs(fd) > 1e-3;
        }
    }
    ck_assert_int_gt(checked, 8);
    st_value_free(&h);
    st_model_free(&body);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("rl");
    TCase *tc = tcase_create("rl");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, per_token_loss_matches_reference);
    tcase_add_test(tc, per_answer_loss_matches_reference);
    tcase_add_test(tc, on_policy_is_reinforce);
    tcase_add_test(tc, group_advantages);
    tcase_add_test(tc, gae_closed_form);
    tcase_add_test(tc, value_loss_gradient);
    suite_add_tcase(s, tc);
    return st_run_serial_mpi_suite(&argc, &argv, s);
}
