/* test_kernels.c: every kernel of src/kernels/kernels.h against the double reference
 * (tests/ref.h) on random inputs with odd sizes, plus the strided matmul and
 * copy layouts attention uses, the += / = gradient conventions and the cache. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "kernels/kernels.h"
#include "kernels/peak.h"
#include "ref.h"

#define TOL_FWD 1e-5
#define TOL_BWD 1e-4

/* ---- helpers ------------------------------------------------------------ */

static st_rng g_rng;

static float *frand(size_t n, double lo, double hi)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * st_rng_uniform(&g_rng));
    return x;
}

static double *widen(const float *x, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    ck_assert_ptr_nonnull(d);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

static double *dzeros(size_t n)
{
    double *d = calloc(n ? n : 1, sizeof *d);
    ck_assert_ptr_nonnull(d);
    return d;
}

/* max |got - want| / max |want| */
static double rel_err(const float *got, const double *want, size_t n)
{
    double num = 0.0, den = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= num)) num = e; /* also catches NaN */
        if (fabs(want[i]) > den) den = fabs(want[i]);
    }
    return num / den;
}

#define CHECK_REL(got, want, n, tol)                                                   \
    do {                                                                               \
        double e_ = rel_err((got), (want), (n));                                       \
        ck_assert_msg(e_ < (tol), "%s vs %s: relative error %g >= %g", #got, #want, e_, \
                      (double)(tol));                                                  \
    } while (0)

#define OK(call)                                                                     \
    do {                                                                             \
        st_err e_ = (call);                                                          \
        ck_assert_msg(e_ == ST_OK, "%s failed: %s", #call, st_error_message());      \
    } while (0)

static void setup(void) { st_rng_seed(&g_rng, 1234); }
static void teardown(void) { st_kernels_shutdown(); }

/* Strided batched c = alpha a @ b (+ bias) (+ c), double, for the matmul tests. */
static void mm_ref(double *c, const double *a, const double *b, const double *bias,
                   const st_matmul_desc *d)
{
    double alpha = d->alpha == 0.0f ? 1.0 : d->alpha;
    for (int64_t i = 0; i < d->B0; i++)
        for (int64_t j = 0; j < d->B1; j++)
            for (int64_t m = 0; m < d->M; m++)
                for (int64_t n = 0; n < d->N; n++) {
                    double s = 0.0;
                    for (int64_t k = 0; k < d->K; k++)
                        s += a[i * d->sa[0] + j * d->sa[1] + m * d->sa[2] + k * d->sa[3]] *
                             b[i * d->sb[0] + j * d->sb[1] + k * d->sb[2] + n * d->sb[3]];
                    double *x = c + i * d->sc[0] + j * d->sc[1] + m * d->sc[2] + n * d->sc[3];
                    *x = (d->accumulate ? *x : 0.0) + alpha * s + (d->has_bias ? bias[n] : 0.0);
                }
}

/* Run st_matmul and mm_ref on the same random a, b, bias and starting c
 * (buffers of na, nb, nc elements) and compare all of c, including the gaps
 * a strided c leaves untouched. */
static void check_matmul(const st_matmul_desc *d, size_t na, size_t nb, size_t nc)
{
    float *a = frand(na, -1, 1), *b = frand(nb, -1, 1), *c = frand(nc, -1, 1);
    float *bias = frand((size_t)d->N, -1, 1);
    double *da = widen(a, na), *db = widen(b, nb), *dc = widen(c, nc);
    double *dbias = widen(bias, (size_t)d->N);
    OK(st_matmul(d, c, a, b, d->has_bias ? bias : NULL));
    mm_ref(dc, da, db, dbias, d);
    CHECK_REL(c, dc, nc, TOL_FWD);
    free(a), free(b), free(c), free(bias), free(da), free(db), free(dc), free(dbias);
}

/* ---- matmul ------------------------------------------------------------- */

START_TEST(test_matmul_plain)
{
    const int64_t M = 37, K = 53, N = 29;
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = M, .K = K, .N = N,
                        .sa = {0, 0, K, 1}, .sb = {0, 0, N, 1}, .sc = {0, 0, N, 1}};
    check_matmul(&d, M * K, K * N, M * N);
    d.has_bias = 1;
    check_matmul(&d, M * K, K * N, M * N);
    d.alpha = 0.37f; /* alpha scales the product only, not the bias */
    check_matmul(&d, M * K, K * N, M * N);
    d.accumulate = 1;
    check_matmul(&d, M * K, K * N, M * N);
    d.has_bias = 0;
    check_matmul(&d, M * K, K * N, M * N);
}
END_TEST

START_TEST(test_matmul_transposed)
{
    /* c = a^T @ b^T with both transposes as swapped strides; a is (K,M), b is (N,K) */
    const int64_t M = 31, K = 17, N = 23;
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = M, .K = K, .N = N,
                        .sa = {0, 0, 1, M}, .sb = {0, 0, 1, K}, .sc = {0, 0, N, 1}};
    check_matmul(&d, K * M, N * K, M * N);
    /* a with a padded leading dimension, c written into the middle of wider rows */
    st_matmul_desc e = {.B0 = 1, .B1 = 1, .M = M, .K = K, .N = N, .accumulate = 1,
                        .sa = {0, 0, K + 5, 1}, .sb = {0, 0, 1, K}, .sc = {0, 0, N + 3, 1}};
    check_matmul(&e, M * (K + 5), N * K, M * (N + 3));
}
END_TEST

