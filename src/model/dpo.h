/* dpo.h: Direct Preference Optimization (Rafailov et al., 2023), as Hugging
 * Face TRL's DPOTrainer computes its default ("sigmoid") loss.
 *
 * A micro-batch of B rows holds B/2 pairs: rows 2i and 2i+1 are pair i's
 * chosen and rejected sequences (the loader keeps them adjacent); mask (B,T)
 * marks the response tokens. For a sequence y,
 *   log pi(y)  = sum over response tokens of log p(target)   (the policy m)
 *   log ref(y) = the same under the frozen reference model
 *   z_i    = beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]
 *   loss_i = -log sigmoid(z_i)
 * The reference starts where the policy started (init_from or the seeded
 * initialisation) and never moves.
 *
 * The gradient needs every sequence's log-probability before any token's
 * weight is known, so the step is: the reference's forward, the policy's
 * forward, then the policy's loss is redone with per-token weights
 *   chosen tokens: +beta * sigmoid(-z_i) * scale, rejected: -beta * sigmoid(-z_i) * scale
 * on their cross-entropy (st_model_reweight), whose gradient is that of the
 * DPO loss; st_model_backward follows. Under tp both models use the same
 * vocabulary-parallel cross-entropy, so the sums are identical on every rank.
 */
#ifndef ST_DPO_H
#define ST_DPO_H

#include "model/model.h"

/* The DPO loss of a micro-batch (see above): *loss_sum = scale * sum over
 * pairs of loss_i, *correct = pairs with z_i > 0 (TRL's
 * rewards/accuracies), *margin = sum over pairs of z_i / beta. work holds
 * 2 * B * T floats. After it, st_model_backward(policy) adds the gradient. */
st_err st_dpo_forward(st_model *policy, st_model *ref, const int32_t *tokens, const int32_t *targets,
                      const float *mask, int B, int T, float beta, float scale, float *work,
                      double *loss_sum, double *correct, double *margin);

#endif
