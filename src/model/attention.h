/* attention.h: causal self-attention with grouped-query heads, and RoPE.
 *
 * Tensors are head-major so that every product is one strided batched matmul:
 *   q, out  (B, H, Tq, hd)        H query heads
 *   k, v    (B, KV, ldk, hd)      KV key/value heads, positions 0..Tk-1 used
 *   att     (B, H, Tq, Tk)        softmax probabilities, saved for backward
 * Query head h reads key/value head h / (H/KV). Because the G = H/KV query
 * heads of one group are adjacent, (G, Tq) folds into one row dimension and a
 * group's scores are a single (G*Tq, hd) x (hd, Tk) product: no copies of k or
 * v per query head. Query i sits at position Tk - Tq + i (a KV cache holds the
 * earlier positions) and sees keys 0..Tk-Tq+i.
 */
#ifndef ST_ATTENTION_H
#define ST_ATTENTION_H

#include "core/err.h"

/* decoding = 0 (training, Tq = Tk = ldk): att is (B,H,Tq,Tk).
 * decoding = 1 (a KV cache whose key length grows with every call): att is
 * (B,H,Tq,ldk) with its first Tk columns used, the products take Tk at
 * execution (one oneDNN primitive for every Tk), and the softmax runs over Tk
 * rounded up to a power of two (>= 64, <= ldk; the columns past Tk are -inf
 * before it, 0 after, and never read), so the primitive cache grows by one
 * softmax per octave of lengths, not by primitives per length. att must then
 * hold B*H*Tq*ldk floats. */
st_err st_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                            int B, int H, int KV, int Tq, int Tk, int ldk, int hd, int decoding);

/* Training case only (Tq = Tk = ldk = T). datt (B,H,T,T) is scratch.
 * dq (B,H,T,hd), dk, dv (B,KV,T,hd) are written (=). */
st_err st_attention_backward(float *dq, float *dk, float *dv, float *datt, const float *dout,
                             const float *att, const float *q, const float *k, const float *v,
                             int B, int H, int KV, int T, int hd);

/* RoPE tables: cos/sin (max_seq, hd/2), angle = pos * theta^(-2i/hd). */
void st_rope_table(float *cos_t, float *sin_t, int max_seq, int hd, float theta);
/* Rotate rows row0..row0+T-1 of x (B, NH, ldt, hd), head-major, as positions
 * pos0..pos0+T-1. Hugging Face rotate_half convention: pairs (i, i+hd/2).
 * inverse = 1 rotates backwards: that is the backward pass (rotation is orthogonal). */
void st_rope_apply(float *x, const float *cos_t, const float *sin_t, int B, int NH, int T, int ldt,
                   int row0, int pos0, int hd, int inverse);

#endif
