/* ref.c: the double-precision reference (see ref.h). Plain loops, no tricks:
 * each function is the formula as written on paper. */
#include "ref.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- linear ------------------------------------------------------------- */

void ref_linear_forward(double *out, const double *inp, const double *w, const double *b,
                        int N, int IC, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0.0;
            for (int i = 0; i < IC; i++) s += inp[(size_t)n * IC + i] * w[(size_t)o * IC + i];
            out[(size_t)n * OC + o] = s;
        }
}

void ref_linear_backward(double *dinp, double *dw, double *db, const double *dout,
                         const double *inp, const double *w, int N, int IC, int OC)
{
    for (int n = 0; n < N; n++) {
        const double *g = dout + (size_t)n * OC;
        if (dinp)
            for (int i = 0; i < IC; i++) {
                double s = 0.0;
                for (int o = 0; o < OC; o++) s += g[o] * w[(size_t)o * IC + i];
                dinp[(size_t)n * IC + i] = s;
            }
        for (int o = 0; o < OC; o++) {
            if (dw)
                for (int i = 0; i < IC; i++)
                    dw[(size_t)o * IC + i] += g[o] * inp[(size_t)n * IC + i];
            if (db) db[o] += g[o];
        }
    }
}

/* ---- normalisation ------------------------------------------------------ */

void ref_layernorm_forward(double *out, const double *inp, const double *w, const double *b,
                           int N, int C, double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        double mean = 0.0, var = 0.0;
        for (int c = 0; c < C; c++) mean += x[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + eps);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = (x[c] - mean) * rstd * w[c] + b[c];
    }
}

/* With xhat = (x - mean) * rstd and g = dout * w:
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). */
void ref_layernorm_backward(double *dinp, double *dw, double *db, const double *dout,
                            const double *inp, const double *w, int N, int C, double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        double mean = 0.0, var = 0.0;
        for (int c = 0; c < C; c++) mean += x[c];
        mean /= C;
        for (int c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
        var /= C;
        double rstd = 1.0 / sqrt(var + eps);
        double mg = 0.0, mgx = 0.0;
        for (int c = 0; c < C; c++) {
            double xhat = (x[c] - mean) * rstd, g = dy[c] * w[c];
            mg += g;
            mgx += g * xhat;
            if (dw) dw[c] += dy[c] * xhat;
            if (db) db[c] += dy[c];
        }
        mg /= C;
        mgx /= C;
        if (dinp)
            for (int c = 0; c < C; c++) {
                double xhat = (x[c] - mean) * rstd;
                dinp[(size_t)n * C + c] = rstd * (dy[c] * w[c] - mg - xhat * mgx);
            }
    }
}

static double rms_rstd(const double *x, int C, double eps)
{
    double ms = 0.0;
    for (int c = 0; c < C; c++) ms += x[c] * x[c];
    return 1.0 / sqrt(ms / C + eps);
}

void ref_rmsnorm_forward(double *out, const double *inp, const double *w, int N, int C,
                         double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        double rstd = rms_rstd(x, C, eps);
        for (int c = 0; c < C; c++) out[(size_t)n * C + c] = x[c] * rstd * w[c];
    }
}

/* With g = dout * w: dx = rstd * (g - x * rstd^2 * mean(g * x)). */
void ref_rmsnorm_backward(double *dinp, double *dw, const double *dout, const double *inp,
                          const double *w, int N, int C, double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C, *dy = dout + (size_t)n * C;
        double rstd = rms_rstd(x, C, eps), mgx = 0.0;
        for (int c = 0; c < C; c++) {
            mgx += dy[c] * w[c] * x[c];
            if (dw) dw[c] += dy[c] * x[c] * rstd;
        }
        mgx /= C;
        if (dinp)
            for (int c = 0; c < C; c++)
                dinp[(size_t)n * C + c] = rstd * (dy[c] * w[c] - x[c] * rstd * rstd * mgx);
    }
}

/* ---- elementwise -------------------------------------------------------- */

#define GELU_A 0.7978845608028654 /* sqrt(2/pi) */
#define GELU_B 0.044715

void ref_gelu_forward(double *out, const double *inp, int n)
{
    for (int i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = 0.5 * x * (1.0 + tanh(GELU_A * (x + GELU_B * x * x * x)));
    }
}

