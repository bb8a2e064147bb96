/* train.c: `shardtune train RECIPE.yaml [--set key=value ...]`.
 *
 * One step:
 *   for each micro-batch of this dp rank's share of the global batch:
 *       forward (loss summed over counted tokens) and backward (grads added);
 *       on the last micro-batch each finished layer's gradients start their
 *       dp reduction while the backward pass continues (mpi/dp.c)
 *   gradients /= tokens counted in the whole global batch (so every grid
 *   computes the same mean as one rank), global-norm clip, AdamW on the
 *   owned range (ZeRO-1 slice or everything), all-gather the slices.
 * The global batch is a fixed list of sample indices (step * global_batch ..),
 * split over dp ranks and micro-batches: any grid sees the same data, and a
 * resumed run sees exactly what the uninterrupted one would.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "cmd/commands.h"
#include "cmd/method.h"
#include "cmd/options.h"
#include "cmd/trainer.h"
#include "io/checkpoint.h"
#include "io/runlock.h"
#include "kernels/peak.h"
#include "mpi/comm.h"
#include "mpi/commstats.h"
#include "mpi/job.h"

#define F(field) offsetof(train_opts, field)
static const st_option train_options[] = {
    {"model.family", ST_OPT_STRING, F(family), "llama", "gpt2 or llama (new model; ignored with init_from)", NULL},
    {"model.n_layer", ST_OPT_INT, F(cfg.n_layer), "4", "transformer layers", "[1,)"},
    {"model.d_model", ST_OPT_INT, F(cfg.d_model), "128", "model width", "[1,)"},
    {"model.n_head", ST_OPT_INT, F(cfg.n_head), "4", "query heads", "[1,)"},
    {"model.n_kv_head", ST_OPT_INT, F(cfg.n_kv_head), "0", "key/value heads (0 = n_head)", "[0,)"},
    {"model.d_ff", ST_OPT_INT, F(cfg.d_ff), "0", "MLP width (0 = 4*d_model for gpt2, 8/3*d_model rounded up to 32 for llama)", "[0,)"},
    {"model.vocab_size", ST_OPT_INT, F(cfg.vocab_size), "0", "vocabulary (0 = the dataset tokenizer's)", "[0,)"},
    {"model.max_seq", ST_OPT_INT, F(cfg.max_seq), "0", "longest sequence (0 = seq_len)", "[0,)"},
    {"model.norm_eps", ST_OPT_FLOAT, F(cfg.norm_eps), "1e-5", "normalisation epsilon", "(0,)"},
    {"model.rope_theta", ST_OPT_FLOAT, F(cfg.rope_theta), "10000", "RoPE base (llama)", "(0,)"},
    {"model.tied_embeddings", ST_OPT_BOOL, F(cfg.tied_embeddings), "true", "share embedding and LM head", NULL},
    {"model.qkv_bias", ST_OPT_BOOL, F(cfg.qkv_bias), "false", "bias on q/k/v (llama; Qwen2 style)", NULL},
    {"init_from", ST_OPT_PATH, F(init_from), NULL, "checkpoint whose weights start the run (transfer learning)", NULL},
    {"init_skip", ST_OPT_STRING, F(init_skip), NULL, "comma-separated tensor names (a trailing * matches a prefix) that init_from does not load, e.g. lm_head.weight for a new head", NULL},
    {"data.train", ST_OPT_PATH, F(data_train), NULL, "dataset.h5 made by `shardtune prepare` (required)", NULL},
    {"data.sampling", ST_OPT_STRING, F(sampling), "auto", "stream (windows over concatenated text), docs (one example per row) or auto (by method)", NULL},
    {"data.shuffle", ST_OPT_BOOL, F(shuffle), "true", "a seeded permutation per epoch (false: file order, as another tool without shuffling reads it)", NULL},
    {"seq_len", ST_OPT_INT, F(seq_len), "128", "tokens per row", "[1,)"},
    {"batch_size", ST_OPT_INT, F(batch_size), "8", "rows per micro-batch on each rank", "[1,)"},
    {"global_batch", ST_OPT_INT, F(global_batch), "0", "rows per optimizer step over all dp ranks (0 = batch_size * dp); a multiple of batch_size * dp gives gradient accumulation", "[0,)"},
    {"method", ST_OPT_STRING, F(method), "pretrain", "pretrain (loss on every token), sft (loss where the dataset's mask says: responses), classify (a head over the dataset's labels), reward (a scalar head trained on preference pairs: -log sigmoid(r_chosen - r_rejected)) dpo (the language model on preference pairs against a frozen copy of its starting weights), or on-policy RL on the prompts of sft/chat data: grpo (group-normalised rewards), rloo (leave-one-out baseline) or ppo (value model, GAE)", NULL},
    {"classify.bias", ST_OPT_BOOL, F(cls_bias), "true", "methods classify and reward: train score.bias (false: held at 0, the head Hugging Face's *ForSequenceClassification has, so `export --to hf:DIR` can write it)", NULL},
    {"dpo.beta", ST_OPT_FLOAT, F(dpo_beta), "0.1", "method dpo: the strength of the pull towards the reference (TRL's beta)", "(0,)"},
    {"classify.pool", ST_OPT_STRING, F(pool), "last", "method classify: pool the last token's state (last) or all tokens' (mean)", NULL},
    {"rl.group_size", ST_OPT_INT, F(rl.group_size), "0", "methods grpo, rloo, ppo: answers sampled per prompt (0: grpo 8, rloo 2, ppo 1); global_batch counts answers", "[0,)"},
    {"rl.max_new", ST_OPT_INT, F(rl.max_new), "64", "RL: answer tokens at most (and prompt + answer within seq_len)", "[1,)"},
    {"rl.temperature", ST_OPT_FLOAT, F(rl.temperature), "1", "RL: sampling temperature of the answers (log-probabilities are taken at 1: keep 1 for an unbiased gradient)", "(0,)"},
    {"rl.top_k", ST_OPT_INT, F(rl.top_k), "0", "RL: sample from the k most likely tokens (0 = all)", "[0,)"},
    {"rl.top_p", ST_OPT_FLOAT, F(rl.top_p), "1", "RL: nucleus sampling threshold (1 = off)", "(0,1]"},
    {"rl.gen_batch", ST_OPT_INT, F(rl.gen_batch), "0", "RL: answers decoded together on each rank (0 = all of its answers in the step, at most batch_size x seq_len); the key/value cache holds this many rows of max_seq", "[0,)"},
    {"rl.stop", ST_OPT_STRING, F(rl.stop), NULL, "RL: more tokens that end an answer, by their text (eos and the templates' end-of-turn tokens <|im_end|>, <|eot_id|>, <|end|>, <end_of_turn> always do)", NULL},
    {"rl.seed", ST_OPT_INT64, F(rl.seed), "0", "RL: sampling seed (0 = seed); answer j of prompt sample g draws from stream (seed, g, j)", NULL},
    {"rl.clip", ST_OPT_FLOAT, F(rl.clip), "0.2", "RL: the policy ratio is clipped to [1 - clip, 1 + clip]", "(0,1)"},
    {"rl.kl_coef", ST_OPT_FLOAT, F(rl.kl_coef), "-1", "RL: weight of the KL divergence to the frozen reference (the run's start): grpo a k3 term in the loss (default 0: no reference), rloo per answer in the reward (0.05), ppo per token in the reward (0.05); -1 = the method's default", "[-1,)"},
    {"rl.epochs", ST_OPT_INT, F(rl.epochs), "0", "RL: passes over each step's answers (0: grpo and rloo 1, ppo 4)", "[0,)"},
    {"rl.minibatches", ST_OPT_INT, F(rl.minibatches), "1", "RL: optimizer updates per pass (the step's answers split in this many parts)", "[1,)"},
    {"rl.scale_rewards", ST_OPT_BOOL, F(rl.scale_rewards), "true", "grpo: divide advantages by the group's reward std (false: Dr. GRPO)", NULL},
    {"rl.gamma", ST_OPT_FLOAT, F(rl.gamma), "1", "ppo: discount", "[0,1]"},
    {"rl.lambda", ST_OPT_FLOAT, F(rl.lambda), "0.95", "ppo: GAE lambda", "[0,1]"},
    {"rl.vf_coef", ST_OPT_FLOAT, F(rl.vf_coef), "0.1", "ppo: weight of the value loss", "[0,)"},
    {"rl.value_clip", ST_OPT_FLOAT, F(rl.value_clip), "0.2", "ppo: the value's clip range around its rollout value", "(0,)"},
    {"rl.value_from", ST_OPT_PATH, F(rl.value_from), NULL, "ppo: checkpoint the value model starts from (default: the reward model, else init_from)", NULL},
    {"rl.reward.model", ST_OPT_PATH, F(rl.reward.model), NULL, "RL: a reward model's checkpoint (method reward; LoRA merged) scoring prompt + answer", NULL},
    {"rl.reward.model_weight", ST_OPT_FLOAT, F(rl.reward.model_weight), "1", "RL: weight of the reward model's score", NULL},
    {"rl.reward.exact", ST_OPT_FLOAT, F(rl.reward.exact), "0", "RL: weight of a rule: the answer (trimmed) equals the reference answer", NULL},
    {"rl.reward.contains", ST_OPT_FLOAT, F(rl.reward.contains), "0", "RL: weight of a rule: the answer contains the reference answer (e.g. a label name)", NULL},
    {"rl.reward.regex", ST_OPT_STRING, F(rl.reward.regex), NULL, "RL: a rule: the answer matches this PCRE2 pattern ({reference} stands for the reference answer, quoted)", NULL},
    {"rl.reward.regex_weight", ST_OPT_FLOAT, F(rl.reward.regex_weight), "1", "RL: weight of the regex rule", NULL},
    {"rl.reward.length_penalty", ST_OPT_FLOAT, F(rl.reward.length_penalty), "0", "RL: minus this times answer tokens / rl.max_new", "[0,)"},
    {"rl.reward.missing_eos", ST_OPT_FLOAT, F(rl.reward.missing_eos), "0", "RL: minus this for an answer that did not end with a stop token", "[0,)"},
    {"lora.rank", ST_OPT_INT, F(lora.rank), "0", "LoRA adapters of this rank on a frozen base (0 = full fine-tuning)", "[0,)"},
    {"lora.alpha", ST_OPT_FLOAT, F(lora.alpha), "16", "LoRA scale numerator: adapters add (alpha/rank) B A x", "(0,)"},
    {"lora.dropout", ST_OPT_FLOAT, F(lora.dropout), "0", "dropout on the adapters' input", "[0,1)"},
    {"lora.targets", ST_OPT_STRING, F(lora_targets), "q,v", "projections with adapters: q,k,v,o,gate,up,down (or attn, mlp, all)", NULL},
    {"precision", ST_OPT_STRING, F(precision), "fp32", "matrix products: fp32, bf16 (bf16 inputs, fp32 accumulation; weights, gradients, optimizer state and checkpoints stay fp32) or auto (bf16 where this CPU's bf16 matmul is faster)", NULL},
    {"recompute", ST_OPT_BOOL, F(recompute), "false", "activation recomputation: keep only each layer's input, redo its forward in backward (memory of one layer instead of all, ~1/3 more compute)", NULL},
    {"freeze_layers", ST_OPT_INT, F(freeze_layers), "0", "keep the embeddings and the lowest N layers fixed (-1: the whole body)", "[-1,)"},
    {"early_stopping.patience", ST_OPT_INT, F(patience), "0", "stop after this many evaluations without a better validation loss (0 = off)", "[0,)"},
    /* optim.*: the defaults are st_optim_config_default's (model/optim.c), the one table of them */
    {"optim.lr", ST_OPT_FLOAT, F(opt.lr), NULL, "peak learning rate", "[0,)"},
    {"optim.schedule", ST_OPT_STRING, F(schedule), "cosine", "after warmup: cosine or linear decay to lr * min_lr_ratio at `steps`, or constant", NULL},
    {"optim.min_lr_ratio", ST_OPT_FLOAT, F(opt.min_lr_ratio), NULL, "where cosine and linear end, as a fraction of lr", "[0,1]"},
    {"optim.warmup_steps", ST_OPT_INT, F(opt.warmup_steps), NULL, "linear warmup steps", "[0,)"},
    {"optim.beta1", ST_OPT_FLOAT, F(opt.beta1), NULL, "AdamW beta1", "[0,1)"},
    {"optim.beta2", ST_OPT_FLOAT, F(opt.beta2), NULL, "AdamW beta2", "[0,1)"},
    {"optim.eps", ST_OPT_FLOAT, F(opt.eps), NULL, "AdamW epsilon", "(0,)"},
    {"optim.weight_decay", ST_OPT_FLOAT, F(opt.weight_decay), NULL, "decoupled weight decay (2-D weights only)", "[0,)"},
    {"optim.grad_clip", ST_OPT_FLOAT, F(opt.grad_clip), NULL, "global gradient-norm clip (0 = off)", "[0,)"},
    {"steps", ST_OPT_INT64, F(steps), "100", "optimizer steps (the schedule ends here)", "[0,)"},
    {"seed", ST_OPT_INT64, F(seed), "1234", "initialisation and data-order seed", NULL},
    {"grid.tp", ST_OPT_INT, F(tp), "1", "tensor-parallel ranks per model copy (dp = ranks / tp)", "[1,)"},
    {"grid.dp", ST_OPT_INT, F(dp), "0", "data-parallel copies; 0 = ranks / tp (when set, it must equal that)", "[0,)"},
    {"grid.zero", ST_OPT_BOOL, F(zero), "false", "ZeRO-1: shard AdamW state over dp ranks", NULL},
    {"out_dir", ST_OPT_PATH, F(out_dir), "runs/train", "run directory: metrics.jsonl, loss.png, ckpt/", NULL},
    {"resume", ST_OPT_STRING, F(resume), "none", "none, auto (latest good checkpoint in out_dir/ckpt) or a checkpoint path", NULL},
    {"stop_after", ST_OPT_INT64, F(stop_after), "0", "stop (with a checkpoint) after this step though the schedule runs to `steps` (0 = steps); for time-limited jobs that resume", "[0,)"},
    {"save_every", ST_OPT_INT, F(save_every), "0", "checkpoint every N steps (0 = by time only, see save_minutes)", "[0,)"},
    {"save_minutes", ST_OPT_FLOAT, F(save_minutes), "30", "also checkpoint when this many minutes have passed since the last checkpoint (0 = off)", "[0,)"},
    {"time_limit", ST_OPT_FLOAT, F(time_limit), "0", "minutes this run may take: it saves and stops (exit 75) while there is time left for a save; Slurm's SLURM_JOB_END_TIME counts too (0 = none)", "[0,)"},
    {"keep", ST_OPT_INT, F(keep), "3", "checkpoints to keep (0 = all)", "[0,)"},
    {"log_every", ST_OPT_INT, F(log_every), "1", "progress line every N steps", "[0,)"},
    {"eval_every", ST_OPT_INT, F(eval_every), "0", "validation loss every N steps (0 = only at the end)", "[0,)"},
    {"eval_batches", ST_OPT_INT, F(eval_batches), "4", "validation rows = eval_batches x batch_size, the same rows on any grid", "[0,)"},
    {"plot", ST_OPT_BOOL, F(plot), "true", "draw out_dir/loss.png with gnuplot at the end", NULL},
    {"on_nonfinite", ST_OPT_STRING, F(on_nonfinite), "stop", "a step whose loss or gradient norm is NaN or infinite is never applied; then stop (exit 1, checkpoints untouched) or skip it (and stop after 10 in a row)", NULL},
};
#undef F
#define N_TRAIN_OPTIONS ((int)(sizeof train_options / sizeof train_options[0]))

