/* decode.h: the decoding engine: KV-cached batched generation of up to B
 * rows at once, under `generate`, `eval --generate` and the rollouts of the
 * RL methods (src/cmd/rl.c).
 *
 *   prefill   each row's prompt through the model into its stretch of the
 *             cache, in chunks (rows of any lengths); a row whose prompt is
 *             the previous row's (the same pointer and length: the samples
 *             of one prompt) copies that row's cache instead
 *   step      every row's next token from the logits of its last position,
 *             all rows in one forward of one position each
 *
 * Randomness is counter-based: the draw for a row's t-th new token is
 * st_hash_uniform(row key, t). A row's answer therefore depends only on its
 * prompt, its key and the weights: not on which rows decode with it, nor on
 * the grid (tp ranks gather the same logits and draw the same token; dp ranks
 * decode different rows), nor on where a run was resumed (no state to save
 * beyond the keys' seed).
 *
 * An answer ends with a stop token (eos, a template's end of turn), which is
 * kept as its last token, or when it reaches max_new tokens or the row's room
 * (max_len - prompt length).
 */
#ifndef ST_DECODE_H
#define ST_DECODE_H

#include <stdint.h>

#include "model/model.h"
#include "model/sample.h"

typedef struct {
    st_sampling s;          /* temperature 0: greedy */
    int max_new;            /* answer tokens at most */
    int max_len;            /* prompt + answer tokens at most (0: the model's max_seq) */
    const int32_t *stop;    /* tokens that end an answer */
    int n_stop;
    int chunk;              /* prompt tokens per prefill pass (0: the model's T) */
    /* optional: called (on every tp rank) with the logits (V, before
     * temperature, top-k and top-p) that row's t-th answer token is about to
     * be drawn from; for files such as generate --logits */
    void (*on_logits)(void *ctx, int row, int t, const float *logits, int V);
    void *ctx;
} st_decode_opts;

typedef struct {
    const int32_t *prompt;  /* (plen) token ids */
    int plen;
    uint64_t key;           /* the row's random stream */
    int32_t *out;           /* room for max_new tokens: the answer */
    int len;                /* out: answer tokens */
    int stopped;            /* out: the answer ends with a stop token */
} st_decode_row;

typedef struct {
    st_model *m;            /* any model (inference or training); its activations are reused */
    int B;                  /* rows at most: up to the model's B x T (a step is one token per row) */
    st_kvcache cache;
    float *local, *full;    /* (B, Vl) this rank's logits, (B, Vl * tp) gathered */
    int *scratch;           /* (Vl * tp) */
    int32_t *next;          /* (B) */
    int *limit, *done;      /* (B) */
    /* statistics since init */
    int64_t tokens;         /* answer tokens decoded ... */
    double seconds;         /* ... and the time it took */
    int64_t prompt_tokens;  /* prompt tokens run through the model (a shared prefill counts once) ... */
    double prompt_seconds;  /* ... and the time up to each batch's first tokens drawn (part of seconds) */
    double first_token;     /* st_since_start() when the first tokens were drawn (-1: not yet) */
} st_decoder;

st_err st_decoder_init(st_decoder *d, st_model *m, int B);
void st_decoder_free(st_decoder *d);

/* Decode rows[0 .. nb) (nb <= d->B) together; collective over the model's tp
 * communicator (every tp rank passes the same rows). A prompt that leaves no
 * room for one answer token is an error naming the row. */
st_err st_decode(st_decoder *d, st_decode_row *rows, int nb, const st_decode_opts *o);

#endif