void ref_gelu_backward(double *dinp, const double *dout, const double *inp, int n)
{
    for (int i = 0; i < n; i++) {
        double x = inp[i], t = tanh(GELU_A * (x + GELU_B * x * x * x));
        double du = GELU_A * (1.0 + 3.0 * GELU_B * x * x); /* d(tanh argument)/dx */
        double d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
        dinp[i] = dout[i] * d;
    }
}

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

void ref_swiglu_forward(double *out, const double *gate, const double *up, int n)
{
    for (int i = 0; i < n; i++) out[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

/* silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). */
void ref_swiglu_backward(double *dgate, double *dup, const double *dout, const double *gate,
                         const double *up, int n)
{
    for (int i = 0; i < n; i++) {
        double g = gate[i], s = sigmoid(g);
        if (dgate) dgate[i] = dout[i] * up[i] * s * (1.0 + g * (1.0 - s));
        if (dup) dup[i] = dout[i] * g * s;
    }
}

/* ---- softmax ------------------------------------------------------------ */

void ref_softmax_forward(double *out, const double *inp, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        const double *x = inp + (size_t)r * cols;
        double *y = out + (size_t)r * cols;
        double mx = -INFINITY, sum = 0.0;
        for (int c = 0; c < cols; c++) mx = x[c] > mx ? x[c] : mx;
        if (mx == -INFINITY) { /* nothing visible: no probability anywhere */
            for (int c = 0; c < cols; c++) y[c] = 0.0;
            continue;
        }
        for (int c = 0; c < cols; c++) {
            y[c] = x[c] == -INFINITY ? 0.0 : exp(x[c] - mx);
            sum += y[c];
        }
        for (int c = 0; c < cols; c++) y[c] /= sum;
    }
}

void ref_softmax_backward(double *dinp, const double *dout, const double *out, int rows,
                          int cols)
{
    for (int r = 0; r < rows; r++) {
        const double *g = dout + (size_t)r * cols, *y = out + (size_t)r * cols;
        double dot = 0.0;
        for (int c = 0; c < cols; c++) dot += g[c] * y[c];
        for (int c = 0; c < cols; c++) dinp[(size_t)r * cols + c] = y[c] * (g[c] - dot);
    }
}

/* ---- rotary embedding --------------------------------------------------- */

void ref_rope(double *x, int B, int NH, int T, int hd, int pos0, double theta, int inverse)
{
    int half = hd / 2;
    for (int bh = 0; bh < B * NH; bh++)
        for (int t = 0; t < T; t++) {
            double *v = x + ((size_t)bh * T + t) * hd;
            for (int i = 0; i < half; i++) {
                double inv_freq = pow(theta, -2.0 * i / hd);
                double ang = (double)(pos0 + t) * inv_freq * (inverse ? -1.0 : 1.0);
                double c = cos(ang), s = sin(ang), a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
}

/* ---- attention ---------------------------------------------------------- */

/* Probabilities p (t+1) of query row t of head h in batch b. */
static void attn_probs(double *p, const double *qt, const double *kh, int t, int hd)
{
    double scale = 1.0 / sqrt((double)hd), mx = -INFINITY, sum = 0.0;
    for (int u = 0; u <= t; u++) {
        double s = 0.0;
        for (int d = 0; d < hd; d++) s += qt[d] * kh[(size_t)u * hd + d];
        p[u] = s * scale;
        mx = p[u] > mx ? p[u] : mx;
    }
    for (int u = 0; u <= t; u++) {
        p[u] = exp(p[u] - mx);
        sum += p[u];
    }
    for (int u = 0; u <= t; u++) p[u] /= sum;
}

void ref_attention_forward(double *out, const double *q, const double *k, const double *v,
                           int B, int T, int H, int KV, int hd)
{
    int group = H / KV;
    double *p = malloc((size_t)T * sizeof *p);
    if (!p) return;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const double *qh = q + ((size_t)b * H + h) * T * hd;
            const double *kh = k + ((size_t)b * KV + h / group) * T * hd;
            const double *vh = v + ((size_t)b * KV + h / group) * T * hd;
            double *oh = out + ((size_t)b * H + h) * T * hd;
            for (int t = 0; t < T; t++) {
                attn_probs(p, qh + (size_t)t * hd, kh, t, hd);
                for (int d = 0; d < hd; d++) {
                    double s = 0.0;
                    for (int u = 0; u <= t; u++) s += p[u] * vh[(size_t)u * hd + d];
                    oh[(size_t)t * hd + d] = s;
                }
            }
        }
    free(p);
}

/* Per query row: dp_u = dout . v_u;  ds_u = p_u (dp_u - sum p dp);
 * dq += scale ds_u k_u;  dk_u += scale ds_u q;  dv_u += p_u dout. */
void ref_attention_backward(double *dq, double *dk, double *dv, const double *dout,
                            const double *q, const double *k, const double *v,
                            int B, int T, int H, int KV, int hd)
{
    int group = H / KV;
    double scale = 1.0 / sqrt((double)hd);
    double *p = malloc((size_t)T * sizeof *p), *dp = malloc((size_t)T * sizeof *dp);
    if (!p || !dp) goto done;
    memset(dq, 0, (size_t)B * H * T * hd * sizeof *dq);
    memset(dk, 0, (size_t)B * KV * T * hd * sizeof *dk);
    memset(dv, 0, (size_t)B * KV * T * hd * sizeof *dv);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            size_t qo = ((size_t)b * H + h) * T * hd, ko = ((size_t)b * KV + h / group) * T * hd;
            for (int t = 0; t < T; t++) {
                const double *qt = q + qo + (size_t)t * hd, *go = dout + qo + (size_t)t * hd;
                attn_probs(p, qt, k + ko, t, hd);
                double pdp = 0.0;
                for (int u = 0; u <= t; u++) {
                    double s = 0.0;
                    for (int d = 0; d < hd; d++) s += go[d] * v[ko + (size_t)u * hd + d];
                    dp[u] = s;
                    pdp += p[u] * s;
                }
                for (int u = 0; u <= t; u++) {
                    double ds = p[u] * (dp[u] - pdp) * scale;
                    for (int d = 0; d < hd; d++) {
                        dq[qo + (size_t)t * hd + d] += ds * k[ko + (size_t)u * hd + d];
                        dk[ko + (size_t)u * hd + d] += ds * qt[d];
                        dv[ko + (size_t)u * hd + d] += p[u] * go[d];
                    }
                }
            }
        }
done:
    free(p);
    free(dp);
}

/* ---- loss --------------------------------------------------------------- */

double ref_cross_entropy(double *dlogits, const double *logits, const int *targets,
                         const float *mask, int N, int V, double norm)
{
    double loss = 0.0;
    for (int n = 0; n < N; n++) {
        const double *z = logits + (size_t)n * V;
        double *dz = dlogits ? dlogits + (size_t)n * V : NULL;
        double wgt = mask ? (double)mask[n] : 1.0;
        if (wgt == 0.0) {
            if (dz) memset(dz, 0, (size_t)V * sizeof *dz);
            continue;
        }
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
        for (int j = 0; j < V; j++) sum += exp(z[j] - mx);
        double lse = mx + log(sum);
        loss += wgt * (lse - z[targets[n]]) / norm;
        if (dz)
            for (int j = 0; j < V; j++)
                dz[j] = wgt / norm * (exp(z[j] - lse) - (j == targets[n] ? 1.0 : 0.0));
    }
    return loss;
}

/* ---- the whole model ---------------------------------------------------- */

st_err ref_model_init(ref_model *m, const st_config *cfg)
{
    memset(m, 0, sizeof *m);
    ST_TRY(st_layout_init(&m->lay, cfg, 1, 0));
    m->cfg = *cfg;
    m->numel = m->lay.numel;
    m->params = calloc(m->numel, sizeof *m->params);
    m->grads = calloc(m->numel, sizeof *m->grads);
    if (!m->params || !m->grads) {
        ref_model_free(m);
        ST_FAIL(ST_ERR_MEM, "out of memory for the reference model (%zu doubles x 2)", m->numel);
    }
    return ST_OK;
}

void ref_model_free(ref_model *m)
{
    st_layout_free(&m->lay);
    free(m->params);
    free(m->grads);
    m->params = m->grads = NULL;
}

void ref_model_set_params(ref_model *m, const float *src)
{
    for (size_t i = 0; i < m->numel; i++) m->params[i] = src[i];
}

st_err ref_model_init_params(ref_model *m, uint64_t seed)
{
    float *tmp = malloc(m->numel * sizeof *tmp);
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory for %zu initial values", m->numel);
    st_params_init(&m->lay, tmp, seed);
    ref_model_set_params(m, tmp);
    free(tmp);
    return ST_OK;
}

double *ref_model_tensor(const ref_model *m, double *buf, const char *name)
{
    const st_tensor *t = st_layout_find(&m->lay, name);
    return t ? buf + t->offset : NULL;
}

/* One layer's tensors inside a params or grads buffer; NULL where absent. */
typedef struct {
    double *ln1_w, *ln1_b, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
    double *ln2_w, *ln2_b, *wgate, *wup, *bup, *wdown, *bdown;
} ref_layer;

static double *layer_tensor(const ref_model *m, double *buf, int l, const char *suffix)
{
    char name[128];
    snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);
    return ref_model_tensor(m, buf, name);
}

