/* kernels.h: the rank-local math primitives, on oneDNN.
 *
 * Every function takes plain row-major float buffers. Underneath, each
 * oneDNN primitive is created once per distinct shape (and strides, flags)
 * and kept in a cache; later calls only point its memory objects at the new
 * buffers and execute it, so the step loop allocates nothing.
 *
 * Conventions (llm.c order): outputs first, then saved-for-backward buffers,
 * then inputs and weights, then sizes. Shapes are given in comments; N is a
 * number of rows (tokens), C a feature width.
 * Gradient accumulation: parameter gradients (dw, db, ...) are always ADDED
 * to (+=); activation gradients (dinp) are written (=) unless a function says
 * otherwise.
 */
#ifndef ST_KERNELS_H
#define ST_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

/* Start oneDNN (engine + stream). Idempotent. */
st_err st_kernels_init(void);
/* Release every cached primitive, the stream and the engine. */
void st_kernels_shutdown(void);

/* The primitive cache holds at most this many primitives (least recently used
 * out first): a training step of GPT-2 124M uses 33, so a step never evicts,
 * and generation's ~15 per new prompt length stay bounded. */
#define ST_KERNELS_CACHE_MAX 256
/* How many primitives are cached (tests check that a second step adds none). */
int st_kernels_cache_size(void);
/* How many were evicted since st_kernels_init. */
long st_kernels_cache_evictions(void);
/* Another bound (tests); evicts down to it at once. */
st_err st_kernels_set_cache_limit(int limit);

/* ---- bf16 --------------------------------------------------------------- */

/* bfloat16 storage: the upper 16 bits of an IEEE float. */
typedef uint16_t st_bf16;
/* dst (n) = src rounded to nearest even bf16 (NaN stays NaN). */
void st_to_bf16(st_bf16 *dst, const float *src, int64_t n);
float st_bf16_to_float(st_bf16 x);
/* The CPU has bf16 dot-product instructions (AVX512_BF16 or AMX) that oneDNN uses. */
int st_cpu_has_bf16(void);
/* *impl = the name of the implementation oneDNN picks for a bf16 matmul on
 * this machine (e.g. "brg:avx512_core_bf16"), or NULL when it has none. */
st_err st_bf16_matmul_available(const char **impl);

/* ---- matrix products ---------------------------------------------------- */

/* A strided batched matrix product with up to two batch dimensions:
 *   c[b0,b1] = alpha * a[b0,b1] @ b[b0,b1]  (+ bias broadcast over rows)  (+ c if accumulate)
 * a: (B0,B1,M,K), b: (B0,B1,K,N), c: (B0,B1,M,N), each with its own strides
 * (in elements, order b0 b1 row col), so transposes are just swapped strides.
 * c and bias are float; a and b are float, or st_bf16 where a_bf16 / b_bf16 say so. */
typedef struct {
    int64_t B0, B1, M, K, N;
    int64_t sa[4], sb[4], sc[4];
    float alpha;      /* 0 is taken as 1 */
    int accumulate;   /* c += result */
    int has_bias;     /* bias (N) added to every row */
    int bf16;         /* mixed precision: inputs in bf16 (float operands are rounded to nearest
                         even first, and must be stored densely in some order), products
                         accumulated and written in fp32 */
    int a_bf16, b_bf16; /* the operand is given in bf16 already (needs bf16) */
    int runtime_dims;   /* ST_MM_RUNTIME_M | _K | _N: these sizes change from call to call
                           (decoding: the key length grows) while the strides stay: one
                           primitive serves every value (oneDNN runtime dimensions, still
                           its jit gemm), so the cache does not grow per length.
                           fp32, no bias */
} st_matmul_desc;
enum { ST_MM_RUNTIME_M = 1, ST_MM_RUNTIME_K = 2, ST_MM_RUNTIME_N = 4 };
st_err st_matmul(const st_matmul_desc *d, float *c, const void *a, const void *b,
                 const float *bias);

