/* model.h: the decoder-only transformer of one tp rank (both families).
 *
 * st_model owns this rank's slice of the parameters, their gradients, and the
 * activations saved by the forward pass for the backward pass, all allocated
 * once for a micro-batch of at most B x T tokens. The forward pass is the
 * sequence embed -> block x L -> final norm -> lm head -> loss; the backward
 * pass is the same sequence reversed. Communication over tp happens only
 * inside the mpi/tp.h calls.
 */
#ifndef ST_MODEL_H
#define ST_MODEL_H

#include <mpi.h>
#include <stdint.h>

#include "core/params.h"
#include "kernels/kernels.h"
#include "model/adapter.h"

typedef struct {
    /* saved for backward; per-layer arrays are (L, ...) with the layer outermost */
    float *x;                  /* (L+1, N, C) residual stream; x[l] enters layer l */
    float *ln1, *ln1_s1, *ln1_s2; /* (L, N, C), (L, N) x2: mean/var (LayerNorm) or rstd (RMSNorm) */
    float *qh;                 /* (L, B, Hl, T, hd) queries after RoPE, head-major */
    float *kh, *vh;            /* (L, B, KVl, T, hd) */
    float *att;                /* (L, B, Hl, T, T) attention probabilities */
    float *o;                  /* (L, N, Hl*hd) attention output, token-major */
    float *x2;                 /* (L, N, C) residual after attention */
    float *ln2, *ln2_s1, *ln2_s2;
    float *up;                 /* (L, N, Fl) gpt2: pre-GELU; llama: up projection */
    float *gate, *act;         /* (L, N, Fl) llama: gate projection, silu(gate) */
    float *mh;                 /* (L, N, Fl) MLP hidden after the nonlinearity */
    float *lnf, *lnf_s1, *lnf_s2; /* (N, C), (N) */
    float *logits;             /* (N, Vl) local vocabulary slice; becomes dlogits */
    float *rowbuf;             /* (3N) cross-entropy scratch */
    /* scratch, reused by every layer */
    float *qt, *kt, *vt;       /* (N, Hl*hd) / (N, KVl*hd) token-major projections (and their grads) */
    float *oh;                 /* (B, Hl, T, hd) */
    float *dres, *dnorm, *dln; /* (N, C) */
    float *dmh, *dup, *dgate;  /* (N, Fl) */
    float *dqh, *dkh, *dvh;    /* head-major gradients */
    float *datt;               /* (B, Hl, T, T) */
} st_acts;

typedef struct {
    st_layout lay;
    MPI_Comm tp;               /* the tp communicator (size lay.tp_size) */
    int B, T;                  /* largest micro-batch the buffers hold */
    int training;              /* ST_MODEL_INFER, ST_MODEL_TRAIN or ST_MODEL_TRAIN_RECOMPUTE */
    float *params, *grads;     /* lay.numel each */
    st_bf16 *params16;         /* bf16 mixed precision: params rounded to bf16 (same layout),
                                  what the matrix products read; NULL in fp32 */
    st_ptrs w, g;              /* pointers into params and grads, by role */
    st_ptrs gt;                /* the gradients backward computes: g, with frozen tensors NULL */
    int backward_floor;        /* lowest layer backward must reach (layers below are frozen) */
    int embed_trainable;       /* embeddings (and positions) get gradients */
    const st_adapter *adapter; /* low-rank adapters on the projections, or NULL */
    st_acts a;
    float *rope_cos, *rope_sin;/* (max_seq, hd/2) llama */
    int last_B, last_T;        /* shape of the last training forward */
    int head_is_lm;            /* the last forward ended in the LM head and its loss */
    /* Called by st_model_backward whenever the gradients of the flat range
     * [lo, hi) are final (top of the buffer first), so data parallelism can
     * start reducing them while the backward pass goes on. NULL = none. */
    st_err (*grad_ready)(void *ctx, size_t lo, size_t hi);
    void *grad_ready_ctx;
    /* When set (B*T floats), each LM-head loss also writes every position's
     * entropy of the next-token distribution there (model/rl.c's statistics). */
    float *entropy;
} st_model;

enum {
    ST_MODEL_INFER = 0,           /* forward only: one layer's activations, reused */
    ST_MODEL_TRAIN = 1,           /* every layer's activations saved for backward */
    ST_MODEL_TRAIN_RECOMPUTE = 2  /* only each layer's input saved; backward recomputes the rest */
};

/* Allocate a model for cfg on this rank's slice of the communicator tp.
 * Parameters start at zero (pages the kernel maps when first written):
 * load a checkpoint into them, or draw them with st_model_init, or both for
 * different tensors (st_params_init_tensor). training: ST_MODEL_INFER keeps
 * activations for one layer only (generation, evaluation), ST_MODEL_TRAIN
 * every layer's, and ST_MODEL_TRAIN_RECOMPUTE only the residual stream
 * (activation recomputation: about one layer's memory instead of L, one more
 * forward). */
