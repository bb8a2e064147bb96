/* make_hf_model.c: writes a synthetic Hugging Face Llama model directory
 * (config.json + model.safetensors, F32 or BF16) for the conversion
 * benchmark, straight from the safetensors spec (8-byte little-endian header
 * length, JSON header, raw tensors) and independent of io/formats/safetensors.c.
 *
 *   build/benchmarks/make_hf_model DIR [L C H KV F V [F32|BF16]]
 *
 * The default (16 layers, d_model 1024, 16 heads, 8 kv heads, d_ff 2816,
 * vocabulary 32000, untied head) is 252M parameters: 1.0 GB in F32.
 * Values are small deterministic numbers (finite, so the import accepts them).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct { char name[96]; int64_t rows, cols; } tensor; /* cols = 0: 1-D */

static int n_t;
static tensor ts[2048];

static void add(const char *name, int64_t rows, int64_t cols)
{
    snprintf(ts[n_t].name, sizeof ts[n_t].name, "%s", name);
    ts[n_t].rows = rows, ts[n_t].cols = cols;
    n_t++;
}

static int64_t numel(const tensor *t) { return t->rows * (t->cols ? t->cols : 1); }

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 8 && argc != 9) {
        fprintf(stderr, "usage: make_hf_model DIR [L C H KV F V [F32|BF16]]\n");
        return 2;
    }
    int64_t L = 16, C = 1024, H = 16, KV = 8, F = 2816, V = 32000;
    if (argc >= 8) L = atoll(argv[2]), C = atoll(argv[3]), H = atoll(argv[4]), KV = atoll(argv[5]),
                   F = atoll(argv[6]), V = atoll(argv[7]);
    int bf16 = argc == 9 && !strcmp(argv[8], "BF16");
    if (L < 1 || L > 200 || C < 1 || H < 1 || KV < 1 || C % H || H % KV || F < 1 || V < 1) {
        fprintf(stderr, "make_hf_model: inconsistent sizes\n");
        return 2;
    }
    int64_t hd = C / H, esz = bf16 ? 2 : 4;
    char name[96];
    add("lm_head.weight", V, C);
    add("model.embed_tokens.weight", V, C);
    for (int64_t l = 0; l < L; l++) {
        static const char *const mats[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
        int64_t shape[7][2] = {{H * hd, C}, {KV * hd, C}, {KV * hd, C}, {C, H * hd}, {F, C}, {F, C}, {C, F}};
        snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)l);
        add(name, C, 0);
        snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
        add(name, C, 0);
        for (int k = 0; k < 7; k++) {
            snprintf(name, sizeof name, "model.layers.%lld.%s.weight", (long long)l, mats[k]);
            add(name, shape[k][0], shape[k][1]);
        }
    }
    add("model.norm.weight", C, 0);

    char path[4096];
    mkdir(argv[1], 0755);
    snprintf(path, sizeof path, "%s/config.json", argv[1]);
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); return 1; }
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %lld, "
               "\"intermediate_size\": %lld, \"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, "
               "\"num_key_value_heads\": %lld, \"vocab_size\": %lld, \"max_position_embeddings\": 2048, "
               "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"hidden_act\": \"silu\", "
               "\"tie_word_embeddings\": false, \"torch_dtype\": \"%s\"}\n",
            (long long)C, (long long)F, (long long)L, (long long)H, (long long)KV, (long long)V,
            bf16 ? "bfloat16" : "float32");
    if (fclose(f)) { perror(path); return 1; }

    /* header: tensors in the order they are written, offsets tiling the data */
    size_t hcap = (size_t)n_t * 200 + 64, hn = 0;
    char *h = malloc(hcap);
    if (!h) return 1;
    uint64_t off = 0;
    hn += (size_t)snprintf(h + hn, hcap - hn, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n_t; i++) {
        uint64_t end = off + (uint64_t)numel(&ts[i]) * esz;
        if (ts[i].cols)
            hn += (size_t)snprintf(h + hn, hcap - hn, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld,%lld],\"data_offsets\":[%llu,%llu]}",
                                   ts[i].name, bf16 ? "BF16" : "F32", (long long)ts[i].rows, (long long)ts[i].cols,
                                   (unsigned long long)off, (unsigned long long)end);
        else
            hn += (size_t)snprintf(h + hn, hcap - hn, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[%lld],\"data_offsets\":[%llu,%llu]}",
                                   ts[i].name, bf16 ? "BF16" : "F32", (long long)ts[i].rows,
                                   (unsigned long long)off, (unsigned long long)end);
        off = end;
    }
    hn += (size_t)snprintf(h + hn, hcap - hn, "}");
    while (hn % 8) h[hn++] = ' '; /* the spec allows trailing spaces; keeps the data 8-aligned */
    snprintf(path, sizeof path, "%s/model.safetensors", argv[1]);
    f = fopen(path, "wb");
    if (!f) { perror(path); return 1; }
    uint8_t len[8];
    for (int b = 0; b < 8; b++) len[b] = (uint8_t)((uint64_t)hn >> (8 * b));
    fwrite(len, 1, 8, f);
    fwrite(h, 1, hn, f);
    free(h);
    /* data, one tensor at a time; norms are 1, matrices small values */
    size_t cap = 0;
    uint8_t *buf = NULL;
    for (int i = 0; i < n_t; i++) {
        size_t n = (size_t)numel(&ts[i]);
        if (n * esz > cap) {
            free(buf);
            buf = malloc(cap = n * esz);
            if (!buf) return 1;
        }
        for (size_t k = 0; k < n; k++) {
            float x = ts[i].cols ? (float)((int)((k * 2654435761u + (size_t)i) % 2001) - 1000) * 2e-5f : 1.0f;
            uint32_t bits;
            memcpy(&bits, &x, 4);
            if (bf16) { uint16_t b = (uint16_t)(bits >> 16); memcpy(buf + 2 * k, &b, 2); } /* truncated: fine for synthetic data */
            else memcpy(buf + 4 * k, &bits, 4);                                          /* little-endian host */
        }
        if (fwrite(buf, esz, n, f) != n) { perror(path); return 1; }
    }
    free(buf);
    if (fclose(f)) { perror(path); return 1; }
    printf("wrote %s: %d tensors, %.1fM parameters, %.3f GB %s\n", path, n_t, (double)off / esz / 1e6, (8 + hn + off) / 1e9,
           bf16 ? "BF16" : "F32");
    return 0;
}
