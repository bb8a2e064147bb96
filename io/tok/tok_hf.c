/* tok_hf.c: Hugging Face tokenizer.json with a BPE model, and the optional
 * tokenizer_config.json beside it for bos/eos, their rule and the chat
 * template. Two families:
 *   byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen2/3, Falcon): a ByteLevel
 *     pre-tokenizer; symbols start from bytes;
 *   sentencepiece-style BPE (Llama 2, Mistral, TinyLlama, Phi-3, Gemma): no
 *     ByteLevel; ' ' becomes U+2581 by the normalizer or a Metaspace
 *     pre-tokenizer; symbols are characters, an absent one falls back to its
 *     bytes' <0xNN> tokens (byte_fallback) or to unk.
 * Supported: model.type BPE (merges as "a b" strings or [a, b] arrays,
 * ignore_merges, byte_fallback, unk_token, fuse_unk), added_tokens (special,
 * lstrip, rstrip, single_word), normalizers (tok_norm.c), pre_tokenizer
 * ByteLevel, Metaspace (first), Split (Isolated, MergedWithPrevious), Digits,
 * Punctuation, in a Sequence; steps after ByteLevel see its characters.
 * Anything else is refused with a message naming it.
 */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

static const cJSON *get(const cJSON *o, const char *key) { return cJSON_GetObjectItemCaseSensitive(o, key); }

static const char *type_of(const cJSON *o)
{
    const cJSON *ty = get(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : NULL;
}

/* ---- model ---- */

static st_err check_model(st_tokenizer *t, const cJSON *model, const char *name)
{
    if (!cJSON_IsObject(model)) ST_FAIL(ST_ERR_FORMAT, "%s: no \"model\" object", name);
    const char *ty = type_of(model);
    if (ty && strcmp(ty, "BPE") != 0)
        ST_FAIL(ST_ERR_FORMAT, "%s: model.type is \"%.40s\"; only byte-level BPE is supported (use llama2c: for "
                "sentencepiece models)", name, ty);
    static const char *const affix[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *a = get(model, affix[i]);
        if (cJSON_IsString(a) && a->valuestring[0])
            ST_FAIL(ST_ERR_FORMAT, "%s: model.%s is set; only byte-level BPE without affixes is supported", name,
                    affix[i]);
    }
    t->byte_fallback = cJSON_IsTrue(get(model, "byte_fallback"));
    t->fuse_unk = cJSON_IsTrue(get(model, "fuse_unk"));
    t->ignore_merges = cJSON_IsTrue(get(model, "ignore_merges"));
    return ST_OK;
}

static st_err add_merges(st_tokenizer *t, const cJSON *merges, const char *name)
{
    if (!cJSON_IsArray(merges)) ST_FAIL(ST_ERR_FORMAT, "%s: model.merges is missing or not an array", name);
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *a, *b;
        size_t alen, blen;
        if (cJSON_IsString(m)) {   /* "a b" */
            a = m->valuestring;
            const char *sp = strchr(a, ' ');
            if (!sp || sp == a || !sp[1] || strchr(sp + 1, ' '))
                ST_FAIL(ST_ERR_FORMAT, "%s: model.merges[%zu] \"%.80s\" is not two tokens separated by one space",
                        name, i, a);
            alen = (size_t)(sp - a), b = sp + 1, blen = strlen(b);
        } else if (cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) {   /* ["a", "b"] */
            a = cJSON_GetArrayItem(m, 0)->valuestring, alen = strlen(a);
            b = cJSON_GetArrayItem(m, 1)->valuestring, blen = strlen(b);
        } else {
            ST_FAIL(ST_ERR_FORMAT, "%s: model.merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", name, i);
        }
        ST_TRY(st_tok_bpe_add_merge(t, a, alen, b, blen, name, "model.merges entry", i));
        i++;
    }
    return ST_OK;
}

/* ---- added tokens ---- */

