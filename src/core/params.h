/* params.h: where every parameter lives.
 *
 * All of a rank's parameters sit in one contiguous float buffer (llm.c style);
 * gradients and AdamW moments use buffers of the same layout, so one memset
 * zeroes every gradient and one loop runs the optimizer. Tensors are laid out
 * layer by layer (embeddings, layer 0, layer 1, ..., final norm, lm head) so
 * that a layer's gradients form one contiguous range that the data-parallel
 * reduction can send as soon as that layer's backward is done.
 *
 * Names are Hugging Face Llama-style for both families (see io/checkpoint.c);
 * linear weights are [out, in] as in torch.nn.Linear.
 *
 * Tensor parallelism (Megatron): each tensor has a split kind.
 *   NONE   replicated on every tp rank (norms, positions, row-parallel biases)
 *   COL    rows (dim 0, output features) split: q k v gate up, and their biases
 *   ROW    columns (dim 1, input features) split: o down
 *   VOCAB  rows split by vocabulary: embeddings and lm head; each rank holds
 *          ceil(V/tp) rows, the last rank's rows past V are zero padding that
 *          is never read from or written to a file.
 */
#ifndef ST_PARAMS_H
#define ST_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

typedef enum { ST_SPLIT_NONE = 0, ST_SPLIT_COL, ST_SPLIT_ROW, ST_SPLIT_VOCAB } st_split;

typedef struct {
    char name[96];      /* e.g. model.layers.3.self_attn.q_proj.weight */
    int ndim;           /* 1 or 2 */
    int64_t shape[2];   /* global shape (shape[1] = 1 when ndim == 1) */
    int64_t lshape[2];  /* this rank's slice of the global tensor (real rows only) */
    int64_t start[2];   /* where the slice starts in the global tensor */
    size_t offset;      /* first float in the rank's flat buffer */
    size_t numel;       /* floats allocated in the flat buffer (incl. vocab padding) */
    st_split split;
    int decay;          /* AdamW weight decay applies (2-D weights, not norms or biases) */
    int layer;          /* layer index, -1 for embeddings, final norm and head */
} st_tensor;

/* Pointers into one flat buffer, by role. NULL where the family has no such tensor. */
typedef struct {
    float *ln1_w, *ln1_b;             /* (C) */
    float *wq, *bq;                   /* (Hl*hd, C), (Hl*hd) */
    float *wk, *bk;                   /* (KVl*hd, C), (KVl*hd) */
    float *wv, *bv;                   /* (KVl*hd, C), (KVl*hd) */
    float *wo, *bo;                   /* (C, Hl*hd), (C) */
    float *ln2_w, *ln2_b;             /* (C) */
    float *wgate;                     /* (Fl, C) llama */
    float *wup, *bup;                 /* (Fl, C), (Fl) gpt2 */
    float *wdown, *bdown;             /* (C, Fl), (C) gpt2 */
} st_layer_ptrs;

typedef struct {
    float *wte;                       /* (Vl, C) token embeddings, vocab-split */
    float *wpe;                       /* (max_seq, C) gpt2 positions */
    float *lnf_w, *lnf_b;             /* (C) */
    float *lm_head;                   /* (Vl, C); equals wte when tied */
    st_layer_ptrs *layer;             /* n_layer entries */
} st_ptrs;

typedef struct {
    st_config cfg;
    int tp_size, tp_rank;
    int head_dim;       /* hd = C / H */
    int n_head_l;       /* Hl = H / tp */
    int n_kv_head_l;    /* KVl = KV / tp */
    int d_ff_l;         /* Fl = F / tp */
    int vocab_l;        /* Vl = ceil(V / tp): rows of the local embedding */
    int vocab_start;    /* first vocabulary row held here */
    st_tensor *tensors;
    int n_tensors;
    size_t numel;       /* floats in the flat buffer */
    size_t *layer_begin;/* n_layer+1 offsets: layer l occupies [layer_begin[l], layer_begin[l+1]) */
} st_layout;

/* Build the tensor table of cfg for tp rank tp_rank of tp_size. Validates cfg. */
st_err st_layout_init(st_layout *lay, const st_config *cfg, int tp_size, int tp_rank);
void st_layout_free(st_layout *lay);

/* Point p's members into base (a buffer of lay->numel floats). p->layer is
 * allocated here and released by st_ptrs_free. */
st_err st_ptrs_init(st_ptrs *p, const st_layout *lay, float *base);
void st_ptrs_free(st_ptrs *p);

/* The tensor named name, or NULL. */
const st_tensor *st_layout_find(const st_layout *lay, const char *name);
/* The first tensor of lay whose values in base hold a NaN or an infinity
 * (NULL: all finite). */
const st_tensor *st_layout_first_nonfinite(const st_layout *lay, const float *base);

/* Seeded initialisation, identical for every grid: every element's value
 * depends only on (seed, tensor name, global index) (st_normal_fill), so a
 * tp-split model starts with exactly the slices of the 1x1 model. Linear
 * weights ~ N(0, 0.02), output projections scaled by 1/sqrt(2L) (GPT-2),
 * norms' weights 1, biases and vocabulary padding 0. Rows are spread over
 * the OpenMP threads. st_params_init does every tensor of the layout;
 * st_params_init_tensor tensor i alone (a tensor a checkpoint does not
 * provide). Only what will not be loaded needs it: a model's parameters
 * start at zero. */
void st_params_init(const st_layout *lay, float *base, uint64_t seed);
void st_params_init_tensor(const st_layout *lay, float *base, uint64_t seed, int i);

#endif