/* grad_ready hook: forward a finished layer's range to the dp reduction */
static st_err on_grad_ready(void *ctx, size_t lo, size_t hi)
{
    trainer *t = ctx;
    return st_dp_bucket_ready(&t->dp, t->model.grads, lo, hi);
}

static int is_rank0(const trainer *t) { return t->grid.world_rank == 0; }

static st_err mkdir_p(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) ST_FAIL(ST_ERR_IO, "cannot create '%s': %s", buf, strerror(errno));
            *p = '/';
        }
    if (mkdir(buf, 0755) && errno != EEXIST) ST_FAIL(ST_ERR_IO, "cannot create '%s': %s", buf, strerror(errno));
    return ST_OK;
}

/* ---- set-up --------------------------------------------------------------- */

static st_err resolve_config(trainer *t, st_config *cfg)
{
    const train_opts *o = t->o;
    if (o->init_from) {
        ST_TRY(st_ckpt_read_config(o->init_from, t->grid.world, cfg));
        return ST_OK;
    }
    *cfg = o->cfg;
    ST_TRY(st_family_parse(o->family, &cfg->family));
    if (!cfg->n_kv_head) cfg->n_kv_head = cfg->n_head;
    if (!cfg->d_ff) {
        if (cfg->family == ST_FAMILY_GPT2) cfg->d_ff = 4 * cfg->d_model;
        else cfg->d_ff = ((8 * cfg->d_model / 3) + 31) / 32 * 32;
    }
    if (!cfg->vocab_size) cfg->vocab_size = st_tokenizer_vocab_size(t->tok);
    if (!cfg->max_seq) cfg->max_seq = o->seq_len;
    if (cfg->family == ST_FAMILY_GPT2) cfg->tied_embeddings = 1;
    return ST_OK;
}

