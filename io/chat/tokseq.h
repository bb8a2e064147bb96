/* tokseq.h: what every template renders between: a conversation's turns in,
 * one token sequence with its loss mask out; and the max-length policy. */
#ifndef ST_TOKSEQ_H
#define ST_TOKSEQ_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/tok/tokenizer.h"

typedef enum { ST_ROLE_SYSTEM = 0, ST_ROLE_USER = 1, ST_ROLE_ASSISTANT = 2 } st_role;

typedef struct {
    st_role role;
    const char *text;   /* UTF-8, len bytes */
    size_t len;
} st_turn;

/* A token sequence with its mask, growable. */
typedef struct {
    int32_t *ids;        /* (n) */
    uint8_t *mask;       /* (n) 1 where the loss counts */
    size_t n, cap;
    size_t resp_start;   /* first token of the last response (== n when none) */
    int has_bos;         /* ids[0] is a bos that truncation keeps */
    int32_t *tmp;        /* encode scratch */
    size_t tmp_n, tmp_cap;
} st_tokseq;

void st_tokseq_clear(st_tokseq *s);
void st_tokseq_free(st_tokseq *s);
st_err st_tokseq_push_id(st_tokseq *s, int32_t id, uint8_t mask);
/* Encode text and append it with the same mask value on every token. */
st_err st_tokseq_push_text(st_tokseq *s, const st_tokenizer *tok, const char *text, size_t len,
                           int allow_special, uint8_t mask);

/* The max-length policy: the prompt (tokens before resp_start) is cut from
 * the left so that prompt + max(response, reserve) fits max_len (a leading
 * bos is kept); when the response alone is longer than max_len, the prompt
 * goes and the response's end is cut. reserve lets two sequences sharing a
 * prompt (a preference pair) keep the same prompt tokens; pass 0 otherwise.
 * Sets *cut_prompt, *cut_response to 1 when that part was shortened. */
void st_tokseq_fit(st_tokseq *s, size_t max_len, size_t reserve, int *cut_prompt,
                   int *cut_response);

#endif
