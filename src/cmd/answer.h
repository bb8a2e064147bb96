/* answer.h: an answer's text as the rules and exact match compare it: its
 * tokens decoded, white space trimmed at both ends (eval --generate, the RL
 * rewards). */
#ifndef ST_ANSWER_H
#define ST_ANSWER_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/tok/tokenizer.h"

/* ids (n) decoded and trimmed: *text malloc'd. */
st_err st_answer_text(const st_tokenizer *tok, const int32_t *ids, size_t n, char **text);
/* s trimmed in place. */
void st_trim(char *s);

#endif