static ref_layer layer_view(const ref_model *m, double *buf, int l)
{
    ref_layer L;
    L.ln1_w = layer_tensor(m, buf, l, "input_layernorm.weight");
    L.ln1_b = layer_tensor(m, buf, l, "input_layernorm.bias");
    L.wq = layer_tensor(m, buf, l, "self_attn.q_proj.weight");
    L.bq = layer_tensor(m, buf, l, "self_attn.q_proj.bias");
    L.wk = layer_tensor(m, buf, l, "self_attn.k_proj.weight");
    L.bk = layer_tensor(m, buf, l, "self_attn.k_proj.bias");
    L.wv = layer_tensor(m, buf, l, "self_attn.v_proj.weight");
    L.bv = layer_tensor(m, buf, l, "self_attn.v_proj.bias");
    L.wo = layer_tensor(m, buf, l, "self_attn.o_proj.weight");
    L.bo = layer_tensor(m, buf, l, "self_attn.o_proj.bias");
    L.ln2_w = layer_tensor(m, buf, l, "post_attention_layernorm.weight");
    L.ln2_b = layer_tensor(m, buf, l, "post_attention_layernorm.bias");
    L.wgate = layer_tensor(m, buf, l, "mlp.gate_proj.weight");
    L.wup = layer_tensor(m, buf, l, "mlp.up_proj.weight");
    L.bup = layer_tensor(m, buf, l, "mlp.up_proj.bias");
    L.wdown = layer_tensor(m, buf, l, "mlp.down_proj.weight");
    L.bdown = layer_tensor(m, buf, l, "mlp.down_proj.bias");
    return L;
}

