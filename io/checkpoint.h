/* checkpoint.h: one HDF5 file per save, a global view of the model.
 *
 * Layout (plain HDF5: h5ls -r / h5dump read it):
 *   /              attrs format="shardtune", version=1, step, tokens_seen,
 *                  created (ISO 8601 UTC), git (SHARDTUNE_GIT_REV or "unknown")
 *   /config        attrs family, n_layer, d_model, n_head, n_kv_head, d_ff,
 *                  vocab_size, max_seq, norm_eps, rope_theta, tied_embeddings, qkv_bias
 *   /tokenizer     attr kind; dataset blob (uint8, the tokenizer file whole)
 *   /train         attrs rng (uint64[4]), data_epoch, data_cursor, data_seed,
 *                  steps (the schedule's length; absent in older files),
 *                  method; dataset recipe (string: recipes outgrow attributes)
 *   /model/<name>  float32 at the GLOBAL shape, names from the tensor table
 *   /optim         attrs step, beta1, beta2, eps, weight_decay
 *   /optim/m/<name>, /optim/v/<name>   AdamW moments, float32, global shapes
 *                  (/optim has its attrs when these are there)
 * Extra parameter sets beside the model (a classification head, LoRA
 * adapters), each with its own tensor table:
 *   /              attr sets = "head,lora" (the set groups; absent = none)
 *   /<group>       attrs n_tensors, meta (JSON text, optional);
 *                  /<group>/<name> float32 at the tensor's global shape
 *   /optim/<group> attr step (the set's AdamW step), when it has moments:
 *   /optim/<group>/m/<name>, /optim/<group>/v/<name>
 * Every tensor (model, moments, sets) carries a uint64 attribute "checksum":
 *   sum over elements i (global row-major index) of
 *   splitmix64(bits(x_i) XOR splitmix64(i))   (mod 2^64)
 * A sum of per-element terms, so each rank checksums only its slice and one
 * MPI_Allreduce combines them; no rank ever holds a whole tensor.
 *
 * Saving is atomic: everything goes to PATH.tmp through collective MPI-IO
 * (rank 0 first reserves the tensors' bytes with posix_fallocate, so a full
 * file system fails before anything is written, with its reason);
 * after every rank has closed it, rank 0 fsyncs, renames to PATH and fsyncs
 * the directory. A crash or error at any point leaves an existing PATH as it
 * was. Every function here is collective over the communicator it is given
 * and returns the same status on every rank.
 *
 * Test hooks (environment, read by st_ckpt_save_file on every rank):
 *   SHARDTUNE_CKPT_TEST_PAUSE_MS=N   sleep N ms after the first tensor is
 *                                    written (to kill a job mid-save), or at
 *   SHARDTUNE_CKPT_TEST_PAUSE_AT=P   phase P of the save: tensor (the
 *                                    default), checksums (every tensor
 *                                    written, no checksum yet), closed (the
 *                                    .tmp whole, not renamed), renamed (not
 *                                    yet in latest), latest (latest.tmp
 *                                    written, not renamed), prune (latest
 *                                    renamed, old files not yet removed);
 *                                    rank 0 says "test hook: pausing" on
 *                                    stderr
 *   SHARDTUNE_CKPT_TEST_FAIL_AFTER=N world rank 0 fails after writing N
 *                                    parameter tensors (fault injection)
 */
#ifndef ST_CHECKPOINT_H
#define ST_CHECKPOINT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/config.h"
#include "core/err.h"
#include "core/params.h"
#include "io/formats/model_source.h"
#include "mpi/grid.h"

#define ST_CKPT_FORMAT "shardtune"
#define ST_CKPT_VERSION 1

typedef struct {
    int64_t step, tokens_seen;
    uint64_t rng[4];                 /* trainer RNG state */
    int64_t data_epoch, data_cursor;
    uint64_t data_seed;
    int64_t total_steps;             /* the schedule's length (0 = not recorded) */
    char *recipe;                    /* recipe text (NULL = none); malloc'd on load */
    char *method;                    /* "pretrain", "sft", ... (NULL = none); malloc'd on load */
} st_train_state;

/* An extra parameter set stored beside the model (a classification head,
 * LoRA adapters). Its tensors are sliced over tp as its own layout says (the
 * model's split kinds; no vocabulary padding) and replicated over dp: every
 * dp group holds the whole set and its moments (never ZeRO-sliced), and the
 * dp rank 0 group writes them. */
#define ST_CKPT_MAX_SETS 4
#define ST_CKPT_MAX_SET_NAME 31      /* group names: [A-Za-z0-9_-]; not model, optim, config,
                                        tokenizer or train */
#define ST_CKPT_MAX_META ((size_t)60 << 10) /* meta is an attribute: HDF5 keeps those under 64 KiB */