/* The products attention makes, with q, k, v, dout in (B,T,H,hd) token-major layout
 * read as (B,H,T,hd) through strides. */
START_TEST(test_matmul_attention_layouts)
{
    const int64_t B = 2, H = 3, T = 7, hd = 5;
    const int64_t tok[4] = {T * H * hd, hd, H * hd, 1};   /* (B,H,T,hd) view of (B,T,H,hd) */
    const int64_t tokT[4] = {T * H * hd, hd, 1, H * hd};  /* its (B,H,hd,T) transpose */
    const int64_t att[4] = {H * T * T, T * T, T, 1};      /* (B,H,T,T) dense */
    const int64_t attT[4] = {H * T * T, T * T, 1, T};
    const size_t ntok = (size_t)(B * T * H * hd), natt = (size_t)(B * H * T * T);

    /* S = alpha Q K^T */
    st_matmul_desc s = {.B0 = B, .B1 = H, .M = T, .K = hd, .N = T, .alpha = 0.4472136f};
    memcpy(s.sa, tok, sizeof tok), memcpy(s.sb, tokT, sizeof tokT), memcpy(s.sc, att, sizeof att);
    check_matmul(&s, ntok, ntok, natt);
    /* O = P V written straight into (B,T,H,hd) */
    st_matmul_desc o = {.B0 = B, .B1 = H, .M = T, .K = T, .N = hd};
    memcpy(o.sa, att, sizeof att), memcpy(o.sb, tok, sizeof tok), memcpy(o.sc, tok, sizeof tok);
    check_matmul(&o, natt, ntok, ntok);
    /* dV += P^T dO */
    st_matmul_desc dv = {.B0 = B, .B1 = H, .M = T, .K = T, .N = hd, .accumulate = 1};
    memcpy(dv.sa, attT, sizeof attT), memcpy(dv.sb, tok, sizeof tok), memcpy(dv.sc, tok, sizeof tok);
    check_matmul(&dv, natt, ntok, ntok);
    /* dK = alpha dS^T Q */
    st_matmul_desc dk = {.B0 = B, .B1 = H, .M = T, .K = T, .N = hd, .alpha = 0.25f};
    memcpy(dk.sa, attT, sizeof attT), memcpy(dk.sb, tok, sizeof tok), memcpy(dk.sc, tok, sizeof tok);
    check_matmul(&dk, natt, ntok, ntok);
    /* one batch dim only, with a bias */
    st_matmul_desc one = {.B0 = 1, .B1 = 4, .M = 9, .K = 11, .N = 6, .has_bias = 1,
                          .sa = {0, 99, 11, 1}, .sb = {0, 1, 4 * 6, 4}, .sc = {0, 54, 6, 1}};
    check_matmul(&one, 4 * 99, 11 * 4 * 6, 4 * 54);
    /* B0 varying fastest, with alpha, bias and accumulate together */
    st_matmul_desc perm = {.B0 = 2, .B1 = 3, .M = 4, .K = 5, .N = 6, .alpha = 0.5f,
                           .has_bias = 1, .accumulate = 1,
                           .sa = {20, 40, 5, 1}, .sb = {30, 60, 6, 1}, .sc = {24, 48, 6, 1}};
    check_matmul(&perm, 6 * 20, 6 * 30, 6 * 24);
}
END_TEST

/* Decoding's products: the key length Tk grows by one per call over a cache
 * of ldk rows; with runtime_dims one primitive serves every length and the
 * results equal the reference at each. */
START_TEST(test_matmul_runtime_dims)
{
    const int64_t KV = 2, R = 3, hd = 8, ldk = 40;
    const size_t nq = (size_t)(KV * R * hd), nk = (size_t)(KV * ldk * hd), natt = (size_t)(KV * R * ldk);
    int before = -1;
    for (int64_t Tk = 1; Tk <= ldk; Tk += 3) {
        /* scores (KV,R,Tk) = q (KV,R,hd) @ k^T, att rows of stride ldk */
        st_matmul_desc s = {.B0 = 1, .B1 = KV, .M = R, .K = hd, .N = Tk, .alpha = 0.35f,
                            .sa = {0, R * hd, hd, 1}, .sb = {0, ldk * hd, 1, hd},
                            .sc = {0, R * ldk, ldk, 1}, .runtime_dims = ST_MM_RUNTIME_N};
        check_matmul(&s, nq, nk, natt);
        /* out (KV,R,hd) = att (KV,R,Tk) @ v (KV,Tk,hd) */
        st_matmul_desc o = {.B0 = 1, .B1 = KV, .M = R, .K = Tk, .N = hd,
                            .sa = {0, R * ldk, ldk, 1}, .sb = {0, ldk * hd, hd, 1},
                            .sc = {0, R * hd, hd, 1}, .runtime_dims = ST_MM_RUNTIME_K};
        check_matmul(&o, natt, nk, nq);
        if (before < 0) before = st_kernels_cache_size();
        ck_assert_int_eq(st_kernels_cache_size(), before); /* no primitive per length */
    }
    ck_assert_int_eq(before, 2);
    /* runtime shapes are for fp32 products without a bias */
    float x[4] = {0};
    st_matmul_desc b = {.B0 = 1, .B1 = 1, .M = 2, .K = 2, .N = 2, .has_bias = 1, .runtime_dims = ST_MM_RUNTIME_N,
                        .sa = {0, 0, 2, 1}, .sb = {0, 0, 2, 1}, .sc = {0, 0, 2, 1}};
    ck_assert_int_eq(st_matmul(&b, x, x, x, x), ST_ERR_ARG);
}
END_TEST

