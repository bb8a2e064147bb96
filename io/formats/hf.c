/* hf.c: Hugging Face model directories in and out. See hf.h.
 *
 * One table of rules maps every Hugging Face tensor to shardtune's tensor(s)
 * and says how the layouts differ (a copy, a Conv1D transpose, or GPT-2's
 * fused q/k/v); import reads each rule's source once and scatters it, export
 * gathers it back. */
#include "io/formats/hf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/params.h"
#include "io/formats/model_source.h"
#include "io/tok/tok_internal.h"   /* vocabulary, merges and original files: tokenizer.h has no accessors for them */

#define MAX_JSON_FILE (100u << 20)

/* ==== small file helpers =================================================== */

static st_err join(char *out, size_t cap, const char *dir, const char *name)
{
    if ((size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap)
        ST_FAIL(ST_ERR_ARG, "path %s/%s is too long", dir, name);
    return ST_OK;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* A whole (JSON) file of at most MAX_JSON_FILE bytes, NUL-terminated. */
static st_err slurp(const char *path, char **out, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) ST_FAIL(ST_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    st_err e = ST_OK;
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0) size = ftell(fp);
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot size %s", path);
    else if ((unsigned long)size > MAX_JSON_FILE)
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s is %ld bytes, over the %u-byte limit "
                         "for a JSON file", path, size, MAX_JSON_FILE);
    char *buf = e ? NULL : malloc((size_t)size + 1);
    if (!e && !buf) e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory reading %s", path);
    if (!e && fread(buf, 1, (size_t)size, fp) != (size_t)size)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "reading %s failed", path);
    fclose(fp);
    if (e) {
        free(buf);
        return e;
    }
    buf[size] = '\0';
    *out = buf;
    *n = (size_t)size;
    return ST_OK;
}

static st_err parse_json(const char *text, size_t n, const char *name, cJSON **out)
{
    const char *end = NULL;
    *out = cJSON_ParseWithLengthOpts(text, n, &end, 0);
    if (!*out)
        ST_FAIL(ST_ERR_FORMAT, "%s is not valid JSON (parsing stopped at byte %zu)", name,
                end ? (size_t)(end - text) : (size_t)0);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        ST_FAIL(ST_ERR_FORMAT, "%s is not a JSON object", name);
    }
    return ST_OK;
}

static st_err load_json(const char *path, cJSON **out)
{
    char *text = NULL;
    size_t n = 0;
    ST_TRY(slurp(path, &text, &n));
    st_err e = parse_json(text, n, path, out);
    free(text);
    return e;
}

/* ==== config.json ========================================================== */

typedef enum { ARCH_GPT2, ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2 } hf_arch;

static const struct {
    const char *arch, *model_type;
} arch_names[] = {
    [ARCH_GPT2] = {"GPT2LMHeadModel", "gpt2"},
    [ARCH_LLAMA] = {"LlamaForCausalLM", "llama"},
    [ARCH_MISTRAL] = {"MistralForCausalLM", "mistral"},
    [ARCH_QWEN2] = {"Qwen2ForCausalLM", "qwen2"},
};
#define N_ARCH ((int)(sizeof arch_names / sizeof arch_names[0]))

typedef struct {
    const cJSON *root;
    const char *name;
} cfgsrc;

