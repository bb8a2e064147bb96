/* optim.h: AdamW with decoupled weight decay, the learning-rate schedule, and
 * the pieces of gradient clipping that are rank-local.
 *
 * The optimizer owns a flat range [begin, end) of the rank's parameter
 * buffer: the whole buffer without ZeRO, this rank's 1/dp slice with ZeRO-1
 * (mpi/dp.c decides the range). Its moments m, v cover exactly that range.
 */
#ifndef ST_OPTIM_H
#define ST_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "core/params.h"

typedef enum { ST_SCHED_COSINE = 0, ST_SCHED_LINEAR, ST_SCHED_CONSTANT } st_schedule;

typedef struct {
    float lr;             /* peak learning rate */
    float min_lr_ratio;   /* cosine and linear decay to lr * min_lr_ratio */
    int warmup_steps;     /* linear warmup from 0 */
    int64_t total_steps;  /* where the decay ends; constant lr when 0 */
    st_schedule schedule; /* after warmup */
    float beta1, beta2, eps;
    float weight_decay;   /* on 2-D weights only, never norms or biases */
    float grad_clip;      /* global-norm clipping threshold; 0 = off */
} st_optim_config;

/* The defaults (the one table of them: train's options show these). */
void st_optim_config_default(st_optim_config *c);

/* Learning rate at step (0-based): linear warmup from lr/warmup_steps to lr,
 * then the schedule: cosine or linear from lr to lr * min_lr_ratio at
 * total_steps, or constant lr. */
float st_lr_at(const st_optim_config *c, int64_t step);

typedef struct {
    st_optim_config cfg;
    const st_layout *lay;
    size_t begin, end;          /* flat range owned */
    float *m, *v;               /* (end - begin) moments */
    const uint8_t *trainable;   /* per tensor (lay->n_tensors), NULL = all; frozen tensors never move */
    int64_t step;               /* updates done (bias correction) */
} st_adamw;

st_err st_adamw_init(st_adamw *o, const st_layout *lay, size_t begin, size_t end,
                     const st_optim_config *cfg);
void st_adamw_free(st_adamw *o);

/* One AdamW update of params[begin, end) from grads[begin, end) (already
 * averaged and clipped) at learning rate lr. */
void st_adamw_update(st_adamw *o, float *params, const float *grads, float lr);

/* Sum of squares of grads over [begin, end), counting each tensor once per
 * model copy: a replicated tensor (split NONE) only when count_replicated.
 * Summed over the right communicators it gives the global norm squared. */
double st_grad_sumsq(const st_layout *lay, const float *grads, size_t begin, size_t end,
                     int count_replicated);

/* Multiply grads[begin, end) by s. */
void st_scale(float *x, size_t begin, size_t end, float s);

#endif
