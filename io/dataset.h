/* dataset.h: the tokenized dataset file (dataset.h5), its writer, reader and
 * the batch loader the trainer draws from.
 *
 * Layout (every array 1-D, docs in source order):
 *   /tokens        int32  (n_tokens)    all documents concatenated
 *   /loss_mask     uint8  (n_tokens)    1 where the LM loss counts
 *   /offsets       int64  (n_docs+1)    doc i is tokens[offsets[i] .. offsets[i+1])
 *   /split         uint8  (n_docs)      0 train, 1 validation (seeded hash of the source line)
 *   /labels        int32  (n_docs)      classify only: index into /label_names
 *   /label_names   fixed-length strings (n_labels), classify only
 *   /pairs/chosen, /pairs/rejected  int64 (n_pairs)  pref only: doc indices;
 *                  pair i is docs 2i (chosen) and 2i+1 (rejected), same prompt
 *   /tokenizer     uint8 blob, attr kind: the tokenizer itself (self-contained)
 *   attrs on /:    format "shardtune-dataset", version, kind
 *                  (text|sft|chat|pref|classify), tokenizer_hash, tokenizer_kind,
 *                  vocab_size, template, source, created, n_records, n_docs,
 *                  n_tokens, n_skipped, n_truncated_prompt, n_truncated_response,
 *                  max_len, val_fraction, seed, n_labels
 *
 * Per kind: text docs are the text + eos, mask 1 everywhere; sft/chat/pref
 * docs come from a template (io/chat/template.h), mask 1 on responses (+ eos);
 * classify docs are the text alone, mask 0 (the loss is on /labels).
 *
 * The writer is collective (parallel HDF5, MPI-IO): each rank passes its
 * contiguous run of documents and the file is the same for any rank count.
 * It writes PATH.tmp and renames it only when every rank succeeded.
 * The reader is per rank (serial driver) and reads token ranges on demand.
 */
#ifndef ST_DATASET_H
#define ST_DATASET_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/chat/template.h"
#include "io/tok/tokenizer.h"

/* ---- writing ------------------------------------------------------------- */

/* One rank's documents, growable. */
typedef struct {
    int32_t *tokens;          /* (n_tokens) */
    uint8_t *mask;            /* (n_tokens) */
    size_t n_tokens, cap_tokens;
    int64_t *doc_len;         /* (n_docs) */
    uint8_t *split;           /* (n_docs) */
    int32_t *label;           /* (n_docs) */
    size_t n_docs, cap_docs;
} st_docs;

/* Append seq as one document. */
st_err st_docs_add(st_docs *d, const st_tokseq *seq, uint8_t split, int32_t label);
void st_docs_free(st_docs *d);

/* What the file says about itself; counts are totals over all ranks. */
typedef struct {
    const char *kind;              /* text | sft | chat | pref | classify */
    const char *template_name;     /* "" when no template was used */
    const char *source;            /* the input file */
    int64_t n_records, n_skipped, n_truncated_prompt, n_truncated_response;
    int max_len;
    float val_fraction;
    uint64_t seed;
    int n_labels;                  /* classify: names in label order */
    char *const *label_names;
} st_dataset_info;

/* Collective over comm: every rank passes the same tok and info and its own
 * docs (ranks in source order). For kind "pref" each rank's docs come in
 * (chosen, rejected) pairs. Fails on every rank alike; leaves no file. */
st_err st_dataset_write(const char *path, MPI_Comm comm, const st_tokenizer *tok,
                        const st_dataset_info *info, const st_docs *local);

/* ---- reading ------------------------------------------------------------- */

typedef struct st_dataset st_dataset;

/* Per-rank read-only open; validates the layout (sizes, offsets monotone and
 * inside /tokens, splits, labels and pair indices in range). */
st_err st_dataset_open(st_dataset **out, const char *path);
void st_dataset_close(st_dataset *ds);