START_TEST(test_matmul_errors)
{
    float x[4] = {0};
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = 2, .K = 2, .N = 2, .has_bias = 1,
                        .sa = {0, 0, 2, 1}, .sb = {0, 0, 2, 1}, .sc = {0, 0, 2, 1}};
    ck_assert_int_eq(st_matmul(&d, x, x, x, NULL), ST_ERR_ARG);
    d.has_bias = 0;
    d.M = -1;
    ck_assert_int_eq(st_matmul(&d, x, x, x, NULL), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "st_matmul"));
    /* zero rows or columns: nothing to do; K = 0: c = 0 (or unchanged when accumulating) */
    d.M = 0;
    OK(st_matmul(&d, x, x, x, NULL));
    float c[4] = {1, 2, 3, 4};
    d.M = 2, d.K = 0, d.accumulate = 1;
    OK(st_matmul(&d, c, x, x, NULL));
    ck_assert(c[0] == 1 && c[3] == 4);
    d.accumulate = 0;
    OK(st_matmul(&d, c, x, x, NULL));
    ck_assert(c[0] == 0 && c[3] == 0);
    /* oneDNN refuses a negative stride: ST_ERR_DNNL naming the primitive and shape,
     * and nothing is cached */
    int before = st_kernels_cache_size();
    float big[64] = {0};
    st_matmul_desc neg = {.B0 = 1, .B1 = 1, .M = 4, .K = 5, .N = 6,
                          .sa = {0, 0, -5, 1}, .sb = {0, 0, 6, 1}, .sc = {0, 0, 6, 1}};
    ck_assert_int_eq(st_matmul(&neg, big, big + 20, big, NULL), ST_ERR_DNNL);
    ck_assert_msg(strstr(st_error_message(), "matmul") &&
                  strstr(st_error_message(), "1,1,4,5,6"), "message: %s", st_error_message());
    ck_assert_int_eq(st_kernels_cache_size(), before);
}
END_TEST

/* ---- linear ------------------------------------------------------------- */

START_TEST(test_linear_forward)
{
    const int N = 37, IC = 53, OC = 29;
    float *inp = frand(N * IC, -1, 1), *w = frand(OC * IC, -0.5, 0.5), *b = frand(OC, -1, 1);
    float *out = frand(N * OC, -9, 9); /* garbage: must be overwritten */
    double *dinp = widen(inp, N * IC), *dw = widen(w, OC * IC), *dbias = widen(b, OC);
    double *want = dzeros(N * OC);
    OK(st_linear_forward(out, inp, w, NULL, b, N, IC, OC));
    ref_linear_forward(want, dinp, dw, dbias, N, IC, OC);
    CHECK_REL(out, want, N * OC, TOL_FWD);
    OK(st_linear_forward(out, inp, w, NULL, NULL, N, IC, OC));
    ref_linear_forward(want, dinp, dw, NULL, N, IC, OC);
    CHECK_REL(out, want, N * OC, TOL_FWD);
    free(inp), free(w), free(b), free(out), free(dinp), free(dw), free(dbias), free(want);
}
END_TEST

START_TEST(test_linear_backward)
{
    const int N = 37, IC = 53, OC = 29;
    float *inp = frand(N * IC, -1, 1), *w = frand(OC * IC, -0.5, 0.5), *dout = frand(N * OC, -1, 1);
    /* parameter gradients start non-zero: the kernel must add to them */
    float *dw = frand(OC * IC, -1, 1), *db = frand(OC, -1, 1), *dinp = frand(N * IC, -9, 9);
    double *r_inp = widen(inp, N * IC), *r_w = widen(w, OC * IC), *r_dout = widen(dout, N * OC);
    double *r_dw = widen(dw, OC * IC), *r_db = widen(db, OC), *r_dinp = dzeros(N * IC);
    OK(st_linear_backward(dinp, dw, db, dout, inp, w, NULL, N, IC, OC, 0));
    ref_linear_backward(r_dinp, r_dw, r_db, r_dout, r_inp, r_w, N, IC, OC);
    CHECK_REL(dinp, r_dinp, N * IC, TOL_BWD);
    CHECK_REL(dw, r_dw, OC * IC, TOL_BWD);
    CHECK_REL(db, r_db, OC, TOL_BWD);

    /* accumulate_dinp adds to dinp; NULL dw and db are skipped */
    double *prev = widen(dinp, N * IC);
    float *dw_before = malloc(OC * IC * sizeof *dw_before);
    memcpy(dw_before, dw, OC * IC * sizeof *dw);
    OK(st_linear_backward(dinp, NULL, NULL, dout, inp, w, NULL, N, IC, OC, 1));
    for (int i = 0; i < N * IC; i++) prev[i] += r_dinp[i];
    CHECK_REL(dinp, prev, N * IC, TOL_BWD);
    ck_assert(memcmp(dw_before, dw, OC * IC * sizeof *dw) == 0);

    /* a second call adds again (frozen input: dinp NULL) */
    OK(st_linear_backward(NULL, dw, db, dout, inp, w, NULL, N, IC, OC, 0));
    ref_linear_backward(r_dinp, r_dw, r_db, r_dout, r_inp, r_w, N, IC, OC);
    CHECK_REL(dw, r_dw, OC * IC, TOL_BWD);
    CHECK_REL(db, r_db, OC, TOL_BWD);
    free(inp), free(w), free(dout), free(dw), free(db), free(dinp), free(dw_before);
    free(r_inp), free(r_w), free(r_dout), free(r_dw), free(r_db), free(r_dinp), free(prev);
}
END_TEST

