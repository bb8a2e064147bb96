/* test_ref.c: the double reference (tests/ref.c) checked against finite
 * differences and a few closed-form values, so that other tests can trust it.
 *
 * Gradient checks differentiate a random linear functional L = r . out of each
 * layer's output (the loss itself for the model) with the fourth-order central
 * stencil (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h, and allow a
 * relative error of 1e-6 per entry. Entries far below the largest gradient
 * (under 1e-3 of it) are measured against that 1e-3 instead, where round-off
 * dominates. The step trades truncation (~h^4) against round-off
 * (~1e-16 |L| / h): layers use h = 1e-5, the model h = 1e-4 because its
 * gradients (down to 1e-5) are small next to its loss. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "ref.h"

#define FD_H 1e-5        /* layers */
#define FD_H_MODEL 1e-4  /* whole model, see above */
#define FD_TOL 1e-6

/* ---- helpers ------------------------------------------------------------ */

static st_rng rng;

static double randn(void)
{
    double u1 = st_rng_uniform(&rng), u2 = st_rng_uniform(&rng);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
}

static double *rand_buf(int n, double scale)
{
    double *x = malloc((size_t)n * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (int i = 0; i < n; i++) x[i] = scale * randn();
    return x;
}

static double *zeros(int n)
{
    double *x = calloc((size_t)n, sizeof *x);
    ck_assert_ptr_nonnull(x);
    return x;
}

static double dot(const double *a, const double *b, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* A scalar function of whatever ctx points at (it reads the perturbed x). */
typedef double (*loss_fn)(void *ctx);

static double central4(loss_fn f, void *ctx, double *xi, double h)
{
    double keep = *xi, d[4], step[4] = {h, -h, 2 * h, -2 * h};
    for (int s = 0; s < 4; s++) {
        *xi = keep + step[s];
        d[s] = f(ctx);
    }
    *xi = keep;
    return (8.0 * (d[0] - d[1]) - (d[2] - d[3])) / (12.0 * h);
}

/* Compares the analytic gradient g of f with respect to x at the entries
 * idx[0..n) (idx NULL: every entry 0..n) with finite differences. scale is
 * the largest gradient entry of the whole problem (0: this tensor's own).
 * Returns the worst relative error and reports the worst entry on failure. */
static double fd_check(const char *what, loss_fn f, void *ctx, double *x, const double *g,
                       const int *idx, int n, double h, double scale)
{
    double *num = zeros(n), gmax = 0.0, worst = 0.0;
    for (int j = 0; j < n; j++) {
        int i = idx ? idx[j] : j;
        num[j] = central4(f, ctx, &x[i], h);
        if (fabs(g[i]) > gmax) gmax = fabs(g[i]);
    }
    if (scale <= 0.0) {
        ck_assert_msg(gmax > 0.0, "%s: gradient is all zero, the check would be vacuous", what);
        scale = gmax;
    }
    int worst_j = -1;
    for (int j = 0; j < n; j++) {
        int i = idx ? idx[j] : j;
        double den = fmax(fmax(fabs(g[i]), fabs(num[j])), 1e-3 * scale);
        double err = fabs(g[i] - num[j]) / den;
        if (err > worst) { worst = err; worst_j = j; }
    }
    if (worst > FD_TOL) {
        int i = idx ? idx[worst_j] : worst_j;
        fprintf(stderr, "%s: entry %d analytic %.12g numeric %.12g (rel err %.3g)\n", what, i,
                g[i], num[worst_j], worst);
    }
    free(num);
    return worst;
}

#define CHECK_FD(what, f, ctx, x, g, n)                                                  \
    do {                                                                                 \
        double e_ = fd_check(what, f, ctx, x, g, NULL, n, FD_H, 0.0);                  \
        ck_assert_msg(e_ < FD_TOL, "%s: analytic gradient off by rel %.3g", what, e_);   \
    } while (0)

/* ---- per-layer gradient checks ------------------------------------------ */

typedef struct {
    int N, IC, OC;
    double *inp, *w, *b, *out, *r;
} linear_ctx;

static double linear_loss(void *p)
{
    linear_ctx *c = p;
    ref_linear_forward(c->out, c->inp, c->w, c->b, c->N, c->IC, c->OC);
    return dot(c->r, c->out, c->N * c->OC);
}

START_TEST(test_linear_grad)
{
    st_rng_seed(&rng, 1);
    linear_ctx c = {5, 7, 6, NULL, NULL, NULL, NULL, NULL};
    c.inp = rand_buf(c.N * c.IC, 1.0);
    c.w = rand_buf(c.OC * c.IC, 0.5);
    c.b = rand_buf(c.OC, 0.5);
    c.out = zeros(c.N * c.OC);
    c.r = rand_buf(c.N * c.OC, 1.0);
    double *dinp = rand_buf(c.N * c.IC, 1.0); /* garbage: must be overwritten */
    double *dw0 = rand_buf(c.OC * c.IC, 1.0), *db0 = rand_buf(c.OC, 1.0);
    double *dw = zeros(c.OC * c.IC), *db = zeros(c.OC);
    memcpy(dw, dw0, (size_t)c.OC * c.IC * sizeof *dw);
    memcpy(db, db0, (size_t)c.OC * sizeof *db);
    ref_linear_backward(dinp, dw, db, c.r, c.inp, c.w, c.N, c.IC, c.OC);
    for (int i = 0; i < c.OC * c.IC; i++) dw[i] -= dw0[i]; /* dw was added to */
    for (int i = 0; i < c.OC; i++) db[i] -= db0[i];
    CHECK_FD("linear dinp", linear_loss, &c, c.inp, dinp, c.N * c.IC);
    CHECK_FD("linear dw", linear_loss, &c, c.w, dw, c.OC * c.IC);
    CHECK_FD("linear db", linear_loss, &c, c.b, db, c.OC);

    /* no bias, and every gradient optional */
    double *o1 = zeros(c.N * c.OC);
    ref_linear_forward(o1, c.inp, c.w, NULL, c.N, c.IC, c.OC);
    ref_linear_forward(c.out, c.inp, c.w, c.b, c.N, c.IC, c.OC);
    for (int n = 0; n < c.N; n++)
        for (int o = 0; o < c.OC; o++)
            ck_assert_double_eq_tol(c.out[n * c.OC + o], o1[n * c.OC + o] + c.b[o], 1e-12);
    double *dinp2 = zeros(c.N * c.IC);
    ref_linear_backward(dinp2, NULL, NULL, c.r, c.inp, c.w, c.N, c.IC, c.OC);
    ref_linear_backward(NULL, NULL, NULL, c.r, c.inp, c.w, c.N, c.IC, c.OC);
    for (int i = 0; i < c.N * c.IC; i++) ck_assert_double_eq_tol(dinp2[i], dinp[i], 1e-12);
    free(c.inp); free(c.w); free(c.b); free(c.out); free(c.r);
    free(dinp); free(dinp2); free(dw0); free(db0); free(dw); free(db); free(o1);
}
END_TEST

typedef struct {
    int N, C, rms;
    double eps;
    double *inp, *w, *b, *out, *r;
} norm_ctx;

static double norm_loss(void *p)
{
    norm_ctx *c = p;
    if (c->rms) ref_rmsnorm_forward(c->out, c->inp, c->w, c->N, c->C, c->eps);
    else ref_layernorm_forward(c->out, c->inp, c->w, c->b, c->N, c->C, c->eps);
    return dot(c->r, c->out, c->N * c->C);
}

static void norm_grad_case(int rms)
{
    st_rng_seed(&rng, 2 + rms);
    norm_ctx c = {4, 9, rms, 1e-5, NULL, NULL, NULL, NULL, NULL};
    c.inp = rand_buf(c.N * c.C, 1.0);
    for (int i = 0; i < c.N * c.C; i++) c.inp[i] += 0.7; /* nonzero mean */
    c.w = rand_buf(c.C, 0.5);
    for (int i = 0; i < c.C; i++) c.w[i] += 1.0;
    c.b = rand_buf(c.C, 0.5);
    c.out = zeros(c.N * c.C);
    c.r = rand_buf(c.N * c.C, 1.0);
    double *dinp = rand_buf(c.N * c.C, 1.0), *dw = rand_buf(c.C, 1.0), *db = rand_buf(c.C, 1.0);
    double *dw0 = zeros(c.C), *db0 = zeros(c.C);
    memcpy(dw0, dw, (size_t)c.C * sizeof *dw);
    memcpy(db0, db, (size_t)c.C * sizeof *db);
    if (rms) ref_rmsnorm_backward(dinp, dw, c.r, c.inp, c.w, c.N, c.C, c.eps);
    else ref_layernorm_backward(dinp, dw, db, c.r, c.inp, c.w, c.N, c.C, c.eps);
    for (int i = 0; i < c.C; i++) {
        dw[i] -= dw0[i];
        db[i] -= db0[i];
    }
    CHECK_FD(rms ? "rmsnorm dinp" : "layernorm dinp", norm_loss, &c, c.inp, dinp, c.N * c.C);
    CHECK_FD(rms ? "rmsnorm dw" : "layernorm dw", norm_loss, &c, c.w, dw, c.C);
    if (!rms) CHECK_FD("layernorm db", norm_loss, &c, c.b, db, c.C);
    free(c.inp); free(c.w); free(c.b); free(c.out); free(c.r);
    free(dinp); free(dw); free(db); free(dw0); free(db0);
}

START_TEST(test_layernorm_grad) { norm_grad_case(0); }
END_TEST
START_TEST(test_rmsnorm_grad) { norm_grad_case(1); }
END_TEST

typedef struct {
    int n;
    double *a, *b, *out, *r;
} elt_ctx;

static double gelu_loss(void *p)
{
    elt_ctx *c = p;
    ref_gelu_forward(c->out, c->a, c->n);
    return dot(c->r, c->out, c->n);
}

static double swiglu_loss(void *p)
{
    elt_ctx *c = p;
    ref_swiglu_forward(c->out, c->a, c->b, c->n);
    return dot(c->r, c->out, c->n);
}

START_TEST(test_gelu_swiglu_grad)
{
    st_rng_seed(&rng, 4);
    elt_ctx c = {23, NULL, NULL, NULL, NULL};
    c.a = rand_buf(c.n, 2.0);
    c.b = rand_buf(c.n, 1.0);
    c.out = zeros(c.n);
    c.r = rand_buf(c.n, 1.0);
    double *da = zeros(c.n), *db = zeros(c.n);
    ref_gelu_backward(da, c.r, c.a, c.n);
    CHECK_FD("gelu dinp", gelu_loss, &c, c.a, da, c.n);
    ref_swiglu_backward(da, db, c.r, c.a, c.b, c.n);
    CHECK_FD("swiglu dgate", swiglu_loss, &c, c.a, da, c.n);
    CHECK_FD("swiglu dup", swiglu_loss, &c, c.b, db, c.n);
    free(c.a); free(c.b); free(c.out); free(c.r); free(da); free(db);
}
END_TEST

typedef struct {
    int rows, cols;
    double *inp, *out, *r;
} softmax_ctx;

static double softmax_loss(void *p)
{
    softmax_ctx *c = p;
    ref_softmax_forward(c->out, c->inp, c->rows, c->cols);
    return dot(c->r, c->out, c->rows * c->cols);
}

START_TEST(test_softmax_grad)
{
    st_rng_seed(&rng, 5);
    softmax_ctx c = {4, 7, NULL, NULL, NULL};
    int n = c.rows * c.cols;
    c.inp = rand_buf(n, 2.0);
    c.inp[3] = c.inp[c.cols + 6] = -INFINITY; /* masked entries */
    c.out = zeros(n);
    c.r = rand_buf(n, 1.0);
    softmax_loss(&c);
    double *dinp = rand_buf(n, 1.0);
    ref_softmax_backward(dinp, c.r, c.out, c.rows, c.cols);
    ck_assert_double_eq(dinp[3], 0.0);
    ck_assert_double_eq(dinp[c.cols + 6], 0.0);
    int idx[28], m = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(c.inp[i])) idx[m++] = i;
    double e = fd_check("softmax dinp", softmax_loss, &c, c.inp, dinp, idx, m, FD_H, 0.0);
    ck_assert_msg(e < FD_TOL, "softmax dinp off by rel %.3g", e);
    free(c.inp); free(c.out); free(c.r); free(dinp);
}
END_TEST

typedef struct {
    int B, NH, T, hd, pos0;
    double theta;
    double *x, *out, *r;
} rope_ctx;

static double rope_loss(void *p)
{
    rope_ctx *c = p;
    int n = c->B * c->NH * c->T * c->hd;
    memcpy(c->out, c->x, (size_t)n * sizeof *c->out);
    ref_rope(c->out, c->B, c->NH, c->T, c->hd, c->pos0, c->theta, 0);
    return dot(c->r, c->out, n);
}

START_TEST(test_rope_grad)
{
    st_rng_seed(&rng, 6);
    rope_ctx c = {2, 3, 5, 6, 3, 100.0, NULL, NULL, NULL};
    int n = c.B * c.NH * c.T * c.hd;
    c.x = rand_buf(n, 1.0);
    c.out = zeros(n);
    c.r = rand_buf(n, 1.0);
    double *dx = zeros(n);
    memcpy(dx, c.r, (size_t)n * sizeof *dx);
    ref_rope(dx, c.B, c.NH, c.T, c.hd, c.pos0, c.theta, 1); /* the backward */
    CHECK_FD("rope dx", rope_loss, &c, c.x, dx, n);
    free(c.x); free(c.out); free(c.r); free(dx);
}
END_TEST

typedef struct {
    int B, T, H, KV, hd;
    double *q, *k, *v, *out, *r;
} attn_ctx;

static double attn_loss(void *p)
{
    attn_ctx *c = p;
    ref_attention_forward(c->out, c->q, c->k, c->v, c->B, c->T, c->H, c->KV, c->hd);
    return dot(c->r, c->out, c->B * c->H * c->T * c->hd);
}

START_TEST(test_attention_grad)
{
    st_rng_seed(&rng, 7);
    attn_ctx c = {2, 5, 4, 2, 3, NULL, NULL, NULL, NULL, NULL};
    int nq = c.B * c.H * c.T * c.hd, nk = c.B * c.KV * c.T * c.hd;
    c.q = rand_buf(nq, 1.0);
    c.k = rand_buf(nk, 1.0);
    c.v = rand_buf(nk, 1.0);
    c.out = zeros(nq);
    c.r = rand_buf(nq, 1.0);
    double *dq = rand_buf(nq, 1.0), *dk = rand_buf(nk, 1.0), *dv = rand_buf(nk, 1.0);
    ref_attention_backward(dq, dk, dv, c.r, c.q, c.k, c.v, c.B, c.T, c.H, c.KV, c.hd);
    CHECK_FD("attention dq", attn_loss, &c, c.q, dq, nq);
    CHECK_FD("attention dk", attn_loss, &c, c.k, dk, nk);
    CHECK_FD("attention dv", attn_loss, &c, c.v, dv, nk);
    free(c.q); free(c.k); free(c.v); free(c.out); free(c.r); free(dq); free(dk); free(dv);
}
END_TEST

typedef struct {
    int N, V;
    double norm;
    double *logits;
    const int *targets;
    const float *mask;
} ce_ctx;

static double ce_loss(void *p)
{
    ce_ctx *c = p;
    return ref_cross_entropy(NULL, c->logits, c->targets, c->mask, c->N, c->V, c->norm);
}

START_TEST(test_cross_entropy_grad)
{
    st_rng_seed(&rng, 8);
    int targets[5] = {3, 0, -1, 10, 6}; /* -1 sits under a zero mask */
    float mask[5] = {1, 0.5f, 0, 1, 1};
    ce_ctx c = {5, 11, 3.7, NULL, targets, mask};
    c.logits = rand_buf(c.N * c.V, 2.0);
    double *dl = rand_buf(c.N * c.V, 1.0);
    double loss = ref_cross_entropy(dl, c.logits, targets, mask, c.N, c.V, c.norm);
    ck_assert(isfinite(loss) && loss > 0.0);
    for (int j = 0; j < c.V; j++) ck_assert_double_eq(dl[2 * c.V + j], 0.0);
    CHECK_FD("cross-entropy dlogits", ce_loss, &c, c.logits, dl, c.N * c.V);
    free(c.logits); free(dl);
}
END_TEST

/* ---- sanity values ------------------------------------------------------ */

START_TEST(test_softmax_sums)
{
    double x[3 * 5] = {1, 2, 3, 4, 5,  -INFINITY, 0.5, -INFINITY, 800, -3,
                       -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    double y[15];
    ref_softmax_forward(y, x, 3, 5);
    for (int r = 0; r < 2; r++) {
        double s = 0.0;
        for (int c = 0; c < 5; c++) {
            ck_assert(y[r * 5 + c] >= 0.0);
            s += y[r * 5 + c];
        }
        ck_assert_double_eq_tol(s, 1.0, 1e-14);
    }
    ck_assert_double_eq(y[5], 0.0);
    ck_assert_double_eq(y[7], 0.0);
    ck_assert_double_eq_tol(y[8], 1.0, 1e-14); /* 800 dominates without overflow */
    ck_assert_double_eq_tol(y[1] / y[0], exp(1.0), 1e-12);
    for (int c = 0; c < 5; c++) ck_assert_double_eq(y[10 + c], 0.0); /* all masked */
}
END_TEST

START_TEST(test_attention_first_row)
{
    st_rng_seed(&rng, 9);
    const int B = 2, T = 4, H = 6, KV = 2, hd = 5, G = H / KV;
    double *q = rand_buf(B * H * T * hd, 1.0), *k = rand_buf(B * KV * T * hd, 1.0);
    double *v = rand_buf(B * KV * T * hd, 1.0), *o = zeros(B * H * T * hd);
    ref_attention_forward(o, q, k, v, B, T, H, KV, hd);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int d = 0; d < hd; d++)
                ck_assert_double_eq_tol(o[((b * H + h) * T + 0) * hd + d],
                                        v[((b * KV + h / G) * T + 0) * hd + d], 1e-14);
    /* t = 1 is a convex mix of v0 and v1 with the softmax weight of the scores */
    int b = 1, h = 4, kh = h / G;
    double s0 = 0, s1 = 0;
    for (int d = 0; d < hd; d++) {
        s0 += q[((b * H + h) * T + 1) * hd + d] * k[((b * KV + kh) * T + 0) * hd + d];
        s1 += q[((b * H + h) * T + 1) * hd + d] * k[((b * KV + kh) * T + 1) * hd + d];
    }
    double p1 = 1.0 / (1.0 + exp((s0 - s1) / sqrt((double)hd)));
    for (int d = 0; d < hd; d++)
        ck_assert_double_eq_tol(o[((b * H + h) * T + 1) * hd + d],
                                (1 - p1) * v[((b * KV + kh) * T + 0) * hd + d] +
                                    p1 * v[((b * KV + kh) * T + 1) * hd + d], 1e-13);
    free(q); free(k); free(v); free(o);
}
END_TEST

START_TEST(test_rope_values)
{
    st_rng_seed(&rng, 10);
    const int B = 2, NH = 3, T = 6, hd = 8, n = B * NH * T * hd;
    double *x = rand_buf(n, 1.0), *y = zeros(n);
    memcpy(y, x, (size_t)n * sizeof *y);
    ref_rope(y, B, NH, T, hd, 5, 10000.0, 0);
    double diff = 0.0;
    for (int i = 0; i < n; i++) diff = fmax(diff, fabs(y[i] - x[i]));
    ck_assert(diff > 0.1); /* it did rotate */
    ref_rope(y, B, NH, T, hd, 5, 10000.0, 1);
    for (int i = 0; i < n; i++) ck_assert_double_eq_tol(y[i], x[i], 1e-13);

    /* hd = 4, theta = 100, position 2: pair (0,2) turns by 2, pair (1,3) by 0.2 */
    double e0[4] = {1, 0, 0, 0}, e1[4] = {0, 1, 0, 0};
    ref_rope(e0, 1, 1, 1, 4, 2, 100.0, 0);
    ref_rope(e1, 1, 1, 1, 4, 2, 100.0, 0);
    ck_assert_double_eq_tol(e0[0], cos(2.0), 1e-15);
    ck_assert_double_eq_tol(e0[2], sin(2.0), 1e-15);
    ck_assert_double_eq_tol(e0[1], 0.0, 1e-15);
    ck_assert_double_eq_tol(e0[3], 0.0, 1e-15);
    ck_assert_double_eq_tol(e1[1], cos(0.2), 1e-15);
    ck_assert_double_eq_tol(e1[3], sin(0.2), 1e-15);
    /* position 0 is the identity: t = 0 with pos0 = 0 */
    double z[4] = {0.3, -1.2, 2.5, 0.7};
    ref_rope(z, 1, 1, 1, 4, 0, 100.0, 0);
    ck_assert_double_eq(z[0], 0.3);
    ck_assert_double_eq(z[3], 0.7);
    free(x); free(y);
}
END_TEST

START_TEST(test_cross_entropy_uniform)
{
    const int N = 4, V = 37;
    double *logits = zeros(N * V);
    for (int i = 0; i < N * V; i++) logits[i] = 1.25;
    int targets[4] = {0, 36, 5, -1};
    float mask[4] = {1, 1, 1, 0};
    ck_assert_double_eq_tol(ref_cross_entropy(NULL, logits, targets, mask, N, V, 3.0), log(37.0),
                            1e-13);
    ck_assert_double_eq_tol(ref_cross_entropy(NULL, logits, targets, NULL, 3, V, 1.0),
                            3.0 * log(37.0), 1e-12);
    free(logits);
}
END_TEST

START_TEST(test_elementwise_values)
{
    double x[3] = {1.0, -2.0, 0.0}, y[3];
    ref_gelu_forward(y, x, 3);
    ck_assert_double_eq_tol(y[0], 0.8411919906082768, 1e-15);
    ck_assert_double_eq_tol(y[1], -0.04540230591222494, 1e-15);
    ck_assert_double_eq(y[2], 0.0);
    double g = 1.5, u = 2.0, s;
    ref_swiglu_forward(&s, &g, &u, 1);
    ck_assert_double_eq_tol(s, 2.0 * 1.2263617142904655, 1e-14);

    double row[4] = {1, 2, 3, 6}, w[4] = {1, 1, 1, 1}, b[4] = {0, 0, 0, 0}, o[4];
    ref_layernorm_forward(o, row, w, b, 1, 4, 0.0); /* mean 3, var 3.5 */
    ck_assert_double_eq_tol(o[3], 3.0 / sqrt(3.5), 1e-14);
    ref_rmsnorm_forward(o, row, w, 1, 4, 0.0); /* mean square 12.5 */
    ck_assert_double_eq_tol(o[2], 3.0 / sqrt(12.5), 1e-14);
}
END_TEST

/* ---- the whole model ---------------------------------------------------- */

static st_config cfg_gpt2(void)
{
    st_config c = {.family = ST_FAMILY_GPT2, .n_layer = 2, .d_model = 24, .n_head = 4,
                   .n_kv_head = 4, .d_ff = 40, .vocab_size = 37, .max_seq = 9,
                   .norm_eps = 1e-5f, .rope_theta = 0.0f, .tied_embeddings = 1, .qkv_bias = 0};
    return c;
}

static st_config cfg_llama(void)
{
    st_config c = {.family = ST_FAMILY_LLAMA, .n_layer = 2, .d_model = 24, .n_head = 4,
                   .n_kv_head = 2, .d_ff = 40, .vocab_size = 37, .max_seq = 16,
                   .norm_eps = 1e-5f, .rope_theta = 10000.0f, .tied_embeddings = 0,
                   .qkv_bias = 1};
    return c;
}

/* Random parameters big enough that every nonlinearity is exercised. */
static void randomize(ref_model *m)
{
    for (int i = 0; i < m->lay.n_tensors; i++) {
        const st_tensor *t = &m->lay.tensors[i];
        double *p = m->params + t->offset;
        int norm_w = strstr(t->name, "norm") && strstr(t->name, ".weight");
        for (size_t j = 0; j < t->numel; j++)
            p[j] = norm_w ? 1.0 + 0.2 * randn() : t->ndim == 1 ? 0.1 * randn() : 0.3 * randn();
    }
}

typedef struct {
    ref_model *m;
    const int *tokens, *targets;
    const float *mask;
    int B, T;
    double norm;
} model_ctx;

static double model_loss(void *p)
{
    model_ctx *c = p;
    return ref_model_forward_backward(c->m, c->tokens, c->targets, c->mask, c->B, c->T, c->norm,
                                      NULL, 0);
}

static void make_batch(int *tokens, int *targets, float *mask, int n, int V)
{
    for (int i = 0; i < n; i++) {
        tokens[i] = (int)st_rng_below(&rng, (uint64_t)V);
        targets[i] = (int)st_rng_below(&rng, (uint64_t)V);
        mask[i] = (i % 3 == 1) ? 0.0f : 1.0f;
    }
}

/* Sampled entries of every tensor (or all of them) against finite differences. */
static void model_grad_case(st_config cfg, int B, int T, int per_tensor, uint64_t seed)
{
    st_rng_seed(&rng, seed);
    ref_model m;
    ck_assert_int_eq(ref_model_init(&m, &cfg), ST_OK);
    ck_assert_uint_eq(m.numel, (size_t)st_config_num_params(&cfg));
    randomize(&m);
    int n = B * T;
    int *tokens = malloc((size_t)n * sizeof(int)), *targets = malloc((size_t)n * sizeof(int));
    float *mask = malloc((size_t)n * sizeof(float));
    make_batch(tokens, targets, mask, n, cfg.vocab_size);
    double norm = 0.0;
    for (int i = 0; i < n; i++) norm += mask[i];
    model_ctx c = {&m, tokens, targets, mask, B, T, norm};

    double loss = ref_model_forward_backward(&m, tokens, targets, mask, B, T, norm, NULL, 1);
    ck_assert(isfinite(loss) && loss > 0.0);
    ck_assert_double_eq(loss, model_loss(&c)); /* backward does not change the loss */
    double *g = malloc(m.numel * sizeof *g);
    memcpy(g, m.grads, m.numel * sizeof *g);

    double gmax = 0.0;
    for (size_t j = 0; j < m.numel; j++) gmax = fmax(gmax, fabs(g[j]));
    ck_assert(gmax > 1e-3);
    int *idx = malloc(m.numel * sizeof *idx);
    for (int ti = 0; ti < m.lay.n_tensors; ti++) {
        const st_tensor *t = &m.lay.tensors[ti];
        int k = 0;
        if (per_tensor <= 0 || (size_t)per_tensor >= t->numel) {
            for (size_t j = 0; j < t->numel; j++) idx[k++] = (int)(t->offset + j);
        } else {
            idx[k++] = (int)t->offset;                       /* first entry */
            if (t->shape[0] == cfg.vocab_size)               /* a row of a used token */
                idx[k++] = (int)(t->offset + (size_t)tokens[0] * (size_t)t->shape[1] + 1);
            while (k < per_tensor)
                idx[k++] = (int)(t->offset + st_rng_below(&rng, t->numel));
        }
        double e = fd_check(t->name, model_loss, &c, m.params, g, idx, k, FD_H_MODEL, gmax);
        ck_assert_msg(e < FD_TOL, "%s (%s): gradient off by rel %.3g", t->name,
                      st_family_name(cfg.family), e);
    }

    /* softmax ignores a shift shared by all of a query's scores, so without
     * RoPE the key bias (which adds q . bk to each) gets no gradient at all */
    for (int l = 0; cfg.family == ST_FAMILY_GPT2 && l < cfg.n_layer; l++) {
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.self_attn.k_proj.bias", l);
        const st_tensor *t = st_layout_find(&m.lay, name);
        for (size_t j = 0; t && j < t->numel; j++)
            ck_assert_msg(fabs(g[t->offset + j]) < 1e-12 * gmax, "%s[%zu] = %g", name, j,
                          g[t->offset + j]);
    }
    /* rows never touched get exactly zero: positions past T, unused tokens */
    double *gwpe = ref_model_tensor(&m, g, "model.embed_positions.weight");
    if (gwpe)
        for (size_t j = (size_t)T * cfg.d_model; j < (size_t)cfg.max_seq * cfg.d_model; j++)
            ck_assert_double_eq(gwpe[j], 0.0);
    if (!cfg.tied_embeddings) {
        double *gwte = ref_model_tensor(&m, g, "model.embed_tokens.weight");
        for (int v = 0; v < cfg.vocab_size; v++) {
            int used = 0;
            for (int i = 0; i < n; i++) used |= tokens[i] == v;
            if (!used)
                for (int j = 0; j < cfg.d_model; j++)
                    ck_assert_double_eq(gwte[v * cfg.d_model + j], 0.0);
        }
    }
    /* a second backward starts from zero again */
    ref_model_forward_backward(&m, tokens, targets, mask, B, T, norm, NULL, 1);
    for (size_t j = 0; j < m.numel; j++) ck_assert_double_eq(m.grads[j], g[j]);

    free(idx); free(g); free(tokens); free(targets); free(mask);
    ref_model_free(&m);
}

START_TEST(test_model_grad_gpt2)
{
    model_grad_case(cfg_gpt2(), 2, 7, 10, 11);
}
END_TEST

START_TEST(test_model_grad_llama)
{
    model_grad_case(cfg_llama(), 2, 7, 10, 12);
}
END_TEST

/* Every entry of tiny models, tied and untied in both families. */
START_TEST(test_model_grad_full)
{
    st_config g = {.family = ST_FAMILY_GPT2, .n_layer = 2, .d_model = 6, .n_head = 2,
                   .n_kv_head = 2, .d_ff = 10, .vocab_size = 9, .max_seq = 5,
                   .norm_eps = 1e-5f, .tied_embeddings = 0};
    model_grad_case(g, 2, 4, 0, 13);
    g.tied_embeddings = 1;
    model_grad_case(g, 1, 5, 0, 14);
    st_config l = {.family = ST_FAMILY_LLAMA, .n_layer = 2, .d_model = 8, .n_head = 2,
                   .n_kv_head = 1, .d_ff = 10, .vocab_size = 9, .max_seq = 5,
                   .norm_eps = 1e-6f, .rope_theta = 100.0f, .tied_embeddings = 1, .qkv_bias = 0};
    model_grad_case(l, 2, 4, 0, 15);
    l.tied_embeddings = 0;
    l.qkv_bias = 1;
    model_grad_case(l, 2, 5, 0, 16);
}
END_TEST

/* Logits at position t must not depend on tokens after t. */
static void causality_case(st_config cfg)
{
    st_rng_seed(&rng, 20);
    ref_model m;
    ck_assert_int_eq(ref_model_init(&m, &cfg), ST_OK);
    randomize(&m);
    const int B = 2, T = 6, V = cfg.vocab_size, n = B * T;
    int tokens[12], targets[12];
    float mask[12];
    make_batch(tokens, targets, mask, n, V);
    double *a = zeros(n * V), *b = zeros(n * V);
    ref_model_forward_backward(&m, tokens, targets, mask, B, T, 1.0, a, 0);
    tokens[1 * T + 3] = (tokens[1 * T + 3] + 1) % V; /* batch 1, position 3 */
    ref_model_forward_backward(&m, tokens, targets, mask, B, T, 1.0, b, 0);
    for (int i = 0; i < n; i++) {
        double d = 0.0;
        for (int j = 0; j < V; j++) d = fmax(d, fabs(a[i * V + j] - b[i * V + j]));
        if (i < T + 3) ck_assert_msg(d == 0.0, "position %d changed by %g", i, d);
        else ck_assert_msg(d > 1e-6, "position %d did not see the change", i);
    }
    free(a); free(b);
    ref_model_free(&m);
}

START_TEST(test_model_causal)
{
    causality_case(cfg_gpt2());
    causality_case(cfg_llama());
}
END_TEST

/* With zero attention and MLP outputs the residual stream is the embedding, so
 * logits = final_norm(wte[tok] (+ wpe[t])) @ head^T, computed here by hand. */
static void skip_case(st_config cfg)
{
    st_rng_seed(&rng, 21);
    ref_model m;
    ck_assert_int_eq(ref_model_init(&m, &cfg), ST_OK);
    randomize(&m);
    char name[128];
    const char *zero[] = {"self_attn.o_proj.weight", "self_attn.o_proj.bias",
                          "mlp.down_proj.weight", "mlp.down_proj.bias"};
    for (int l = 0; l < cfg.n_layer; l++)
        for (int z = 0; z < 4; z++) {
            snprintf(name, sizeof name, "model.layers.%d.%s", l, zero[z]);
            const st_tensor *t = st_layout_find(&m.lay, name);
            if (t) memset(m.params + t->offset, 0, t->numel * sizeof(double));
        }
    const int B = 1, T = 5, C = cfg.d_model, V = cfg.vocab_size;
    int tokens[5], targets[5];
    float mask[5];
    make_batch(tokens, targets, mask, T, V);
    double *lg = zeros(T * V);
    ref_model_forward_backward(&m, tokens, targets, mask, B, T, 1.0, lg, 0);
    double *wte = ref_model_tensor(&m, m.params, "model.embed_tokens.weight");
    double *wpe = ref_model_tensor(&m, m.params, "model.embed_positions.weight");
    double *nw = ref_model_tensor(&m, m.params, "model.norm.weight");
    double *nb = ref_model_tensor(&m, m.params, "model.norm.bias");
    double *head = cfg.tied_embeddings ? wte : ref_model_tensor(&m, m.params, "lm_head.weight");
    for (int t = 0; t < T; t++) {
        double x[64], y[64], mean = 0.0, ms = 0.0;
        for (int i = 0; i < C; i++) {
            x[i] = wte[tokens[t] * C + i] + (wpe ? wpe[t * C + i] : 0.0);
            mean += x[i] / C;
        }
        for (int i = 0; i < C; i++) {
            double d = nb ? x[i] - mean : x[i]; /* gpt2 centres, llama does not */
            ms += d * d / C;
        }
        for (int i = 0; i < C; i++)
            y[i] = (nb ? x[i] - mean : x[i]) / sqrt(ms + cfg.norm_eps) * nw[i] + (nb ? nb[i] : 0.0);
        for (int v = 0; v < V; v++) {
            double s = 0.0;
            for (int i = 0; i < C; i++) s += y[i] * head[v * C + i];
            ck_assert_double_eq_tol(lg[t * V + v], s, 1e-12);
        }
    }
    free(lg);
    ref_model_free(&m);
}

START_TEST(test_model_skip_path)
{
    skip_case(cfg_gpt2());
    skip_case(cfg_llama());
}
END_TEST

/* The seeded start matches st_params_init value for value. */
START_TEST(test_model_init_params)
{
    st_config cfg = cfg_llama();
    ref_model m;
    ck_assert_int_eq(ref_model_init(&m, &cfg), ST_OK);
    ck_assert_int_eq(ref_model_init_params(&m, 42), ST_OK);
    float *f = malloc(m.numel * sizeof *f);
    st_params_init(&m.lay, f, 42);
    for (size_t i = 0; i < m.numel; i++) ck_assert_double_eq(m.params[i], (double)f[i]);
    double *w = ref_model_tensor(&m, m.params, "model.layers.1.post_attention_layernorm.weight");
    ck_assert_ptr_nonnull(w);
    ck_assert_double_eq(w[0], 1.0);
    ck_assert_ptr_null(ref_model_tensor(&m, m.params, "model.embed_positions.weight"));
    int tok[2] = {3, 37}, tgt[2] = {0, 0}; /* 37 is past the vocabulary */
    ck_assert(isnan(ref_model_forward_backward(&m, tok, tgt, NULL, 1, 2, 1.0, NULL, 1)));
    free(f);
    ref_model_free(&m);
    cfg.n_head = 5; /* 24 % 5 != 0 */
    ck_assert_int_ne(ref_model_init(&m, &cfg), ST_OK);
}
END_TEST

static Suite *ref_suite(void)
{
    Suite *s = suite_create("ref");
    TCase *layers = tcase_create("layers");
    tcase_add_test(layers, test_linear_grad);
    tcase_add_test(layers, test_layernorm_grad);
    tcase_add_test(layers, test_rmsnorm_grad);
    tcase_add_test(layers, test_gelu_swiglu_grad);
    tcase_add_test(layers, test_softmax_grad);
    tcase_add_test(layers, test_rope_grad);
    tcase_add_test(layers, test_attention_grad);
    tcase_add_test(layers, test_cross_entropy_grad);
    tcase_add_test(layers, test_softmax_sums);
    tcase_add_test(layers, test_attention_first_row);
    tcase_add_test(layers, test_rope_values);
    tcase_add_test(layers, test_cross_entropy_uniform);
    tcase_add_test(layers, test_elementwise_values);
    suite_add_tcase(s, layers);
    TCase *model = tcase_create("model");
    tcase_set_timeout(model, 120);
    tcase_add_test(model, test_model_grad_gpt2);
    tcase_add_test(model, test_model_grad_llama);
    tcase_add_test(model, test_model_grad_full);
    tcase_add_test(model, test_model_causal);
    tcase_add_test(model, test_model_skip_path);
    tcase_add_test(model, test_model_init_params);
    suite_add_tcase(s, model);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(ref_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
