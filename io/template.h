/* template.h: how a conversation becomes one token sequence and its loss mask.
 *
 * A template gives each role a pattern with one "{content}" slot. Literal
 * text in a pattern is encoded with special tokens allowed (so "<|im_end|>"
 * becomes the tokenizer's special token when it has one); "<eos>" stands for
 * the tokenizer's end-of-sequence id whatever its text. The content itself is
 * encoded with special tokens NOT allowed: user text can never forge them.
 *
 * The loss mask is 1 exactly on what the model must learn to write: in an
 * assistant pattern, the content and everything after the slot (the eos);
 * everywhere else 0. Every assistant turn of a chat is a response.
 *
 *   default   system    "<|system|>\n{content}\n"
 *             user      "<|user|>\n{content}\n"
 *             assistant "<|assistant|>\n{content}<eos>"
 *             so sft is "<|user|>\n{prompt}\n<|assistant|>\n{response}<eos>"
 *   plain     every role "{content}", assistant "{content}<eos>"
 *             so sft is "{prompt}{response}<eos>" (for text that carries its
 *             own turn markers, e.g. hh-rlhf's "\n\nHuman: ... \n\nAssistant:")
 *   chatml    "<|im_start|>ROLE\n{content}<|im_end|>\n" (Qwen2, SmolLM);
 *             assistant "<|im_start|>assistant\n{content}<|im_end|>\n"
 *   tokenizer the model's own Jinja chat template (tokenizer_config.json
 *             "chat_template"), rendered as transformers renders it; the mask
 *             is 1 on each assistant message's span as the prefix method finds
 *             it (its content and the template's end of turn), and content is
 *             still encoded without special tokens. See io/chat_template.h.
 *
 * When the tokenizer has a distinct bos (bos >= 0 and bos != eos, e.g.
 * Llama), every sequence starts with it (mask 0), once: a Jinja template
 * that writes bos_token itself gets no second one.
 */
#ifndef ST_TEMPLATE_H
#define ST_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tokenizer.h"

typedef enum { ST_ROLE_SYSTEM = 0, ST_ROLE_USER = 1, ST_ROLE_ASSISTANT = 2 } st_role;

typedef struct {
    st_role role;
    const char *text;   /* UTF-8, len bytes */
    size_t len;
} st_turn;

struct st_chat_template;

typedef struct {
    const char *name;
    const char *pattern[3];   /* by st_role, each with one "{content}" */
    const struct st_chat_template *jinja;   /* set: a Jinja template, patterns unused */
} st_template;

/* The built-in template called name, or NULL ("tokenizer" is made by the
 * caller from the tokenizer's template, with jinja set). */
const st_template *st_template_find(const char *name);
/* "default, plain, chatml" for messages. */
const char *st_template_names(void);

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

/* s = bos? + the turns through the template. Turns after the last assistant
 * turn carry no loss and are left out. */
st_err st_template_render(st_tokseq *s, const st_template *tpl, const st_tokenizer *tok,
                          const st_turn *turns, int n_turns);

/* The max-length policy: the prompt (tokens before resp_start) is cut from
 * the left so that prompt + max(response, reserve) fits max_len (a leading
 * bos is kept); when the response alone is longer than max_len, the prompt
 * goes and the response's end is cut. reserve lets two sequences sharing a
 * prompt (a preference pair) keep the same prompt tokens; pass 0 otherwise.
 * Sets *cut_prompt, *cut_response to 1 when that part was shortened. */
void st_tokseq_fit(st_tokseq *s, size_t max_len, size_t reserve, int *cut_prompt,
                   int *cut_response);

#endif
