/* lora.h: low-rank adapters (LoRA, Hu et al. 2021) on the model's projections.
 *
 * Each adapted projection W (OUT, IN) gains a trainable low-rank update
 *   y = x W^T + s * dropout(x) A^T B^T,   A (rank, IN), B (OUT, rank), s = alpha / rank,
 * while W stays frozen. B starts at zero, so training starts exactly at the
 * base model. A starts as PEFT's default (init_lora_weights=True):
 * Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(IN), 1/sqrt(IN)), every
 * element drawn from (seed, tensor name, global index) so every process grid
 * starts with the slices of the same global adapters.
 *
 * The adapters join the model through the hook of src/model/adapter.h and follow the
 * layer's tensor-parallel split (mpi/tp.h):
 *   column-parallel targets (q k v gate up): A replicated, B split by output
 *     rows like W. u = x A^T (N, rank) is computed whole on every tp rank.
 *   row-parallel targets (o down): A split by input columns like W, B
 *     replicated. u = sum over tp of x_r A_r^T (one small all-reduce).
 * Gradients of replicated tensors (A of column targets, B of row targets) come
 * out identical on every tp rank, like those of the norms.
 *
 * All adapter parameters sit in one flat buffer described by an st_layout
 * (names as PEFT writes them, without "base_model.model."), so the optimizer,
 * the gradient reduction and the checkpoint treat it like any parameter set.
 */
#ifndef ST_LORA_H
#define ST_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "core/params.h"
#include "model/adapter.h"

typedef struct {
    int rank;          /* r >= 1 */
    float alpha;       /* scale s = alpha / rank, alpha > 0 */
    float dropout;     /* probability in [0, 1) of dropping an input element of the A product */
    unsigned targets;  /* bitmask of (1u << st_target); see st_lora_parse_targets */
} st_lora_config;

/* A bit meaning "target t if the family has it": set by the group names "all"
 * and "mlp" for gate, which gpt2 lacks. st_lora_create resolves it. */
#define ST_LORA_IF_PRESENT(t) (1u << (8 + (t)))

/* "q,k,v,o,gate,up,down" (also q_proj, ..., down_proj as PEFT spells them,
 * "all", "attn" = q,k,v,o, "mlp" = gate,up,down where the family has a gate).
 * Unknown or empty names are an error naming the name and the valid ones.
 * A target the family lacks (gate in gpt2) is an error of st_lora_create. */
st_err st_lora_parse_targets(const char *list, unsigned *mask);

typedef struct st_lora st_lora;

/* Adapters for the model whose layout (this tp rank's slice) is base, with
 * buffers for micro-batches of up to max_tokens rows (N = B*T). Checks the
 * config (rank, alpha, dropout, targets against the family). */
st_err st_lora_create(st_lora **out, const st_layout *base, const st_lora_config *c,
                      int64_t max_tokens, uint64_t seed);
void st_lora_free(st_lora *l);

/* The hook to set as model->adapter (valid while l lives). */
const st_adapter *st_lora_adapter(st_lora *l);
/* The adapters' tensor table: "model.layers.N.self_attn.q_proj.lora_A.weight"
 * (rank, IN) and "...lora_B.weight" (OUT, rank), layer by layer in the order
 * q k v o gate up down, A before B; global shapes, this rank's slices, decay 0.
 * cfg and the tp fields are the base model's; layer_begin as in params.h. */
const st_layout *st_lora_layout(const st_lora *l);
/* The targets actually adapted (the config's, with IF_PRESENT bits resolved). */
unsigned st_lora_targets(const st_lora *l);

float *st_lora_params(st_lora *l);
float *st_lora_grads(st_lora *l);
size_t st_lora_numel(const st_lora *l);
void st_lora_zero_grad(st_lora *l);

/* The dropout mask of a forward and of its backward depends only on (seed,
 * step, row0 + row, layer, target, global element index), so backward
 * recomputes it and every tp rank draws the same one. training = 0 turns
 * dropout off (evaluation, generation). Set before each forward; keep until
 * its backward is done. */
void st_lora_set_step(st_lora *l, int64_t step, int training);
/* The global index of the micro-batch's first token row within the step
 * (default 0). Give it when one step runs several micro-batches (gradient
 * accumulation, data parallelism), so each token gets the mask that the
 * single-rank run would give it rather than every micro-batch the same one. */
void st_lora_set_rows(st_lora *l, int64_t row0);

float st_lora_scale(const st_lora *l); /* alpha / rank */

/* W += s * B A for every adapted weight of base_params (this rank's slices,
 * laid out by base, which must be the layout the adapters were made for).
 * The merged model computes what base + adapters computed; detach the
 * adapters from it (model->adapter = NULL) or they count twice. */
st_err st_lora_merge(const st_lora *l, const st_layout *base, float *base_params);

#endif
