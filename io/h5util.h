/* h5util.h: small checked helpers over the HDF5 C API, shared by io/ files.
 *
 * Every helper returns st_err and names the object it was working on
 * ("run/step_00000100.h5:/config attribute 'n_layer'"); when HDF5 itself
 * failed, its own innermost messages are appended. HDF5's automatic printing
 * of error stacks is turned off (st_h5_quiet): errors travel through st_err
 * like every other failure. Set SHARDTUNE_HDF5_DEBUG=1 to see HDF5's stacks.
 *
 * Readers treat files as hostile: types, ranks, element counts and string
 * lengths are checked before anything is read into memory.
 */
#ifndef ST_H5UTIL_H
#define ST_H5UTIL_H

#include <hdf5.h>
#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

/* Turn off HDF5's automatic error printing (idempotent, per thread). */
void st_h5_quiet(void);

/* Copy HDF5's innermost messages from this thread's error stack into a
 * thread-local buffer and return it ("" when the stack is empty). Any later
 * HDF5 call clears the stack, so take the snapshot right after the failure. */
const char *st_h5_snapshot(void);
/* Fails unless path is a regular file: opening a FIFO would wait for a
 * writer forever, and a device or folder is no HDF5 file either. */
st_err st_h5_check_regular(const char *path);

/* Record an ST_ERR_HDF5 error: the formatted message, then the snapshot. */
st_err st_h5_error_set(const char *file, int line, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Fail from a function that returns st_err. The snapshot is taken before the
 * message arguments are evaluated (they may call HDF5, e.g. st_h5_where). */
#define ST_H5_FAIL(...)                                                      \
    do {                                                                     \
        st_h5_snapshot();                                                    \
        return st_h5_error_set(__FILE__, __LINE__, __func__, __VA_ARGS__);   \
    } while (0)
/* Fail into e and jump to a cleanup label. */
#define ST_H5_GOTO(e, label, ...)                                            \
    do {                                                                     \
        st_h5_snapshot();                                                    \
        (e) = st_h5_error_set(__FILE__, __LINE__, __func__, __VA_ARGS__);    \
        goto label;                                                          \
    } while (0)
/* Any failure (not HDF5's) into e, then jump. */
#ifndef ST_FAIL_GOTO
#define ST_FAIL_GOTO(e, label, code, ...)                                    \
    do {                                                                     \
        (e) = st_error_set((code), __FILE__, __LINE__, __func__, __VA_ARGS__); \
        goto label;                                                          \
    } while (0)
#endif

/* Close any HDF5 id (file, group, dataset, space, type, attribute, plist)
 * and set it to H5I_INVALID_HID; ignores invalid ids. Use H5Fclose directly
 * where the close result matters (it flushes). */
void st_h5_close(hid_t *id);

/* "path:/object" for messages, into buf. */
const char *st_h5_where(hid_t loc, char *buf, size_t cap);

/* File access list for the MPI-IO driver on comm. */
st_err st_h5_fapl_mpio(MPI_Comm comm, hid_t *fapl);
/* Transfer list with collective (1) or independent (0) MPI-IO. */
st_err st_h5_dxpl_mpio(int collective, hid_t *dxpl);

/* Does loc have a link (group or dataset) / an attribute of this name? */
int st_h5_has_link(hid_t loc, const char *name);
int st_h5_has_attr(hid_t loc, const char *name);

/* Attribute writers. In parallel HDF5 an attribute write is a collective
 * metadata operation: every rank must call it with the same value. */
st_err st_h5_attr_write_i64(hid_t loc, const char *name, int64_t v);
st_err st_h5_attr_write_i32(hid_t loc, const char *name, int v);
st_err st_h5_attr_write_u64(hid_t loc, const char *name, uint64_t v);
st_err st_h5_attr_write_f32(hid_t loc, const char *name, float v);
st_err st_h5_attr_write_u64s(hid_t loc, const char *name, const uint64_t *v, int n);
/* Fixed-length, NUL-terminated string (h5dump shows it as text). */
st_err st_h5_attr_write_str(hid_t loc, const char *name, const char *s);

/* Attribute readers: check class and element count, convert to the native type. */
st_err st_h5_attr_read_i64(hid_t loc, const char *name, int64_t *v);
st_err st_h5_attr_read_int(hid_t loc, const char *name, int lo, int hi, int *v);
st_err st_h5_attr_read_u64(hid_t loc, const char *name, uint64_t *v);
st_err st_h5_attr_read_f32(hid_t loc, const char *name, float *v);
st_err st_h5_attr_read_u64s(hid_t loc, const char *name, uint64_t *v, int n);
/* Fixed- or variable-length string of at most max_len bytes; *out is malloc'd. */
st_err st_h5_attr_read_str(hid_t loc, const char *name, size_t max_len, char **out);

/* A scalar fixed-length string dataset (for text too long for an attribute).
 * Collective: every rank calls; only a rank with writer != 0 supplies data. */
st_err st_h5_str_dataset_write(hid_t loc, const char *name, const char *s, int writer, hid_t dxpl);
st_err st_h5_str_dataset_read(hid_t loc, const char *name, size_t max_len, char **out);

/* A 1-D uint8 dataset of n bytes. Collective as above. */
st_err st_h5_bytes_write(hid_t loc, const char *name, const uint8_t *p, size_t n, int writer, hid_t dxpl);
/* Read it whole (at most max_n bytes); *out is malloc'd (NULL when n is 0). */
st_err st_h5_bytes_read(hid_t loc, const char *name, size_t max_n, uint8_t **out, size_t *n);

#endif