typedef struct {
    const char *group;               /* "head", "lora": stored as /<group>/<tensor name> */
    const st_layout *lay;            /* the set's tensor table (this rank's tp slice) */
    float *params;                   /* lay->numel floats */
    float *m, *v;                    /* moments of the whole set (lay->numel each), NULL = none */
    int64_t adam_step;               /* attr step on /optim/<group> */
    char *meta;                      /* JSON text, attr meta on /<group> (NULL = none; world
                                        rank 0's is written). On load: pass NULL; receives a
                                        malloc'd copy (NULL when the file has none): free it */
} st_ckpt_set;

typedef struct {
    const st_layout *lay;            /* this rank's layout (its tp slice) */
    float *params;                   /* lay->numel floats */
    float *m, *v;                    /* AdamW moments of the flat range [opt_begin, opt_end)
                                        of this rank's buffer (ZeRO-1 slice over dp), indexed
                                        from opt_begin; NULL = no optimizer state */
    size_t opt_begin, opt_end;
    int64_t adam_step;               /* attrs on /optim */
    float beta1, beta2, eps, weight_decay;
    int n_sets;                      /* extra parameter sets (0 = none) */
    st_ckpt_set sets[ST_CKPT_MAX_SETS];
} st_ckpt_tensors;

/* ST_CKPT_WEIGHTS_ONLY: no moments (model or sets) and no AdamW attributes
 * are read. ST_CKPT_SETS_OPTIONAL: a requested set the file lacks is left
 * as it is (meta NULL) instead of failing the load. */
enum { ST_CKPT_WEIGHTS_ONLY = 1, ST_CKPT_SETS_OPTIONAL = 2 };

/* Write path atomically (see above). Collective over g->world. Each rank
 * writes only its slice: parameters from the dp_rank 0 group (replicated
 * tensors from tp rank 0 only), moments from every rank's [opt_begin,
 * opt_end) range (replicated tensors from tp rank 0), sets' parameters and
 * moments from the dp_rank 0 group like the model's parameters. Train state,
 * tokenizer, optimizer attributes and the sets' adam_step and meta are taken
 * from world rank 0 (other ranks may pass NULL s / tok_kind / meta); the set
 * groups and layouts must be the same on every rank. On error PATH.tmp is
 * removed and PATH is untouched. */
st_err st_ckpt_save_file(const char *path, const st_grid *g, const st_ckpt_tensors *t,
                         const st_train_state *s, const char *tok_kind,
                         const uint8_t *tok_blob, size_t tok_n);

/* Write path atomically from a model file of another tool (model_source.h):
 * the weights at the source's 1x1 layout and the tokenizer (kind and blob
 * from comm rank 0; NULL = none), no optimizer or training state; the same
 * file layout as st_ckpt_save_file. Collective over comm; every rank has
 * opened the same source. The source's units are dealt to the ranks by size
 * (largest first, to the least loaded rank); each rank reads only its units
 * and writes each tensor whole with independent MPI-IO, so a rank holds one
 * unit at a time and never the model. On error PATH.tmp is removed and PATH
 * is untouched. */
st_err st_ckpt_save_source(const char *path, MPI_Comm comm, st_model_source *src, const char *tok_kind,
                           const uint8_t *tok_blob, size_t tok_n);

/* DIR/step_%08lld.h5 via st_ckpt_save_file (creating DIR if missing), then
 * rank 0 points DIR/latest at it (latest.tmp + rename) and removes the oldest
 * step_*.h5 beyond keep (keep <= 0: keep all) and stale step_*.h5.tmp files.
 * A failed save removes nothing. */
st_err st_ckpt_save(const char *dir, const st_grid *g, const st_ckpt_tensors *t,
                    const st_train_state *s, const char *tok_kind, const uint8_t *tok_blob,
                    size_t tok_n, int keep);

/* Read /config (rank 0 reads, then broadcasts over comm); checks the format
 * and version attributes and validates the config. */
st_err st_ckpt_read_config(const char *path, MPI_Comm comm, st_config *cfg);