static const cJSON *item(const cfgsrc *s, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(s->root, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* A positive integer; def < 0 makes the key required. */
static st_err get_int(const cfgsrc *s, const char *key, int def, int *out)
{
    const cJSON *v = item(s, key);
    if (!v) {
        if (def < 0) ST_FAIL(ST_ERR_FORMAT, "%s: \"%s\" is missing", s->name, key);
        *out = def;
        return ST_OK;
    }
    double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
    if (!(d >= 1 && d <= INT_MAX) || d != floor(d))
        ST_FAIL(ST_ERR_FORMAT, "%s: \"%s\" must be a positive integer", s->name, key);
    *out = (int)d;
    return ST_OK;
}

/* A positive finite number (as float). */
static st_err get_pos(const cfgsrc *s, const char *key, double def, float *out)
{
    const cJSON *v = item(s, key);
    double d = v ? (cJSON_IsNumber(v) ? v->valuedouble : -1) : def;
    if (!(d > 0 && d < 3.0e38))
        ST_FAIL(ST_ERR_FORMAT, "%s: \"%s\" must be a positive number", s->name, key);
    *out = (float)d;
    return ST_OK;
}

static st_err get_bool(const cfgsrc *s, const char *key, int def, int *out)
{
    const cJSON *v = item(s, key);
    if (!v) {
        *out = def;
        return ST_OK;
    }
    if (!cJSON_IsBool(v)) ST_FAIL(ST_ERR_FORMAT, "%s: \"%s\" must be true or false", s->name, key);
    *out = cJSON_IsTrue(v);
    return ST_OK;
}

/* key must be absent, null or false. */
static st_err refuse_set(const cfgsrc *s, const char *key, const char *why)
{
    const cJSON *v = item(s, key);
    if (v && !cJSON_IsFalse(v)) ST_FAIL(ST_ERR_FORMAT, "%s: \"%s\" is set; %s", s->name, key, why);
    return ST_OK;
}

/* key absent or equal to one of the allowed strings (NULL-terminated). */
static st_err allow_str(const cfgsrc *s, const char *key, const char *const *allowed)
{
    const cJSON *v = item(s, key);
    if (!v) return ST_OK;
    for (int i = 0; cJSON_IsString(v) && allowed[i]; i++)
        if (!strcmp(v->valuestring, allowed[i])) return ST_OK;
    ST_FAIL(ST_ERR_FORMAT, "%s: \"%s\" is %.40s; shardtune supports only \"%s\"", s->name, key,
            cJSON_IsString(v) ? v->valuestring : "not a string", allowed[0]);
}

static st_err detect_arch(const cfgsrc *s, hf_arch *arch)
{
    const cJSON *a = item(s, "architectures"), *mt = item(s, "model_type");
    const char *name = NULL;
    if (cJSON_IsArray(a) && cJSON_IsString(cJSON_GetArrayItem(a, 0))) name = cJSON_GetArrayItem(a, 0)->valuestring;
    for (int i = 0; i < N_ARCH; i++)
        if (name ? !strcmp(name, arch_names[i].arch) : cJSON_IsString(mt) && !strcmp(mt->valuestring, arch_names[i].model_type)) {
            *arch = (hf_arch)i;
            return ST_OK;
        }
    ST_FAIL(ST_ERR_FORMAT, "%s: %s \"%.60s\" is not supported (GPT2LMHeadModel, LlamaForCausalLM, "
            "MistralForCausalLM, Qwen2ForCausalLM)", s->name, name ? "architectures[0]" : "model_type",
            name ? name : cJSON_IsString(mt) ? mt->valuestring : "(missing)");
}

static st_err gpt2_config(const cfgsrc *s, st_config *c)
{
    static const char *const gelu[] = {"gelu_new", "gelu_pytorch_tanh", NULL};
    c->family = ST_FAMILY_GPT2;
    ST_TRY(get_int(s, "n_embd", -1, &c->d_model));
    ST_TRY(get_int(s, "n_layer", -1, &c->n_layer));
    ST_TRY(get_int(s, "n_head", -1, &c->n_head));
    ST_TRY(get_int(s, "vocab_size", -1, &c->vocab_size));
    int n_ctx;
    ST_TRY(get_int(s, "n_ctx", 1024, &n_ctx));
    ST_TRY(get_int(s, "n_positions", n_ctx, &c->max_seq));
    if (c->d_model > INT_MAX / 4) ST_FAIL(ST_ERR_FORMAT, "%s: n_embd is absurdly large", s->name);
    ST_TRY(get_int(s, "n_inner", 4 * c->d_model, &c->d_ff));
    ST_TRY(get_pos(s, "layer_norm_epsilon", 1e-5, &c->norm_eps));
    ST_TRY(get_bool(s, "tie_word_embeddings", 1, &c->tied_embeddings));
    ST_TRY(allow_str(s, "activation_function", gelu));
    ST_TRY(refuse_set(s, "scale_attn_by_inverse_layer_idx", "attention scaled per layer is not supported"));
    ST_TRY(refuse_set(s, "add_cross_attention", "cross-attention is not supported"));
    int scale = 1;
    ST_TRY(get_bool(s, "scale_attn_weights", 1, &scale));
    if (!scale) ST_FAIL(ST_ERR_FORMAT, "%s: \"scale_attn_weights\" is false; shardtune always scales by "
                        "1/sqrt(head_dim)", s->name);
    c->n_kv_head = c->n_head;
    c->rope_theta = 10000.0f;
    return ST_OK;
}

static st_err llama_config(const cfgsrc *s, hf_arch arch, st_config *c)
{
    static const char *const silu[] = {"silu", NULL};
    c->family = ST_FAMILY_LLAMA;
    ST_TRY(get_int(s, "hidden_size", -1, &c->d_model));
    ST_TRY(get_int(s, "num_hidden_layers", -1, &c->n_layer));
    ST_TRY(get_int(s, "num_attention_heads", -1, &c->n_head));
    ST_TRY(get_int(s, "num_key_value_heads", c->n_head, &c->n_kv_head));
    ST_TRY(get_int(s, "intermediate_size", -1, &c->d_ff));
    ST_TRY(get_int(s, "vocab_size", -1, &c->vocab_size));
    ST_TRY(get_int(s, "max_position_embeddings", 2048, &c->max_seq));
    ST_TRY(get_pos(s, "rms_norm_eps", 1e-6, &c->norm_eps));
    ST_TRY(get_pos(s, "rope_theta", 10000.0, &c->rope_theta));
    ST_TRY(get_bool(s, "tie_word_embeddings", 0, &c->tied_embeddings));
    ST_TRY(allow_str(s, "hidden_act", silu));
    ST_TRY(refuse_set(s, "mlp_bias", "MLP biases are not supported"));
    int head_dim;
    ST_TRY(get_int(s, "head_dim", c->d_model / c->n_head, &head_dim));
    if (head_dim * c->n_head != c->d_model)
        ST_FAIL(ST_ERR_FORMAT, "%s: \"head_dim\" %d differs from hidden_size / num_attention_heads = %d/%d; "
                "shardtune needs them equal", s->name, head_dim, c->d_model, c->n_head);
    if (arch == ARCH_QWEN2) {
        c->qkv_bias = 1;   /* Qwen2 always has q/k/v bias and none on o_proj */
        ST_TRY(refuse_set(s, "use_sliding_window", "sliding-window attention is not supported"));
    } else {
        ST_TRY(refuse_set(s, "attention_bias", "it adds a bias to o_proj too, which shardtune's llama has not"));
        const cJSON *sw = item(s, "sliding_window");
        if (sw && (!cJSON_IsNumber(sw) || sw->valuedouble < c->max_seq))
            ST_FAIL(ST_ERR_FORMAT, "%s: \"sliding_window\" is set below max_position_embeddings; sliding-window "
                    "attention is not supported", s->name);
    }
    return ST_OK;
}

static st_err config_parse(const cJSON *root, const char *name, st_config *cfg, hf_arch *arch)
{
    cfgsrc s = {root, name};
    memset(cfg, 0, sizeof *cfg);
    ST_TRY(detect_arch(&s, arch));
    const cJSON *rs = item(&s, "rope_scaling");
    if (rs) ST_FAIL(ST_ERR_FORMAT, "%s: \"rope_scaling\" is set; RoPE scaling is not supported", name);
    if (item(&s, "quantization_config"))
        ST_FAIL(ST_ERR_FORMAT, "%s: \"quantization_config\" is set; quantized weights are not supported "
                "(convert from the original fp32/fp16/bf16 model)", name);
    ST_TRY(*arch == ARCH_GPT2 ? gpt2_config(&s, cfg) : llama_config(&s, *arch, cfg));
    st_err e = st_config_validate(cfg, 1);
    if (e) {   /* say which file: keep the first line of the message */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", st_error_message());
        msg[strcspn(msg, "\n")] = '\0';
        ST_FAIL(e, "%s: %s", name, msg);
    }
    return ST_OK;
}

st_err st_hf_config_parse(const char *text, size_t n, const char *name, st_config *cfg)
{
    cJSON *root;
    ST_TRY(parse_json(text, n, name, &root));
    hf_arch arch;
    st_err e = config_parse(root, name, cfg, &arch);
    cJSON_Delete(root);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ==== the tensor map ======================================================= */

typedef enum {
    MAP_COPY,     /* same layout */
    MAP_T,        /* Conv1D [in, out] <-> Linear [out, in] */
    MAP_QKV_T,    /* Conv1D c_attn [C, 3C] <-> q, k, v [C, C] each */
    MAP_QKV_B     /* c_attn bias [3C] <-> q, k, v bias [C] each */
} map_kind;

typedef struct {
    char hf[128];               /* name in the Hugging Face file */
    map_kind kind;
    int ndim;
    int64_t shape[2];           /* Hugging Face shape */
    const st_tensor *dst[3];    /* shardtune's tensor(s) */
} hf_rule;

typedef struct {
    hf_rule *r;
    int n, cap;
    const st_layout *lay;
} rules;

static st_err rule(rules *R, map_kind kind, const char *hf, const char *const *ours, int n_ours)
{
    if (R->n == R->cap) {
        int cap = R->cap ? 2 * R->cap : 64;
        hf_rule *r = realloc(R->r, (size_t)cap * sizeof *r);
        if (!r) ST_FAIL(ST_ERR_MEM, "out of memory for the tensor map");
        R->r = r;
        R->cap = cap;
    }
    hf_rule *x = &R->r[R->n++];
    memset(x, 0, sizeof *x);
    snprintf(x->hf, sizeof x->hf, "%s", hf);
    x->kind = kind;
    for (int i = 0; i < n_ours; i++) {
        x->dst[i] = st_layout_find(R->lay, ours[i]);
        ST_ASSERT(x->dst[i], "tensor map names %s, which the layout lacks", ours[i]);
    }
    const st_tensor *d = x->dst[0];
    x->ndim = d->ndim;
    x->shape[0] = d->shape[0];
    x->shape[1] = d->shape[1];
    if (kind == MAP_T) x->shape[0] = d->shape[1], x->shape[1] = d->shape[0];
    if (kind == MAP_QKV_T) x->shape[0] = d->shape[1], x->shape[1] = 3 * d->shape[0];
    if (kind == MAP_QKV_B) x->shape[0] = 3 * d->shape[0];
    return ST_OK;
}

/* Build rules for one source name and one of our names. */
#define ONE(kind, hfname, ours) do { const char *o_[1] = {ours}; ST_TRY(rule(R, kind, hfname, o_, 1)); } while (0)

static st_err gpt2_rules(rules *R, const char *pre)
{
    const st_config *c = &R->lay->cfg;
    char h[128], o[3][128];
    snprintf(h, sizeof h, "%swte.weight", pre);
    ONE(MAP_COPY, h, "model.embed_tokens.weight");
    snprintf(h, sizeof h, "%swpe.weight", pre);
    ONE(MAP_COPY, h, "model.embed_positions.weight");
    static const struct { const char *hf, *ours; map_kind kind; } per_layer[] = {
        {"ln_1.weight", "input_layernorm.weight", MAP_COPY},
        {"ln_1.bias", "input_layernorm.bias", MAP_COPY},
        {"attn.c_proj.weight", "self_attn.o_proj.weight", MAP_T},
        {"attn.c_proj.bias", "self_attn.o_proj.bias", MAP_COPY},
        {"ln_2.weight", "post_attention_layernorm.weight", MAP_COPY},
        {"ln_2.bias", "post_attention_layernorm.bias", MAP_COPY},
        {"mlp.c_fc.weight", "mlp.up_proj.weight", MAP_T},
        {"mlp.c_fc.bias", "mlp.up_proj.bias", MAP_COPY},
        {"mlp.c_proj.weight", "mlp.down_proj.weight", MAP_T},
        {"mlp.c_proj.bias", "mlp.down_proj.bias", MAP_COPY},
    };
    for (int l = 0; l < c->n_layer; l++) {
        static const char *const part[2][3] = {
            {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"},
            {"self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"}};
        for (int b = 0; b < 2; b++) {
            const char *ours[3];
            for (int p = 0; p < 3; p++) {
                snprintf(o[p], sizeof o[p], "model.layers.%d.%s", l, part[b][p]);
                ours[p] = o[p];
            }
            snprintf(h, sizeof h, "%sh.%d.attn.c_attn.%s", pre, l, b ? "bias" : "weight");
            ST_TRY(rule(R, b ? MAP_QKV_B : MAP_QKV_T, h, ours, 3));
        }
        for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++) {
            snprintf(h, sizeof h, "%sh.%d.%s", pre, l, per_layer[i].hf);
            snprintf(o[0], sizeof o[0], "model.layers.%d.%s", l, per_layer[i].ours);
            ONE(per_layer[i].kind, h, o[0]);
        }
    }
    snprintf(h, sizeof h, "%sln_f.weight", pre);
    ONE(MAP_COPY, h, "model.norm.weight");
    snprintf(h, sizeof h, "%sln_f.bias", pre);
    ONE(MAP_COPY, h, "model.norm.bias");
    if (!c->tied_embeddings) ONE(MAP_COPY, "lm_head.weight", "lm_head.weight");
    return ST_OK;
}

/* Llama, Mistral, Qwen2: shardtune's names are theirs. */
static st_err llama_rules(rules *R)
{
    for (int i = 0; i < R->lay->n_tensors; i++) ONE(MAP_COPY, R->lay->tensors[i].name, R->lay->tensors[i].name);
    return ST_OK;
}
#undef ONE

static st_err build_rules(rules *R, const st_layout *lay, const char *gpt2_prefix)
{
    memset(R, 0, sizeof *R);
    R->lay = lay;
    st_err e = lay->cfg.family == ST_FAMILY_GPT2 ? gpt2_rules(R, gpt2_prefix) : llama_rules(R);
    if (e) {
        free(R->r);
        R->r = NULL;
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

/* Hugging Face layout (src) -> shardtune tensors out[p] (r->dst[p]'s numel each). */
static void scatter(const hf_rule *r, const float *src, float *const out[3])
{
    const st_tensor *d = r->dst[0];
    int64_t R0 = d->shape[0], C0 = d->shape[1];
    switch (r->kind) {
    case MAP_COPY: memcpy(out[0], src, (size_t)d->numel * sizeof *src); break;
    case MAP_T:          /* src [C0, R0] */
        for (int64_t o = 0; o < R0; o++)
            for (int64_t i = 0; i < C0; i++) out[0][o * C0 + i] = src[i * R0 + o];
        break;
    case MAP_QKV_T:      /* src [C0, 3 R0]; part p's columns p*R0 .. */
        for (int p = 0; p < 3; p++) {
            float *w = out[p];
            for (int64_t o = 0; o < R0; o++)
                for (int64_t i = 0; i < C0; i++) w[o * C0 + i] = src[i * 3 * R0 + p * R0 + o];
        }
        break;
    case MAP_QKV_B:
        for (int p = 0; p < 3; p++) memcpy(out[p], src + p * R0, (size_t)R0 * sizeof *src);
        break;
    }
}

/* shardtune tensors -> Hugging Face layout in out (the inverse of scatter). */
static void gather(const hf_rule *r, const float *params, float *out)
{
    const st_tensor *d = r->dst[0];
    const float *in = params + d->offset;
    int64_t R0 = d->shape[0], C0 = d->shape[1];
    switch (r->kind) {
    case MAP_COPY: memcpy(out, in, (size_t)d->numel * sizeof *in); break;
    case MAP_T:
        for (int64_t i = 0; i < C0; i++)
            for (int64_t o = 0; o < R0; o++) out[i * R0 + o] = in[o * C0 + i];
        break;
    case MAP_QKV_T:
        for (int p = 0; p < 3; p++) {
            const float *w = params + r->dst[p]->offset;
            for (int64_t i = 0; i < C0; i++)
                for (int64_t o = 0; o < R0; o++) out[i * 3 * R0 + p * R0 + o] = w[o * C0 + i];
        }
        break;
    case MAP_QKV_B:
        for (int p = 0; p < 3; p++) memcpy(out + p * R0, params + r->dst[p]->offset, (size_t)R0 * sizeof *out);
        break;
    }
}

static uint64_t rule_numel(const hf_rule *r) { return (uint64_t)r->shape[0] * (uint64_t)(r->ndim == 2 ? r->shape[1] : 1); }

/* ==== the weights on disk: one file or shards ============================== */

typedef struct {
    st_safetensors *f;
    uint8_t **used;             /* per file, per entry */
    int n;
} shard_set;

static void shards_close(shard_set *s)
{
    for (int i = 0; i < s->n; i++) {
        st_safetensors_close(&s->f[i]);
        free(s->used[i]);
    }
    free(s->f);
    free(s->used);
    memset(s, 0, sizeof *s);
}

static st_err shard_add(shard_set *s, const char *path)
{
    st_safetensors *f = realloc(s->f, (size_t)(s->n + 1) * sizeof *f);
    if (!f) ST_FAIL(ST_ERR_MEM, "out of memory opening shards");
    s->f = f;
    uint8_t **u = realloc(s->used, (size_t)(s->n + 1) * sizeof *u);
    if (!u) ST_FAIL(ST_ERR_MEM, "out of memory opening shards");
    s->used = u;
    ST_TRY(st_safetensors_open(&s->f[s->n], path));
    s->used[s->n] = calloc((size_t)s->f[s->n].n + 1, 1);
    s->n++;
    if (!s->used[s->n - 1]) ST_FAIL(ST_ERR_MEM, "out of memory");
    return ST_OK;
}

/* A shard file name from the index: a plain name inside the directory. */
static st_err check_shard_name(const char *index, const char *tensor, const cJSON *v)
{
    if (!cJSON_IsString(v) || !v->valuestring[0] || strchr(v->valuestring, '/') || v->valuestring[0] == '.' ||
        strlen(v->valuestring) > 255)
        ST_FAIL(ST_ERR_FORMAT, "%s: weight_map entry \"%.80s\" must name a file in the same directory "
                "(no '/', not starting with '.')", index, tensor);
    return ST_OK;
}

/* The index's weight_map and the shards must agree tensor for tensor. */
static st_err shards_from_index(shard_set *s, const char *dir, const char *index)
{
    cJSON *root;
    ST_TRY(load_json(index, &root));
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *it;
    st_err e = cJSON_IsObject(map) ? ST_OK
        : st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s: no \"weight_map\" object", index);
    int n_map = 0;
    char path[4096];
    if (!e) cJSON_ArrayForEach(it, map) {
        n_map++;
        if ((e = check_shard_name(index, it->string, it))) break;
        int seen = 0;   /* shards are few: compare against the ones opened */
        for (int k = 0; k < s->n && !seen; k++) seen = !strcmp(strrchr(s->f[k].path, '/') + 1, it->valuestring);
        if (seen) continue;
        if ((e = join(path, sizeof path, dir, it->valuestring)) || (e = shard_add(s, path))) break;
    }
    int n_tensors = 0;
    for (int i = 0; !e && i < s->n; i++)
        for (int k = 0; !e && k < s->f[i].n; k++) {
            const char *t = s->f[i].t[k].name, *file = strrchr(s->f[i].path, '/') + 1;
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(map, t);
            n_tensors++;
            if (!v)
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                 "%s holds tensor \"%.80s\", which %s does not list", s->f[i].path, t, index);
            else if (strcmp(v->valuestring, file))
                e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                                 "%s holds tensor \"%.80s\", which %s places in %s", s->f[i].path, t, index,
                                 v->valuestring);
        }
    if (!e && n_tensors != n_map)
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__, "%s lists %d tensors but the shards hold %d "
                         "(a missing shard, or a name listed twice)", index, n_map, n_tensors);
    cJSON_Delete(root);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

static st_err shards_open(shard_set *s, const char *dir)
{
    memset(s, 0, sizeof *s);
    char index[4096], single[4096];
    ST_TRY(join(index, sizeof index, dir, "model.safetensors.index.json"));
    ST_TRY(join(single, sizeof single, dir, "model.safetensors"));
    st_err e;
    if (exists(index)) e = shards_from_index(s, dir, index);
    else if (exists(single)) e = shard_add(s, single);
    else
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__,
                         "%s has neither model.safetensors nor model.safetensors.index.json (PyTorch .bin weights "
                         "are not read: save the model with safe_serialization=True)", dir);
    if (e) {
        shards_close(s);
        st_error_trace(__FILE__, __LINE__, __func__);
    }
    return e;
}

/* The file and entry holding name, marking it used; *f = NULL when absent. */
static void shards_find(shard_set *s, const char *name, const st_safetensors **f, const st_safetensors_entry **e)
{
    *f = NULL;
    *e = NULL;
    for (int i = 0; i < s->n; i++) {
        const st_safetensors_entry *x = st_safetensors_find(&s->f[i], name);
        if (x) {
            *f = &s->f[i];
            *e = x;
            s->used[i][x - s->f[i].t] = 1;
            return;
        }
    }
}

/* ==== import =============================================================== */

/* The layer index of a block tensor ("model.layers.12.mlp..." for Llama,
 * "[transformer.]h.12.attn..." for GPT-2), or -1. */
static long layer_index(const char *name)
{
    const char *p = strstr(name, "layers.");
    if (p && (p == name || p[-1] == '.')) p += 7;
    else if (!strncmp(name, "h.", 2)) p = name + 2;
    else if ((p = strstr(name, ".h.")) != NULL) p += 3;
    else return -1;
    char *end;
    long k = strtol(p, &end, 10);
    return end > p && *end == '.' && k >= 0 ? k : -1;
}

/* config.json's layer count against the layers the weights hold, before
 * anything is sized from it (10^9 layers would take all memory, 10^5 minutes
 * of name lookups). */
static st_err check_layer_count(const shard_set *s, const st_config *c, hf_arch arch, const char *dir)
{
    long top = -1;
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->f[i].n; k++) {
            long l = layer_index(s->f[i].t[k].name);
            if (l > top) top = l;
        }
    if (c->n_layer != top + 1)
        ST_FAIL(ST_ERR_FORMAT, "%s/config.json says %s %d, but the weights hold %ld layers (0..%ld): the config does "
                "not describe these weights", dir, arch == ARCH_GPT2 ? "n_layer" : "num_hidden_layers", c->n_layer,
                top + 1, top);
    return ST_OK;
}

