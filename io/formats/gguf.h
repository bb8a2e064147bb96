/* gguf.h: GGUF, the file format of llama.cpp (ggml): a small reader, a
 * streaming writer, and the export of a shardtune model for llama.cpp.
 *
 * The format (version 3, little-endian; github.com/ggml-org/ggml docs/gguf.md):
 *   u32 magic "GGUF", u32 version, u64 tensor_count, u64 kv_count
 *   kv_count x  { string key, u32 value_type, value }
 *   tensor_count x { string name, u32 n_dims, u64 dims[n_dims] (fastest
 *                    first: the reverse of a row-major shape), u32 ggml_type,
 *                    u64 offset (from the start of the data section) }
 *   padding to general.alignment (default 32), then the tensor data, each
 *   tensor at an offset that is a multiple of the alignment.
 *   string = u64 length + bytes (no NUL); array = u32 element type + u64
 *   count + elements.
 *
 * The reader validates everything before handing it out (counts against the
 * bytes left, string and array lengths, known types, no nested arrays, unique
 * keys and tensor names, alignment a power of two, dims and byte sizes
 * without overflow, data offsets aligned, inside the file and not
 * overlapping), so hostile files give ST_ERR_FORMAT and never an
 * out-of-bounds read.
 */
#ifndef ST_GGUF_H
#define ST_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/err.h"
#include "io/tok/tokenizer.h"

#define ST_GGUF_MAGIC 0x46554747u        /* "GGUF" read as little-endian u32 */
#define ST_GGUF_VERSION 3u
#define ST_GGUF_DEFAULT_ALIGNMENT 32u
#define ST_GGUF_MAX_DIMS 4
#define ST_GGUF_MAX_NAME 63              /* ggml's GGML_MAX_NAME (64) minus the NUL */

typedef enum {
    ST_GGUF_UINT8 = 0, ST_GGUF_INT8 = 1, ST_GGUF_UINT16 = 2, ST_GGUF_INT16 = 3, ST_GGUF_UINT32 = 4,
    ST_GGUF_INT32 = 5, ST_GGUF_FLOAT32 = 6, ST_GGUF_BOOL = 7, ST_GGUF_STRING = 8, ST_GGUF_ARRAY = 9,
    ST_GGUF_UINT64 = 10, ST_GGUF_INT64 = 11, ST_GGUF_FLOAT64 = 12
} st_gguf_type;

/* ggml tensor types this code reads or writes. */
enum { ST_GGML_F32 = 0, ST_GGML_F16 = 1, ST_GGML_I8 = 24, ST_GGML_I16 = 25, ST_GGML_I32 = 26,
       ST_GGML_I64 = 27, ST_GGML_F64 = 28, ST_GGML_BF16 = 30 };

/* llama.cpp's token types (tokenizer.ggml.token_type). */
enum { ST_GGUF_TOK_NORMAL = 1, ST_GGUF_TOK_UNKNOWN = 2, ST_GGUF_TOK_CONTROL = 3,
       ST_GGUF_TOK_USER_DEFINED = 4, ST_GGUF_TOK_UNUSED = 5, ST_GGUF_TOK_BYTE = 6 };

/* ---- reading ------------------------------------------------------------ */

typedef struct {
    char *key;                   /* NUL-terminated copy */
    uint32_t type;               /* st_gguf_type */
    uint32_t arr_type;           /* element type when type == ST_GGUF_ARRAY */
    uint64_t n;                  /* array length; 1 for a scalar */
    const uint8_t *val;          /* the value in the buffer (arrays: the first element) */
    uint64_t *str_off;           /* string arrays: offset of element i from val */
} st_gguf_kv;

typedef struct {
    char *name;
    uint32_t ndim;
    int64_t dims[ST_GGUF_MAX_DIMS];   /* fastest first, as stored */
    uint32_t type;                    /* ggml type */
    uint64_t offset;                  /* from data_start */
    uint64_t nbytes;
    const uint8_t *data;              /* inside the buffer */
} st_gguf_tensor;

typedef struct {
    const uint8_t *buf;
    size_t size;
    void *map;                   /* set by st_gguf_open */
    uint32_t version, alignment;
    uint64_t data_start;
    st_gguf_kv *kv;
    uint64_t n_kv;
    st_gguf_tensor *tensors;
    uint64_t n_tensors;
} st_gguf;

