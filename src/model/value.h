/* value.h: PPO's value model: a scalar head applied at every position of a
 * body, v (B,T) = final-norm output (B*T, C) @ score.weight^T + score.bias,
 * as TRL's value model (AutoModelForSequenceClassification with one label,
 * read at every position). Its tensors are a reward head's ("score.weight"
 * (1, C), "score.bias" (1); classify.h), so a reward model's head can start
 * it. Small and replicated on every tp rank (its input is), no communication.
 *
 * The clipped value loss of PPO (TRL's PPOTrainer) over the answer positions:
 *   v_clip = clip(v, v_old - c, v_old + c)
 *   loss   = sum over mask of 0.5 max((v - ret)^2, (v_clip - ret)^2)   (times scale)
 */
#ifndef ST_VALUE_H
#define ST_VALUE_H

#include "model/model.h"

typedef struct {
    st_layout lay;          /* score.weight (1, C), score.bias (1) */
    float *params, *grads;  /* C + 1 */
    int max_N;              /* positions the buffers hold (the body's B * T) */
    int B, T;               /* of the last forward */
    float *values;          /* (B*T) of the last forward; becomes d loss / d v */
    float *dhidden;         /* (B*T, C) */
} st_value_head;

/* A head for m's width: weight N(0, 0.02) from seed (grid-independent), bias 0. */
st_err st_value_create(st_value_head *h, const st_model *m, uint64_t seed);
void st_value_free(st_value_head *h);

/* The body's forward on tokens (B,T) and the values at every position: out (B*T). */
st_err st_value_forward(st_value_head *h, st_model *m, const int32_t *tokens, int B, int T, float *out);
/* The clipped loss of the last forward's values (see above): *loss_sum, and
 * *clipped = positions where the clipped term was the larger; old_v, ret, mask
 * (B,T). Leaves d loss / d v ready for st_value_backward. */
void st_value_loss(st_value_head *h, const float *mask, const float *old_v, const float *ret, float clip, float scale,
                   double *loss_sum, double *clipped);
/* Backward of the last forward and loss: ADDS into h->grads and m->grads. */
st_err st_value_backward(st_value_head *h, st_model *m, const int32_t *tokens);

#endif