/* ---- bf16 --------------------------------------------------------------- */

/* Tolerances of the bf16 products (relative to the largest reference value):
 *   against the double reference on the SAME bf16-rounded inputs: what is left
 *   is fp32 accumulation, as tight as the fp32 kernels (TOL_FWD, TOL_BWD);
 *   against the double reference on the unrounded inputs: bf16 keeps 8
 *   significant bits, each input is off by up to 2^-9 relative, and over K
 *   random terms the products' errors partly cancel: 1e-2 holds with a margin
 *   at these sizes (measured ~2e-3). */
#define TOL_BF16_INPUTS 1e-2

/* x rounded to bf16 (8 significant bits, nearest even), computed apart from the
 * kernels' rounding (normal numbers only). */
static double round_bf16(double x)
{
    if (x == 0.0) return x;
    int e;
    double m = frexp(x, &e); /* x = m 2^e, 0.5 <= |m| < 1 */
    return ldexp(nearbyint(ldexp(m, 8)), e - 8);
}

static double *widen_bf16(const float *x, size_t n)
{
    double *d = widen(x, n);
    for (size_t i = 0; i < n; i++) d[i] = round_bf16(d[i]);
    return d;
}

START_TEST(test_bf16_rounding)
{
    /* ties go to even; NaN stays NaN, infinities and zeros stay */
    const float one = 1.0f, tie_down = 1.0f + 0x1p-8f, tie_up = 1.0f + 0x1p-7f + 0x1p-8f;
    const float in[] = {one, tie_down, tie_up, -tie_up, 1.0f + 0x1p-8f + 0x1p-20f, INFINITY,
                        -0.0f, 0x1.fffffep+127f, NAN};
    const float want[] = {1.0f, 1.0f, 1.0f + 0x1p-6f, -(1.0f + 0x1p-6f), 1.0f + 0x1p-7f, INFINITY,
                          -0.0f, INFINITY, NAN};
    const int n = (int)(sizeof in / sizeof in[0]);
    st_bf16 b[9];
    st_to_bf16(b, in, n);
    for (int i = 0; i < n; i++) {
        float got = st_bf16_to_float(b[i]);
        if (isnan(want[i])) ck_assert(isnan(got));
        else ck_assert_msg(got == want[i] && signbit(got) == signbit(want[i]), "%d: %a -> %a, want %a",
                           i, (double)in[i], (double)got, (double)want[i]);
    }
    /* and random values agree with the independent rounding */
    float *x = frand(1000, -100, 100);
    st_bf16 *y = malloc(1000 * sizeof *y);
    st_to_bf16(y, x, 1000);
    for (int i = 0; i < 1000; i++) ck_assert(st_bf16_to_float(y[i]) == (float)round_bf16(x[i]));
    free(x), free(y);
}
END_TEST

START_TEST(test_linear_bf16)
{
    if (!st_cpu_has_bf16()) {
        const char *impl;
        OK(st_bf16_matmul_available(&impl));
        if (!impl) return; /* no bf16 matmul in this oneDNN on this CPU */
    }
    const int N = 37, IC = 53, OC = 29;
    float *inp = frand(N * IC, -1, 1), *w = frand(OC * IC, -0.5, 0.5), *b = frand(OC, -1, 1);
    float *dout = frand(N * OC, -1, 1), *out = frand(N * OC, -9, 9);
    float *dinp = frand(N * IC, -9, 9), *dw = frand(OC * IC, -1, 1), *db = frand(OC, -1, 1);
    st_bf16 *w16 = malloc(OC * IC * sizeof *w16);
    st_to_bf16(w16, w, OC * IC);
    double *r_inp = widen(inp, N * IC), *r_w = widen(w, OC * IC), *r_b = widen(b, OC);
    double *r_dout = widen(dout, N * OC), *r_dw0 = widen(dw, OC * IC), *r_db0 = widen(db, OC);
    double *q_inp = widen_bf16(inp, N * IC), *q_w = widen_bf16(w, OC * IC);
    double *q_dout = widen_bf16(dout, N * OC);
    double *want = dzeros(N * OC), *want_dinp = dzeros(N * IC);
    double *want_dw = dzeros(OC * IC), *want_db = dzeros(OC);

    /* forward: bf16 inputs, fp32 accumulation; the bias is added in fp32 */
    OK(st_linear_forward(out, inp, w, w16, b, N, IC, OC));
    ref_linear_forward(want, q_inp, q_w, r_b, N, IC, OC);
    CHECK_REL(out, want, N * OC, TOL_FWD);
    ref_linear_forward(want, r_inp, r_w, r_b, N, IC, OC);
    CHECK_REL(out, want, N * OC, TOL_BF16_INPUTS);

    /* backward: input gradient and (added) weight gradient from bf16 inputs */
    OK(st_linear_backward(dinp, dw, db, dout, inp, w, w16, N, IC, OC, 0));
    memcpy(want_dw, r_dw0, OC * IC * sizeof *want_dw);
    memcpy(want_db, r_db0, OC * sizeof *want_db);
    ref_linear_backward(want_dinp, want_dw, want_db, q_dout, q_inp, q_w, N, IC, OC);
    CHECK_REL(dinp, want_dinp, N * IC, TOL_BWD);
    CHECK_REL(dw, want_dw, OC * IC, TOL_BWD);
    /* the bias gradient is a sum in fp32 of the unrounded dout */
    memcpy(want_db, r_db0, OC * sizeof *want_db);
    ref_linear_backward(want_dinp, want_dw, want_db, r_dout, r_inp, r_w, N, IC, OC);
    CHECK_REL(db, want_db, OC, TOL_BWD);
    CHECK_REL(dinp, want_dinp, N * IC, TOL_BF16_INPUTS);

    /* a bf16 operand needs a bf16 product; a rounded f32 operand must be dense */
    st_matmul_desc d = {.B0 = 1, .B1 = 1, .M = 2, .K = 2, .N = 2, .b_bf16 = 1,
                        .sa = {0, 0, 2, 1}, .sb = {0, 0, 2, 1}, .sc = {0, 0, 2, 1}};
    ck_assert_int_eq(st_matmul(&d, out, inp, w16, NULL), ST_ERR_ARG);
    d.bf16 = 1;
    d.sa[2] = 3; /* rows of 2 with a gap */
    ck_assert_int_eq(st_matmul(&d, out, inp, w16, NULL), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "densely"));
    free(inp), free(w), free(b), free(dout), free(out), free(dinp), free(dw), free(db), free(w16);
    free(r_inp), free(r_w), free(r_b), free(r_dout), free(r_dw0), free(r_db0), free(q_inp);
    free(q_w), free(q_dout), free(want), free(want_dinp), free(want_dw), free(want_db);
}
END_TEST