/* Sizes of one forward pass. */
typedef struct {
    int B, T, N, C, H, KV, hd, Q, KVD, F, V, gpt2;
    double eps, theta;
} dims;

/* What one layer's backward needs from its forward. */
typedef struct {
    double *x;          /* (N,C) layer input */
    double *h1;         /* (N,C) norm1(x) */
    double *q, *k, *v;  /* (B,H,T,hd), (B,KV,T,hd), head-major, after RoPE */
    double *o;          /* (N,Q) attention output, token-major */
    double *x2;         /* (N,C) x + attention */
    double *h2;         /* (N,C) norm2(x2) */
    double *gate;       /* (N,F) llama: h2 Wgate^T */
    double *up;         /* (N,F) h2 Wup^T (+ bup) */
    double *mid;        /* (N,F) gelu(up) or silu(gate) * up */
} layer_acts;

/* Every buffer of a pass comes from one arena sized exactly up front. */
typedef struct {
    double *base;
    size_t used, cap;
} arena;

static double *take(arena *a, size_t n)
{
    double *p = a->base + a->used;
    a->used += n;
    return a->used <= a->cap ? p : NULL;
}

/* (B,T,NH*hd) token-major <-> (B,NH,T,hd) head-major. */
static void to_heads(double *dst, const double *src, int B, int T, int NH, int hd)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                for (int d = 0; d < hd; d++)
                    dst[(((size_t)b * NH + h) * T + t) * hd + d] =
                        src[(((size_t)b * T + t) * NH + h) * hd + d];
}

static void from_heads(double *dst, const double *src, int B, int T, int NH, int hd)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++)
                for (int d = 0; d < hd; d++)
                    dst[(((size_t)b * T + t) * NH + h) * hd + d] =
                        src[(((size_t)b * NH + h) * T + t) * hd + d];
}

