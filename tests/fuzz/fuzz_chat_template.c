/* fuzz_chat_template.c: libFuzzer harness for the Jinja chat template
 * interpreter (io/jinja*.c) and the tokens and mask of each of its rules
 * (io/chat/chat_template.c); not part of make check. Run with `make fuzz`.
 *
 * The first input byte picks a mode:
 *   0  the rest is a template, rendered over a few conversations
 *   1  the rest is spliced into a real template at a position from the next
 *      bytes (the fuzzer starts from structure that parses)
 *   2  the rest is message content (turns split at 0x00) through real
 *      templates, tokens and mask included
 *   3  the rest is a template, through tokens and mask
 * Whatever the input, every failure must be an error code (never a crash, a
 * leak or an internal error); a rendering that works must decode back from
 * its tokens exactly, with the mask inside it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/chat/chat_template.h"
#include "io/chat/jinja.h"
#include "io/jsonl.h"
#include "io/tok/tokenizer.h"

static const char *const real[] = {
    /* SmolLM2-135M-Instruct */
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    /* Meta-Llama-3-8B-Instruct */
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    /* Llama-2-7b-chat-hf */
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}"
    "{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    /* zephyr-7b-beta */
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    /* macros (defaults, recursion, caller), strftime_now, a generation block and, like Qwen3,
     * earlier turns rendered unlike their prefix */
    "{%- macro q(s, n=2, tail=s[-1:]) -%}{% if n > 0 %}{{ q(s ~ tail, n - 1) }}{% else %}{{ s }}{% endif %}"
    "{%- endmacro -%}{%- macro box(x) -%}[{{ caller(x | length) }}]{%- endmacro -%}{{ strftime_now('%Y %b') }}"
    "{%- for m in messages -%}{% call(k) box(m.content) %}{{ m.role }}{{ k }}{% endcall %}"
    "{%- if m.role == 'assistant' and not loop.last %}{{ m.content.split('.')[-1] }}<e>"
    "{%- elif m.role == 'assistant' %}{% generation %}{{ q(m.content) }}<e>{% endgeneration %}"
    "{%- else %}{{ m.content }}{% endif %}{%- endfor %}{% if add_generation_prompt %}<a>{% endif %}",
    /* a bit of everything */
    "{%- set ns = namespace(n=0, sys='') -%}{%- for m in messages if m.role != 'x' -%}{%- if m.role == 'system' -%}"
    "{%- set ns.sys = m.content | trim -%}{%- continue -%}{%- endif -%}{%- set ns.n = ns.n + 1 -%}"
    "{{ ('<' ~ m['role'] | upper ~ '>' ~ loop.index) }}{{ m.content.split()[:3] | join(' ') | tojson }}"
    "{{ m.content[::-1][1:] if m.content is string else '' }}{% if loop.last %}{{ eos_token }}{% endif %}"
    "{%- endfor -%}{{ ns.sys.replace('a', 'b') ~ ns.n }}{% if add_generation_prompt %}>{% endif %}",
};
#define N_REAL ((int)(sizeof real / sizeof real[0]))

static void check(st_err e)
{
    if (e == ST_OK || e == ST_ERR_FORMAT || e == ST_ERR_MEM || e == ST_ERR_ARG) return;
    fprintf(stderr, "unexpected error %d: %s\n", e, st_error_message());
    abort();
}

/* Tokens must spell the rendering; the mask must be 0/1 and resp_start inside. */
static void tokens(const st_chat_template *ct, const st_tokenizer *tok, const st_turn *t, int n)
{
    st_tokseq s = {0};
    st_err e = st_chat_template_render(&s, ct, tok, t, n);
    check(e);
    if (!e) {
        int last = -1;
        for (int i = 0; i < n; i++)
            if (t[i].role == ST_ROLE_ASSISTANT) last = i;
        st_jinja_text text = {0};
        char *back = NULL;
        size_t len = 0;
        if (st_chat_template_apply(ct, t, last + 1, 0, &text) || st_tokenizer_decode(tok, s.ids, s.n, &back, &len) ||
            len != text.n || (len && memcmp(back, text.s, len)) || s.resp_start > s.n) {
            fprintf(stderr, "tokens do not spell the rendering\n");
            abort();
        }
        for (size_t i = 0; i < s.n; i++)
            if (s.mask[i] > 1) abort();
        free(back);
        st_jinja_text_free(&text);
    }
    st_tokseq_free(&s);
}