/* Validate and index size bytes at buf (kept, not copied). name: for messages. */
st_err st_gguf_parse(st_gguf *g, const uint8_t *buf, size_t size, const char *name);
/* mmap path and parse it. */
st_err st_gguf_open(st_gguf *g, const char *path);
void st_gguf_close(st_gguf *g);

const st_gguf_kv *st_gguf_find(const st_gguf *g, const char *key);
const st_gguf_tensor *st_gguf_find_tensor(const st_gguf *g, const char *name);
/* Typed scalar getters: ST_ERR_FORMAT naming the key when missing or of
 * another type. */
st_err st_gguf_get_u32(const st_gguf *g, const char *key, uint32_t *v);
st_err st_gguf_get_f32(const st_gguf *g, const char *key, float *v);
st_err st_gguf_get_str(const st_gguf *g, const char *key, const char **s, uint64_t *len);
/* Element i of an array (checked against its element type and length). */
st_err st_gguf_arr_str(const st_gguf_kv *kv, uint64_t i, const char **s, uint64_t *len);
st_err st_gguf_arr_i32(const st_gguf_kv *kv, uint64_t i, int32_t *v);
st_err st_gguf_arr_f32(const st_gguf_kv *kv, uint64_t i, float *v);

/* ---- writing ------------------------------------------------------------ */

typedef struct st_gguf_writer st_gguf_writer;

/* Collect metadata and tensor descriptions in memory, then write the file:
 * header first, then each tensor's data in the order added. */
st_err st_gguf_writer_new(st_gguf_writer **w);
void st_gguf_writer_free(st_gguf_writer *w);   /* also removes a half-written file */
st_err st_gguf_set_u32(st_gguf_writer *w, const char *key, uint32_t v);
st_err st_gguf_set_f32(st_gguf_writer *w, const char *key, float v);
st_err st_gguf_set_bool(st_gguf_writer *w, const char *key, int v);
st_err st_gguf_set_str(st_gguf_writer *w, const char *key, const char *s);
/* len may be NULL (then strlen). */
st_err st_gguf_set_arr_str(st_gguf_writer *w, const char *key, const char *const *s, const size_t *len,
                           uint64_t n);
st_err st_gguf_set_arr_i32(st_gguf_writer *w, const char *key, const int32_t *v, uint64_t n);
st_err st_gguf_set_arr_f32(st_gguf_writer *w, const char *key, const float *v, uint64_t n);
/* A tensor of ggml_type F32, F16 or BF16 with a row-major shape (ndim 1..4). */
st_err st_gguf_add_tensor(st_gguf_writer *w, const char *name, uint32_t ggml_type, int ndim,
                          const int64_t *shape);
/* Create path and write everything but the tensor data. */
st_err st_gguf_write_begin(st_gguf_writer *w, const char *path);
/* The next tensor's values as fp32 (converted to its type) and padding. */
st_err st_gguf_write_tensor(st_gguf_writer *w, const float *x);
/* All tensors written: flush, fsync and close. */
st_err st_gguf_write_end(st_gguf_writer *w);

/* ---- a shardtune model for llama.cpp -------------------------------------- */

/* Write path (via path.tmp + rename) as a GGUF that llama.cpp loads:
 * architecture "llama" or "gpt2", the metadata keys llama.cpp reads, tensors
 * under llama.cpp's names (llama: q/k rows permuted to Meta's interleaved
 * RoPE order as convert_hf_to_gguf.py does; gpt2: fused attn_qkv, output =
 * token embedding), and the tokenizer when tok != NULL. params: a 1x1
 * layout of cfg. ggml_type F32 or F16 (for F16, norms, biases and the gpt2
 * position table stay F32, as llama.cpp's converter keeps them).
 * tokenizer.ggml.pre names llama.cpp's pre-tokenizer for the tokenizer
 * (gpt-2, llama-bpe for Llama 3, qwen2 for Qwen2/3); a tokenizer llama.cpp
 * would split differently is refused (ST_ERR_ARG) unless force. */
st_err st_gguf_export(const char *path, const st_config *cfg, const float *params,
                      const st_tokenizer *tok, uint32_t ggml_type, const char *model_name, int force);

#endif