static st_err open_data(trainer *t)
{
    const train_opts *o = t->o;
    if (!o->data_train)
        ST_FAIL(ST_ERR_ARG, "no training data: set data.train in the recipe or --data.train FILE "
                "(make one with `shardtune prepare --input FILE --out dataset.h5`)");
    ST_TRY(st_dataset_open(&t->ds, o->data_train));
    ST_TRY(st_dataset_tokenizer(t->ds, &t->tok));
    st_sample_mode mode = ST_SAMPLE_STREAM;
    if (!strcmp(o->sampling, "docs")) mode = ST_SAMPLE_DOCS;
    else if (!strcmp(o->sampling, "stream")) mode = ST_SAMPLE_STREAM;
    else if (!strcmp(o->sampling, "auto")) mode = t->method->stream ? ST_SAMPLE_STREAM : ST_SAMPLE_DOCS;
    else ST_FAIL(ST_ERR_ARG, "data.sampling '%s': expected stream, docs or auto", o->sampling);
    ST_TRY(st_loader_create(&t->train, t->ds, mode, o->seq_len, (uint64_t)o->seed, 0));
    if (st_loader_num_samples(t->train) < 1)
        ST_FAIL(ST_ERR_ARG, "dataset '%s' has no training samples of %d tokens", o->data_train, o->seq_len);
    st_err e = st_loader_create(&t->val, t->ds, mode, o->seq_len, (uint64_t)o->seed, 1);
    if (e || st_loader_num_samples(t->val) < 1) {
        st_error_clear();
        if (t->val) st_loader_free(t->val);
        t->val = NULL;
    }
    ST_TRY(st_batch_alloc(&t->batch, o->batch_size, o->seq_len));
    return ST_OK;
}


/* {"rank":8,"alpha":16,"dropout":0,"targets":"q,v"}: how to rebuild the adapters */
static char *lora_meta(const st_lora *l, const st_lora_config *c)
{
    static const char *names[ST_T_COUNT] = {"q", "k", "v", "o", "gate", "up", "down"};
    char targets[64] = "", *out = malloc(256);
    unsigned mask = st_lora_targets(l);
    for (int i = 0; i < ST_T_COUNT; i++)
        if (mask & (1u << i)) snprintf(targets + strlen(targets), sizeof targets - strlen(targets), "%s%s",
                                       targets[0] ? "," : "", names[i]);
    if (out)
        snprintf(out, 256, "{\"rank\":%d,\"alpha\":%g,\"dropout\":%g,\"targets\":\"%s\"}", c->rank, c->alpha,
                 c->dropout, targets);
    return out;
}

/* What trains: the method's own parameters (a head), adapters, and which body
 * tensors (freeze_layers). */
static st_err setup_method(trainer *t)
{
    train_opts *o = t->o; /* completes the derived settings */
    st_model *m = &t->model;
    const st_layout *y = &m->lay;
    if (t->method->setup) ST_TRY(t->method->setup(t));
    if (o->lora.rank > 0) {
        if (o->freeze_layers)
            ST_FAIL(ST_ERR_ARG, "freeze_layers and lora.rank together: with LoRA the whole base is frozen already");
        ST_TRY(st_lora_parse_targets(o->lora_targets, &o->lora.targets));
        ST_TRY(st_lora_create(&t->lora, y, &o->lora, (int64_t)o->batch_size * o->seq_len, (uint64_t)o->seed));
        m->adapter = st_lora_adapter(t->lora);
        ST_TRY(st_trainer_add_set(t, "LoRA adapters", "lora", lora_meta(t->lora, &o->lora), st_lora_layout(t->lora),
                         st_lora_params(t->lora), st_lora_grads(t->lora)));
        ST_ALLOC(t->trainable, y->n_tensors, "trainable flags"); /* all zero: the base is frozen */
        st_model_set_trainable(m, t->trainable, 1);
        t->adam.trainable = t->trainable;
        t->body_trainable = 0;
        st_adamw_free(&t->adam); /* a frozen base needs no moments: 8 bytes per parameter saved */
        return ST_OK;
    }
    int fl = o->freeze_layers < 0 ? y->cfg.n_layer : o->freeze_layers;
    if (fl > y->cfg.n_layer)
        ST_FAIL(ST_ERR_ARG, "freeze_layers %d exceeds the model's %d layers", fl, y->cfg.n_layer);
    ST_ALLOC(t->trainable, y->n_tensors, "trainable flags");
    t->body_trainable = 0;
    for (int i = 0; i < y->n_tensors; i++) {
        const st_tensor *ts = &y->tensors[i];
        int frozen;
        if (ts->layer >= 0) frozen = ts->layer < fl;
        else if (ts->offset < y->layer_begin[0]) frozen = fl > 0;      /* embeddings, positions */
        else if (!strcmp(ts->name, "lm_head.weight")) frozen = t->has_head || fl == y->cfg.n_layer;
        else frozen = fl == y->cfg.n_layer;                            /* final norm */
        t->trainable[i] = !frozen;
        t->body_trainable |= t->trainable[i];
    }
    st_model_set_trainable(m, t->trainable, 0);
    t->adam.trainable = t->trainable;
    if (!t->body_trainable && !t->n_extra)
        ST_FAIL(ST_ERR_ARG, "nothing to train: freeze_layers freezes the whole model and no head or adapters are set");
    return ST_OK;
}

/* tp's all-reduces run at every layer: over the network they dominate. */
static st_err warn_tp_across_nodes(const trainer *t)
{
    int32_t nodes = 1;
    ST_TRY(st_grid_tp_nodes(&t->grid, &nodes));
    ST_TRY(st_allreduce(t->grid.world, &nodes, 1, ST_M_I32, ST_OP_MAX));
    if (nodes > 1 && is_rank0(t))
        printf("warning: a tensor-parallel group spans %d nodes, so its all-reduces at every layer cross the network; "
               "start the ranks so that grid.tp %d divides the ranks per node (Slurm: --ntasks-per-node a multiple "
               "of %d)\n", (int)nodes, t->grid.tp_size, t->grid.tp_size);
    return ST_OK;
}

