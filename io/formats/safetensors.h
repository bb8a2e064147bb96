/* safetensors.h: Hugging Face's safetensors files, read and written tensor by
 * tensor, plus the fp16 / bf16 conversions that GGUF export shares.
 *
 * The format (https://github.com/huggingface/safetensors):
 *   8 bytes   N, little-endian u64: the header's length
 *   N bytes   JSON object {"NAME": {"dtype": "F32", "shape": [d0, ...],
 *             "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
 *             (may be padded with trailing spaces)
 *   the rest  the tensors' bytes, row-major, little-endian; offsets are
 *             relative to the end of the header, and the tensors tile the
 *             data exactly: no overlaps, no holes, nothing after the last.
 *
 * Files come from outside: st_safetensors_parse checks every claim of the
 * header against the file size (header length <= 100 MB, JSON object, known
 * dtype, integer shape whose byte size does not overflow and equals end -
 * begin, offsets inside the data, no overlap or gap, unique UTF-8 names)
 * before anything is read, and every error names the file and the tensor.
 * Reading is one tensor at a time with pread into the caller's buffer, so a
 * model's import holds at most one source tensor beyond its own parameters.
 */
#ifndef ST_SAFETENSORS_H
#define ST_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define ST_SAFETENSORS_MAX_HEADER (100ull << 20)
#define ST_SAFETENSORS_MAX_DIMS 8

/* Every dtype of the format (so a file with, say, an int64 buffer still
 * parses); only F32, F16 and BF16 can be read as model weights. */
typedef enum {
    ST_DT_BOOL, ST_DT_U8, ST_DT_I8, ST_DT_F8_E4M3, ST_DT_F8_E5M2, ST_DT_I16, ST_DT_U16,
    ST_DT_F16, ST_DT_BF16, ST_DT_I32, ST_DT_U32, ST_DT_F32, ST_DT_F64, ST_DT_I64, ST_DT_U64,
    ST_DT_COUNT
} st_dtype;

const char *st_dtype_name(st_dtype d);         /* "F32", "BF16", ... as the header spells them */
size_t st_dtype_size(st_dtype d);              /* bytes per element */
/* "F32" -> ST_DT_F32; -1 when unknown. */
int st_dtype_parse(const char *s);

/* IEEE binary16 and bfloat16 <-> binary32. Exact widening (subnormals, inf,
 * nan payloads kept); narrowing rounds to nearest, ties to even, overflows to
 * inf and keeps nan a (quiet) nan. */
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);
float st_bf16_to_f32(uint16_t b);
uint16_t st_f32_to_bf16(float f);

typedef struct {
    char *name;                               /* UTF-8, NUL-terminated */
    st_dtype dtype;
    int ndim;                                 /* 0 (a scalar) .. ST_SAFETENSORS_MAX_DIMS */
    int64_t shape[ST_SAFETENSORS_MAX_DIMS];
    uint64_t numel;
    uint64_t begin, end;                      /* byte range in the data section */
} st_safetensors_entry;

typedef struct {
    char *path;                               /* for messages */
    int fd;                                   /* -1 when parsed from memory */
    uint64_t file_size;
    uint64_t data_start;                      /* 8 + header length */
    st_safetensors_entry *t;                  /* sorted by name */
    int n;
} st_safetensors;

/* Validate the header of a file of file_size bytes whose first head_n bytes
 * are head (head_n >= 8 + header length, or all of a short file). Fills f
 * (f->fd = -1); path names the file in messages. Hostile input gives
 * ST_ERR_FORMAT. */
st_err st_safetensors_parse(st_safetensors *f, const char *path, const uint8_t *head, size_t head_n,
                            uint64_t file_size);
/* Open and validate path; the file stays open for st_safetensors_read. */
st_err st_safetensors_open(st_safetensors *f, const char *path);
void st_safetensors_close(st_safetensors *f);

/* The entry called name, or NULL. */
const st_safetensors_entry *st_safetensors_find(const st_safetensors *f, const char *name);

/* Read entry e (F32, F16 or BF16) into dst as fp32: exactly e->numel floats.
 * The raw bytes land in dst and are widened in place, so no other buffer is
 * needed. */
st_err st_safetensors_read(const st_safetensors *f, const st_safetensors_entry *e, float *dst);

/* ---- writing ------------------------------------------------------------ */

/* One tensor to write: its name, dtype (F32, F16 or BF16) and shape. */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_SAFETENSORS_MAX_DIMS];
} st_safetensors_spec;

typedef struct {
    char *path;
    void *fp;                                 /* FILE * */
    st_safetensors_spec *spec;                /* copies (names too) */
    int n, next;
    uint64_t written;
} st_safetensors_writer;

/* Create path (written in place: callers that need atomicity pass a
 * temporary name and rename it) and write the header for n tensors, which
 * must then be given in this order. metadata: NULL-terminated key, value
 * pairs for "__metadata__" (may be NULL). */
st_err st_safetensors_writer_begin(st_safetensors_writer *w, const char *path,
                                   const st_safetensors_spec *spec, int n,
                                   const char *const *metadata);
/* The next tensor's values (its numel floats), converted to its dtype. */
st_err st_safetensors_writer_put(st_safetensors_writer *w, const float *x);
/* Check every tensor was given, flush, fsync and close. */
st_err st_safetensors_writer_end(st_safetensors_writer *w);
/* Close without finishing (after an error); removes the file. */
void st_safetensors_writer_abort(st_safetensors_writer *w);

#endif
