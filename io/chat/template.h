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
 *             is 1 on each assistant message as the whole conversation renders
 *             it (its generation blocks, else the prefix method, else the
 *             template's loop over the messages; the template's end of turn
 *             included), and content is still encoded without special tokens.
 *             See io/chat/chat_template.h.
 *
 * When the tokenizer's own rule puts bos first (st_tokenizer_adds_bos:
 * add_bos_token, sentencepiece vocabularies), every sequence of a built-in
 * template starts with it (mask 0). A Jinja template gets only the bos it
 * writes itself (io/chat/chat_template.h).
 */
#ifndef ST_TEMPLATE_H
#define ST_TEMPLATE_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "io/chat/tokseq.h"
#include "io/tok/tokenizer.h"

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

/* s = bos? + the turns through the template. Turns after the last assistant
 * turn carry no loss and are left out. */
st_err st_template_render(st_tokseq *s, const st_template *tpl, const st_tokenizer *tok,
                          const st_turn *turns, int n_turns);

/* The template called name for tok: a built-in one, or "tokenizer" (the
 * tokenizer's own, parsed into *ct, which the caller frees, and described by
 * *own). *out points at the built-in table or at own. tok_name names the
 * tokenizer in the error when it has no template. */
st_err st_template_resolve(const char *name, const st_tokenizer *tok, const char *tok_name, st_template *own,
                           struct st_chat_template **ct, const st_template **out);

#endif