static void norm_forward(const dims *D, double *out, const double *x, const double *w,
                         const double *b)
{
    if (D->gpt2) ref_layernorm_forward(out, x, w, b, D->N, D->C, D->eps);
    else ref_rmsnorm_forward(out, x, w, D->N, D->C, D->eps);
}

static void norm_backward(const dims *D, double *dx, double *dw, double *db, const double *dout,
                          const double *x, const double *w)
{
    if (D->gpt2) ref_layernorm_backward(dx, dw, db, dout, x, w, D->N, D->C, D->eps);
    else ref_rmsnorm_backward(dx, dw, dout, x, w, D->N, D->C, D->eps);
}

/* xout (N,C) = layer(x); fills A (A->x must already hold x). tmp: (N, max(Q,C)). */
static void layer_forward(const dims *D, const ref_layer *P, layer_acts *A, double *xout,
                          double *tmp)
{
    const int N = D->N, C = D->C;
    norm_forward(D, A->h1, A->x, P->ln1_w, P->ln1_b);
    ref_linear_forward(tmp, A->h1, P->wq, P->bq, N, C, D->Q);
    to_heads(A->q, tmp, D->B, D->T, D->H, D->hd);
    ref_linear_forward(tmp, A->h1, P->wk, P->bk, N, C, D->KVD);
    to_heads(A->k, tmp, D->B, D->T, D->KV, D->hd);
    ref_linear_forward(tmp, A->h1, P->wv, P->bv, N, C, D->KVD);
    to_heads(A->v, tmp, D->B, D->T, D->KV, D->hd);
    if (!D->gpt2) {
        ref_rope(A->q, D->B, D->H, D->T, D->hd, 0, D->theta, 0);
        ref_rope(A->k, D->B, D->KV, D->T, D->hd, 0, D->theta, 0);
    }
    ref_attention_forward(tmp, A->q, A->k, A->v, D->B, D->T, D->H, D->KV, D->hd);
    from_heads(A->o, tmp, D->B, D->T, D->H, D->hd);
    ref_linear_forward(tmp, A->o, P->wo, P->bo, N, D->Q, C);
    for (size_t i = 0; i < (size_t)N * C; i++) A->x2[i] = A->x[i] + tmp[i];

    norm_forward(D, A->h2, A->x2, P->ln2_w, P->ln2_b);
    ref_linear_forward(A->up, A->h2, P->wup, P->bup, N, C, D->F);
    if (D->gpt2) {
        ref_gelu_forward(A->mid, A->up, N * D->F);
    } else {
        ref_linear_forward(A->gate, A->h2, P->wgate, NULL, N, C, D->F);
        ref_swiglu_forward(A->mid, A->gate, A->up, N * D->F);
    }
    ref_linear_forward(tmp, A->mid, P->wdown, P->bdown, N, D->F, C);
    for (size_t i = 0; i < (size_t)N * C; i++) xout[i] = A->x2[i] + tmp[i];
}

/* Scratch for one layer's backward. */
typedef struct {
    double *dx2, *dh, *dh_part;      /* (N,C) */
    double *dmid, *dup, *dgate;      /* (N,F) */
    double *dtok, *dhead;            /* (N,Q) token-major, head-major */
    double *dq, *dk, *dv;            /* head-major */
} layer_scratch;

/* dx (N,C): in, the gradient at the layer's output; out, at its input.
 * Adds the layer's parameter gradients into G. */
