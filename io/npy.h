/* npy.h: float32 arrays as NumPy .npy files (format version 1.0), which
 * numpy.load, and so most tools, read: "\x93NUMPY", version 1 0, a
 * little-endian uint16 header length, the header dict
 * {'descr': '<f4', 'fortran_order': False, 'shape': (...), } padded with
 * spaces to a multiple of 64 bytes and ended by '\n', then the elements in
 * row-major (C) order, little-endian.
 *
 * Several processes may fill one file: one creates it (every element NaN),
 * then each opens it and puts its own elements at their index.
 */
#ifndef ST_NPY_H
#define ST_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct {
    int fd;
    size_t data_off;    /* bytes before element 0 */
    int64_t numel;
    char path[1024];
} st_npy;

#define ST_NPY_MAX_DIMS 4

/* Write the header and numel NaNs (truncating path); the file is closed. */
st_err st_npy_create(const char *path, const int64_t *shape, int ndim);
/* Open a file st_npy_create made, for st_npy_put. */
st_err st_npy_open(st_npy *f, const char *path);
/* Elements [at, at + n) := x[0..n). */
st_err st_npy_put(st_npy *f, int64_t at, const float *x, size_t n);
/* Close; an error if an earlier write or the close failed. */
st_err st_npy_close(st_npy *f);

#endif
