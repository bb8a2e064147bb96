/* chat_template.h: a model's own Jinja chat template (tokenizer_config.json
 * "chat_template") turned into one token sequence and its loss mask.
 *
 * The template is rendered as transformers' apply_chat_template does
 * (io/chat/jinja.h) with the variables messages (a list of {role, content}),
 * add_generation_prompt, and bos_token / eos_token (the tokenizer's texts;
 * undefined when it has none).
 *
 * Loss mask, by the prefix method TRL and torchtune use: for each assistant
 * message k, its response in the full rendering R = render(messages) is
 *     [len(render(messages[:k], add_generation_prompt=True)),
 *      len(render(messages[:k+1], add_generation_prompt=False)))
 * and R must start with both renderings (else the template is not
 * prefix-stable and is refused). The mask is 1 on the tokens of those spans.
 *
 * Special tokens: message content is encoded with special tokens NOT
 * allowed, so user text can never forge "<|im_end|>"; the template's own
 * text may hold special tokens. The rendering is cut into pieces where the
 * mask changes and around each special token of the template's text; the
 * text between special tokens (template and content alike) is encoded as
 * one piece, as Hugging Face tokenizers split at special tokens first.
 *
 * bos: when the tokenizer has a distinct bos (bos >= 0, bos != eos) and the
 * rendering does not contain bos_token itself (Llama 3 and Llama 2 templates
 * write it), the sequence starts with bos, as with the built-in templates.
 */
#ifndef ST_CHAT_TEMPLATE_H
#define ST_CHAT_TEMPLATE_H

#include "core/err.h"
#include "io/chat/jinja.h"
#include "io/chat/tokseq.h"
#include "io/tok/tokenizer.h"

typedef struct st_chat_template st_chat_template;

/* Parse source (NUL-terminated). bos_token, eos_token: the tokenizer's texts,
 * NULL when it has none. Errors name the template line and end with the
 * --template choices. */
st_err st_chat_template_new(st_chat_template **out, const char *source, const char *bos_token,
                            const char *eos_token);
/* The tokenizer's own template; ST_ERR_ARG when it carries none. */
st_err st_chat_template_from_tokenizer(st_chat_template **out, const st_tokenizer *tok);
void st_chat_template_free(st_chat_template *ct);

/* The text of turns through the template, with each byte's provenance
 * (apply_chat_template(..., tokenize=False)). */
st_err st_chat_template_apply(const st_chat_template *ct, const st_turn *turns, int n_turns,
                              int add_generation_prompt, st_jinja_text *out);

/* s = the tokens of turns through the template and the mask above. Turns
 * after the last assistant turn are left out; resp_start is the first token
 * of the last response. Errors from the template or the conversation:
 * ST_ERR_FORMAT; out of memory: ST_ERR_MEM. */
st_err st_chat_template_render(st_tokseq *s, const st_chat_template *ct, const st_tokenizer *tok,
                               const st_turn *turns, int n_turns);

#endif
