/* chat_template.h: a model's own Jinja chat template (tokenizer_config.json
 * "chat_template") turned into one token sequence and its loss mask.
 *
 * The template is rendered as transformers' apply_chat_template does
 * (io/chat/jinja.h) with the variables messages (a list of {role, content}),
 * add_generation_prompt, bos_token / eos_token (the tokenizer's texts;
 * undefined when it has none), and tools and documents, None as
 * transformers passes them when a call gives none.
 *
 * Loss mask: 1 on the text each assistant message k is to learn in the full
 * rendering R = render(messages) (up to the last assistant message), by
 * the first rule that applies:
 *   1. generation blocks: when the template has {% generation %} blocks,
 *      the text written inside them (transformers' return_assistant_tokens_mask,
 *      which TRL's assistant_only_loss uses);
 *   2. the prefix method (TRL, torchtune): the span
 *      [len(render(messages[:k], add_generation_prompt=True)),
 *       len(render(messages[:k+1])))
 *      when both renderings are prefixes of R;
 *   3. the turn as R renders it, for templates that are not prefix-stable
 *      (Qwen3 drops earlier turns' reasoning, gpt-oss ends the last turn
 *      with <|return|>, the first Llama 3 template always appends an
 *      assistant header): from the same start, which must be a prefix of R,
 *      to the end of what the template's for loop over the messages wrote
 *      for message k in R.
 *   The last turn ends with R, except that text the template writes after
 *   its message loop also when prompting for another reply (that Llama 3
 *   header) is not learned. A conversation none of these locate is refused
 *   (ST_ERR_FORMAT naming the message).
 *
 * Special tokens: message content is encoded with special tokens NOT
 * allowed, so user text can never forge "<|im_end|>"; the template's own
 * text may hold special tokens. The rendering is cut into pieces where the
 * mask changes and around each special token of the template's text; the
 * text between special tokens (template and content alike) is encoded as
 * one piece, as Hugging Face tokenizers split at special tokens first.
 *
 * bos: only what the template writes (Llama 2 and 3 templates write
 * bos_token), as transformers' apply_chat_template(tokenize=True) encodes the
 * rendering with add_special_tokens=False; a leading one counts as the
 * sequence's bos (has_bos: truncation keeps it).
 */
#ifndef ST_CHAT_TEMPLATE_H
#define ST_CHAT_TEMPLATE_H

#include <cjson/cJSON.h>

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

/* Render with the variables transformers gives a template (bos_token and
 * eos_token when known, tools = documents = None) and vars, which may
 * replace them (messages, add_generation_prompt, tools, anything else);
 * rep as st_jinja_render_report's, or NULL. */
st_err st_chat_template_render_vars(const st_chat_template *ct, const st_jinja_var *vars, int n_vars,
                                    st_jinja_text *out, st_jinja_report *rep);

/* A JSON value as a template value (strings marked as content when content
 * is set; numbers without a fraction become integers, as cJSON does not
 * tell 1 from 1.0). Nested at most 64 deep. */
st_err st_chat_template_json(const cJSON *j, int content, st_jv **out);

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
