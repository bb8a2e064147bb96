/* classify.h: a classification head on the transformer body, for intent and
 * sentiment tasks (Hugging Face's *ForSequenceClassification).
 *
 *   pooled (B, C) = final-norm output at each row's last real token
 *                   (pool "last", what decoder models use) or its mean over
 *                   the row's real tokens (pool "mean")
 *   logits (B, K) = pooled @ score.weight^T + score.bias
 *   loss          = cross-entropy with the labels, or for a reward model
 *                   (K = 1) the pairwise loss of st_cls_pair_loss
 * The head is small and replicated on every tp rank (its input is replicated),
 * so it needs no communication; its parameters are a separate set with their
 * own tensor table ("score.weight" (K, C), "score.bias" (K)).
 */
#ifndef ST_CLASSIFY_H
#define ST_CLASSIFY_H

#include "model/model.h"

typedef struct {
    int n_classes, pool_mean, max_B;
    int no_bias;            /* score.bias stays 0 (classify.bias: false): the head HF's
                               *ForSequenceClassification has, so export can write it */
    st_layout lay;          /* the head's tensor table */
    float *params, *grads;  /* K*C + K */
    float *w, *b, *dw, *db;
    float *pooled;          /* (max_B, C) */
    float *logits;          /* (max_B, K), becomes dlogits */
    float *rowbuf;          /* (3 max_B) */
    float *dpooled;         /* (max_B, C) */
    float *dhidden;         /* (N, C) for the body's backward */
    int32_t lengths[4096];  /* lengths of the last forward's rows */
} st_cls_head;

st_err st_cls_create(st_cls_head *h, const st_model *m, int n_classes, int pool_mean, uint64_t seed);
/* The head's tensor table alone (score.weight (K, C), score.bias (K)), for
 * tools that read a head from a checkpoint. Free with st_layout_free. */
st_err st_cls_layout(st_layout *lay, const st_config *cfg, int n_classes, int tp_size, int tp_rank);
void st_cls_free(st_cls_head *h);
void st_cls_zero_grad(st_cls_head *h);

/* Forward on a micro-batch: tokens (B,T), lengths (B) real tokens per row,
 * labels (B) or NULL (inference). *loss_sum = sum over rows of CE * scale;
 * pred (B) receives the argmax class (may be NULL). */
st_err st_cls_forward(st_cls_head *h, st_model *m, const int32_t *tokens, const int32_t *lengths,
                      const int32_t *labels, int B, int T, float scale, double *loss_sum, int32_t *pred);
/* A reward model (K = 1) on preference pairs: rows 2i and 2i+1 of the last
 * forward (labels NULL) are pair i's chosen and rejected sequences, r their
 * scores. Bradley-Terry loss, as in InstructGPT and TRL's RewardTrainer:
 *   loss_i = -log sigmoid(r_c - r_r) = softplus(r_r - r_c)     (times scale)
 * *loss_sum = the sum over the B / 2 pairs, *correct = pairs with r_c > r_r.
 * The scores become their gradients, ready for st_cls_backward. */
st_err st_cls_pair_loss(st_cls_head *h, int B, float scale, double *loss_sum, double *correct);
/* Backward of the last forward: ADDS into h->grads and the model's grads. */
st_err st_cls_backward(st_cls_head *h, st_model *m, const int32_t *tokens);

/* The head's description stored with its checkpoint set ("head" group):
 * {"n_classes": K, "pool": "last"|"mean", "bias": true|false, "labels": [names...]}.
 * labels may be NULL (then names are "0".."K-1"). *json is malloc'd. */
st_err st_cls_meta_json(const st_cls_head *h, const char *const *labels, char **json);
/* Parse it back; *labels (n_classes malloc'd strings, array malloc'd) may be NULL to skip. */
st_err st_cls_meta_parse(const char *json, int *n_classes, int *pool_mean, char ***labels);

#endif