static void layer_backward(const dims *D, const ref_layer *P, ref_layer *G, const layer_acts *A,
                           double *dx, layer_scratch *S)
{
    const int N = D->N, C = D->C, F = D->F;
    const size_t NC = (size_t)N * C;

    /* MLP: x_out = x2 + down(act(h2)) */
    ref_linear_backward(S->dmid, G->wdown, G->bdown, dx, A->mid, P->wdown, N, F, C);
    if (D->gpt2) {
        ref_gelu_backward(S->dup, S->dmid, A->up, N * F);
        ref_linear_backward(S->dh, G->wup, G->bup, S->dup, A->h2, P->wup, N, C, F);
    } else {
        ref_swiglu_backward(S->dgate, S->dup, S->dmid, A->gate, A->up, N * F);
        ref_linear_backward(S->dh, G->wgate, NULL, S->dgate, A->h2, P->wgate, N, C, F);
        ref_linear_backward(S->dh_part, G->wup, NULL, S->dup, A->h2, P->wup, N, C, F);
        for (size_t i = 0; i < NC; i++) S->dh[i] += S->dh_part[i];
    }
    norm_backward(D, S->dx2, G->ln2_w, G->ln2_b, S->dh, A->x2, P->ln2_w);
    for (size_t i = 0; i < NC; i++) S->dx2[i] += dx[i];

    /* attention: x2 = x + o Wo^T (+ bo) */
    ref_linear_backward(S->dtok, G->wo, G->bo, S->dx2, A->o, P->wo, N, D->Q, C);
    to_heads(S->dhead, S->dtok, D->B, D->T, D->H, D->hd);
    ref_attention_backward(S->dq, S->dk, S->dv, S->dhead, A->q, A->k, A->v, D->B, D->T, D->H,
                           D->KV, D->hd);
    if (!D->gpt2) { /* RoPE is a rotation: its backward rotates back */
        ref_rope(S->dq, D->B, D->H, D->T, D->hd, 0, D->theta, 1);
        ref_rope(S->dk, D->B, D->KV, D->T, D->hd, 0, D->theta, 1);
    }
    from_heads(S->dtok, S->dq, D->B, D->T, D->H, D->hd);
    ref_linear_backward(S->dh, G->wq, G->bq, S->dtok, A->h1, P->wq, N, C, D->Q);
    from_heads(S->dtok, S->dk, D->B, D->T, D->KV, D->hd);
    ref_linear_backward(S->dh_part, G->wk, G->bk, S->dtok, A->h1, P->wk, N, C, D->KVD);
    for (size_t i = 0; i < NC; i++) S->dh[i] += S->dh_part[i];
    from_heads(S->dtok, S->dv, D->B, D->T, D->KV, D->hd);
    ref_linear_backward(S->dh_part, G->wv, G->bv, S->dtok, A->h1, P->wv, N, C, D->KVD);
    for (size_t i = 0; i < NC; i++) S->dh[i] += S->dh_part[i];
    norm_backward(D, dx, G->ln1_w, G->ln1_b, S->dh, A->x, P->ln1_w);
    for (size_t i = 0; i < NC; i++) dx[i] += S->dx2[i];
}

