/* rewards.h: the reward of an answer for the RL methods (cmd/rl.c): a
 * weighted sum of a reward model's score and rules (rl.reward.* in
 * trainer.h):
 *   model       a checkpoint trained with method reward (its LoRA merged) scores
 *               the tokens prompt + answer, as it scored its training pairs
 *               (the same tokenizer; the answer ends with its stop token, as
 *               the pairs' responses end with eos)
 *   exact       1 when the answer, trimmed, equals the reference answer
 *   contains    1 when the answer contains the reference answer (a label name)
 *   regex       1 when the answer matches a PCRE2 pattern; {reference} in the
 *               pattern stands for the reference answer, matched literally
 *   length_penalty  - answer tokens / max_new
 *   missing_eos     - 1 when the answer did not end with a stop token
 * The reference answer is the dataset's response for the prompt (sft and
 * chat data), its end-of-turn tokens left out. Every tp rank computes the
 * same rewards (the reward model's head is replicated).
 */
#ifndef ST_REWARDS_H
#define ST_REWARDS_H

#include <stdint.h>

#include "cmd/trainer.h"
#include "io/inference.h"

typedef struct st_rewarder st_rewarder;

/* The reward of the run's settings (t->o->rl): opens the reward model on the
 * run's grid for batches of t->o->batch_size rows of t->o->seq_len tokens,
 * compiles the pattern. Errors name the option and the file. */
st_err st_rewarder_open(st_rewarder **out, const trainer *t);
void st_rewarder_close(st_rewarder *r);
/* Its terms, for the run's summary: "2 * reward model + 1 * contains" */
const char *st_rewarder_describe(const st_rewarder *r);
/* The reward model, or NULL (PPO starts its value model from it). */
const char *st_rewarder_model_path(const st_rewarder *r);

/* Rewards of n answers (n <= batch_size): tokens (n, T) hold prompt +
 * answer, lengths[i] tokens of row i (the answer's last token last); alen,
 * stopped (n): answer tokens and whether a stop token ended them; answer
 * and reference: their texts. reward (n) = the weighted sum; model (n, may be
 * NULL) = the reward model's score alone (0 without one). */
st_err st_rewarder_score(st_rewarder *r, const int32_t *tokens, const int32_t *lengths, int n, int T,
                         const int *alen, const int *stopped, char *const *answer, char *const *reference,
                         double *reward, double *model);

#endif