static st_err check_shape(const st_safetensors *f, const st_safetensors_entry *e, const hf_rule *r)
{
    int ok = e->ndim == r->ndim && e->shape[0] == r->shape[0] && (r->ndim == 1 || e->shape[1] == r->shape[1]);
    if (!ok) {
        char got[128] = "", want[64];
        size_t at = 0;
        for (int d = 0; d < e->ndim && at < sizeof got; d++)
            at += (size_t)snprintf(got + at, sizeof got - at, "%s%lld", d ? ", " : "", (long long)e->shape[d]);
        if (r->ndim == 1) snprintf(want, sizeof want, "%lld", (long long)r->shape[0]);
        else snprintf(want, sizeof want, "%lld, %lld", (long long)r->shape[0], (long long)r->shape[1]);
        ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%s\" has shape [%s]; config.json implies [%s]", f->path, e->name,
                got, want);
    }
    return ST_OK;
}

/* Buffers and tensors that are not parameters, or duplicates of one. */
static int skippable(const char *name, const st_config *c)
{
    static const char *const suffix[] = {".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        size_t k = strlen(suffix[i]);
        if (n >= k && !strcmp(name + n - k, suffix[i])) return 1;
    }
    return c->tied_embeddings && !strcmp(name, "lm_head.weight");   /* a copy of the embedding */
}

