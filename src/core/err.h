/* err.h: one way to fail, PETSc-style.
 *
 * Every function that can fail returns st_err (0 = success). The first failure
 * records a message with file, line and function; each caller on the way up
 * adds one trace frame through ST_TRY, so the final report reads like a stack.
 * Nothing here calls exit(): main decides how the whole job stops (see
 * st_abort_all in mpi/grid.h, which stops every rank, never just one).
 */
#ifndef ST_ERR_H
#define ST_ERR_H

#include <stdio.h>

typedef int st_err;

enum {
    ST_OK = 0,
    ST_ERR_ARG,      /* bad argument, option or config value */
    ST_ERR_IO,       /* a file could not be opened, read or written */
    ST_ERR_FORMAT,   /* a file's contents are malformed, truncated or corrupt */
    ST_ERR_MEM,      /* out of memory */
    ST_ERR_MPI,      /* an MPI call failed */
    ST_ERR_DNNL,     /* a oneDNN call failed */
    ST_ERR_HDF5,     /* an HDF5 call failed */
    ST_ERR_INTERNAL, /* a bug: an invariant did not hold */
    ST_STOPPED       /* not a failure: stopped early on request (a signal, the time limit) after saving;
                        resuming goes on. The process exits 75 (EX_TEMPFAIL) when every rank stopped */
};

/* Record a new error (replacing any older one) and return code. */
st_err st_error_set(st_err code, const char *file, int line, const char *func,
                    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Append one trace frame to the current error. */
void st_error_trace(const char *file, int line, const char *func);
/* The message and trace of the current error ("" when none). */
const char *st_error_message(void);
const char *st_error_name(st_err code);
void st_error_clear(void);
/* Print "shardtune: error: <message>\n<trace>" to f. */
void st_error_print(FILE *f, int rank);

#define ST_FAIL(code, ...) \
    return st_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__)

#define ST_TRY(call)                                                  \
    do {                                                              \
        st_err st_try_e_ = (call);                                    \
        if (st_try_e_) {                                              \
            st_error_trace(__FILE__, __LINE__, __func__);             \
            return st_try_e_;                                         \
        }                                                             \
    } while (0)

/* ST_TRY for code that must release resources: sets err and jumps to label. */
#define ST_TRY_GOTO(err, call, label)                                 \
    do {                                                              \
        (err) = (call);                                               \
        if (err) {                                                    \
            st_error_trace(__FILE__, __LINE__, __func__);             \
            goto label;                                               \
        }                                                             \
    } while (0)

#define ST_ASSERT(cond, ...)                                          \
    do {                                                              \
        if (!(cond)) ST_FAIL(ST_ERR_INTERNAL, __VA_ARGS__);           \
    } while (0)

/* Checked allocation: fails with the byte count and what it was for. */
void *st_malloc(size_t n, const char *what);
void *st_calloc(size_t count, size_t size, const char *what);
#define ST_ALLOC(ptr, count, what)                                    \
    do {                                                              \
        (ptr) = st_calloc((size_t)(count), sizeof(*(ptr)), (what));   \
        if (!(ptr) && (count) > 0)                                    \
            ST_FAIL(ST_ERR_MEM, "out of memory allocating %zu x %zu bytes for %s", \
                    (size_t)(count), sizeof(*(ptr)), (what));         \
    } while (0)

#endif