static st_err setup(trainer *t, MPI_Comm world)
{
    train_opts *o = t->o; /* completes the derived settings */
    ST_TRY(st_grid_init(&t->grid, world, o->tp));
    if (o->dp && o->dp != t->grid.dp_size)
        ST_FAIL(ST_ERR_ARG, "grid.dp %d does not match %d ranks / tp %d = %d (start %d ranks, or leave grid.dp unset)",
                o->dp, t->grid.world_size, o->tp, t->grid.dp_size, o->dp * o->tp);
    int threads = st_threads_setup(world);
    if (!(t->method = st_method_find(o->method)))
        ST_FAIL(ST_ERR_ARG, "method '%s' is not available: choose %s", o->method, st_method_names());
    ST_TRY(st_agree(world, open_data(t)));
    st_config cfg;
    ST_TRY(st_agree(world, resolve_config(t, &cfg)));
    if (cfg.vocab_size < st_tokenizer_vocab_size(t->tok))
        ST_FAIL(ST_ERR_ARG, "model vocabulary %d is smaller than the dataset tokenizer's %d "
                "(prepare the data with the model's tokenizer)", cfg.vocab_size, st_tokenizer_vocab_size(t->tok));
    if (o->seq_len > cfg.max_seq)
        ST_FAIL(ST_ERR_ARG, "seq_len %d exceeds the model's max_seq %d", o->seq_len, cfg.max_seq);
    int per_rank_rows = o->global_batch ? o->global_batch / t->grid.dp_size : o->batch_size;
    if (o->global_batch && (o->global_batch % (t->grid.dp_size * o->batch_size)))
        ST_FAIL(ST_ERR_ARG, "global_batch %d is not a multiple of batch_size %d x dp %d",
                o->global_batch, o->batch_size, t->grid.dp_size);
    t->micro_per_step = per_rank_rows / o->batch_size;
    if (!o->global_batch) o->global_batch = o->batch_size * t->grid.dp_size;
    /* parameters stay zero until load_start knows where they come from */
    ST_TRY(st_model_create(&t->model, &cfg, t->grid.tp, o->batch_size, o->seq_len,
                           o->recompute ? ST_MODEL_TRAIN_RECOMPUTE : ST_MODEL_TRAIN));
    ST_TRY(st_dp_init(&t->dp, t->grid.dp, t->model.lay.numel, o->zero));
    st_dp_owned(&t->dp, &t->own_begin, &t->own_end);
    o->opt.total_steps = o->steps;
    ST_TRY(st_adamw_init(&t->adam, &t->model.lay, t->own_begin, t->own_end, &o->opt));
    ST_TRY(setup_method(t));
    ST_TRY(st_precision_agree(world, o->precision, 1024, &t->prec));
    t->peak_gflops = t->prec.bf16 ? t->prec.bf16_gflops : t->prec.fp32_gflops;
    snprintf(t->ckpt_dir, sizeof t->ckpt_dir, "%s/ckpt", o->out_dir);
    st_err e = ST_OK;
    if (is_rank0(t)) {
        e = mkdir_p(t->ckpt_dir);
        if (!e) e = st_run_lock(o->out_dir, &t->lock_fd);
        if (!e) e = st_metrics_open(&t->metrics, o->out_dir);
    }
    ST_TRY(st_agree(world, e));
    ST_TRY(warn_tp_across_nodes(t));
    if (is_rank0(t)) {
        long long n = st_config_num_params(&cfg);
        printf("shardtune train: %d ranks = tp %d x dp %d, %d thread%s per rank%s\n", t->grid.world_size,
               t->grid.tp_size, t->grid.dp_size, threads, threads > 1 ? "s" : "", o->zero ? ", ZeRO-1" : "");
        printf("model: %s, %d layers, d_model %d, %d heads (%d kv), d_ff %d, vocab %d: %.2fM parameters\n",
               st_family_name(cfg.family), cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.d_ff,
               cfg.vocab_size, n / 1e6);
        printf("data: %s, %lld training samples of %d tokens, %s; global batch %d rows (%d micro-batch%s of %d per rank)\n",
               o->data_train, (long long)st_loader_num_samples(t->train), o->seq_len, o->method, o->global_batch,
               t->micro_per_step, t->micro_per_step > 1 ? "es" : "", o->batch_size);
        printf("precision: %s (%s)\n", t->prec.bf16 ? "bf16" : "fp32", t->prec.why);
        printf("matmul ceiling: %.1f GFLOP/s per rank (measured, %s)\n", t->peak_gflops, t->prec.bf16 ? "bf16" : "fp32");
        fflush(stdout);
    }
    return ST_OK;
}

static st_ckpt_tensors ckpt_tensors(trainer *t)
{
    const train_opts *o = t->o;
    st_ckpt_tensors c = {
        .lay = &t->model.lay, .params = t->model.params, .m = t->adam.m, .v = t->adam.v,
        .opt_begin = t->own_begin, .opt_end = t->own_end, .adam_step = t->adam.step,
        .beta1 = o->opt.beta1, .beta2 = o->opt.beta2, .eps = o->opt.eps, .weight_decay = o->opt.weight_decay,
    };
    for (int e = 0; e < t->n_extra; e++)
        c.sets[c.n_sets++] = (st_ckpt_set){.group = t->extra[e].group, .lay = t->extra[e].lay,
                                           .params = t->extra[e].params, .m = t->extra[e].adam.m,
                                           .v = t->extra[e].adam.v, .adam_step = t->extra[e].adam.step,
                                           .meta = t->extra[e].meta};
    return c;
}


/* Resume from path: the model's weights, moments and sets, the step and the
 * data position. A checkpoint of another model is refused (*fatal: no older
 * checkpoint of the run would do either). */
static st_err load_resume(trainer *t, const char *path, int *fatal)
{
    st_config cfg;
    ST_TRY(st_ckpt_read_config(path, t->grid.world, &cfg));
    if (memcmp(&cfg, &t->model.lay.cfg, sizeof cfg)) {
        *fatal = 1;
        ST_FAIL(ST_ERR_ARG, "checkpoint '%s' holds a different model than this recipe describes "
                "(compare `shardtune inspect %s` with the recipe's model settings)", path, path);
    }
    st_ckpt_tensors c = ckpt_tensors(t);
    st_train_state s = {0};
    /* The file wants disjoint moment ranges over dp. Without ZeRO every dp
     * rank needs all moments: read a 1/dp slice each, then all-gather. */
    const int replicate = !t->dp.zero && t->grid.dp_size > 1 && t->adam.m;
    const size_t n = t->model.lay.numel, d = (size_t)t->grid.dp_size, r = (size_t)t->grid.dp_rank;
    if (replicate) {
        c.opt_begin = n * r / d;
        c.opt_end = n * (r + 1) / d;
        c.m = t->adam.m + c.opt_begin;
        c.v = t->adam.v + c.opt_begin;
    }
    for (int i = 0; i < c.n_sets; i++) c.sets[i].meta = NULL;
    ST_TRY(st_ckpt_load(path, &t->grid, &c, &s, NULL, 0, NULL, NULL, NULL));
    for (int i = 0; i < c.n_sets; i++) {
        t->extra[i].adam.step = c.sets[i].adam_step;
        free(c.sets[i].meta);
    }
    if (replicate) {
        int64_t *counts, *displs;
        ST_ALLOC(counts, 2 * d, "moment counts");
        displs = counts + d;
        for (size_t k = 0; k < d; k++) {
            displs[k] = (int64_t)(n * k / d);
            counts[k] = (int64_t)(n * (k + 1) / d) - displs[k];
        }
        st_err e = st_allgatherv(t->grid.dp, t->adam.m, counts, displs, ST_M_F32);
        if (!e) e = st_allgatherv(t->grid.dp, t->adam.v, counts, displs, ST_M_F32);
        free(counts);
        ST_TRY(e);
    }
    t->adam.step = c.adam_step;
    memcpy(t->rng, s.rng, sizeof t->rng); /* the method's random state goes on where it was */
    t->start_step = s.step;
    t->tokens_seen = s.tokens_seen;
    const int64_t planned = s.total_steps;
    st_train_state_free(&s);
    /* another `steps` would move every later step's learning rate */
    if (planned > 0 && planned != t->o->steps) {
        *fatal = 1;
        ST_FAIL(ST_ERR_ARG, "checkpoint '%s' belongs to a schedule of %lld steps; this run says steps %lld, which "
                "would change the learning rate of every remaining step. Resume with --steps %lld, or start a new "
                "schedule from its weights: --init_from %s --resume none", path, (long long)planned,
                (long long)t->o->steps, (long long)planned, path);
    }
    return ST_OK;
}

