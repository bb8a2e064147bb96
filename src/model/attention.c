/* attention.c: causal GQA attention forward and backward on oneDNN matmul and
 * softmax, and RoPE. Shapes are in attention.h. */
#include "model/attention.h"

#include <math.h>
#include <stddef.h>

#include "kernels/kernels.h"

/* Put -inf where key j is in the future of query i (position off + i), up to
 * column ncols (past Tk when decoding rounds the softmax's rows up); rows are
 * lda apart. */
static void causal_mask(float *s, int rows_per_group, int Tq, int Tk, int ncols, int64_t lda,
                        long groups)
{
    const int off = Tk - Tq;
    for (long g = 0; g < groups; g++)
        for (int r = 0; r < rows_per_group; r++) {
            int i = r % Tq;
            float *row = s + ((size_t)g * rows_per_group + r) * lda;
            for (int j = off + i + 1; j < ncols; j++) row[j] = -INFINITY;
        }
}

/* The softmax's row length when decoding: Tk rounded up to a power of two (at
 * least 64, at most ldk), so the softmax, which oneDNN cannot size at
 * execution, has a primitive per octave of lengths and not per length. */
static int decode_row(int Tk, int ldk)
{
    int n = 64;
    while (n < Tk) n *= 2;
    return n < ldk ? n : ldk;
}

st_err st_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                            int B, int H, int KV, int Tq, int Tk, int ldk, int hd, int decoding)
{
    const int64_t G = H / KV, R = G * Tq; /* rows of one kv group */
    /* att's rows: Tk apart in training; ldk apart when decoding, so that no
     * stride depends on Tk and the products take it at execution */
    const int64_t lda = decoding ? ldk : Tk;
    const int ncols = decoding ? decode_row(Tk, ldk) : Tk; /* the softmax's columns */
    /* att (B,KV,R,Tk) = q (B,KV,R,hd) @ k^T (B,KV,hd,Tk) / sqrt(hd) */
    st_matmul_desc s = {
        .B0 = B, .B1 = KV, .M = R, .K = hd, .N = Tk,
        .sa = {KV * R * hd, R * hd, hd, 1},
        .sb = {(int64_t)KV * ldk * hd, (int64_t)ldk * hd, 1, hd},
        .sc = {KV * R * lda, R * lda, lda, 1},
        .alpha = 1.0f / sqrtf((float)hd),
        .runtime_dims = decoding ? ST_MM_RUNTIME_N : 0,
    };
    ST_TRY(st_matmul(&s, att, q, k, NULL));
    causal_mask(att, (int)R, Tq, Tk, ncols, lda, (long)B * KV);
    ST_TRY(st_softmax_forward_ld(att, att, (int64_t)B * H * Tq, ncols, lda));
    /* out (B,KV,R,hd) = att (B,KV,R,Tk) @ v (B,KV,Tk,hd) */
    st_matmul_desc o = {
        .B0 = B, .B1 = KV, .M = R, .K = Tk, .N = hd,
        .sa = {KV * R * lda, R * lda, lda, 1},
        .sb = {(int64_t)KV * ldk * hd, (int64_t)ldk * hd, hd, 1},
        .sc = {KV * R * hd, R * hd, hd, 1},
        .runtime_dims = decoding ? ST_MM_RUNTIME_K : 0,
    };
    ST_TRY(st_matmul(&o, out, att, v, NULL));
    return ST_OK;
}

st_err st_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout,
                             const float *att, const float *q, const float *k, const float *v,
                             int B, int H, int KV, int T, int hd)
{
    const int64_t G = H / KV, R = G * T;
    const int64_t sq[4] = {KV * R * hd, R * hd, hd, 1};      /* q, dq, dout: (B,KV,R,hd) */
    const int64_t skv[4] = {(int64_t)KV * T * hd, (int64_t)T * hd, hd, 1}; /* k, v: (B,KV,T,hd) */
    const int64_t skvT[4] = {skv[0], skv[1], 1, hd};         /* k^T, v^T: (B,KV,hd,T) */
    const int64_t sa[4] = {KV * R * T, R * T, T, 1};         /* att: (B,KV,R,T) */
    const int64_t saT[4] = {sa[0], sa[1], 1, T};             /* att^T: (B,KV,T,R) */
    const float scale = 1.0f / sqrtf((float)hd);

    /* datt = dout @ v^T */
    st_matmul_desc d1 = {.B0 = B, .B1 = KV, .M = R, .K = hd, .N = T};
    for (int i = 0; i < 4; i++) { d1.sa[i] = sq[i]; d1.sb[i] = skvT[i]; d1.sc[i] = sa[i]; }
    ST_TRY(st_matmul(&d1, datt, dout, v, NULL));
    /* dv = att^T @ dout: sums the G query heads of each group */
    st_matmul_desc d2 = {.B0 = B, .B1 = KV, .M = T, .K = R, .N = hd};
    for (int i = 0; i < 4; i++) { d2.sa[i] = saT[i]; d2.sb[i] = sq[i]; d2.sc[i] = skv[i]; }
    ST_TRY(st_matmul(&d2, dv, att, dout, NULL));
    /* through the softmax: dscores = att * (datt - sum(datt * att)); masked entries have att = 0 */
    ST_TRY(st_softmax_backward(datt, datt, att, (int64_t)B * H * T, T));
    /* dq = scale * dscores @ k */
    st_matmul_desc d3 = {.B0 = B, .B1 = KV, .M = R, .K = T, .N = hd, .alpha = scale};
    for (int i = 0; i < 4; i++) { d3.sa[i] = sa[i]; d3.sb[i] = skv[i]; d3.sc[i] = sq[i]; }
    ST_TRY(st_matmul(&d3, dq, datt, k, NULL));
    /* dk = scale * dscores^T @ q */
    st_matmul_desc d4 = {.B0 = B, .B1 = KV, .M = T, .K = R, .N = hd, .alpha = scale};
    for (int i = 0; i < 4; i++) { d4.sa[i] = saT[i]; d4.sb[i] = sq[i]; d4.sc[i] = skv[i]; }
    ST_TRY(st_matmul(&d4, dk, datt, q, NULL));
    return ST_OK;
}

void st_rope_table(float *cos_t, float *sin_t, int max_seq, int hd, float theta)
{
    const int half = hd / 2;
    for (int p = 0; p < max_seq; p++)
        for (int i = 0; i < half; i++) {
            double inv_freq = pow((double)theta, -2.0 * i / hd);
            double a = p * inv_freq;
            cos_t[(size_t)p * half + i] = (float)cos(a);
            sin_t[(size_t)p * half + i] = (float)sin(a);
        }
}

void st_rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int NH, int T, int ldt,
                   int row0, int pos0, int hd, int inverse)
{
    const int half = hd / 2;
    const float sgn = inverse ? -1.0f : 1.0f;
    for (long bh = 0; bh < (long)B * NH; bh++)
        for (int t = 0; t < T; t++) {
            float *r = x + ((size_t)bh * ldt + row0 + t) * hd;
            const float *c = cos_t + (size_t)(pos0 + t) * half;
            const float *s = sin_t + (size_t)(pos0 + t) * half;
            for (int i = 0; i < half; i++) {
                float x1 = r[i], x2 = r[i + half], sn = sgn * s[i];
                r[i] = x1 * c[i] - x2 * sn;
                r[i + half] = x2 * c[i] + x1 * sn;
            }
        }
}