/* precision: fp32 | bf16 | auto; auto follows the measured rates (set here
 * through the overrides) and the CPU; a bad value is an error naming it. */
START_TEST(test_precision_choice)
{
    st_precision p;
    ck_assert_int_eq(st_precision_choose("fp16", 64, &p), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "'fp16'"));
    setenv("SHARDTUNE_PEAK_GFLOPS", "100", 1);
    OK(st_precision_choose("fp32", 64, &p));
    ck_assert_int_eq(p.bf16, 0);
    const char *impl;
    OK(st_bf16_matmul_available(&impl));
    setenv("SHARDTUNE_PEAK_GFLOPS_BF16", "300", 1); /* bf16 3x faster */
    OK(st_precision_choose("auto", 64, &p));
    ck_assert_int_eq(p.bf16, impl && st_cpu_has_bf16());
    setenv("SHARDTUNE_PEAK_GFLOPS_BF16", "110", 1); /* 1.1x: not worth rounding */
    OK(st_precision_choose("auto", 64, &p));
    ck_assert_int_eq(p.bf16, 0);
    ck_assert_msg(strstr(p.why, "auto"), "why: %s", p.why);
    if (impl) {
        OK(st_precision_choose("bf16", 64, &p)); /* as asked, even when slower */
        ck_assert_int_eq(p.bf16, 1);
    } else {
        ck_assert_int_eq(st_precision_choose("bf16", 64, &p), ST_ERR_ARG);
    }
    unsetenv("SHARDTUNE_PEAK_GFLOPS");
    unsetenv("SHARDTUNE_PEAK_GFLOPS_BF16");
}
END_TEST

/* ---- normalisation ------------------------------------------------------ */

START_TEST(test_layernorm)
{
    const int N = 37, C = 53;
    const float eps = 1e-5f;
    float *inp = frand(N * C, -2, 3), *w = frand(C, 0.5, 1.5), *b = frand(C, -1, 1);
    float *out = frand(N * C, -9, 9), *mean = frand(N, -9, 9), *var = frand(N, -9, 9);
    double *r_inp = widen(inp, N * C), *r_w = widen(w, C), *r_b = widen(b, C);
    double *want = dzeros(N * C), *r_mean = dzeros(N), *r_var = dzeros(N);
    OK(st_layernorm_forward(out, mean, var, inp, w, b, N, C, eps));
    ref_layernorm_forward(want, r_inp, r_w, r_b, N, C, eps);
    CHECK_REL(out, want, N * C, TOL_FWD);
    for (int i = 0; i < N; i++) { /* saved statistics: mean and biased variance */
        for (int c = 0; c < C; c++) r_mean[i] += r_inp[i * C + c] / C;
        for (int c = 0; c < C; c++) {
            double dx = r_inp[i * C + c] - r_mean[i];
            r_var[i] += dx * dx / C;
        }
    }
    CHECK_REL(mean, r_mean, N, TOL_FWD);
    CHECK_REL(var, r_var, N, TOL_FWD);

    float *dout = frand(N * C, -1, 1), *dinp = frand(N * C, -9, 9);
    float *dw = frand(C, -1, 1), *db = frand(C, -1, 1);
    double *r_dout = widen(dout, N * C), *r_dinp = dzeros(N * C);
    double *r_dw = widen(dw, C), *r_db = widen(db, C);
    OK(st_layernorm_backward(dinp, dw, db, dout, inp, mean, var, w, N, C, eps));
    ref_layernorm_backward(r_dinp, r_dw, r_db, r_dout, r_inp, r_w, N, C, eps);
    CHECK_REL(dinp, r_dinp, N * C, TOL_BWD);
    CHECK_REL(dw, r_dw, C, TOL_BWD);
    CHECK_REL(db, r_db, C, TOL_BWD);
    /* twice: parameter gradients keep adding, dinp is overwritten */
    OK(st_layernorm_backward(dinp, dw, db, dout, inp, mean, var, w, N, C, eps));
    ref_layernorm_backward(r_dinp, r_dw, r_db, r_dout, r_inp, r_w, N, C, eps);
    CHECK_REL(dinp, r_dinp, N * C, TOL_BWD);
    CHECK_REL(dw, r_dw, C, TOL_BWD);
    CHECK_REL(db, r_db, C, TOL_BWD);
    free(inp), free(w), free(b), free(out), free(mean), free(var), free(dout), free(dinp);
    free(dw), free(db), free(r_inp), free(r_w), free(r_b), free(want), free(r_mean);
    free(r_var), free(r_dout), free(r_dinp), free(r_dw), free(r_db);
}
END_TEST

