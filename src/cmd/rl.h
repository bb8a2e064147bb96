/* rl.h: the on-policy RL methods of method.h: grpo, rloo, ppo.
 *
 * A step (rollout, then updates):
 *   prompts   the step's prompt samples from the loader (sft or chat data:
 *             each record's prompt; its response is the reference answer the
 *             rules compare with), group_size answers each
 *   generate  the policy samples the answers with the decoding engine
 *             (model/decode.h), batch_size rows at a time, each row from its
 *             own counter-based stream (seed, global answer index): any grid
 *             draws the same answers; dp ranks take different prompts, tp
 *             splits the model as in training
 *   score     log-probabilities of the answers under the policy (the "old"
 *             policy of the ratio) and the frozen reference, entropies, the
 *             value model's values (ppo), rewards (cmd/rewards.h)
 *   advantage grpo: group-normalised rewards; rloo: leave-one-out baseline,
 *             KL in the reward; ppo: per-token KL penalty, reward on the last
 *             token, GAE, whitened over the global batch
 *   updates   epochs x minibatches optimizer updates over the step's answers
 *             with the clipped loss (model/rl.h), ppo's value loss besides
 * A step's rows are laid out so that update u's global minibatch is the
 * same set of answers on every grid, whole groups on each rank.
 */
#ifndef ST_RL_METHODS_H
#define ST_RL_METHODS_H

#include "cmd/method.h"

st_err st_rl_setup(trainer *t);
st_err st_rl_load_start(trainer *t);
void st_rl_free(trainer *t);
st_err st_rl_rollout(trainer *t, int64_t step, st_step_plan *plan);
st_err st_rl_fill(trainer *t, int update, int micro, int64_t *g0);
st_err st_rl_forward(trainer *t, int rows, double *loss, double *count, double *correct);
st_err st_rl_backward(trainer *t);
st_err st_rl_evaluate(trainer *t, double *val, double *metric);
int st_rl_stats(const trainer *t, st_stat *out, int max);

/* The table entry of an RL method (methods.c). */
#define ST_RL_METHOD(method_name, text)                                                                          \
    {.name = method_name, .summary = text, .metric = "reward", .setup = st_rl_setup, .forward = st_rl_forward,   \
     .backward = st_rl_backward, .load_start = st_rl_load_start, .free = st_rl_free, .rollout = st_rl_rollout,   \
     .fill = st_rl_fill, .evaluate = st_rl_evaluate, .stats = st_rl_stats}

#endif