st_err st_model_create(st_model *m, const st_config *cfg, MPI_Comm tp, int B, int T, int training);
/* The seeded initialisation of every parameter (st_params_init): for a model
 * that starts from nothing. */
void st_model_init(st_model *m, uint64_t seed);
void st_model_free(st_model *m);
/* Floats of activation buffers st_model_create allocates for layout y (one
 * rank's), micro-batches of B x T and mode training: what a plan counts. */
size_t st_model_act_floats(const st_layout *y, int B, int T, int training);

/* Precision of the matrix products: fp32 (bf16 = 0), or bf16 mixed precision:
 * every linear layer's forward, input gradient and weight gradient take bf16
 * inputs (the weights' bf16 copy m->params16, activations and gradients
 * rounded as they go in) and accumulate in fp32; everything else (norms,
 * softmax, attention, the loss, gradients, optimizer) stays fp32. */
st_err st_model_set_precision(st_model *m, int bf16);
/* Refresh the bf16 copy from m->params (no-op in fp32): after anything writes
 * the parameters (a load, an optimizer step, a merge). Once per step. */
void st_model_sync_bf16(st_model *m);

/* Forward on a micro-batch with its loss: tokens, targets, mask (B,T), B <=
 * m->B, T <= m->T. *loss_sum = sum over positions of mask * CE * scale.
 * Activations are saved for st_model_backward (a model created with
 * ST_MODEL_INFER runs this forward too, for its loss alone, and refuses the
 * backward). */
st_err st_model_forward(st_model *m, const int32_t *tokens, const int32_t *targets, const float *mask,
                        int B, int T, float scale, double *loss_sum);

/* The last st_model_forward's cross-entropy at each position, unmasked and
 * unscaled, -log p(target): out (B*T), identical on every tp rank. */
void st_model_position_losses(const st_model *m, float *out);

/* The last forward's loss again with another mask (same tokens and targets):
 * the LM head and cross-entropy are redone from the saved final-norm output,
 * so st_model_backward then follows the new loss. For losses whose per-token
 * weights depend on the forward's results (DPO, src/model/dpo.c). */
st_err st_model_reweight(st_model *m, const int32_t *targets, const float *mask, float scale, double *loss_sum);

/* Backward of the last forward: ADDS d(loss_sum)/d(params) into m->grads. */
st_err st_model_backward(st_model *m, const int32_t *tokens);

/* The body alone, for other heads (src/model/classify.c): embeddings, layers and the
 * final norm; the result is m->a.lnf (B*T, C), identical on every tp rank. */
st_err st_model_forward_body(st_model *m, const int32_t *tokens, int B, int T);
/* Backward from the gradient of the final norm's output, dhidden (B*T, C),
 * complete (not partial over tp). ADDS into m->grads. */
st_err st_model_backward_hidden(st_model *m, const int32_t *tokens, const float *dhidden);

void st_model_zero_grad(st_model *m);

/* Freeze: trainable (lay.n_tensors flags, NULL = all) says which tensors get
 * gradients. Backward then skips the weight gradients of frozen tensors and
 * stops below the lowest layer that has a trainable tensor, unless
 * adapters_everywhere (adapters need the gradient to flow through every
 * layer). A tied LM head trains with the embeddings. */
void st_model_set_trainable(st_model *m, const uint8_t *trainable, int adapters_everywhere);

/* ---- inference with a key/value cache ---------------------------------- */
/* Rows are independent sequences, each with its own length, so prompts of
 * different lengths are filled one row at a time (st_kvcache_row) and then
 * decoded together, one position per row per call. A call's rows x new
 * tokens fit the model's B x T positions, so one-token steps can run up to
 * B x T rows (the cache is sized by its own rows). */
typedef struct {
    int B, max_seq;            /* rows, capacity per row */
    int *lens;                 /* (B) positions filled in each row */
    float *k, *v;              /* (B, L, KVl, max_seq, hd): a row is contiguous */
    float *att;                /* (Hl, m->T, max_seq) scratch, one row at a time */
    float *last;               /* (B, C) final hidden state of each row's last position */
    int owner;                 /* frees the buffers (not a row view) */
} st_kvcache;

st_err st_kvcache_create(st_kvcache *c, const st_model *m, int B);
void st_kvcache_free(st_kvcache *c);
/* A one-row view of row b of c (shares its buffers; nothing to free). */
st_kvcache st_kvcache_row(const st_kvcache *c, const st_model *m, int b);
/* Row dst of c becomes a copy of row src (its filled positions and length):
 * one prompt's prefill shared by the rows that sample from it. */
void st_kvcache_copy_row(st_kvcache *c, const st_model *m, int dst, int src);

/* Run Tq new tokens (B, Tq) at positions lens[b] .. lens[b]+Tq-1 of each row,
 * append their keys and values to the cache, and write the local logits of
 * each row's last new position to logits_local (B, Vl). Tq <= m->T,
 * B == c->B, B x Tq <= m->B x m->T. */
st_err st_model_forward_cached(st_model *m, st_kvcache *c, const int32_t *tokens, int Tq,
                               float *logits_local);

#endif