typedef struct {
    trainer *t;
    int tried; /* candidates offered: none means a run that has not saved yet */
} resume_search;

static st_err accept_resume(const char *path, void *ctx, int *fatal)
{
    resume_search *r = ctx;
    r->tried++;
    return load_resume(r->t, path, fatal);
}

/* Where the parameters come from: a checkpoint of this run (resume), another
 * model's weights (init_from, less init_skip), or the seed. Only what is not
 * loaded is drawn. */
static st_err load_start(trainer *t)
{
    const train_opts *o = t->o;
    char path[4096] = "";
    int resumed = 0, fatal = 0;
    const double t0 = st_now();
    if (!strcmp(o->resume, "auto")) {
        /* the newest checkpoint that loads: each candidate is read once, and
         * its load verifies every checksum it reads (a damaged one is skipped
         * with a warning; when every one is damaged the run stops rather than
         * start again from nothing) */
        resume_search r = {t, 0};
        st_err e = st_ckpt_find_latest_with(t->ckpt_dir, t->grid.world, path, sizeof path, accept_resume, &r);
        if (e && !r.tried) {
            st_error_clear();
            if (is_rank0(t)) printf("resume auto: no checkpoint in %s, starting fresh\n", t->ckpt_dir);
        } else if (e == ST_ERR_FORMAT) { /* every one damaged: never start over on top of them */
            char why[1500];
            snprintf(why, sizeof why, "%.*s", (int)strcspn(st_error_message(), "\n"), st_error_message());
            ST_FAIL(e, "%s. --resume auto does not start over (the next saves would prune them): move them away "
                    "to start fresh, or name a checkpoint with --resume PATH", why);
        } else {
            ST_TRY(e);
            resumed = 1;
        }
    } else if (strcmp(o->resume, "none")) {
        snprintf(path, sizeof path, "%s", o->resume);
        ST_TRY(load_resume(t, path, &fatal));
        resumed = 1;
    }
    t->resumed = resumed;
    if (resumed) {
        if (is_rank0(t)) printf("resumed from %s at step %lld\n", path, (long long)t->start_step);
    } else if (o->init_from) {
        ST_TRY(st_trainer_load_init(t, &t->model));
        if (is_rank0(t)) printf("initialised from %s\n", o->init_from);
    } else {
        st_model_init(&t->model, (uint64_t)o->seed); /* a new model */
    }
    if (is_rank0(t)) {
        const double took = st_now() - t0;
        if (resumed || o->init_from) {
            st_ckpt_tensors c = ckpt_tensors(t);
            if (!resumed) c.n_sets = 0; /* init_from reads the body's weights */
            double gb = st_ckpt_tensor_bytes(&c, resumed ? 0 : ST_CKPT_WEIGHTS_ONLY) / 1e9;
            printf("loaded %.2f GB in %.2f s (%.2f GB/s), %.2f s after start\n", gb, took, gb / took,
                   st_since_start());
        } else {
            printf("initialised %.1fM parameters from seed %lld in %.2f s, %.2f s after start\n",
                   st_config_num_params(&t->model.lay.cfg) / 1e6, (long long)o->seed, took, st_since_start());
        }
    }
    if (t->method->load_start) ST_TRY(t->method->load_start(t)); /* e.g. DPO's reference: the policy as it starts */
    const int64_t end = o->stop_after > 0 && o->stop_after < o->steps ? o->stop_after : o->steps;
    t->finished = resumed && o->steps > 0 && t->start_step >= end;
    if (t->finished && is_rank0(t))
        printf("this run has already finished: %s is step %lld and the run ends at step %lld; nothing to do (to "
               "train on, start a new schedule from it with --init_from %s --resume none)\n", path,
               (long long)t->start_step, (long long)end, path);
    /* metrics.jsonl: each step once, up to where this run starts */
    if (is_rank0(t) && !t->finished) ST_TRY(st_metrics_keep_upto(&t->metrics, t->start_step));
    return ST_OK;
}

/* Bytes of a checkpoint: the weights, and the AdamW moments of what trains. */
static double ckpt_bytes(const trainer *t)
{
    double n = (double)st_config_num_params(&t->model.lay.cfg) * (t->body_trainable ? 3 : 1);
    for (int e = 0; e < t->n_extra; e++) n += 3.0 * (double)t->extra[e].lay->numel * t->grid.tp_size;
    return n * sizeof(float);
}

/* A NaN or an infinity in this rank's weights (the model's, then the sets'),
 * so that no checkpoint ever holds one. Collective; agreed. */
static st_err check_finite(trainer *t, int64_t step)
{
    const st_tensor *bad = st_layout_first_nonfinite(&t->model.lay, t->model.params);
    for (int e = 0; !bad && e < t->n_extra; e++) bad = st_layout_first_nonfinite(t->extra[e].lay, t->extra[e].params);
    st_err err = ST_OK;
    if (bad)
        err = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "step %lld: tensor %s holds a NaN or an "
                           "infinity: not saved (the newest checkpoint in %s is untouched). Lower optim.lr",
                           (long long)step, bad->name, t->ckpt_dir);
    return st_agree(t->grid.world, err);
}

static st_err save(trainer *t, int64_t step)
{
    const train_opts *o = t->o;
    const double t0 = st_now();
    ST_TRY(check_finite(t, step));
    st_timer_start(&t->timers, ST_PH_CHECKPOINT);
    st_ckpt_tensors c = ckpt_tensors(t);
    /* without ZeRO every dp rank holds the same moments: dp rank 0 writes them */
    if (!t->dp.zero && t->grid.dp_rank > 0) c.opt_begin = c.opt_end = 0;
    st_train_state s = {.step = step, .tokens_seen = t->tokens_seen, .data_seed = (uint64_t)o->seed,
                        .total_steps = o->steps,
                        .data_cursor = step * o->global_batch, .recipe = (char *)t->recipe_text,
                        .method = o->method};
    memcpy(s.rng, t->rng, sizeof s.rng);
    const char *kind = NULL;
    uint8_t *blob = NULL;
    size_t n = 0;
    ST_TRY(st_tokenizer_to_blob(t->tok, &kind, &blob, &n));
    st_err e = st_ckpt_save(t->ckpt_dir, &t->grid, &c, &s, kind, blob, n, o->keep);
    free(blob);
    ST_TRY(e);
    st_timer_stop(&t->timers, ST_PH_CHECKPOINT);
    st_runctl_saved(&t->ctl, st_now() - t0);
    if (is_rank0(t)) printf("saved checkpoint %s/step_%08lld.h5\n", t->ckpt_dir, (long long)step);
    return ST_OK;
}

/* ---- the step --------------------------------------------------------------- */