static st_err check_all_used(const shard_set *s, const st_config *c, hf_arch arch)
{
    for (int i = 0; i < s->n; i++)
        for (int k = 0; k < s->f[i].n; k++)
            if (!s->used[i][k] && !skippable(s->f[i].t[k].name, c))
                ST_FAIL(ST_ERR_FORMAT, "%s: tensor \"%.80s\" has no place in a %s as shardtune builds it (a feature "
                        "config.json does not describe?); refusing to drop it", s->f[i].path, s->f[i].t[k].name,
                        arch_names[arch].arch);
    return ST_OK;
}

/* The open directory: its shards, the tensor map, and where each rule's
 * source sits (found and shape-checked at open). */
typedef struct {
    shard_set shards;
    rules R;
    const st_safetensors **file;          /* (R.n) */
    const st_safetensors_entry **entry;   /* (R.n) */
} hf_source;

/* Find every rule's source tensor and check its shape; then refuse any
 * tensor of the files that no rule uses. Metadata only. */
static st_err locate_tensors(hf_source *h, hf_arch arch, const st_config *cfg)
{
    h->file = calloc((size_t)h->R.n + 1, sizeof *h->file);
    h->entry = calloc((size_t)h->R.n + 1, sizeof *h->entry);
    if (!h->file || !h->entry) ST_FAIL(ST_ERR_MEM, "out of memory for the tensor map");
    for (int i = 0; i < h->R.n; i++) {
        const hf_rule *r = &h->R.r[i];
        shards_find(&h->shards, r->hf, &h->file[i], &h->entry[i]);
        if (!h->entry[i])
            ST_FAIL(ST_ERR_FORMAT, "tensor \"%s\" is missing from the weights; a %s with this config.json needs it",
                    r->hf, arch_names[arch].arch);
        ST_TRY(check_shape(h->file[i], h->entry[i], r));
    }
    ST_TRY(check_all_used(&h->shards, cfg, arch));
    return ST_OK;
}

