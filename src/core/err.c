/* err.c: the error record behind err.h. One record per thread. */
#include "core/err.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define ST_ERR_MSG_CAP 8192

static _Thread_local char st_msg[ST_ERR_MSG_CAP];
static _Thread_local size_t st_len;

static void append(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void append(const char *fmt, ...)
{
    if (st_len >= ST_ERR_MSG_CAP - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(st_msg + st_len, ST_ERR_MSG_CAP - st_len, fmt, ap);
    va_end(ap);
    if (n > 0) st_len += (size_t)n;
    if (st_len > ST_ERR_MSG_CAP - 1) st_len = ST_ERR_MSG_CAP - 1;
}

st_err st_error_set(st_err code, const char *file, int line, const char *func,
                    const char *fmt, ...)
{
    st_len = 0;
    st_msg[0] = '\0';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(st_msg, ST_ERR_MSG_CAP, fmt, ap);
    va_end(ap);
    st_len = n < 0 ? 0 : (size_t)n;
    if (st_len > ST_ERR_MSG_CAP - 1) st_len = ST_ERR_MSG_CAP - 1;
    append("\n    at %s() %s:%d", func, file, line);
    return code;
}

void st_error_trace(const char *file, int line, const char *func)
{
    append("\n    at %s() %s:%d", func, file, line);
}

const char *st_error_message(void) { return st_msg; }

void st_error_clear(void)
{
    st_len = 0;
    st_msg[0] = '\0';
}

const char *st_error_name(st_err code)
{
    switch (code) {
    case ST_OK: return "ok";
    case ST_ERR_ARG: return "invalid argument";
    case ST_ERR_IO: return "I/O error";
    case ST_ERR_FORMAT: return "bad file format";
    case ST_ERR_MEM: return "out of memory";
    case ST_ERR_MPI: return "MPI error";
    case ST_ERR_DNNL: return "oneDNN error";
    case ST_ERR_HDF5: return "HDF5 error";
    case ST_ERR_INTERNAL: return "internal error";
    case ST_STOPPED: return "stopped early, resumable";
    default: return "unknown error";
    }
}

void st_error_print(FILE *f, int rank)
{
    /* First line is the message a user reads; the trace follows. */
    fprintf(f, "shardtune[rank %d]: error: %s\n", rank, st_msg[0] ? st_msg : "(no message)");
    fflush(f);
}

void *st_malloc(size_t n, const char *what)
{
    (void)what;
    return n ? malloc(n) : NULL;
}

void *st_calloc(size_t count, size_t size, const char *what)
{
    (void)what;
    return count ? calloc(count, size) : NULL;
}