/* One optimizer update: plan->micro micro-batches on each rank (forward,
 * backward, the dp reduction overlapped with the last backward), the mean
 * over what counted, the global-norm clip, AdamW. *loss = the update's mean
 * loss. A non-finite loss or gradient norm (the same on every rank: both are
 * reduced) leaves the weights and moments as they were and sets *skipped. */
static st_err update(trainer *t, int64_t step, int u, const st_step_plan *plan, double *loss_out, double *gnorm_out,
                     int *skipped)
{
    const train_opts *o = t->o;
    st_model *m = &t->model;
    const int B = o->batch_size, T = o->seq_len;
    const int64_t rows_per_rank = (int64_t)t->micro_per_step * B;
    double sums[3] = {0, 0, 0}; /* loss, count, correct */
    st_model_zero_grad(m);
    for (int e = 0; e < t->n_extra; e++) memset(t->extra[e].grads, 0, t->extra[e].lay->numel * sizeof(float));
    for (int k = 0; k < plan->micro; k++) {
        int64_t g0 = step * o->global_batch + t->grid.dp_rank * rows_per_rank + (int64_t)k * B;
        st_timer_start(&t->timers, ST_PH_DATA);
        if (t->method->fill) ST_TRY(t->method->fill(t, u, k, &g0));
        else ST_TRY(st_loader_fill(t->train, &t->batch, g0, B, o->shuffle));
        st_timer_stop(&t->timers, ST_PH_DATA);
        /* on the last micro-batch, finished layers start their dp reduction
         * while the backward pass goes on */
        if (k == plan->micro - 1 && t->body_trainable) {
            st_dp_begin(&t->dp);
            m->grad_ready = on_grad_ready;
            m->grad_ready_ctx = t;
        }
        double l, c, r;
        if (t->lora) { /* the dropout mask follows the global rows, so any grid draws the same */
            st_lora_set_step(t->lora, step, 1);
            st_lora_set_rows(t->lora, g0 * T);
        }
        st_timer_start(&t->timers, ST_PH_FORWARD);
        ST_TRY(t->method->forward(t, B, &l, &c, &r));
        st_timer_stop(&t->timers, ST_PH_FORWARD);
        sums[0] += l, sums[1] += c, sums[2] += r;
        st_timer_start(&t->timers, ST_PH_BACKWARD);
        st_err e = t->method->backward(t);
        m->grad_ready = NULL;
        ST_TRY(e);
        st_timer_stop(&t->timers, ST_PH_BACKWARD);
    }
    st_timer_start(&t->timers, ST_PH_GRAD_REDUCE);
    for (int e = 0; e < t->n_extra; e++) ST_TRY(st_dp_extra_ready(&t->dp, t->extra[e].grads, t->extra[e].lay->numel));
    ST_TRY(st_dp_finish(&t->dp, t->body_trainable ? m->grads : NULL));
    ST_TRY(st_allreduce(t->grid.dp, sums, 3, ST_M_F64, ST_OP_SUM));
    st_timer_stop(&t->timers, ST_PH_GRAD_REDUCE);
    if (sums[1] <= 0) ST_FAIL(ST_ERR_ARG, "step %lld has nothing that counts toward the loss", (long long)step);
    st_timer_start(&t->timers, ST_PH_OPTIMIZER);
    /* the mean over what counted in the whole global batch, then the global
     * norm: every tensor once per model copy */
    const float inv = (float)(1.0 / sums[1]);
    double sq[2] = {0, 0}; /* body (over owned slices), extras (replicated over dp) */
    if (t->body_trainable) {
        st_scale(m->grads, t->own_begin, t->own_end, inv);
        sq[0] = st_grad_sumsq(&m->lay, m->grads, t->own_begin, t->own_end, t->grid.tp_rank == 0);
    }
    for (int e = 0; e < t->n_extra; e++) {
        st_scale(t->extra[e].grads, 0, t->extra[e].lay->numel, inv);
        sq[1] += st_grad_sumsq(t->extra[e].lay, t->extra[e].grads, 0, t->extra[e].lay->numel, t->grid.tp_rank == 0);
    }
    if (t->dp.zero) ST_TRY(st_allreduce(t->grid.dp, &sq[0], 1, ST_M_F64, ST_OP_SUM));
    ST_TRY(st_allreduce(t->grid.tp, sq, 2, ST_M_F64, ST_OP_SUM));
    double gnorm = sqrt(sq[0] + sq[1]);
    *loss_out = sums[0] / sums[1];
    *gnorm_out = gnorm;
    *skipped = !isfinite(*loss_out) || !isfinite(gnorm);
    if (*skipped) {
        st_timer_stop(&t->timers, ST_PH_OPTIMIZER);
        return ST_OK;
    }
    float clip = o->opt.grad_clip > 0 && gnorm > o->opt.grad_clip ? (float)(o->opt.grad_clip / gnorm) : 1.0f;
    const float lr = st_lr_at(&o->opt, step);
    if (t->body_trainable) {
        if (clip != 1.0f) st_scale(m->grads, t->own_begin, t->own_end, clip);
        st_adamw_update(&t->adam, m->params, m->grads, lr);
        ST_TRY(st_dp_allgather_params(&t->dp, m->params));
        st_model_sync_bf16(m); /* the bf16 copy follows the fp32 master weights, once per step */
    }
    for (int e = 0; e < t->n_extra; e++) {
        if (clip != 1.0f) st_scale(t->extra[e].grads, 0, t->extra[e].lay->numel, clip);
        st_adamw_update(&t->extra[e].adam, t->extra[e].params, t->extra[e].grads, lr);
    }
    st_timer_stop(&t->timers, ST_PH_OPTIMIZER);
    return ST_OK;
}

/* One step: the method's rollout, if it has one (RL: generation and
 * rewards), then its updates. *loss, *gnorm: their mean; *ntok: the tokens
 * the updates trained on, over all ranks. An update that is not finite ends
 * the step there (*skipped; the earlier updates of a step of several stay
 * applied). */
static st_err train_step(trainer *t, int64_t step, double *loss_out, double *gnorm_out, int64_t *ntok_out,
                         int *skipped)
{
    const train_opts *o = t->o;
    st_step_plan plan = {1, t->micro_per_step, 0};
    if (t->method->rollout) ST_TRY(st_agree(t->grid.world, t->method->rollout(t, step, &plan)));
    double loss = 0, gnorm = 0;
    int done = 0;
    *skipped = 0;
    while (done < plan.updates && !*skipped) {
        double l = 0, g = 0;
        ST_TRY(update(t, step, done, &plan, &l, &g, skipped));
        loss += l, gnorm += g, done++;
    }
    *loss_out = loss / done;
    *gnorm_out = gnorm / done;
    *ntok_out = plan.tokens ? plan.tokens * done / plan.updates
                            : (int64_t)done * plan.micro * o->batch_size * t->grid.dp_size * o->seq_len;
    return ST_OK;
}

/* A step that was not applied: stop (on_nonfinite: stop, or the 10th in a
 * row) with an error, else say so and go on. Nothing is saved for it. */
#define MAX_NONFINITE_IN_A_ROW 10
static st_err on_nonfinite(trainer *t, int64_t step, double loss, double gnorm)
{
    const int stop = !strcmp(t->o->on_nonfinite, "stop");
    if (stop || ++t->nonfinite_run >= MAX_NONFINITE_IN_A_ROW)
        ST_FAIL(ST_ERR_ARG, "step %lld: non-finite loss (%g) or gradient norm (%g); the step was not applied and "
                "nothing was saved (%s); the newest checkpoint in %s is untouched. Lower optim.lr, raise "
                "optim.warmup_steps or check the data%s", (long long)step, loss, gnorm,
                stop ? "on_nonfinite: stop" : "10 such steps in a row", t->ckpt_dir,
                stop ? "; on_nonfinite: skip skips such steps" : "");
    if (is_rank0(t))
        printf("step %6lld: non-finite loss (%g) or gradient norm (%g): step skipped (on_nonfinite: skip)\n",
               (long long)step, loss, gnorm);
    return ST_OK;
}