static void exercise(const char *src, const st_tokenizer *tok, int with_tokens)
{
    static const st_turn convs[][4] = {
        {{ST_ROLE_USER, "Hi", 2}, {ST_ROLE_ASSISTANT, " Hello! ", 8}},
        {{ST_ROLE_SYSTEM, "Be brief.", 9}, {ST_ROLE_USER, "a <|im_end|> b", 14}, {ST_ROLE_ASSISTANT, "yes", 3},
         {ST_ROLE_USER, "\xc3\xa9", 2}},
        {{ST_ROLE_USER, "", 0}, {ST_ROLE_ASSISTANT, "x", 1}, {ST_ROLE_USER, "q", 1}, {ST_ROLE_ASSISTANT, "y", 1}},
    };
    static const int lens[] = {2, 4, 4};
    st_chat_template *ct = NULL;
    st_err e = st_chat_template_new(&ct, src, "<s>", "</s>");
    check(e);
    if (e) return;
    for (int c = 0; c < 3; c++) {
        if (with_tokens) {
            tokens(ct, tok, convs[c], lens[c]);
            continue;
        }
        for (int gen = 0; gen < 2; gen++) {
            st_jinja_text out = {0};
            e = st_chat_template_apply(ct, convs[c], lens[c], gen, &out);
            check(e);
            if (!e && out.n && (out.s[out.n] != '\0' || !out.content)) abort();
            st_jinja_text_free(&out);
        }
    }
    st_chat_template_free(ct);
}

/* Turns from data split at 0x00: a system turn when the first byte is odd,
 * then user and assistant alternating. */
static void content_mode(const uint8_t *data, size_t size, const st_tokenizer *tok)
{
    st_turn t[16];
    int n = 0;
    size_t bad;
    char why[64];
    if (!size) return;
    int sys = data[0] & 1;
    data++, size--;
    for (size_t a = 0; a <= size && n < 16;) {
        const uint8_t *z = memchr(data + a, 0, size - a);
        size_t b = z ? (size_t)(z - data) : size;
        if (!st_utf8_valid((const char *)data + a, b - a, &bad, why, sizeof why)) return; /* prepare refuses it */
        st_role role = n == 0 && sys ? ST_ROLE_SYSTEM : (n - sys) % 2 ? ST_ROLE_ASSISTANT : ST_ROLE_USER;
        t[n++] = (st_turn){role, (const char *)data + a, b - a};
        a = b + 1;
        if (!z) break;
    }
    for (int k = 0; k < N_REAL; k++) {
        st_chat_template *ct = NULL;
        if (st_chat_template_new(&ct, real[k], "<s>", "</s>")) abort();
        tokens(ct, tok, t, n);
        st_chat_template_free(ct);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static st_tokenizer *tok;
    if (!tok && st_tokenizer_load(&tok, "byte")) abort();
    if (size < 1 || size > 20000) return 0;
    int mode = data[0] % 4;
    data++, size--;
    if (mode == 2) {
        content_mode(data, size, tok);
        st_error_clear();
        return 0;
    }
    char *src;
    if (mode == 1) { /* splice the input into a real template */
        if (size < 2) return 0;
        const char *r = real[data[0] % N_REAL];
        size_t rl = strlen(r), at = ((size_t)data[1] * 256 + data[0]) % (rl + 1);
        data += 2, size -= 2;
        src = malloc(rl + size + 1);
        memcpy(src, r, at);
        memcpy(src + at, data, size);
        memcpy(src + at + size, r + at, rl - at + 1);
    } else {
        src = malloc(size + 1);
        memcpy(src, data, size);
        src[size] = '\0';
    }
    exercise(src, tok, mode == 3);
    free(src);
    st_error_clear();
    return 0;
}