START_TEST(test_rmsnorm)
{
    const int N = 37, C = 53 + 64; /* more than one column block in the dw loop */
    const float eps = 1e-6f;
    float *inp = frand(N * C, -2, 3), *w = frand(C, 0.5, 1.5);
    float *out = frand(N * C, -9, 9), *rstd = frand(N, -9, 9);
    double *r_inp = widen(inp, N * C), *r_w = widen(w, C), *want = dzeros(N * C);
    st_rmsnorm_forward(out, rstd, inp, w, N, C, eps);
    ref_rmsnorm_forward(want, r_inp, r_w, N, C, eps);
    CHECK_REL(out, want, N * C, TOL_FWD);
    for (int i = 0; i < N; i++) {
        double ss = 0.0;
        for (int c = 0; c < C; c++) ss += r_inp[i * C + c] * r_inp[i * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        ck_assert_msg(fabs(rstd[i] - r) < 1e-6 * r, "rstd[%d] = %g, want %g", i, rstd[i], r);
    }

    float *dout = frand(N * C, -1, 1), *dinp = frand(N * C, -9, 9), *dw = frand(C, -1, 1);
    double *r_dout = widen(dout, N * C), *r_dinp = dzeros(N * C), *r_dw = widen(dw, C);
    st_rmsnorm_backward(dinp, dw, dout, inp, rstd, w, N, C);
    ref_rmsnorm_backward(r_dinp, r_dw, r_dout, r_inp, r_w, N, C, eps);
    CHECK_REL(dinp, r_dinp, N * C, TOL_BWD);
    CHECK_REL(dw, r_dw, C, TOL_BWD);
    free(inp), free(w), free(out), free(rstd), free(dout), free(dinp), free(dw);
    free(r_inp), free(r_w), free(want), free(r_dout), free(r_dinp), free(r_dw);
}
END_TEST

/* ---- elementwise -------------------------------------------------------- */

START_TEST(test_gelu)
{
    const int n = 1001;
    float *x = frand(n, -6, 6), *out = frand(n, -9, 9), *dout = frand(n, -1, 1);
    float *dinp = frand(n, -9, 9);
    double *r_x = widen(x, n), *r_dout = widen(dout, n), *want = dzeros(n), *r_dinp = dzeros(n);
    OK(st_gelu_forward(out, x, n));
    ref_gelu_forward(want, r_x, n);
    CHECK_REL(out, want, n, TOL_FWD);
    OK(st_gelu_backward(dinp, dout, x, n));
    ref_gelu_backward(r_dinp, r_dout, r_x, n);
    CHECK_REL(dinp, r_dinp, n, TOL_BWD);
    free(x), free(out), free(dout), free(dinp), free(r_x), free(r_dout), free(want), free(r_dinp);
}
END_TEST

START_TEST(test_swiglu)
{
    const int n = 1001;
    float *gate = frand(n, -6, 6), *up = frand(n, -2, 2), *out = frand(n, -9, 9);
    float *act = frand(n, -9, 9), *dout = frand(n, -1, 1);
    float *dgate = frand(n, -9, 9), *dup = frand(n, -9, 9);
    double *r_gate = widen(gate, n), *r_up = widen(up, n), *r_dout = widen(dout, n);
    double *want = dzeros(n), *r_act = dzeros(n), *r_dgate = dzeros(n), *r_dup = dzeros(n);
    OK(st_swiglu_forward(out, act, gate, up, n));
    ref_swiglu_forward(want, r_gate, r_up, n);
    for (int i = 0; i < n; i++) r_act[i] = r_gate[i] / (1.0 + exp(-r_gate[i]));
    CHECK_REL(out, want, n, TOL_FWD);
    CHECK_REL(act, r_act, n, TOL_FWD);
    OK(st_swiglu_backward(dgate, dup, dout, act, gate, up, n));
    ref_swiglu_backward(r_dgate, r_dup, r_dout, r_gate, r_up, n);
    CHECK_REL(dgate, r_dgate, n, TOL_BWD);
    CHECK_REL(dup, r_dup, n, TOL_BWD);
    free(gate), free(up), free(out), free(act), free(dout), free(dgate), free(dup);
    free(r_gate), free(r_up), free(r_dout), free(want), free(r_act), free(r_dgate), free(r_dup);
}
END_TEST

START_TEST(test_add)
{
    const int n = 777;
    float *a = frand(n, -1, 1), *b = frand(n, -1, 1), *out = frand(n, -9, 9);
    double *want = dzeros(n);
    for (int i = 0; i < n; i++) want[i] = (double)a[i] + b[i];
    OK(st_add(out, a, b, n));
    CHECK_REL(out, want, n, TOL_FWD);
    /* in place, either side */
    float *a2 = malloc(n * sizeof *a2), *b2 = malloc(n * sizeof *b2);
    memcpy(a2, a, n * sizeof *a), memcpy(b2, b, n * sizeof *b);
    OK(st_add(a2, a2, b, n));
    CHECK_REL(a2, want, n, TOL_FWD);
    OK(st_add(b2, a, b2, n));
    CHECK_REL(b2, want, n, TOL_FWD);
    free(a), free(b), free(out), free(want), free(a2), free(b2);
}
END_TEST

/* ---- softmax ------------------------------------------------------------ */

START_TEST(test_softmax)
{
    const int rows = 37, cols = 53;
    float *x = frand(rows * cols, -4, 4), *out = frand(rows * cols, -9, 9);
    /* causal-style mask: row r sees columns 0..r+cols-rows (at least one) */
    for (int r = 0; r < rows; r++)
        for (int c = r + cols - rows + 1; c < cols; c++) x[r * cols + c] = -INFINITY;
    double *r_x = widen(x, rows * cols), *want = dzeros(rows * cols);
    OK(st_softmax_forward(out, x, rows, cols));
    ref_softmax_forward(want, r_x, rows, cols);
    CHECK_REL(out, want, rows * cols, TOL_FWD);
    for (int r = 0; r < rows; r++)
        for (int c = r + cols - rows + 1; c < cols; c++)
            ck_assert_msg(out[r * cols + c] == 0.0f, "masked (%d,%d) has probability %g", r, c,
                          out[r * cols + c]);

    float *dout = frand(rows * cols, -1, 1), *dinp = frand(rows * cols, -9, 9);
    double *r_out = widen(out, rows * cols), *r_dout = widen(dout, rows * cols);
    double *r_dinp = dzeros(rows * cols);
    OK(st_softmax_backward(dinp, dout, out, rows, cols));
    ref_softmax_backward(r_dinp, r_dout, r_out, rows, cols);
    CHECK_REL(dinp, r_dinp, rows * cols, TOL_BWD);

    /* in place both ways, as attention calls them */
    OK(st_softmax_forward(x, x, rows, cols));
    CHECK_REL(x, want, rows * cols, TOL_FWD);
    OK(st_softmax_backward(dout, dout, out, rows, cols));
    CHECK_REL(dout, r_dinp, rows * cols, TOL_BWD);
    free(x), free(out), free(dout), free(dinp), free(r_x), free(want), free(r_out), free(r_dout);
    free(r_dinp);
}
END_TEST

/* ---- layout ------------------------------------------------------------- */

START_TEST(test_copy4d)
{
    const int64_t B = 2, T = 7, H = 3, hd = 5;
    const size_t n = (size_t)(B * T * H * hd);
    const int64_t dims[4] = {B, H, T, hd};                 /* logical (B,H,T,hd) */
    const int64_t tok[4] = {T * H * hd, hd, H * hd, 1};    /* stored as (B,T,H,hd) */
    const int64_t head[4] = {H * T * hd, T * hd, hd, 1};   /* stored as (B,H,T,hd) */
    float *src = frand(n, -1, 1), *mid = frand(n, -9, 9), *back = frand(n, -9, 9);
    OK(st_copy4d(mid, head, src, tok, dims));
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < hd; d++)
                    ck_assert(mid[((b * H + h) * T + t) * hd + d] ==
                              src[((b * T + t) * H + h) * hd + d]);
    OK(st_copy4d(back, tok, mid, head, dims));
    ck_assert(memcmp(back, src, n * sizeof *src) == 0);
    free(src), free(mid), free(back);
}
END_TEST