/* A rule's source (F32, F16 or BF16): straight into out when the layout is
 * the same, through a scratch copy otherwise. */
static st_err hf_read_unit(st_model_source *s, int u, float *const out[ST_SRC_MAX_DST])
{
    const hf_source *h = s->impl;
    const hf_rule *r = &h->R.r[u];
    if (r->kind == MAP_COPY) return st_safetensors_read(h->file[u], h->entry[u], out[0]);
    float *tmp = malloc((size_t)h->entry[u]->numel * sizeof *tmp);
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory for tensor %s", r->hf);
    st_err e = st_safetensors_read(h->file[u], h->entry[u], tmp);
    if (!e) scatter(r, tmp, out);
    free(tmp);
    return e;
}

static void hf_close(st_model_source *s)
{
    hf_source *h = s->impl;
    if (!h) return;
    shards_close(&h->shards);
    free(h->R.r);
    free(h->file);
    free(h->entry);
    free(h);
    s->impl = NULL;
}

st_err st_hf_read_config(const char *path, st_config *cfg)
{
    char file[4096];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) ST_TRY(join(file, sizeof file, path, "config.json"));
    else snprintf(file, sizeof file, "%s", path);
    cJSON *root;
    ST_TRY(load_json(file, &root));
    hf_arch arch;
    st_err e = config_parse(root, file, cfg, &arch);
    cJSON_Delete(root);
    return e;
}

st_err st_hf_open(st_model_source *s, const char *dir)
{
    s->format = "hf";
    char path[4096];
    ST_TRY(join(path, sizeof path, dir, "config.json"));
    cJSON *root;
    ST_TRY(load_json(path, &root));
    hf_arch arch;
    st_err e = config_parse(root, path, &s->cfg, &arch);
    cJSON_Delete(root);
    ST_TRY(e);
    hf_source *h = calloc(1, sizeof *h);
    if (!h) ST_FAIL(ST_ERR_MEM, "out of memory");
    s->impl = h;
    s->close_impl = hf_close;
    s->read = hf_read_unit;
    ST_TRY(shards_open(&h->shards, dir));
    ST_TRY(check_layer_count(&h->shards, &s->cfg, arch, dir));
    ST_TRY(st_layout_init(&s->lay, &s->cfg, 1, 0));
    const st_safetensors *f;
    const st_safetensors_entry *x;
    shards_find(&h->shards, "transformer.wte.weight", &f, &x);   /* GPT-2 names come with or without the prefix */
    ST_TRY(build_rules(&h->R, &s->lay, x ? "transformer." : ""));
    ST_TRY(locate_tensors(h, arch, &s->cfg));
    /* one unit per rule, in the rules' order (hf_read_unit indexes rules by unit) */
    for (int i = 0; i < h->R.n; i++) {
        const char *names[3];
        int n = 0;
        while (n < 3 && h->R.r[i].dst[n]) names[n] = h->R.r[i].dst[n]->name, n++;
        ST_TRY(st_model_source_add_unit(s, names, n));
    }
    return ST_OK;
}

/* ==== export: files written aside, renamed together ======================== */

typedef struct {
    char *tmp[8], *final[8];
    int n;
} pending;

static void pending_abort(pending *P)
{
    for (int i = 0; i < P->n; i++) {
        unlink(P->tmp[i]);
        free(P->tmp[i]);
        free(P->final[i]);
    }
    P->n = 0;
}

/* Reserve DIR/NAME.tmp for DIR/NAME. */
static st_err pending_add(pending *P, const char *dir, const char *name, const char **tmp)
{
    ST_ASSERT(P->n < 8, "too many files in one export");
    char a[4096], b[4096 + 8];
    ST_TRY(join(a, sizeof a, dir, name));
    snprintf(b, sizeof b, "%s.tmp", a);
    P->final[P->n] = strdup(a);
    P->tmp[P->n] = strdup(b);
    if (!P->final[P->n] || !P->tmp[P->n]) {
        free(P->final[P->n]);
        free(P->tmp[P->n]);
        ST_FAIL(ST_ERR_MEM, "out of memory");
    }
    *tmp = P->tmp[P->n++];
    return ST_OK;
}

/* Rename every file into place, then make the renames durable. */
static st_err pending_commit(pending *P, const char *dir)
{
    for (int i = 0; i < P->n; i++)
        if (rename(P->tmp[i], P->final[i]) != 0)
            ST_FAIL(ST_ERR_IO, "cannot rename %s to %s: %s", P->tmp[i], P->final[i], strerror(errno));
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    for (int i = 0; i < P->n; i++) free(P->tmp[i]), free(P->final[i]);
    P->n = 0;
    return ST_OK;
}