/* out (N,OC) = inp (N,IC) @ w^T + bias;  w (OC,IC) as torch.nn.Linear; bias may be NULL.
 * w16: w rounded to bf16 (same layout) for a bf16 product, or NULL for fp32. */
st_err st_linear_forward(float *out, const float *inp, const float *w, const st_bf16 *w16,
                         const float *bias, int64_t N, int64_t IC, int64_t OC);
/* dinp (N,IC) = dout @ w  (or += when accumulate_dinp); dw (OC,IC) += dout^T @ inp;
 * db (OC) += column sums of dout. dinp, dw or db may be NULL to skip them
 * (a frozen weight computes no dw). With w16 (bf16 mode) both products take
 * bf16 inputs (dout and inp rounded) and accumulate in fp32 into fp32 dinp, dw. */
st_err st_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const st_bf16 *w16, int64_t N, int64_t IC, int64_t OC,
                          int accumulate_dinp);

/* ---- normalisation ------------------------------------------------------ */

/* LayerNorm over the last dim (oneDNN layer_normalization).
 * out (N,C); mean, var (N) saved for backward; inp (N,C); w, b (C). */
st_err st_layernorm_forward(float *out, float *mean, float *var, const float *inp,
                            const float *w, const float *b, int64_t N, int64_t C, float eps);
/* dinp (N,C) =; dw, db (C) +=. */
st_err st_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                             const float *inp, const float *mean, const float *var,
                             const float *w, int64_t N, int64_t C, float eps);

/* RMSNorm: out = inp * rstd * w, rstd = 1/sqrt(mean(inp^2) + eps).
 * oneDNN 2.x has no RMS normalisation, so this one is a plain loop.
 * out (N,C); rstd (N) saved; inp (N,C); w (C). */
void st_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w,
                        int64_t N, int64_t C, float eps);
/* dinp (N,C) =; dw (C) += (skipped when NULL). */
void st_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                         const float *rstd, const float *w, int64_t N, int64_t C);

/* ---- elementwise -------------------------------------------------------- */

/* GELU, tanh approximation (GPT-2). out (n) = gelu(inp). */
st_err st_gelu_forward(float *out, const float *inp, int64_t n);
/* dinp (n) = dout * gelu'(inp). */
st_err st_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n);

/* SwiGLU: out = silu(gate) * up.  act (n) saves silu(gate) for backward. */
st_err st_swiglu_forward(float *out, float *act, const float *gate, const float *up, int64_t n);
/* dgate = dout * up * silu'(gate); dup = dout * act. Both written (=). */
st_err st_swiglu_backward(float *dgate, float *dup, const float *dout, const float *act,
                          const float *gate, const float *up, int64_t n);

/* out (n) = a + b (out may alias a or b). */
st_err st_add(float *out, const float *a, const float *b, int64_t n);

/* ---- softmax ------------------------------------------------------------ */

/* Softmax over the last dim. out (rows, cols) = softmax(inp). May alias. */
st_err st_softmax_forward(float *out, const float *inp, int64_t rows, int64_t cols);
/* The same on rows ld floats apart (ld >= cols), in place or not. */
st_err st_softmax_forward_ld(float *out, const float *inp, int64_t rows, int64_t cols, int64_t ld);
/* dinp (rows,cols) = out * (dout - sum(dout * out)). dinp may alias dout. */
st_err st_softmax_backward(float *dinp, const float *dout, const float *out, int64_t rows,
                           int64_t cols);

/* ---- layout ------------------------------------------------------------- */

/* Strided 4-D copy (oneDNN reorder): dst[i,j,k,l] = src[i,j,k,l] with each
 * side's own strides. Used to move q/k/v between (B,T,H,hd) and (B,H,T,hd). */
st_err st_copy4d(float *dst, const int64_t dst_strides[4], const float *src,
                 const int64_t src_strides[4], const int64_t dims[4]);

#endif
