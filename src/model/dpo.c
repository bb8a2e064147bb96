/* dpo.c: the DPO loss and the weights that turn it into a cross-entropy
 * backward (dpo.h). */
#include "model/dpo.h"

#include <math.h>
#include <string.h>

/* Per row b: sum over t of mask * log p(target) from the last forward of m;
 * pos holds B*T scratch floats. */
static void row_logprobs(const st_model *m, const float *mask, int B, int T, float *pos, double *out)
{
    st_model_position_losses(m, pos);
    for (int b = 0; b < B; b++) {
        double s = 0;
        for (int t = 0; t < T; t++) s -= (double)mask[b * T + t] * pos[b * T + t];
        out[b] = s;
    }
}

st_err st_dpo_forward(st_model *policy, st_model *ref, const int32_t *tokens, const int32_t *targets,
                      const float *mask, int B, int T, float beta, float scale, float *work,
                      double *loss_sum, double *correct, double *margin)
{
    if (B % 2) ST_FAIL(ST_ERR_ARG, "%d rows do not form (chosen, rejected) pairs", B);
    if (!(beta > 0)) ST_FAIL(ST_ERR_ARG, "dpo.beta must be positive (got %g)", (double)beta);
    enum { MAX_ROWS = 4096 };
    if (B > MAX_ROWS) ST_FAIL(ST_ERR_ARG, "%d rows exceed DPO's %d", B, MAX_ROWS);
    double lp[MAX_ROWS], lr[MAX_ROWS], none = 0;
    float *pos = work, *w = work + (size_t)B * T;
    ST_TRY(st_model_forward(ref, tokens, targets, mask, B, T, 1.0f, &none));
    row_logprobs(ref, mask, B, T, pos, lr);
    ST_TRY(st_model_forward(policy, tokens, targets, mask, B, T, 1.0f, &none));
    row_logprobs(policy, mask, B, T, pos, lp);
    *loss_sum = *correct = *margin = 0;
    for (int i = 0; i < B; i += 2) {
        const double h = (lp[i] - lr[i]) - (lp[i + 1] - lr[i + 1]), z = beta * h;
        /* -log sigmoid(z) = softplus(-z), and sigmoid(-z), without overflow */
        const double sp = z < 0 ? -z + log1p(exp(z)) : log1p(exp(-z));
        const double sg = z >= 0 ? exp(-z) / (1 + exp(-z)) : 1 / (1 + exp(z));
        *loss_sum += scale * sp;
        *correct += z > 0;
        *margin += h;
        /* d loss / d log pi(c) = -beta sg; the cross-entropy is -log p, so its weight is +beta sg */
        const float k = (float)(beta * sg * scale);
        for (int t = 0; t < T; t++) {
            w[i * T + t] = k * mask[i * T + t];
            w[(i + 1) * T + t] = -k * mask[(i + 1) * T + t];
        }
    }
    ST_TRY(st_model_reweight(policy, targets, w, 1.0f, &none));
    return ST_OK;
}