static st_err write_bytes(pending *P, const char *dir, const char *name, const void *data, size_t n)
{
    const char *tmp;
    ST_TRY(pending_add(P, dir, name, &tmp));
    FILE *fp = fopen(tmp, "wb");
    if (!fp) ST_FAIL(ST_ERR_IO, "cannot create %s: %s", tmp, strerror(errno));
    int ok = fwrite(data, 1, n, fp) == n && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    ok = fclose(fp) == 0 && ok;
    if (!ok) ST_FAIL(ST_ERR_IO, "writing %s failed: %s", tmp, strerror(errno));
    return ST_OK;
}

/* Print json (consumed) formatted, with a final newline. */
static st_err write_json(pending *P, const char *dir, const char *name, cJSON *json)
{
    char *s = json ? cJSON_Print(json) : NULL;
    cJSON_Delete(json);
    if (!s) ST_FAIL(ST_ERR_MEM, "out of memory printing %s", name);
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        ST_FAIL(ST_ERR_MEM, "out of memory printing %s", name);
    }
    t[n] = '\n';
    st_err e = write_bytes(P, dir, name, t, n + 1);
    free(t);
    return e;
}

/* The shortest decimal that reads back as f, so 1e-5f prints as 1e-05. */
static double short_float(float f)
{
    char buf[40];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f) break;
    }
    return strtod(buf, NULL);
}

static const char *torch_dtype(st_dtype d)
{
    return d == ST_DT_F16 ? "float16" : d == ST_DT_BF16 ? "bfloat16" : "float32";
}

/* Everything transformers reads to rebuild the model. */
/* head NULL: the language model; else a sequence classifier. */
static cJSON *config_json(const st_config *c, const st_tokenizer *tok, st_dtype dtype, const st_hf_head *head)
{
    static const char *const classifier[] = {[ARCH_GPT2] = "GPT2ForSequenceClassification",
                                             [ARCH_LLAMA] = "LlamaForSequenceClassification",
                                             [ARCH_MISTRAL] = "MistralForSequenceClassification",
                                             [ARCH_QWEN2] = "Qwen2ForSequenceClassification"};
    cJSON *j = cJSON_CreateObject();
    int gpt2 = c->family == ST_FAMILY_GPT2;
    hf_arch arch = gpt2 ? ARCH_GPT2 : c->qkv_bias ? ARCH_QWEN2 : ARCH_LLAMA;
    cJSON *archs = cJSON_AddArrayToObject(j, "architectures");
    cJSON_AddItemToArray(archs, cJSON_CreateString(head ? classifier[arch] : arch_names[arch].arch));
    if (head) {
        cJSON *id2 = cJSON_AddObjectToObject(j, "id2label"), *l2id = cJSON_AddObjectToObject(j, "label2id");
        for (int k = 0; k < head->n_labels; k++) {
            char num[16];
            snprintf(num, sizeof num, "%d", k);
            cJSON_AddStringToObject(id2, num, head->labels[k]);
            if (!cJSON_GetObjectItemCaseSensitive(l2id, head->labels[k]))
                cJSON_AddNumberToObject(l2id, head->labels[k], k);
        }
        cJSON_AddNumberToObject(j, "num_labels", head->n_labels);
        /* transformers pools each row's last token that is not pad_token_id. shardtune pools
         * the last token. Classification docs (prepare --format classify) never hold eos, so
         * pad = eos agrees and batches work; preference sequences end with eos under the
         * default and chatml templates, so a reward model (1 label) gets no pad token: then
         * transformers pools the last token too (and asks for a pad token to batch). */
        if (tok && st_tokenizer_eos(tok) >= 0 && head->n_labels > 1)
            cJSON_AddNumberToObject(j, "pad_token_id", st_tokenizer_eos(tok));
    }
    cJSON_AddStringToObject(j, "model_type", arch_names[arch].model_type);
    cJSON_AddNumberToObject(j, "vocab_size", c->vocab_size);
    if (gpt2) {
        cJSON_AddNumberToObject(j, "n_positions", c->max_seq);
        cJSON_AddNumberToObject(j, "n_ctx", c->max_seq);
        cJSON_AddNumberToObject(j, "n_embd", c->d_model);
        cJSON_AddNumberToObject(j, "n_layer", c->n_layer);
        cJSON_AddNumberToObject(j, "n_head", c->n_head);
        if (c->d_ff == 4 * c->d_model) cJSON_AddNullToObject(j, "n_inner");   /* GPT-2's own spelling of 4C */
        else cJSON_AddNumberToObject(j, "n_inner", c->d_ff);
        cJSON_AddStringToObject(j, "activation_function", "gelu_new");
        cJSON_AddNumberToObject(j, "layer_norm_epsilon", short_float(c->norm_eps));
        cJSON_AddTrueToObject(j, "scale_attn_weights");
    } else {
        cJSON_AddNumberToObject(j, "hidden_size", c->d_model);
        cJSON_AddNumberToObject(j, "intermediate_size", c->d_ff);
        cJSON_AddNumberToObject(j, "num_hidden_layers", c->n_layer);
        cJSON_AddNumberToObject(j, "num_attention_heads", c->n_head);
        cJSON_AddNumberToObject(j, "num_key_value_heads", c->n_kv_head);
        cJSON_AddNumberToObject(j, "head_dim", c->d_model / c->n_head);
        cJSON_AddNumberToObject(j, "max_position_embeddings", c->max_seq);
        cJSON_AddNumberToObject(j, "rms_norm_eps", short_float(c->norm_eps));
        cJSON_AddNumberToObject(j, "rope_theta", short_float(c->rope_theta));
        cJSON_AddNullToObject(j, "rope_scaling");
        cJSON_AddStringToObject(j, "hidden_act", "silu");
        if (arch == ARCH_QWEN2) {
            cJSON_AddFalseToObject(j, "use_sliding_window");
            cJSON_AddNumberToObject(j, "max_window_layers", c->n_layer);
        } else {
            cJSON_AddFalseToObject(j, "attention_bias");
            cJSON_AddFalseToObject(j, "mlp_bias");
        }
    }
    cJSON_AddBoolToObject(j, "tie_word_embeddings", c->tied_embeddings);
    cJSON_AddStringToObject(j, "torch_dtype", torch_dtype(dtype));
    cJSON_AddTrueToObject(j, "use_cache");
    if (tok && st_tokenizer_bos(tok) >= 0) cJSON_AddNumberToObject(j, "bos_token_id", st_tokenizer_bos(tok));
    if (tok && st_tokenizer_eos(tok) >= 0) cJSON_AddNumberToObject(j, "eos_token_id", st_tokenizer_eos(tok));
    return j;
}

static cJSON *generation_json(const st_tokenizer *tok)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddTrueToObject(j, "_from_model_config");
    if (tok && st_tokenizer_bos(tok) >= 0) cJSON_AddNumberToObject(j, "bos_token_id", st_tokenizer_bos(tok));
    if (tok && st_tokenizer_eos(tok) >= 0) cJSON_AddNumberToObject(j, "eos_token_id", st_tokenizer_eos(tok));
    return j;
}

