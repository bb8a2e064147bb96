/* ref.h: a plain double-precision reference of every layer and of the whole
 * model, written from the math and independently of src/kernels and
 * src/model. Tests compare the float implementation against it.
 *
 * Conventions (as src/kernels/kernels.h): row-major buffers, outputs first; parameter
 * gradients (dw, db) are ADDED (+=), activation gradients (dinp) are WRITTEN
 * (=). Any parameter-gradient pointer may be NULL to skip it.
 * Its own correctness is checked by finite differences in tests/test_ref.c.
 */
#ifndef ST_TESTS_REF_H
#define ST_TESTS_REF_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/err.h"
#include "core/params.h"

/* ---- layers ------------------------------------------------------------- */

/* out (N,OC) = inp (N,IC) @ w (OC,IC)^T + b (OC); b may be NULL. */
void ref_linear_forward(double *out, const double *inp, const double *w, const double *b,
                        int N, int IC, int OC);
/* dinp (N,IC) = dout @ w;  dw (OC,IC) += dout^T @ inp;  db (OC) += column sums of dout. */
void ref_linear_backward(double *dinp, double *dw, double *db, const double *dout,
                         const double *inp, const double *w, int N, int IC, int OC);

/* out (N,C) = (x - mean) / sqrt(var + eps) * w + b, biased variance over C. */
void ref_layernorm_forward(double *out, const double *inp, const double *w, const double *b,
                           int N, int C, double eps);
/* dinp (N,C) =;  dw, db (C) +=. */
void ref_layernorm_backward(double *dinp, double *dw, double *db, const double *dout,
                            const double *inp, const double *w, int N, int C, double eps);

/* out (N,C) = x / sqrt(mean(x^2) + eps) * w. */
void ref_rmsnorm_forward(double *out, const double *inp, const double *w, int N, int C,
                         double eps);
/* dinp (N,C) =;  dw (C) +=. */
void ref_rmsnorm_backward(double *dinp, double *dw, const double *dout, const double *inp,
                          const double *w, int N, int C, double eps);

/* GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). (n) */
void ref_gelu_forward(double *out, const double *inp, int n);
void ref_gelu_backward(double *dinp, const double *dout, const double *inp, int n);

/* out (n) = silu(gate) * up,  silu(g) = g * sigmoid(g). */
void ref_swiglu_forward(double *out, const double *gate, const double *up, int n);
/* dgate, dup (n) written. */
void ref_swiglu_backward(double *dgate, double *dup, const double *dout, const double *gate,
                         const double *up, int n);

/* out (rows,cols) = softmax over each row. -INFINITY entries get probability 0;
 * a row that is entirely -INFINITY gives all zeros. */
void ref_softmax_forward(double *out, const double *inp, int rows, int cols);
/* dinp (rows,cols) = out * (dout - sum(dout * out)). */
void ref_softmax_backward(double *dinp, const double *dout, const double *out, int rows,
                          int cols);

/* Rotary embedding, Hugging Face Llama convention, in place on x (B,NH,T,hd):
 * pairs (i, i + hd/2), inv_freq_i = theta^(-2i/hd), angle = (pos0 + t) * inv_freq_i,
 *   x'[i] = x[i] cos - x[i+hd/2] sin,   x'[i+hd/2] = x[i+hd/2] cos + x[i] sin.
 * inverse = 1 rotates by -angle: the transpose, hence also the backward. */
void ref_rope(double *x, int B, int NH, int T, int hd, int pos0, double theta, int inverse);

/* Causal attention, head-major. q, out (B,H,T,hd); k, v (B,KV,T,hd); query
 * head h reads kv head h / (H/KV); scores scaled by 1/sqrt(hd). */
void ref_attention_forward(double *out, const double *q, const double *k, const double *v,
                           int B, int T, int H, int KV, int hd);
/* dq (B,H,T,hd), dk, dv (B,KV,T,hd) written (=). */
void ref_attention_backward(double *dq, double *dk, double *dv, const double *dout,
                            const double *q, const double *k, const double *v,
                            int B, int T, int H, int KV, int hd);

/* loss = sum_i mask[i] * (-log softmax(logits_i)[targets_i]) / norm.
 * logits (N,V); targets (N), only read where mask[i] != 0 (so -1 is fine
 * there); mask (N) may be NULL for all ones. dlogits (N,V) written with
 * d loss / d logits, or NULL to skip. */
double ref_cross_entropy(double *dlogits, const double *logits, const int *targets,
                         const float *mask, int N, int V, double norm);

/* ---- the whole model ---------------------------------------------------- */

/* Parameters and gradients in one double buffer each, with exactly the
 * offsets of st_layout for tp_size = 1, so element i of a 1-rank model's
 * float buffer is element i here. */
typedef struct {
    st_config cfg;
    st_layout lay;     /* tp_size = 1 */
    size_t numel;
    double *params;    /* (numel), zero after init: fill with ref_model_set_params */
    double *grads;     /* (numel) */
} ref_model;

/* Validates cfg, builds the layout and allocates zeroed params and grads. */
st_err ref_model_init(ref_model *m, const st_config *cfg);
void ref_model_free(ref_model *m);

/* params[i] = src[i] for every element (src: a 1-rank model's float buffer). */
void ref_model_set_params(ref_model *m, const float *src);
/* The model's seeded initial values (st_params_init, widened to double). */
st_err ref_model_init_params(ref_model *m, uint64_t seed);
/* buf + offset of the tensor called name (buf = m->params or m->grads), or NULL. */
double *ref_model_tensor(const ref_model *m, double *buf, const char *name);

/* Pre-norm decoder on tokens (B,T), positions 0..T-1.
 * Returns loss = sum(mask * CE(logits, targets)) / norm (mask NULL = all ones).
 * logits (B*T, V) are written when not NULL. When backward != 0, m->grads is
 * zeroed and then filled with d loss / d params (tied embeddings: the LM-head
 * gradient lands on model.embed_tokens.weight). Returns NAN (and touches
 * nothing) for a token outside [0, V), T > max_seq in gpt2, or out of memory. */
double ref_model_forward_backward(ref_model *m, const int *tokens, const int *targets,
                                  const float *mask, int B, int T, double norm, double *logits,
                                  int backward);

/* The worst per-tensor gradient error of a 1-rank model's float gradients g
 * against the reference's r (both laid out per lay): for each tensor,
 * max |g - r| over max(its largest |r|, 1e-3 x the largest |r| of all), as
 * some true gradients are exactly 0 (gpt2's k bias). *worst names the tensor. */
double ref_grad_error(const st_layout *lay, const float *g, const double *r, const char **worst);

#endif