/* Mean loss (and the method's metric) over the first eval_batches x
 * batch_size rows of the validation split, whatever the grid: the dp ranks
 * split those rows (whole pairs for pair methods), so the number compares
 * across node counts. A method with its own evaluation (RL: the greedy
 * answers' reward) gives its numbers instead. NAN: no evaluation. */
static st_err eval_loss(trainer *t, double *out, double *acc)
{
    const train_opts *o = t->o;
    *out = *acc = NAN;
    if (!t->val) return ST_OK;
    st_timer_start(&t->timers, ST_PH_EVAL);
    if (t->lora) st_lora_set_step(t->lora, 0, 0);
    if (t->method->evaluate) {
        ST_TRY(st_agree(t->grid.world, t->method->evaluate(t, out, acc)));
        st_timer_stop(&t->timers, ST_PH_EVAL);
        return ST_OK;
    }
    const int B = o->batch_size;
    const int64_t unit = t->method->pairs ? 2 : 1, dp = t->grid.dp_size, r = t->grid.dp_rank;
    int64_t n = st_loader_num_samples(t->val), want = (int64_t)o->eval_batches * B;
    const int64_t units = (want < n ? want : n) / unit;
    const int64_t lo = units * r / dp * unit, hi = units * (r + 1) / dp * unit;
    double sums[3] = {0, 0, 0};
    for (int64_t g0 = lo; g0 < hi; g0 += B) {
        int rows = hi - g0 < B ? (int)(hi - g0) : B;
        ST_TRY(st_loader_fill(t->val, &t->batch, g0, rows, 0));
        double l, c, r;
        ST_TRY(t->method->forward(t, rows, &l, &c, &r));
        sums[0] += l, sums[1] += c, sums[2] += r;
    }
    ST_TRY(st_allreduce(t->grid.dp, sums, 3, ST_M_F64, ST_OP_SUM));
    st_timer_stop(&t->timers, ST_PH_EVAL);
    if (sums[1] > 0) *out = sums[0] / sums[1];
    if (sums[1] > 0 && t->method->metric) *acc = sums[2] / sums[1];
    return ST_OK;
}

/* "loss 1.2345 (perplexity 3.44), accuracy 51.00%", or a method's own
 * evaluation: "reward 0.4100" */
static void fmt_eval(const trainer *t, char *buf, size_t n, double val, double acc)
{
    if (t->method->evaluate) {
        snprintf(buf, n, "%s %.4f", t->method->metric, acc);
        return;
    }
    int k = snprintf(buf, n, "loss %.4f", val);
    if (t->method->token_loss && k < (int)n) k += snprintf(buf + k, n - (size_t)k, " (perplexity %.2f)", exp(val));
    if (!isnan(acc) && k < (int)n) snprintf(buf + k, n - (size_t)k, ", %s %.2f%%", t->method->metric, 100 * acc);
}

static void print_eval(const trainer *t, const char *when, double val, double acc)
{
    if (!is_rank0(t) || isnan(val)) return;
    char buf[256];
    fmt_eval(t, buf, sizeof buf, val, acc);
    printf("validation %s: %s\n", when, buf);
    fflush(stdout);
}

/* Remember the best validation loss; rank 0 writes its step to ckpt/best. */
static st_err track_best(trainer *t, int64_t step, double val, int *improved)
{
    *improved = !isnan(val) && (isnan(t->best_val) || val < t->best_val);
    if (!*improved) {
        t->bad_evals++;
        return ST_OK;
    }
    t->best_val = val;
    t->bad_evals = 0;
    ST_TRY(save(t, step));
    if (is_rank0(t)) {
        char p[4200];
        snprintf(p, sizeof p, "%s/best", t->ckpt_dir);
        FILE *f = fopen(p, "w");
        if (!f) ST_FAIL(ST_ERR_IO, "cannot write '%s': %s", p, strerror(errno));
        fprintf(f, "step_%08lld.h5 %.6f\n", (long long)step, val);
        fclose(f);
    }
    return ST_OK;
}

static st_err run(trainer *t)
{
    const train_opts *o = t->o;
    const double flops_tok = st_config_flops_per_token(&t->model.lay.cfg, o->seq_len);
    double t_start = st_now(), t_window = t_start;
    int64_t tok_window = 0;
    double val0 = NAN, acc0 = NAN, val = NAN, acc = NAN;
    t->best_val = NAN;
    ST_TRY(eval_loss(t, &val0, &acc0));
    print_eval(t, t->start_step ? "at the resumed step" : "before training", val0, acc0);
    if (o->steps == 0) /* steps: 0 writes the starting point (base + fresh head or adapters) */
        return save(t, 0);
    if (is_rank0(t)) printf("first step begins %.2f s after start\n", st_since_start());
    for (int64_t step = t->start_step; step < o->steps; step++) {
        double loss = 0, gnorm = 0, t_step = st_now();
        int64_t ntok = 0;
        int skipped = 0;
        ST_TRY(train_step(t, step, &loss, &gnorm, &ntok, &skipped));
        st_runctl_step_took(&t->ctl, st_now() - t_step);
        if (skipped && is_rank0(t)) /* the line says what happened, even when the run stops here */
            st_metrics_step(&t->metrics, step + 1, loss, NAN, st_lr_at(&o->opt, step), gnorm, 0, 0, t->tokens_seen,
                            NULL, 0);
        if (skipped) { /* the weights are the previous step's: the schedule's end still saves them */
            ST_TRY(on_nonfinite(t, step + 1, loss, gnorm));
            t->tokens_seen += ntok;
            if (step + 1 == o->steps || step + 1 == o->stop_after) {
                ST_TRY(save(t, step + 1));
                break;
            }
            continue;
        }
        t->nonfinite_run = 0;
        st_stat stats[16]; /* the method's numbers for the step (before an evaluation reuses its buffers) */
        const int ns = t->method->stats ? t->method->stats(t, stats, 16) : 0;
        t->tokens_seen += ntok;
        tok_window += ntok;
        int last = step + 1 == o->steps || step + 1 == o->stop_after, saved = 0, evaluated = 0;
        double v = NAN, a = NAN;
        if ((o->eval_every > 0 && (step + 1) % o->eval_every == 0) || last) {
            ST_TRY(eval_loss(t, &v, &a));
            val = v, acc = a;
            evaluated = 1;
        }
        double now = st_now();
        double mfu_step = ntok * flops_tok / (now - t_step) / (t->peak_gflops * 1e9 * t->grid.world_size);
        if (is_rank0(t)) {
            st_metric_kv kv[16];
            for (int i = 0; i < ns; i++) kv[i] = (st_metric_kv){stats[i].key, stats[i].value};
            st_metrics_step(&t->metrics, step + 1, loss, v, st_lr_at(&o->opt, step), gnorm, ntok / (now - t_step),
                            mfu_step, t->tokens_seen, kv, ns);
        }
        /* after the step's metrics line: a save (the best so far) never precedes it */
        if (evaluated && o->eval_every > 0) {
            ST_TRY(track_best(t, step + 1, v, &saved));
            if (o->patience > 0 && t->bad_evals >= o->patience) {
                if (is_rank0(t)) printf("early stopping: no better validation loss in %d evaluations (best %.4f)\n",
                                        o->patience, t->best_val);
                last = 1;
            }
        }
        if ((o->log_every > 0 && (step + 1) % o->log_every == 0) || last || !isnan(v)) {
            double dt = now - t_window, tps = dt > 0 ? tok_window / dt : 0;
            double mfu = tps * flops_tok / (t->peak_gflops * 1e9 * t->grid.world_size);
            double per_step = (now - t_start) / (double)(step + 1 - t->start_step);
            char eta[32];
            st_format_eta(eta, sizeof eta, per_step * (double)(o->steps - step - 1));
            if (is_rank0(t)) {
                printf("step %6lld/%lld | loss %.4f", (long long)step + 1, (long long)o->steps, loss);
                if (!isnan(v) && t->method->evaluate) printf(" | val %s %.4f", t->method->metric, a);
                else if (!isnan(v)) printf(" | val %.4f", v);
                if (!isnan(a) && !t->method->evaluate) printf(" | acc %.1f%%", 100 * a);
                for (int i = 0; i < ns; i++)
                    if (stats[i].fmt) {
                        printf(" | ");
                        printf(stats[i].fmt, stats[i].value);
                    }
                printf(" | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %.1f%% | ETA %s\n", st_lr_at(&o->opt, step),
                       gnorm, tps, 100 * mfu, eta);
                fflush(stdout);
            }
            t_window = st_now();
            tok_window = 0;
        }
        /* a signal, the time limit or the checkpoint interval, agreed by every rank */
        st_run_action act;
        char why[128];
        ST_TRY(st_runctl_decide(&t->ctl, t->grid.world, &act, why, sizeof why));
        if (act == ST_RUN_STOP && !last && is_rank0(t))
            printf("stopping after step %lld on %s: saving a checkpoint; the same command with --resume auto "
                   "goes on (exit status %d)\n", (long long)step + 1, why, ST_EXIT_STOPPED);
        if (!saved && ((o->save_every > 0 && (step + 1) % o->save_every == 0) || last || act != ST_RUN_GO))
            ST_TRY(save(t, step + 1));
        if (last) break;
        if (act == ST_RUN_STOP) return ST_STOPPED;
    }
    if (is_rank0(t) && !isnan(val0) && !isnan(val)) {
        char before[256], after[256];
        fmt_eval(t, before, sizeof before, val0, acc0);
        fmt_eval(t, after, sizeof after, val, acc);
        printf("validation: before %s -> after %s", before, after);
        if (!isnan(t->best_val)) printf(" (best loss %.4f)", t->best_val);
        printf("\n");
    }
    return ST_OK;
}