/* model.safetensors: every rule's tensor in the Hugging Face layout. */
/* head NULL: the language model; else the body without lm_head, plus score.weight last. */
static st_err write_weights(pending *P, const char *dir, const st_layout *lay, const float *params,
                            st_dtype dtype, const st_hf_head *head)
{
    rules R;
    ST_TRY(build_rules(&R, lay, "transformer."));
    if (head) { /* a classifier has no LM head: drop its rule */
        int k = 0;
        for (int i = 0; i < R.n; i++)
            if (strcmp(R.r[i].hf, "lm_head.weight")) R.r[k++] = R.r[i];
        R.n = k;
    }
    st_safetensors_spec *spec = calloc((size_t)R.n + 2, sizeof *spec);
    float *tmp = NULL;
    uint64_t widest = 0;
    for (int i = 0; i < R.n && spec; i++) {
        spec[i] = (st_safetensors_spec){.name = R.r[i].hf, .dtype = dtype, .ndim = R.r[i].ndim,
                                        .shape = {R.r[i].shape[0], R.r[i].shape[1]}};
        if (R.r[i].kind != MAP_COPY && rule_numel(&R.r[i]) > widest) widest = rule_numel(&R.r[i]);
    }
    if (spec && head)
        spec[R.n] = (st_safetensors_spec){.name = "score.weight", .dtype = dtype, .ndim = 2,
                                          .shape = {head->n_labels, lay->cfg.d_model}};
    const int n_spec = R.n + (head != NULL);
    if (spec && widest) tmp = malloc((size_t)widest * sizeof *tmp);
    const char *path;
    st_err e = !spec || (widest && !tmp)
                   ? st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory exporting weights")
                   : pending_add(P, dir, "model.safetensors", &path);
    static const char *const meta[] = {"format", "pt", NULL, NULL};
    st_safetensors_writer w;
    if (!e) e = st_safetensors_writer_begin(&w, path, spec, n_spec, meta);
    for (int i = 0; !e && i < R.n; i++) {
        const hf_rule *r = &R.r[i];
        if (r->kind == MAP_COPY) {
            e = st_safetensors_writer_put(&w, params + r->dst[0]->offset);
        } else {
            gather(r, params, tmp);
            e = st_safetensors_writer_put(&w, tmp);
        }
        if (e) st_safetensors_writer_abort(&w);
    }
    if (!e && head && (e = st_safetensors_writer_put(&w, head->weight))) st_safetensors_writer_abort(&w);
    if (!e) e = st_safetensors_writer_end(&w);
    free(tmp);
    free(spec);
    free(R.r);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ---- tokenizer files ---- */

/* GPT-2's printable stand-in (UTF-8) for each byte. */
static void byte_chars(char out[256][3])
{
    uint32_t cp[256];
    st_tok_bytes_to_unicode(cp);
    for (int b = 0; b < 256; b++) {
        memset(out[b], 0, 3);
        if (cp[b] < 0x80) out[b][0] = (char)cp[b];
        else out[b][0] = (char)(0xc0 | cp[b] >> 6), out[b][1] = (char)(0x80 | (cp[b] & 0x3f));
    }
}

/* A Hugging Face byte-level BPE tokenizer.json equivalent to a "gpt2" or
 * "byte" tokenizer (the byte one: 256 byte tokens, no merges, no regex). */
static cJSON *bytelevel_json(const st_tokenizer *t)
{
    int byte_kind = t->kind == ST_TOK_BYTE;
    char bc[256][3];
    byte_chars(bc);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "version", "1.0");
    cJSON_AddNullToObject(j, "truncation");
    cJSON_AddNullToObject(j, "padding");
    cJSON *added = cJSON_AddArrayToObject(j, "added_tokens");
    for (int i = 0; i < t->n_vocab; i++) {
        if (!t->text[i] || !(t->is_added[i] || i == t->bos || i == t->eos)) continue;
        cJSON *a = cJSON_CreateObject();
        cJSON_AddNumberToObject(a, "id", i);
        cJSON_AddStringToObject(a, "content", t->text[i]);
        cJSON_AddFalseToObject(a, "single_word");
        cJSON_AddFalseToObject(a, "lstrip");
        cJSON_AddFalseToObject(a, "rstrip");
        cJSON_AddFalseToObject(a, "normalized");
        cJSON_AddBoolToObject(a, "special", t->is_added[i] != 2);
        cJSON_AddItemToArray(added, a);
    }
    cJSON_AddNullToObject(j, "normalizer");
    const char *parts[3] = {"pre_tokenizer", "post_processor", "decoder"};
    for (int k = 0; k < 3; k++) {
        cJSON *p = cJSON_AddObjectToObject(j, parts[k]);
        cJSON_AddStringToObject(p, "type", "ByteLevel");
        cJSON_AddBoolToObject(p, "add_prefix_space", k > 0);
        cJSON_AddBoolToObject(p, "trim_offsets", k != 1);
        cJSON_AddBoolToObject(p, "use_regex", !(k == 0 && byte_kind));
    }
    cJSON *m = cJSON_AddObjectToObject(j, "model");
    cJSON_AddStringToObject(m, "type", "BPE");
    cJSON_AddNullToObject(m, "dropout");
    cJSON_AddNullToObject(m, "unk_token");
    cJSON_AddStringToObject(m, "continuing_subword_prefix", "");
    cJSON_AddStringToObject(m, "end_of_word_suffix", "");
    cJSON_AddFalseToObject(m, "fuse_unk");
    cJSON_AddFalseToObject(m, "byte_fallback");
    cJSON *vocab = cJSON_AddObjectToObject(m, "vocab");
    for (int i = 0; i < t->n_vocab; i++) {
        const char *s = byte_kind && i < 256 ? bc[i] : t->text[i];
        if (s) cJSON_AddNumberToObject(vocab, s, i);
    }
    cJSON *merges = cJSON_AddArrayToObject(m, "merges");
    for (int k = 0; k < t->n_merges; k++) {
        const char *a = t->text[t->merge_pair[2 * k]], *b = t->text[t->merge_pair[2 * k + 1]];
        size_t n = strlen(a) + strlen(b) + 2;
        char *s = malloc(n);
        if (s) snprintf(s, n, "%s %s", a, b);
        cJSON_AddItemToArray(merges, s ? cJSON_CreateString(s) : NULL);
        free(s);
    }
    return j;
}

static cJSON *tokenizer_config_json(const st_tokenizer *t, const st_config *c)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "tokenizer_class", "PreTrainedTokenizerFast");
    if (t->bos >= 0) cJSON_AddStringToObject(j, "bos_token", t->text[t->bos]);
    if (t->eos >= 0) cJSON_AddStringToObject(j, "eos_token", t->text[t->eos]);
    cJSON_AddBoolToObject(j, "add_bos_token", st_tokenizer_adds_bos(t));
    cJSON_AddBoolToObject(j, "add_eos_token", st_tokenizer_adds_eos(t));
    cJSON_AddNumberToObject(j, "model_max_length", c->max_seq);
    cJSON_AddFalseToObject(j, "clean_up_tokenization_spaces");
    if (t->chat_template) cJSON_AddStringToObject(j, "chat_template", t->chat_template);
    return j;
}

