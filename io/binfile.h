/* binfile.h: reading raw binary model files (llama2.c, llm.c) safely:
 * overflow-checked size arithmetic and a pread loop that names the file and
 * what it was reading when the file ends early. */
#ifndef ST_BINFILE_H
#define ST_BINFILE_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

/* a * b and a + b; on overflow *ovf = 1 and the result is 0 */
static inline int64_t st_smul(int64_t a, int64_t b, int *ovf)
{
    int64_t r;
    if (__builtin_mul_overflow(a, b, &r)) { *ovf = 1; return 0; }
    return r;
}

static inline int64_t st_sadd(int64_t a, int64_t b, int *ovf)
{
    int64_t r;
    if (__builtin_add_overflow(a, b, &r)) { *ovf = 1; return 0; }
    return r;
}

/* n bytes at *off of fd into dst; advances *off. kind ("llama2.c") and path
 * name the file in errors, what names the thing being read. */
st_err st_pread_all(int fd, const char *kind, const char *path, int64_t *off, void *dst, size_t n,
                    const char *what);

/* Open path read-only into *fd (the caller closes it, also on error when
 * *fd >= 0): a regular file of at least header_bytes; *size = its size. */
st_err st_open_checkpoint_file(const char *kind, const char *path, int64_t header_bytes, int *fd, int64_t *size);

#endif