static st_err scan_added(const cJSON *added, const char *name, int32_t *max_id, int32_t *count)
{
    if (!added || cJSON_IsNull(added)) return ST_OK;
    if (!cJSON_IsArray(added)) ST_FAIL(ST_ERR_FORMAT, "%s: added_tokens is not an array", name);
    int i = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, added) {
        const cJSON *id = get(a, "id"), *content = get(a, "content");
        double d = cJSON_IsNumber(id) ? id->valuedouble : -1;
        if (!cJSON_IsString(content) || !(d >= 0 && d < ST_TOK_MAX_VOCAB) || d != (double)(int32_t)d)
            ST_FAIL(ST_ERR_FORMAT, "%s: added_tokens[%d] needs a string \"content\" and an integer \"id\" in 0..%d",
                    name, i, ST_TOK_MAX_VOCAB - 1);
        if ((int32_t)d > *max_id) *max_id = (int32_t)d;
        (*count)++;
        i++;
    }
    return ST_OK;
}

/* Give each added token its text (a vocabulary entry must agree) and build
 * the matching regexes. */
static st_err fill_added(st_tokenizer *t, const cJSON *added, const char *name)
{
    int n = cJSON_IsArray(added) ? cJSON_GetArraySize(added) : 0;
    if (n == 0) return ST_OK;
    st_tok_added *list;
    ST_ALLOC(list, n, "added tokens");
    st_err err = ST_OK;
    int i = 0;
    const cJSON *a;
    cJSON_ArrayForEach(a, added) {
        const char *c = get(a, "content")->valuestring;
        int32_t id = (int32_t)get(a, "id")->valuedouble;
        size_t len = strlen(c);
        if (!t->text[id]) err = st_tok_set_text(t, id, c, len, name);
        else if (t->text_len[id] != len || memcmp(t->text[id], c, len) != 0)
            err = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                               "%s: added token \"%.60s\" has id %d, which the vocabulary gives to \"%.60s\"", name,
                               c, id, t->text[id]);
        if (err) break;
        list[i++] = (st_tok_added){
            .content = t->text[id], .len = len, .id = id,
            .special = cJSON_IsTrue(get(a, "special")), .lstrip = cJSON_IsTrue(get(a, "lstrip")),
            .rstrip = cJSON_IsTrue(get(a, "rstrip")), .single_word = cJSON_IsTrue(get(a, "single_word")),
        };
    }
    if (!err) err = st_tok_build_added_re(t, list, i, name);
    free(list);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

/* ---- pre-tokenizer ---- */

static st_err add_literal_stage(st_tokenizer *t, const char *s, const char *name)
{
    char *p = NULL;
    size_t len = 0, cap = 0;
    st_err err = st_tok_regex_escape(&p, &len, &cap, s, strlen(s));
    if (!err) err = st_tok_bpe_add_stage(t, p, len, name);
    free(p);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}

static st_err add_split(st_tokenizer *t, const cJSON *p, const char *name)
{
    const cJSON *pat = get(p, "pattern"), *beh = get(p, "behavior");
    const char *b = cJSON_IsString(beh) ? beh->valuestring : "?";
    if (strcmp(b, "Isolated") != 0 && strcmp(b, "MergedWithPrevious") != 0)
        ST_FAIL(ST_ERR_FORMAT, "%s: Split pre-tokenizer behavior \"%.40s\" is not supported (Isolated, "
                "MergedWithPrevious)", name, b);
    if (cJSON_IsTrue(get(p, "invert")))
        ST_FAIL(ST_ERR_FORMAT, "%s: Split pre-tokenizer with invert=true is not supported", name);
    t->stage_merge_prev[t->n_stages] = strcmp(b, "MergedWithPrevious") == 0;
    const cJSON *re = get(pat, "Regex"), *lit = get(pat, "String");
    if (cJSON_IsString(re)) ST_TRY(st_tok_bpe_add_stage(t, re->valuestring, strlen(re->valuestring), name));
    else if (cJSON_IsString(lit)) ST_TRY(add_literal_stage(t, lit->valuestring, name));
    else ST_FAIL(ST_ERR_FORMAT, "%s: Split pre-tokenizer needs pattern {\"Regex\": ...} or {\"String\": ...}", name);
    return ST_OK;
}