static st_err write_tokenizer(pending *P, const char *dir, const st_tokenizer *t, const st_config *c)
{
    if (t->kind == ST_TOK_LLAMA2C) {
        fprintf(stderr, "shardtune: warning: a llama2.c tokenizer has no tokenizer.json form here; %s gets none "
                "(put the original sentencepiece tokenizer.model next to the model)\n", dir);
        return ST_OK;
    }
    if (t->kind == ST_TOK_HF) {   /* the original files, byte for byte */
        ST_TRY(write_bytes(P, dir, "tokenizer.json", t->file[0], t->file_len[0]));
        if (t->file_len[1]) return write_bytes(P, dir, "tokenizer_config.json", t->file[1], t->file_len[1]);
        return write_json(P, dir, "tokenizer_config.json", tokenizer_config_json(t, c));
    }
    ST_TRY(write_json(P, dir, "tokenizer.json", bytelevel_json(t)));
    return write_json(P, dir, "tokenizer_config.json", tokenizer_config_json(t, c));
}

static st_err make_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode)) ST_FAIL(ST_ERR_ARG, "%s exists and is not a directory", dir);
        return ST_OK;
    }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) ST_FAIL(ST_ERR_IO, "cannot create %s: %s", dir, strerror(errno));
    return ST_OK;
}

static st_err write_model(const char *dir, const st_config *cfg, const float *params, const st_tokenizer *tok,
                         st_dtype dtype, const st_hf_head *head)
{
    if (dtype != ST_DT_F32 && dtype != ST_DT_F16 && dtype != ST_DT_BF16)
        ST_FAIL(ST_ERR_ARG, "Hugging Face export writes F32, F16 or BF16, not %s", st_dtype_name(dtype));
    ST_TRY(make_dir(dir));
    char index[4096];
    ST_TRY(join(index, sizeof index, dir, "model.safetensors.index.json"));
    if (exists(index))   /* it would win over our model.safetensors when the directory is read */
        ST_FAIL(ST_ERR_ARG, "%s holds a sharded model (model.safetensors.index.json); export into an empty "
                "directory", dir);
    st_layout lay;
    ST_TRY(st_layout_init(&lay, cfg, 1, 0));
    pending P = {0};
    st_err e = write_weights(&P, dir, &lay, params, dtype, head);
    if (!e) e = write_json(&P, dir, "config.json", config_json(cfg, tok, dtype, head));
    if (!e && !head) e = write_json(&P, dir, "generation_config.json", generation_json(tok));
    if (!e && tok) e = write_tokenizer(&P, dir, tok, cfg);
    if (!e) e = pending_commit(&P, dir);
    pending_abort(&P);
    st_layout_free(&lay);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_hf_write(const char *dir, const st_config *cfg, const float *params, const st_tokenizer *tok,
                   st_dtype dtype)
{
    return write_model(dir, cfg, params, tok, dtype, NULL);
}

st_err st_hf_write_classifier(const char *dir, const st_config *cfg, const float *params, const st_tokenizer *tok,
                              st_dtype dtype, const st_hf_head *head)
{
    if (!head || head->n_labels < 1 || !head->weight || !head->labels)
        ST_FAIL(ST_ERR_ARG, "st_hf_write_classifier: no head");
    return write_model(dir, cfg, params, tok, dtype, head);
}

/* ==== a PEFT LoRA adapter: adapter_config.json + adapter_model.safetensors === */

st_err st_hf_write_peft(const char *dir, const st_config *cfg, const st_layout *lora, const float *params,
                        int rank, float alpha, float dropout, const char *const *target_modules, int n_targets,
                        st_dtype dtype)
{
    if (cfg->family != ST_FAMILY_LLAMA)
        ST_FAIL(ST_ERR_ARG, "PEFT adapter export is for Llama-family models (GPT-2's fused c_attn has no "
                "separate q/k/v modules); export with --merge-lora instead");
    if (lora->tp_size != 1) ST_FAIL(ST_ERR_INTERNAL, "PEFT export needs the whole adapters (tp 1)");
    ST_TRY(make_dir(dir));
    int n = lora->n_tensors;
    st_safetensors_spec *spec = calloc((size_t)n, sizeof *spec);
    char **names = calloc((size_t)n, sizeof *names);
    st_err e = spec && names ? ST_OK : st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory");
    for (int i = 0; !e && i < n; i++) {
        const st_tensor *t = &lora->tensors[i];
        size_t len = strlen(t->name) + 32;
        names[i] = malloc(len);
        if (!names[i]) { e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory"); break; }
        snprintf(names[i], len, "base_model.model.%s", t->name); /* PEFT's prefix */
        spec[i] = (st_safetensors_spec){.name = names[i], .dtype = dtype, .ndim = t->ndim};
        spec[i].shape[0] = t->shape[0];
        spec[i].shape[1] = t->shape[1];
    }
    pending P = {0};
    const char *tmp = NULL;
    if (!e) e = pending_add(&P, dir, "adapter_model.safetensors", &tmp);
    st_safetensors_writer w;
    static const char *const meta[] = {"format", "pt", NULL};
    if (!e) {
        e = st_safetensors_writer_begin(&w, tmp, spec, n, meta);
        for (int i = 0; !e && i < n; i++) e = st_safetensors_writer_put(&w, params + lora->tensors[i].offset);
        if (!e) e = st_safetensors_writer_end(&w);
        else st_safetensors_writer_abort(&w);
    }
    if (!e) {
        cJSON *c = cJSON_CreateObject(), *tm = cJSON_CreateArray();
        cJSON_AddStringToObject(c, "peft_type", "LORA");
        cJSON_AddStringToObject(c, "task_type", "CAUSAL_LM");
        cJSON_AddNumberToObject(c, "r", rank);
        cJSON_AddNumberToObject(c, "lora_alpha", short_float(alpha));
        cJSON_AddNumberToObject(c, "lora_dropout", short_float(dropout));
        cJSON_AddStringToObject(c, "bias", "none");
        cJSON_AddBoolToObject(c, "fan_in_fan_out", 0);
        cJSON_AddBoolToObject(c, "inference_mode", 1);
        cJSON_AddNullToObject(c, "base_model_name_or_path");
        for (int i = 0; i < n_targets; i++) cJSON_AddItemToArray(tm, cJSON_CreateString(target_modules[i]));
        cJSON_AddItemToObject(c, "target_modules", tm);
        e = write_json(&P, dir, "adapter_config.json", c);
    }
    if (!e) e = pending_commit(&P, dir);
    pending_abort(&P);
    for (int i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(spec);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}