static void teardown(trainer *t)
{
    st_runctl_end(&t->ctl);
    st_run_unlock(&t->lock_fd);
    st_metrics_close(&t->metrics);
    for (int e = 0; e < t->n_extra; e++) {
        st_adamw_free(&t->extra[e].adam);
        free(t->extra[e].meta);
    }
    if (t->method && t->method->free) t->method->free(t);
    if (t->has_head) st_cls_free(&t->head);
    if (t->lora) st_lora_free(t->lora);
    free(t->trainable);
    st_adamw_free(&t->adam);
    st_dp_free(&t->dp);
    st_model_free(&t->model);
    st_batch_free(&t->batch);
    if (t->train) st_loader_free(t->train);
    if (t->val) st_loader_free(t->val);
    if (t->ds) st_dataset_close(t->ds);
    if (t->tok) st_tokenizer_free(t->tok);
    st_grid_free(&t->grid);
}

/* The schedule's name into opt. */
static st_err parse_schedule(const char *name, st_optim_config *opt)
{
    if (!strcmp(name, "cosine")) opt->schedule = ST_SCHED_COSINE;
    else if (!strcmp(name, "linear")) opt->schedule = ST_SCHED_LINEAR;
    else if (!strcmp(name, "constant")) opt->schedule = ST_SCHED_CONSTANT;
    else ST_FAIL(ST_ERR_ARG, "optim.schedule '%s': expected cosine, linear or constant", name);
    return ST_OK;
}

st_err st_cmd_train(int argc, char **argv, MPI_Comm world)
{
    int help = 0, npos = 0;
    char *pos[1];
    const int rank = st_comm_rank(world);
    train_opts ov;
    memset(&ov, 0, sizeof ov);
    st_optim_config_default(&ov.opt);
    const train_opts *o = &ov;
    st_options opts;
    ST_TRY(st_options_init(&opts, train_options, N_TRAIN_OPTIONS, &ov));
    st_err e = st_options_parse(&opts, argc, argv, &help, pos, 0, &npos);
    e = st_agree(world, e); /* a recipe one rank alone could not read */
    if (!e) e = st_options_same_everywhere(&opts, world, argc, argv);
    if (!e && help) {
        if (!rank) {
            printf("usage: mpirun -np N shardtune train [RECIPE.yaml] [--set key=value | --key value ...]\n\n"
                   "Trains a model on a dataset made by `shardtune prepare`, by one of the methods\n"
                   "%s (--method). Settings come from the recipe, then the command line;\n"
                   "unknown keys are errors.\n\n", st_method_names());
            st_options_print_help(&opts, stdout);
        }
        st_options_free(&opts);
        return ST_OK;
    }
    if (!e) e = parse_schedule(ov.schedule, &ov.opt);
    if (!e && strcmp(ov.on_nonfinite, "stop") && strcmp(ov.on_nonfinite, "skip"))
        e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "on_nonfinite '%s': expected stop or skip",
                         ov.on_nonfinite);
    trainer t;
    memset(&t, 0, sizeof t);
    t.lock_fd = -1;
    t.o = &ov;
    t.recipe_text = opts.recipe_text;
    /* from here a stop signal is a request, not the end of the process */
    if (!e) e = st_runctl_start(&t.ctl, ov.time_limit, ov.save_minutes);
    if (!e) e = setup(&t, world);
    if (!e) st_runctl_expect_save(&t.ctl, ckpt_bytes(&t));
    if (!e) e = st_agree(world, load_start(&t));
    if (!e) e = st_agree(world, st_model_set_precision(&t.model, t.prec.bf16)); /* after the loads */
    if (!e && !rank) { /* what this run used, and where each value came from */
        char path[4200];
        snprintf(path, sizeof path, "%s/settings.txt", o->out_dir);
        FILE *f = fopen(path, "w");
        if (f) {
            st_options_print(&opts, f);
            fclose(f);
            printf("settings (with where each came from): %s\n", path);
        }
        fflush(stdout);
    }
    double t0 = st_now();
    st_comm_reset();
    if (!e && t.finished) {
        teardown(&t);
        st_options_free(&opts);
        return ST_OK;
    }
    if (!e) e = run(&t);
    /* the largest rank's peak resident memory: what `shardtune plan` predicts */
    struct rusage ru;
    double peak = 0;
    const int report = !e || e == ST_STOPPED; /* a stopped run reports too */
    if (report && !getrusage(RUSAGE_SELF, &ru)) peak = ru.ru_maxrss * 1024.0;
    if (report) {
        st_err pe = st_allreduce(world, &peak, 1, ST_M_F64, ST_OP_MAX);
        if (pe) e = pe;
    }
    if ((!e || e == ST_STOPPED) && !rank) {
        printf("\n");
        printf("peak resident memory: %.3f GB on the largest rank\n", peak / 1e9);
        st_timers_print(&t.timers, st_now() - t0, stdout);
        printf("inside forward+backward: tp collectives %.3f s (%llu calls, %.1f MB); "
               "dp gradient wait %.3f s (%.1f MB reduced)\n",
               st_comm.tp_seconds, (unsigned long long)st_comm.tp_calls, st_comm.tp_bytes / 1e6,
               st_comm.dp_wait_seconds, st_comm.dp_bytes / 1e6);
        if (o->plot) {
            char png[4200];
            snprintf(png, sizeof png, "%s/loss.png", o->out_dir);
            st_metrics_close(&t.metrics);
            if (st_metrics_plot(t.metrics.path, png, "shardtune: loss") == ST_OK)
                printf("loss curve: %s\n", png);
            else
                fprintf(stderr, "shardtune: warning: %s\n", st_error_message());
            st_error_clear();
        }
    }
    teardown(&t);
    st_options_free(&opts);
    if (e && e != ST_STOPPED) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}