double ref_model_forward_backward(ref_model *m, const int *tokens, const int *targets,
                                  const float *mask, int B, int T, double norm, double *logits,
                                  int backward)
{
    const st_config *c = &m->cfg;
    dims D = {.B = B, .T = T, .N = B * T, .C = c->d_model, .H = c->n_head, .KV = c->n_kv_head,
              .hd = st_config_head_dim(c), .F = c->d_ff, .V = c->vocab_size,
              .gpt2 = c->family == ST_FAMILY_GPT2, .eps = c->norm_eps, .theta = c->rope_theta};
    D.Q = D.H * D.hd;
    D.KVD = D.KV * D.hd;
    const int L = c->n_layer, N = D.N, C = D.C, F = D.F, V = D.V;
    const size_t NC = (size_t)N * C, NF = (size_t)N * F, NQ = (size_t)N * D.Q,
                 NK = (size_t)N * D.KVD, NV = (size_t)N * V;
    const size_t wide = NQ > NC ? NQ : NC;

    if (B < 1 || T < 1 || (D.gpt2 && T > c->max_seq)) return NAN; /* no position row */
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= V) return NAN;

    size_t per_layer = 4 * NC + 2 * NQ + 2 * NK + 3 * NF;
    size_t need = per_layer * L + 3 * NC + wide + 2 * NV;
    if (backward) need += 3 * NC + 3 * NF + 3 * NQ + 2 * NK; /* layer_scratch */
    arena a = {malloc(need * sizeof(double)), 0, need};
    if (!a.base) return NAN;

    layer_acts *acts = calloc((size_t)L, sizeof *acts);
    if (!acts) {
        free(a.base);
        return NAN;
    }
    for (int l = 0; l < L; l++) {
        layer_acts *A = &acts[l];
        A->x = take(&a, NC);
        A->h1 = take(&a, NC);
        A->q = take(&a, NQ);
        A->k = take(&a, NK);
        A->v = take(&a, NK);
        A->o = take(&a, NQ);
        A->x2 = take(&a, NC);
        A->h2 = take(&a, NC);
        A->gate = take(&a, NF);
        A->up = take(&a, NF);
        A->mid = take(&a, NF);
    }
    double *xL = take(&a, NC), *xf = take(&a, NC), *dx = take(&a, NC);
    double *tmp = take(&a, wide);
    double *lg = take(&a, NV), *dlg = take(&a, NV);

    double *wte = ref_model_tensor(m, m->params, "model.embed_tokens.weight");
    double *wpe = ref_model_tensor(m, m->params, "model.embed_positions.weight");
    double *lnf_w = ref_model_tensor(m, m->params, "model.norm.weight");
    double *lnf_b = ref_model_tensor(m, m->params, "model.norm.bias");
    const char *head_name = c->tied_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    double *head = ref_model_tensor(m, m->params, head_name);

    /* embeddings: x = wte[token] (+ wpe[t]) */
    double *x0 = L > 0 ? acts[0].x : xL;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < C; i++)
            x0[(size_t)n * C + i] = wte[(size_t)tokens[n] * C + i] +
                                    (wpe ? wpe[(size_t)(n % T) * C + i] : 0.0);
    for (int l = 0; l < L; l++) {
        ref_layer P = layer_view(m, m->params, l);
        layer_forward(&D, &P, &acts[l], l + 1 < L ? acts[l + 1].x : xL, tmp);
    }
    norm_forward(&D, xf, xL, lnf_w, lnf_b);
    ref_linear_forward(lg, xf, head, NULL, N, C, V);
    if (logits) memcpy(logits, lg, NV * sizeof *lg);
    double loss = ref_cross_entropy(backward ? dlg : NULL, lg, targets, mask, N, V, norm);

    if (backward) {
        memset(m->grads, 0, m->numel * sizeof *m->grads);
        double *gwte = ref_model_tensor(m, m->grads, "model.embed_tokens.weight");
        double *gwpe = ref_model_tensor(m, m->grads, "model.embed_positions.weight");
        double *glnf_w = ref_model_tensor(m, m->grads, "model.norm.weight");
        double *glnf_b = ref_model_tensor(m, m->grads, "model.norm.bias");
        double *ghead = ref_model_tensor(m, m->grads, head_name);

        ref_linear_backward(tmp, ghead, NULL, dlg, xf, head, N, C, V);
        norm_backward(&D, dx, glnf_w, glnf_b, tmp, xL, lnf_w);
        layer_scratch S = {take(&a, NC), take(&a, NC), take(&a, NC), take(&a, NF), take(&a, NF),
                           take(&a, NF), take(&a, NQ), take(&a, NQ), take(&a, NQ),
                           take(&a, NK), take(&a, NK)};
        for (int l = L - 1; l >= 0; l--) {
            ref_layer P = layer_view(m, m->params, l), G = layer_view(m, m->grads, l);
            layer_backward(&D, &P, &G, &acts[l], dx, &S);
        }
        for (int n = 0; n < N; n++)
            for (int i = 0; i < C; i++) {
                gwte[(size_t)tokens[n] * C + i] += dx[(size_t)n * C + i];
                if (gwpe) gwpe[(size_t)(n % T) * C + i] += dx[(size_t)n * C + i];
            }
    }
    free(acts);
    free(a.base);
    return loss;
}

double ref_grad_error(const st_layout *lay, const float *g, const double *r, const char **worst)
{
    double gmax = 0, err = 0;
    for (size_t i = 0; i < lay->numel; i++) gmax = fmax(gmax, fabs(r[i]));
    *worst = "";
    for (int t = 0; t < lay->n_tensors; t++) {
        const st_tensor *ts = &lay->tensors[t];
        double tmax = 0, dmax = 0;
        for (size_t i = 0; i < ts->numel; i++) {
            tmax = fmax(tmax, fabs(r[ts->offset + i]));
            dmax = fmax(dmax, fabs(g[ts->offset + i] - r[ts->offset + i]));
        }
        double e = dmax / fmax(tmax, 1e-3 * gmax);
        if (e > err) err = e, *worst = ts->name;
    }
    return err;
}