/* Load into t->lay, a layout for ANY grid (the file stores global tensors).
 * Collective over g->world. Every rank reads its tp slice of every parameter
 * and, when t->m != NULL and not ST_CKPT_WEIGHTS_ONLY, its [opt_begin,
 * opt_end) slice of both moments plus the /optim attributes (a file without
 * /optim is then an error). skip: NULL-terminated names, or prefixes ending
 * in '*', left as they are (e.g. a new head); the same list on every rank;
 * a name that matches no tensor of t->lay is an error. Checks format, version, every
 * expected tensor's presence and global shape, and every loaded tensor's
 * checksum; errors name the file and the tensor. On error the buffers may be
 * partly overwritten. s (may be NULL) is overwritten: free its strings first.
 * tok_kind / tok_blob / tok_n (each may be NULL) receive malloc'd copies of
 * the tokenizer, NULL when the file has none.
 * Sets: for each t->sets[i] (group, lay, params given; the same sets on
 * every rank) every rank reads its tp slice of the parameters and, when m
 * and v are given and not ST_CKPT_WEIGHTS_ONLY, of both moments plus
 * adam_step (a set without /optim/<group> is then an error); meta receives a
 * malloc'd copy or NULL. A requested set the file lacks fails the load
 * naming the file and the group, unless ST_CKPT_SETS_OPTIONAL. Sets in the
 * file that were not requested are ignored. On error every sets[i].meta is
 * NULL. skip applies to the model only. */
st_err st_ckpt_load(const char *path, const st_grid *g, st_ckpt_tensors *t, st_train_state *s,
                    const char *const *skip, int flags, char **tok_kind, uint8_t **tok_blob,
                    size_t *tok_n);

/* Bytes of the file's tensors a st_ckpt_load of t with flags reads, all
 * ranks together (global shapes, float32): the model's weights, their
 * moments when t->m is given and not ST_CKPT_WEIGHTS_ONLY, and the sets
 * likewise. For start-up lines ("loaded N GB in S s"). */
int64_t st_ckpt_tensor_bytes(const st_ckpt_tensors *t, int flags);

/* Is name on the skip list of st_ckpt_load (a name, or a prefix ending in '*')? */
int st_ckpt_skipped(const char *name, const char *const *skip);

/* Does path hold parameter set `group`, and its meta? Rank 0 reads, every
 * rank of comm receives the same answer: *present 0/1, *meta a malloc'd copy
 * of the meta text (NULL when absent; free it). For callers that need a
 * set's shape (number of classes, LoRA rank) before they build it. */
st_err st_ckpt_read_set_meta(const char *path, MPI_Comm comm, const char *group, char **meta, int *present);

/* A checkpoint's weights whole on this rank (a 1x1 view over MPI_COMM_SELF),
 * for tools that work on one rank (convert, export, tests): its config, the
 * tp-1 layout (release with st_layout_free), a malloc'd parameter buffer, and
 * the tokenizer (the out-pointers may be NULL; see st_ckpt_load). */
st_err st_ckpt_load_whole(const char *path, st_config *cfg, st_layout *lay, float **params, char **tok_kind,
                          uint8_t **tok_blob, size_t *tok_n);

/* The tokenizer a checkpoint stores, read by this rank alone without the
 * weights: malloc'd kind and blob, *kind NULL when the file has none. */
st_err st_ckpt_read_tokenizer(const char *path, char **kind, uint8_t **blob, size_t *n);

/* The newest complete checkpoint in dir: DIR/latest first, then step_*.h5 by
 * descending step. Each candidate is verified (format, the header's
 * checksum, shapes, every checksum of the model, its moments and every set
 * named by the root attribute "sets"; the reading is spread over comm); a bad
 * one is skipped with a warning on rank 0's stderr naming the file and the
 * reason. Fails with ST_ERR_IO when dir holds no checkpoint at all, with
 * ST_ERR_FORMAT naming them when none verifies. Collective. */
st_err st_ckpt_find_latest(const char *dir, MPI_Comm comm, char *path_out, size_t cap);

/* The same search with another test of a candidate: accept(path, ctx,
 * &fatal), collective over comm with the same status on every rank, ST_OK
 * takes path; an error skips it with the same warning, unless it sets
 * *fatal, which ends the search with that error. A resume passes its own
 * load (the file is then read once: the load verifies every tensor it
 * reads); its buffers may hold a skipped candidate's pieces until a later
 * candidate's load overwrites them. */
typedef st_err (*st_ckpt_accept_fn)(const char *path, void *ctx, int *fatal);
st_err st_ckpt_find_latest_with(const char *dir, MPI_Comm comm, char *path_out, size_t cap,
                                st_ckpt_accept_fn accept, void *ctx);

/* Human-readable summary to out on comm rank 0: format, config, step,
 * tokens, parameter count, the sets (tensors, parameters, optimizer step,
 * meta), every tensor's shape and size and whether its checksum verifies. Collective over comm (MPI_COMM_SELF runs it on one
 * rank). Returns ST_ERR_FORMAT when any tensor is missing or damaged. */
st_err st_ckpt_inspect(const char *path, MPI_Comm comm, FILE *out);

/* Checksum terms of n consecutive elements whose global row-major indices
 * start at first (see the layout comment). */
uint64_t st_ckpt_checksum_run(const float *x, size_t n, uint64_t first);

void st_train_state_free(st_train_state *s);

#endif