/* ---- the cache ---------------------------------------------------------- */

START_TEST(test_cache)
{
    const int N = 13, IC = 11, OC = 7;
    float *inp = frand(N * IC, -1, 1), *w = frand(OC * IC, -1, 1), *out = frand(N * OC, -1, 1);
    float *out2 = frand(N * OC, -1, 1), *x = frand(N * IC, -1, 1);
    OK(st_linear_forward(out, inp, w, NULL, NULL, N, IC, OC));
    OK(st_gelu_forward(x, inp, N * IC));
    int n1 = st_kernels_cache_size();
    ck_assert_int_ge(n1, 2);
    /* same shapes, other buffers: nothing new, and the new buffers are used */
    OK(st_linear_forward(out2, x, w, NULL, NULL, N, IC, OC));
    OK(st_gelu_forward(x, x, N * IC));
    ck_assert_int_eq(st_kernels_cache_size(), n1);
    double *r_x = widen(inp, N * IC), *r_w = widen(w, OC * IC), *want = dzeros(N * OC);
    ref_gelu_forward(r_x, r_x, N * IC);
    ref_linear_forward(want, r_x, r_w, NULL, N, IC, OC); /* gelu(inp) @ w^T */
    CHECK_REL(out2, want, N * OC, TOL_FWD);
    /* a new shape adds one primitive; a bias is a different primitive too */
    OK(st_linear_forward(out, inp, w, NULL, NULL, N - 1, IC, OC));
    ck_assert_int_eq(st_kernels_cache_size(), n1 + 1);
    OK(st_linear_forward(out, inp, w, NULL, w, N, IC, OC));
    ck_assert_int_eq(st_kernels_cache_size(), n1 + 2);
    /* shutdown empties it; the next call starts oneDNN again */
    st_kernels_shutdown();
    ck_assert_int_eq(st_kernels_cache_size(), 0);
    OK(st_linear_forward(out, inp, w, NULL, NULL, N, IC, OC));
    ck_assert_int_eq(st_kernels_cache_size(), 1);
    free(inp), free(w), free(out), free(out2), free(x), free(r_x), free(r_w), free(want);
}
END_TEST