/* Metaspace (sentencepiece-style): ' ' becomes the replacement, which is
 * prepended by the scheme; split: each piece starts at a replacement, as
 * Hugging Face's MergedWithNext split on it. It must come first. */
static st_err add_metaspace(st_tokenizer *t, const cJSON *p, const char *name)
{
    const cJSON *r = get(p, "replacement"), *scheme = get(p, "prepend_scheme"), *split = get(p, "split");
    const char *rs = cJSON_IsString(r) ? r->valuestring : "\xe2\x96\x81";
    if (t->n_stages || t->meta_repl_len)
        ST_FAIL(ST_ERR_FORMAT, "%s: a Metaspace pre-tokenizer after other steps is not supported", name);
    if (!*rs || strlen(rs) >= sizeof t->meta_repl || strchr(rs, ' '))
        ST_FAIL(ST_ERR_FORMAT, "%s: Metaspace replacement \"%.20s\" is empty, too long or a space", name, rs);
    memcpy(t->meta_repl, rs, strlen(rs) + 1);
    t->meta_repl_len = (uint8_t)strlen(rs);
    const char *sc = cJSON_IsString(scheme) ? scheme->valuestring
                   : cJSON_IsFalse(get(p, "add_prefix_space")) ? "never" : "always";   /* the older form */
    t->meta_prepend = !strcmp(sc, "first") ? 1 : !strcmp(sc, "always") ? 2 : 0;
    if (t->meta_prepend == 0 && strcmp(sc, "never") != 0)
        ST_FAIL(ST_ERR_FORMAT, "%s: Metaspace prepend_scheme \"%.20s\" is not first, always or never", name, sc);
    if (cJSON_IsFalse(split)) return ST_OK;
    char *pat = NULL, *lit = NULL;   /* R[^R]+|R|[^R]+ with R the escaped replacement */
    size_t llen = 0, lcap = 0;
    st_err e = st_tok_regex_escape(&lit, &llen, &lcap, rs, strlen(rs));
    if (!e && asprintf(&pat, "%s(?:(?!%s).)+|%s|(?:(?!%s).)+", lit, lit, lit, lit) < 0)
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    if (!e) e = st_tok_bpe_add_stage(t, pat, strlen(pat), name);
    free(lit);
    free(pat);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* Punctuation (Falcon): each punctuation character apart (isolated), or each
 * run of them (contiguous); Rust's is_punctuation: Unicode P* and ASCII's. */
static st_err add_punctuation(st_tokenizer *t, const cJSON *p, const char *name)
{
    const cJSON *beh = get(p, "behavior");
    const char *b = cJSON_IsString(beh) ? beh->valuestring : "isolated";
    static const char cls[] = "[\\p{P}\\x21-\\x2F\\x3A-\\x40\\x5B-\\x60\\x7B-\\x7E]";
    char pat[80];
    if (!strcmp(b, "isolated") || !strcmp(b, "Isolated")) snprintf(pat, sizeof pat, "%s", cls);
    else if (!strcmp(b, "contiguous") || !strcmp(b, "Contiguous")) snprintf(pat, sizeof pat, "%s+", cls);
    else ST_FAIL(ST_ERR_FORMAT, "%s: Punctuation behavior \"%.40s\" is not supported (isolated, contiguous)", name, b);
    ST_TRY(st_tok_bpe_add_stage(t, pat, strlen(pat), name));
    return ST_OK;
}

/* One pre-tokenizer step. Steps after ByteLevel (Falcon's Digits and Split)
 * see its stand-in characters (t->byte_level_at). */
static st_err add_pretok(st_tokenizer *t, const cJSON *p, const char *name, int depth, int *byte_level)
{
    const char *ty = type_of(p);
    if (!ty) ST_FAIL(ST_ERR_FORMAT, "%s: a pre_tokenizer entry has no \"type\"", name);
    if (*byte_level && strcmp(ty, "Split") && strcmp(ty, "Digits") && strcmp(ty, "Punctuation"))
        ST_FAIL(ST_ERR_FORMAT, "%s: pre-tokenizer \"%.40s\" follows ByteLevel; only Split, Digits and Punctuation "
                "may", name, ty);
    if (strcmp(ty, "Sequence") == 0) {
        if (depth > 4) ST_FAIL(ST_ERR_FORMAT, "%s: pre_tokenizer Sequences nested too deeply", name);
        const cJSON *it;
        cJSON_ArrayForEach(it, get(p, "pretokenizers")) ST_TRY(add_pretok(t, it, name, depth + 1, byte_level));
    } else if (strcmp(ty, "ByteLevel") == 0) {
        if (t->meta_repl_len) ST_FAIL(ST_ERR_FORMAT, "%s: ByteLevel after Metaspace is not supported", name);
        const cJSON *pre = get(p, "add_prefix_space"), *re = get(p, "use_regex");
        if (!cJSON_IsFalse(pre)) t->stage_prefix_space[t->n_stages] = 1;   /* HF's default is true */
        if (!cJSON_IsFalse(re))
            ST_TRY(st_tok_bpe_add_stage(t, st_tok_gpt2_pattern, strlen(st_tok_gpt2_pattern), name));
        t->byte_level_at = t->n_stages;
        *byte_level = 1;
    } else if (strcmp(ty, "Split") == 0) {
        ST_TRY(add_split(t, p, name));
    } else if (strcmp(ty, "Metaspace") == 0) {
        ST_TRY(add_metaspace(t, p, name));
    } else if (strcmp(ty, "Punctuation") == 0) {
        ST_TRY(add_punctuation(t, p, name));
    } else if (strcmp(ty, "Digits") == 0) {
        const char *pat = cJSON_IsTrue(get(p, "individual_digits")) ? "\\p{N}" : "\\p{N}+";
        ST_TRY(st_tok_bpe_add_stage(t, pat, strlen(pat), name));
    } else {
        ST_FAIL(ST_ERR_FORMAT, "%s: pre-tokenizer \"%.40s\" is not supported (ByteLevel, Metaspace, Split, Digits, "
                "Punctuation, Sequence)", name, ty);
    }
    return ST_OK;
}

/* Does the decoder drop the leading space a sentencepiece-style text starts
 * with (a Strip of " " at the start, or a Metaspace decoder that prepends)? */
static int decoder_strips(const cJSON *d)
{
    const char *ty = type_of(d);
    if (!ty) return 0;
    if (!strcmp(ty, "Sequence")) {
        const cJSON *it;
        cJSON_ArrayForEach(it, get(d, "decoders")) if (decoder_strips(it)) return 1;
        return 0;
    }
    if (!strcmp(ty, "Strip")) {
        const cJSON *c = get(d, "content"), *st = get(d, "start");
        return cJSON_IsString(c) && !strcmp(c->valuestring, " ") && cJSON_IsNumber(st) && st->valuedouble >= 1;
    }
    if (!strcmp(ty, "Metaspace")) {
        const cJSON *sc = get(d, "prepend_scheme");
        return cJSON_IsString(sc) ? strcmp(sc->valuestring, "never") != 0 : !cJSON_IsFalse(get(d, "add_prefix_space"));
    }
    return 0;
}

/* ---- bos, eos, chat template ---- */

static int32_t first_present(const st_tokenizer *t, const char *const *names)
{
    for (; *names; names++) {
        int id = st_tokenizer_token_id(t, *names);
        if (id >= 0) return id;
    }
    return -1;
}

/* "bos_token": "<s>" or {"content": "<s>", ...} or null. Returns 0 if the key
 * is absent (the caller guesses), 1 if it decided *id. */
static st_err config_token(const st_tokenizer *t, const cJSON *cfg, const char *key, const char *name,
                           int32_t *id, int *decided)
{
    const cJSON *v = get(cfg, key);
    *decided = 0;
    if (!v) return ST_OK;
    *decided = 1;
    if (cJSON_IsNull(v)) {
        *id = -1;
        return ST_OK;
    }
    if (cJSON_IsObject(v)) v = get(v, "content");
    if (!cJSON_IsString(v)) ST_FAIL(ST_ERR_FORMAT, "%s: %s is neither a string nor {\"content\": ...}", name, key);
    *id = st_tokenizer_token_id(t, v->valuestring);
    if (*id < 0)
        ST_FAIL(ST_ERR_FORMAT, "%s: %s \"%.60s\" is not a token of the tokenizer", name, key, v->valuestring);
    return ST_OK;
}

static st_err set_template(st_tokenizer *t, const cJSON *v, const char *name)
{
    if (cJSON_IsArray(v)) {   /* [{"name": ..., "template": ...}]: "default", else the first */
        const cJSON *it, *pick = cJSON_GetArrayItem(v, 0);
        cJSON_ArrayForEach(it, v) {
            const cJSON *nm = get(it, "name");
            if (cJSON_IsString(nm) && strcmp(nm->valuestring, "default") == 0) pick = it;
        }
        v = get(pick, "template");
    }
    if (!v || cJSON_IsNull(v)) return ST_OK;
    if (!cJSON_IsString(v)) ST_FAIL(ST_ERR_FORMAT, "%s: chat_template is not a string", name);
    free(t->chat_template);
    t->chat_template = strdup(v->valuestring);
    if (!t->chat_template) ST_FAIL(ST_ERR_MEM, "out of memory copying the chat template");
    return ST_OK;
}

/* tokenizer_config.json decides when present; otherwise the template
 * post-processor's first special token and the usual names. */
static st_err special_ids(st_tokenizer *t, const cJSON *root, const cJSON *cfg, const char *name,
                          const char *cfg_name)
{
    static const char *const eos_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<eos>", NULL};
    static const char *const bos_names[] = {"<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", NULL};
    int have_bos = 0, have_eos = 0;
    ST_TRY(set_template(t, get(root, "chat_template"), name));
    if (cfg) {
        ST_TRY(config_token(t, cfg, "bos_token", cfg_name, &t->bos, &have_bos));
        ST_TRY(config_token(t, cfg, "eos_token", cfg_name, &t->eos, &have_eos));
        ST_TRY(set_template(t, get(cfg, "chat_template"), cfg_name));
    }
    if (!have_eos) t->eos = first_present(t, eos_names);
    if (!have_bos) {
        const cJSON *pp = get(root, "post_processor");
        const cJSON *first = get(cJSON_GetArrayItem(get(pp, "single"), 0), "SpecialToken");
        const cJSON *id = get(first, "id");
        const char *ty = type_of(pp);
        t->bos = ty && strcmp(ty, "TemplateProcessing") == 0 && cJSON_IsString(id)
                     ? st_tokenizer_token_id(t, id->valuestring) : -1;
        if (t->bos < 0) t->bos = first_present(t, bos_names);
        if (t->bos < 0 && t->eos >= 0 && strcmp(t->text[t->eos], "<|endoftext|>") == 0) t->bos = t->eos;
    }
    return ST_OK;
}

/* The template post-processor's special tokens around a single sequence:
 * "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": ...}, ...], maybe
 * inside a Sequence post-processor (Llama 3: ByteLevel, then the template). */
static const cJSON *template_single(const cJSON *pp)
{
    const char *ty = type_of(pp);
    if (ty && strcmp(ty, "TemplateProcessing") == 0) return get(pp, "single");
    if (!ty || strcmp(ty, "Sequence") != 0) return NULL;
    const cJSON *it;
    cJSON_ArrayForEach(it, get(pp, "processors")) {
        const cJSON *single = template_single(it);
        if (single) return single;
    }
    return NULL;
}

static int is_special_item(const st_tokenizer *t, const cJSON *item, int32_t id)
{
    const cJSON *sp = get(get(item, "SpecialToken"), "id");
    return id >= 0 && cJSON_IsString(sp) && st_tokenizer_token_id(t, sp->valuestring) == id;
}

/* add_bos_token / add_eos_token in tokenizer_config.json decide (transformers'
 * slow and fast Llama/Gemma tokenizers); without them the post-processor does,
 * as it does for tokenizers.js and the Rust library. */
static st_err add_rule(st_tokenizer *t, const cJSON *root, const cJSON *cfg, const char *cfg_name)
{
    const cJSON *single = template_single(get(root, "post_processor"));
    int n = cJSON_GetArraySize(single);
    t->add_bos = n > 0 && is_special_item(t, cJSON_GetArrayItem(single, 0), t->bos);
    t->add_eos = n > 0 && is_special_item(t, cJSON_GetArrayItem(single, n - 1), t->eos);
    static const char *const key[2] = {"add_bos_token", "add_eos_token"};
    int *flag[2] = {&t->add_bos, &t->add_eos};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = get(cfg, key[i]);
        if (!v || cJSON_IsNull(v)) continue;
        if (!cJSON_IsBool(v)) ST_FAIL(ST_ERR_FORMAT, "%s: %s is not true or false", cfg_name, key[i]);
        *flag[i] = cJSON_IsTrue(v);
    }
    return ST_OK;
}

