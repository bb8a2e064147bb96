/* rl.h: the math of on-policy reinforcement learning on one rank: the
 * clipped policy-gradient loss of GRPO, RLOO and PPO (Schulman et al. 2017;
 * Shao et al. 2024; Ahmadian et al. 2024), their advantages, and GAE.
 *
 * A micro-batch holds B answers (prompt + answer, one per row); mask (B,T)
 * is 1 at the positions whose target is an answer token. The loss is a
 * function of each answer token's log-probability lp under the policy, so
 * its gradient is a weighted cross-entropy gradient (the cross-entropy is
 * -lp): the policy's forward runs, the weights dL/dCE = -dL/dlp follow from
 * its log-probabilities, and st_model_reweight redoes the LM head's loss with
 * them; st_model_backward then adds exactly the gradient of the RL loss.
 * No new backward code (as model/dpo.c), so tp, dp and ZeRO apply unchanged.
 *
 * Per answer token t (old_lp: the policy that sampled, ref_lp: the frozen
 * reference, A_t: the advantage):
 *   r_t    = exp(lp_t - old_lp_t)       (seq_ratio: one ratio per answer,
 *                                        exp(sum over its tokens of lp - old_lp))
 *   pg_t   = -min(r_t A_t, clip(r_t, 1 - clip, 1 + clip) A_t)
 *   k3_t   = exp(ref_lp_t - lp_t) - (ref_lp_t - lp_t) - 1   (Schulman's k3 estimator of
 *                                        KL(pi || ref), unbiased and >= 0)
 *   loss_t = pg_t + kl_coef * k3_t      (seq_ratio: pg once per answer)
 * so dL/dCE_t = A_t r_t [the min takes the unclipped term] + kl_coef (exp(ref_lp_t - lp_t) - 1).
 */
#ifndef ST_RL_H
#define ST_RL_H

#include "model/model.h"

typedef struct {
    float clip;          /* the ratio's clip range epsilon (0.2) */
    float kl_coef;       /* weight of the k3 KL penalty in the loss (0: none; ref_lp unused) */
    int seq_ratio;       /* 1: one ratio per answer (RLOO); 0: per token (GRPO, PPO) */
} st_pg_config;

typedef struct {
    double loss;         /* sum of the loss (times scale) */
    double pg;           /* ... of its policy-gradient part (times scale) */
    double clipped;      /* tokens (seq_ratio: answers) whose clip was active: the min took the clipped term */
    double k3;           /* sum over answer tokens of k3 (unscaled) */
} st_pg_stats;

/* The loss of a micro-batch (see above), summed over its answer tokens
 * (seq_ratio: over answers) times scale; old_lp, ref_lp, adv are (B,T), read
 * where mask is 1 (ref_lp may be NULL when kl_coef is 0; old_lp NULL: the
 * policy that sampled is this one, the ratio 1 and its gradient lp's).
 * Runs the policy's forward and leaves its LM-head loss reweighted, so
 * st_model_backward(policy) adds the gradient. work: 2*B*T floats, the
 * first B*T of them the log-probabilities afterwards (0 where mask is 0);
 * entropy (B,T), when not NULL, receives the answer positions' entropies. */
st_err st_pg_forward(st_model *policy, const int32_t *tokens, const int32_t *targets, const float *mask, int B,
                     int T, const float *old_lp, const float *ref_lp, const float *adv, const st_pg_config *c,
                     float scale, float *work, float *entropy, st_pg_stats *out);

/* log-probabilities lp (B,T) of the targets where mask is 1 (0 elsewhere)
 * under m, and, when entropy is not NULL, each such position's entropy of the
 * model's next-token distribution (nats; 0 elsewhere). One forward; the same
 * on every tp rank. */
st_err st_rl_logprobs(st_model *m, const int32_t *tokens, const int32_t *targets, const float *mask, int B, int T,
                      float *lp, float *entropy);

/* GRPO: adv_i = (r_i - mean of its group) / (std of its group + 1e-4) over
 * groups of G consecutive answers (std with G - 1, as TRL); scale_std 0
 * leaves out the division (Dr. GRPO). n a multiple of G. */
void st_grpo_advantages(const double *reward, int n, int G, int scale_std, double *adv);
/* RLOO: adv_i = r_i - the mean reward of the other G - 1 answers of its group (G >= 2). */
void st_rloo_advantages(const double *reward, int n, int G, double *adv);

/* PPO's generalised advantage estimation (Schulman et al. 2016) along each
 * row's answer positions (mask 1; they are consecutive): with values v_t and
 * rewards r_t at those positions and v after the last = 0,
 *   delta_t = r_t + gamma v_{t+1} - v_t,   A_t = delta_t + gamma lambda A_{t+1},
 *   ret_t = A_t + v_t.
 * adv and ret (B,T) are 0 where mask is 0. */
void st_gae(const float *values, const float *rewards, const float *mask, int B, int T, float gamma, float lambda,
            float *adv, float *ret);

#endif