/* The cache holds at most its limit, least recently used out first, and a
 * shape evicted and built again computes the same. */
START_TEST(test_cache_bound)
{
    const int IC = 11, OC = 7, NS = 12, LIMIT = 5;
    float *inp = frand(NS * IC, -1, 1), *w = frand(OC * IC, -1, 1), *out = frand(NS * OC, -1, 1);
    double *r_x = widen(inp, NS * IC), *r_w = widen(w, OC * IC), *want = dzeros(NS * OC);
    OK(st_kernels_set_cache_limit(LIMIT));
    long ev0 = st_kernels_cache_evictions();
    for (int round = 0; round < 2; round++) /* the second round rebuilds evicted shapes */
        for (int N = 1; N <= NS; N++) {
            OK(st_linear_forward(out, inp, w, NULL, NULL, N, IC, OC));
            ref_linear_forward(want, r_x, r_w, NULL, N, IC, OC);
            CHECK_REL(out, want, (size_t)N * OC, TOL_FWD);
            ck_assert_int_le(st_kernels_cache_size(), LIMIT);
        }
    ck_assert_int_eq(st_kernels_cache_size(), LIMIT);
    ck_assert_int_eq(st_kernels_cache_evictions() - ev0, 2 * NS - LIMIT);
    /* the most recent shapes are the ones kept: using them again evicts nothing */
    for (int N = NS - LIMIT + 1; N <= NS; N++) OK(st_linear_forward(out, inp, w, NULL, NULL, N, IC, OC));
    ck_assert_int_eq(st_kernels_cache_evictions() - ev0, 2 * NS - LIMIT);
    /* lowering the limit evicts at once */
    OK(st_kernels_set_cache_limit(2));
    ck_assert_int_eq(st_kernels_cache_size(), 2);
    ck_assert_int_eq(st_kernels_set_cache_limit(0), ST_ERR_ARG);
    OK(st_kernels_set_cache_limit(ST_KERNELS_CACHE_MAX));
    free(inp), free(w), free(out), free(r_x), free(r_w), free(want);
}
END_TEST

START_TEST(test_cache_backward_step)
{
    /* A backward step of linear + layernorm + softmax repeated: the second adds nothing. */
    const int N = 9, C = 12, OC = 5;
    float *x = frand(N * C, -1, 1), *w = frand(OC * C, -1, 1), *g = frand(C, 0.5, 1.5);
    float *b = frand(C, -1, 1), *y = frand(N * C, -1, 1), *m = frand(N, 0, 1), *v = frand(N, 0, 1);
    float *o = frand(N * OC, -1, 1), *p = frand(N * OC, -1, 1), *dx = frand(N * C, -1, 1), *dw = frand(OC * C, -1, 1);
    float *dg = frand(C, -1, 1), *db = frand(C, -1, 1), *dbo = frand(OC, -1, 1);
    int before = 0;
    for (int step = 0; step < 2; step++) {
        OK(st_layernorm_forward(y, m, v, x, g, b, N, C, 1e-5f));
        OK(st_linear_forward(o, y, w, NULL, NULL, N, C, OC));
        OK(st_softmax_forward(o, o, N, OC));
        OK(st_softmax_backward(p, o, o, N, OC));
        OK(st_linear_backward(dx, dw, dbo, p, y, w, NULL, N, C, OC, 0));
        OK(st_layernorm_backward(dx, dg, db, dx, x, m, v, g, N, C, 1e-5f));
        if (step == 0) before = st_kernels_cache_size();
    }
    ck_assert_int_eq(st_kernels_cache_size(), before);
    free(x), free(w), free(g), free(b), free(y), free(m), free(v), free(o), free(p), free(dx);
    free(dw);
    free(dg), free(db), free(dbo);
}
END_TEST

static Suite *kernels_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("kernels");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_matmul_plain);
    tcase_add_test(tc, test_matmul_transposed);
    tcase_add_test(tc, test_matmul_attention_layouts);
    tcase_add_test(tc, test_matmul_runtime_dims);
    tcase_add_test(tc, test_matmul_errors);
    tcase_add_test(tc, test_linear_forward);
    tcase_add_test(tc, test_linear_backward);
    tcase_add_test(tc, test_bf16_rounding);
    tcase_add_test(tc, test_linear_bf16);
    tcase_add_test(tc, test_precision_choice);
    tcase_add_test(tc, test_layernorm);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_gelu);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_add);
    tcase_add_test(tc, test_softmax);
    tcase_add_test(tc, test_copy4d);
    tcase_add_test(tc, test_cache);
    tcase_add_test(tc, test_cache_backward_step);
    tcase_add_test(tc, test_cache_bound);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(kernels_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
