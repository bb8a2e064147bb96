/* fuzz_gguf.c: libFuzzer harness for the GGUF reader in io/gguf (not part of make check).
 *
 * Build and run by hand from the repo root (gguf.c also holds the model
 * export, hence the extra objects):
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Iio \
 *     $(pkg-config --cflags libcjson libpcre2-8) tests/fuzz/fuzz_gguf.c io/formats/gguf.c io/formats/safetensors.c \
 *     io/formats/llama2c.c io/tok/tokenizer.c io/tok_*.c src/core/params.c src/core/config.c src/core/rng.c src/core/err.c \
 *     $(pkg-config --libs libcjson libpcre2-8) -lm -o /tmp/fuzz_gguf
 *   /tmp/fuzz_gguf -max_total_time=300 /tmp/fuzz_gguf_corpus
 *
 * The input is a whole file. Whatever st_gguf_parse accepts is then walked
 * completely: every metadata value through the typed getters (every element
 * of every array), every tensor's data bytes; the invariants the reader
 * promises (aligned offsets inside the file, sizes from dims) are checked.
 */
#include <stdint.h>
#include <string.h>

#include "io/formats/gguf.h"

static volatile uint8_t sink;   /* touching bytes lets ASan flag any read outside the input */

static void touch(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    for (uint64_t i = 0; i < n; i++) sink ^= b[i];
}

static void walk_kv(const st_gguf *g, const st_gguf_kv *kv)
{
    if (st_gguf_find(g, kv->key) == NULL) __builtin_trap();
    const char *s;
    uint64_t len;
    uint32_t u;
    float f;
    int32_t v;
    if (kv->type == ST_GGUF_STRING && st_gguf_get_str(g, kv->key, &s, &len) == ST_OK) touch(s, len);
    if (kv->type == ST_GGUF_UINT32 && st_gguf_get_u32(g, kv->key, &u) != ST_OK) __builtin_trap();
    if (kv->type == ST_GGUF_FLOAT32 && st_gguf_get_f32(g, kv->key, &f) != ST_OK) __builtin_trap();
    if (kv->type != ST_GGUF_ARRAY) return;
    for (uint64_t i = 0; i < kv->n; i++) {
        if (kv->arr_type == ST_GGUF_STRING) {
            if (st_gguf_arr_str(kv, i, &s, &len) != ST_OK) __builtin_trap();
            touch(s, len);
        } else if (kv->arr_type == ST_GGUF_INT32) {
            if (st_gguf_arr_i32(kv, i, &v) != ST_OK) __builtin_trap();
        } else if (kv->arr_type == ST_GGUF_FLOAT32) {
            if (st_gguf_arr_f32(kv, i, &f) != ST_OK) __builtin_trap();
        }
    }
    if (kv->arr_type == ST_GGUF_STRING && st_gguf_arr_str(kv, kv->n, &s, &len) == ST_OK) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_gguf g;
    if (st_gguf_parse(&g, data, size, "fuzz") != ST_OK) {
        st_error_clear();
        return 0;
    }
    for (uint64_t i = 0; i < g.n_kv; i++) walk_kv(&g, &g.kv[i]);
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const st_gguf_tensor *t = &g.tensors[i];
        if (t->offset % g.alignment || t->data != data + g.data_start + t->offset) __builtin_trap();
        if (g.data_start + t->offset + t->nbytes > size) __builtin_trap();
        if (st_gguf_find_tensor(&g, t->name) != t) __builtin_trap();
        touch(t->data, t->nbytes);
    }
    st_gguf_close(&g);
    st_error_clear();
    return 0;
}