/* ---- the whole file ---- */

static st_err hf_from_json(st_tokenizer *t, const cJSON *root, const cJSON *cfg, const char *name,
                           const char *cfg_name)
{
    if (!cJSON_IsObject(root)) ST_FAIL(ST_ERR_FORMAT, "%s: top level is not a JSON object", name);
    const cJSON *model = get(root, "model"), *added = get(root, "added_tokens");
    ST_TRY(check_model(t, model, name));
    ST_TRY(st_tok_norm_parse(t, get(root, "normalizer"), name, 0));
    int32_t max_id = -1, count = 0, amax = -1, acount = 0;
    ST_TRY(st_tok_json_vocab_scan(get(model, "vocab"), name, &max_id, &count));
    ST_TRY(scan_added(added, name, &amax, &acount));
    if (amax > max_id) max_id = amax;
    ST_TRY(st_tok_check_density(max_id, count + acount, name));
    ST_TRY(st_tok_alloc_vocab(t, max_id + 1));
    ST_TRY(st_tok_json_vocab_fill(t, get(model, "vocab"), name));
    ST_TRY(add_merges(t, get(model, "merges"), name));
    int byte_level = 0;
    const cJSON *pre = get(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre)) ST_TRY(add_pretok(t, pre, name, 0, &byte_level));
    t->char_bpe = !byte_level;   /* no ByteLevel: sentencepiece-style, symbols are characters */
    const cJSON *unk = get(model, "unk_token");
    t->unk_id = cJSON_IsString(unk) ? st_tok_strmap_get(&t->vocab, unk->valuestring, strlen(unk->valuestring)) : -1;
    if (t->char_bpe) t->strip_lead_space = decoder_strips(get(root, "decoder"));
    ST_TRY(fill_added(t, added, name));
    ST_TRY(st_tok_bpe_finish(t, name));
    ST_TRY(special_ids(t, root, cfg, name, cfg_name));
    ST_TRY(add_rule(t, root, cfg, cfg_name));
    return ST_OK;
}

st_err st_tok_hf_build(st_tokenizer *t, const char *json_name, const char *config_name)
{
    cJSON *root = NULL, *cfg = NULL;
    ST_TRY(st_tok_json_parse(&root, t->file[0], t->file_len[0], json_name));
    st_err err = ST_OK;
    if (t->file_len[1]) err = st_tok_json_parse(&cfg, t->file[1], t->file_len[1], config_name);
    if (!err) err = hf_from_json(t, root, cfg, json_name, config_name);
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    if (err) st_error_trace(__FILE__, __LINE__, __func__);
    return err;
}