int64_t st_dataset_num_docs(const st_dataset *ds);
int64_t st_dataset_num_tokens(const st_dataset *ds);
int64_t st_dataset_num_pairs(const st_dataset *ds);
const char *st_dataset_kind(const st_dataset *ds);
const char *st_dataset_path(const st_dataset *ds);
uint64_t st_dataset_tokenizer_hash(const st_dataset *ds);
int st_dataset_vocab_size(const st_dataset *ds);
int st_dataset_num_labels(const st_dataset *ds);
const char *st_dataset_label_name(const st_dataset *ds, int i);
/* Rebuild the stored tokenizer (checks it against tokenizer_hash). */
st_err st_dataset_tokenizer(const st_dataset *ds, st_tokenizer **out);

/* Doc i: its length, split (0/1) and label (-1 when unlabelled). */
int64_t st_dataset_doc_len(const st_dataset *ds, int64_t i);
int st_dataset_doc_split(const st_dataset *ds, int64_t i);
int st_dataset_doc_label(const st_dataset *ds, int64_t i);
/* Pair i's doc indices. */
void st_dataset_pair(const st_dataset *ds, int64_t i, int64_t *chosen, int64_t *rejected);
/* Read doc i whole: *tokens (n) and *mask (n), malloc'd (for tools and tests). */
st_err st_dataset_read_doc(const st_dataset *ds, int64_t i, int32_t **tokens, uint8_t **mask,
                           size_t *n);

/* ---- batches ------------------------------------------------------------- */

typedef struct {
    int B, T;
    int32_t *tokens;    /* (B,T) */
    int32_t *targets;   /* (B,T) */
    float *mask;        /* (B,T) 1 where the loss on targets counts */
    int32_t *labels;    /* (B) classify label, else -1 */
    int32_t *lengths;   /* (B) valid input tokens in the row */
    int32_t *n_targets; /* (B) positions with a real next token: lengths, or one fewer when the row
                           holds a whole doc shorter than T+1 (its last token has no target) */
} st_batch;

st_err st_batch_alloc(st_batch *b, int B, int T);
void st_batch_free(st_batch *b);
/* Pretraining: the loss counts every real next token of rows [0, rows)
 * (mask 1 where position t < n_targets[row]), whatever the file's mask. A
 * full row of T inputs from a longer stream or doc has T targets. */
void st_batch_mask_all(st_batch *b, int rows);

typedef enum { ST_SAMPLE_STREAM = 0, ST_SAMPLE_DOCS = 1 } st_sample_mode;

/* STREAM: the split's docs concatenated, cut into windows of T+1 tokens with
 *   stride T; tokens = window[0..T), targets = window[1..T], mask = loss_mask
 *   at the target; lengths = T.
 * DOCS: one doc per row: tokens = doc[0..min(len,T)), targets[t] = doc[t+1],
 *   mask[t] = loss_mask[t+1]; padding has token 0, target 0, mask 0; a doc
 *   longer than T+1 is cut (counted in st_loader_num_truncated);
 *   lengths = min(len, T). For kind "pref" the unit of shuffling is the pair:
 *   sample 2k is the chosen doc and 2k+1 the rejected doc of the k-th pair,
 *   so batches that start at an even sample with an even count hold whole
 *   pairs in adjacent rows.
 *
 * Global sample g is position g % n of epoch g / n (n = samples per epoch);
 * epochs are ordered by a permutation seeded by (seed, epoch), so a resumed
 * run at sample g sees what an uninterrupted run would, and any dp layout
 * splitting the same global indices sees the same data. */
typedef struct st_loader st_loader;

/* split: -1 all docs, 0 train, 1 validation. Fails when the selection is
 * empty (or, for STREAM, shorter than T+1 tokens). */
st_err st_loader_create(st_loader **out, st_dataset *ds, st_sample_mode mode, int T, uint64_t seed,
                        int split);
int64_t st_loader_num_samples(const st_loader *l);
/* Rows [0,count) of b = global samples g0 .. g0+count-1; shuffle = 0 keeps
 * file order (evaluation). No allocation. */
st_err st_loader_fill(st_loader *l, st_batch *b, int64_t g0, int count, int shuffle);
/* DOCS rows cut to T+1 tokens so far. */
int64_t st_loader_num_truncated(const st_loader *l);
void st_loader_free(st_loader *l);

#endif
