/* rl.c: policy-gradient losses as cross-entropy weights, advantages, GAE (rl.h). */
#include "model/rl.h"

#include <math.h>
#include <string.h>

st_err st_rl_logprobs(st_model *m, const int32_t *tokens, const int32_t *targets, const float *mask, int B, int T,
                      float *lp, float *entropy)
{
    double none = 0;
    float *keep = m->entropy;
    m->entropy = entropy;
    st_err e = st_model_forward(m, tokens, targets, mask, B, T, 1.0f, &none);
    m->entropy = keep;
    ST_TRY(e);
    st_model_position_losses(m, lp);
    for (int64_t i = 0; i < (int64_t)B * T; i++) {
        lp[i] = mask[i] != 0.0f ? -lp[i] : 0.0f;
        if (entropy && mask[i] == 0.0f) entropy[i] = 0.0f;
    }
    return ST_OK;
}

st_err st_pg_forward(st_model *policy, const int32_t *tokens, const int32_t *targets, const float *mask, int B,
                     int T, const float *old_lp, const float *ref_lp, const float *adv, const st_pg_config *c,
                     float scale, float *work, float *entropy, st_pg_stats *out)
{
    if (!(c->clip > 0)) ST_FAIL(ST_ERR_ARG, "the ratio's clip range must be positive (got %g)", (double)c->clip);
    if (c->kl_coef != 0.0f && !ref_lp) ST_FAIL(ST_ERR_ARG, "a KL penalty needs the reference's log-probabilities");
    float *lp = work, *w = work + (size_t)B * T;
    ST_TRY(st_rl_logprobs(policy, tokens, targets, mask, B, T, lp, entropy));
    if (!old_lp) old_lp = lp; /* on-policy: the ratio is 1, its gradient lp's */
    memset(out, 0, sizeof *out);
    const double lo = 1.0 - c->clip, hi = 1.0 + c->clip;
    for (int b = 0; b < B; b++) {
        const float *mk = mask + (size_t)b * T;
        const size_t r0 = (size_t)b * T;
        double seq_log_ratio = 0, seq_adv = 0;
        int n = 0;
        for (int t = 0; t < T; t++)
            if (mk[t] != 0.0f) seq_log_ratio += (double)lp[r0 + t] - old_lp[r0 + t], seq_adv = adv[r0 + t], n++;
        /* one ratio per answer: its term counts once, its weight goes to every token */
        double seq_w = 0;
        if (c->seq_ratio && n) {
            const double r = exp(seq_log_ratio), un = r * seq_adv, cl = fmin(fmax(r, lo), hi) * seq_adv;
            const int active = un <= cl;
            out->pg += scale * -fmin(un, cl);
            out->clipped += !active;
            seq_w = active ? seq_adv * r : 0.0;
        }
        for (int t = 0; t < T; t++) {
            const size_t i = r0 + t;
            w[i] = 0.0f;
            if (mk[t] == 0.0f) continue;
            double wi = seq_w;
            if (!c->seq_ratio) {
                const double r = exp((double)lp[i] - old_lp[i]), un = r * adv[i], cl = fmin(fmax(r, lo), hi) * adv[i];
                const int active = un <= cl;
                out->pg += scale * -fmin(un, cl);
                out->clipped += !active;
                wi = active ? adv[i] * r : 0.0;
            }
            if (c->kl_coef != 0.0f) {
                const double d = (double)ref_lp[i] - lp[i], k3 = exp(d) - d - 1.0;
                out->k3 += k3;
                out->loss += scale * c->kl_coef * k3;
                wi += c->kl_coef * (exp(d) - 1.0);
            }
            w[i] = (float)(scale * wi);
        }
    }
    out->loss += out->pg;
    double none = 0;
    return st_model_reweight(policy, targets, w, 1.0f, &none);
}

void st_grpo_advantages(const double *reward, int n, int G, int scale_std, double *adv)
{
    for (int g = 0; g + G <= n; g += G) {
        double mean = 0, var = 0;
        for (int i = 0; i < G; i++) mean += reward[g + i];
        mean /= G;
        for (int i = 0; i < G; i++) var += (reward[g + i] - mean) * (reward[g + i] - mean);
        const double sd = G > 1 ? sqrt(var / (G - 1)) : 0.0;
        for (int i = 0; i < G; i++) adv[g + i] = (reward[g + i] - mean) / (scale_std ? sd + 1e-4 : 1.0);
    }
}

void st_rloo_advantages(const double *reward, int n, int G, double *adv)
{
    for (int g = 0; g + G <= n; g += G) {
        double sum = 0;
        for (int i = 0; i < G; i++) sum += reward[g + i];
        for (int i = 0; i < G; i++) adv[g + i] = reward[g + i] - (sum - reward[g + i]) / (G - 1);
    }
}

void st_gae(const float *values, const float *rewards, const float *mask, int B, int T, float gamma, float lambda,
            float *adv, float *ret)
{
    for (int b = 0; b < B; b++) {
        const size_t r0 = (size_t)b * T;
        double next_v = 0, next_a = 0;
        for (int t = T - 1; t >= 0; t--) {
            const size_t i = r0 + t;
            if (mask[i] == 0.0f) {
                adv[i] = ret[i] = 0.0f;
                continue;
            }
            const double delta = rewards[i] + gamma * next_v - values[i];
            next_a = delta + (double)gamma * lambda * next_a;
            next_v = values[i];
            adv[i] = (float)next_a;
            ret[i] = (float)(next_a + values[i]);
        }
    }
}
