/* npy.c: float32 .npy files that several writers fill (see npy.h). */
#include "io/npy.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char magic[6] = {(char)0x93, 'N', 'U', 'M', 'P', 'Y'};

/* Write all of buf at off, retrying short writes. */
static st_err put_all(int fd, const void *buf, size_t n, off_t off, const char *path)
{
    const char *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) ST_FAIL(ST_ERR_IO, "writing %s failed: %s", path, w < 0 ? strerror(errno) : "no progress");
        p += w, n -= (size_t)w, off += w;
    }
    return ST_OK;
}

st_err st_npy_create(const char *path, const int64_t *shape, int ndim)
{
    if (ndim < 1 || ndim > ST_NPY_MAX_DIMS) ST_FAIL(ST_ERR_ARG, "an .npy array of %d dimensions", ndim);
    char dict[256], dims[160] = "";
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) ST_FAIL(ST_ERR_ARG, "negative .npy dimension %lld", (long long)shape[d]);
        numel *= shape[d];
        size_t l = strlen(dims);
        snprintf(dims + l, sizeof dims - l, "%lld,%s", (long long)shape[d], d + 1 < ndim ? " " : "");
    }
    int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", dims);
    size_t total = 10 + (size_t)n + 1, pad = (64 - total % 64) % 64;   /* header to a multiple of 64 */
    char head[320];
    memcpy(head, magic, 6);
    head[6] = 1, head[7] = 0;
    uint16_t hl = (uint16_t)(n + pad + 1);
    head[8] = (char)(hl & 0xFF), head[9] = (char)(hl >> 8);
    memcpy(head + 10, dict, (size_t)n);
    memset(head + 10 + n, ' ', pad);
    head[total + pad - 1] = '\n';
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) ST_FAIL(ST_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    st_err e = put_all(fd, head, total + pad, 0, path);
    float nan_row[1024];
    for (int i = 0; i < 1024; i++) nan_row[i] = NAN;
    for (int64_t at = 0; !e && at < numel; at += 1024) {
        size_t k = (size_t)(numel - at < 1024 ? numel - at : 1024);
        e = put_all(fd, nan_row, k * sizeof(float), (off_t)(total + pad + (size_t)at * sizeof(float)), path);
    }
    if (close(fd) != 0 && !e) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "closing %s failed: %s",
                                               path, strerror(errno));
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

st_err st_npy_open(st_npy *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    snprintf(f->path, sizeof f->path, "%s", path);
    int fd = open(path, O_RDWR);
    if (fd < 0) ST_FAIL(ST_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char head[10];
    if (pread(fd, head, 10, 0) != 10 || memcmp(head, magic, 6) || head[6] != 1) {
        close(fd);
        ST_FAIL(ST_ERR_FORMAT, "%s is not a version 1 .npy file", path);
    }
    f->fd = fd;
    f->data_off = 10 + (size_t)(head[8] | head[9] << 8);
    return ST_OK;
}

st_err st_npy_put(st_npy *f, int64_t at, const float *x, size_t n)
{
    ST_TRY(put_all(f->fd, x, n * sizeof(float), (off_t)(f->data_off + (size_t)at * sizeof(float)), f->path));
    return ST_OK;
}

st_err st_npy_close(st_npy *f)
{
    if (f->fd < 0) return ST_OK;
    int rc = close(f->fd);
    f->fd = -1;
    if (rc != 0) ST_FAIL(ST_ERR_IO, "closing %s failed: %s", f->path, strerror(errno));
    return ST_OK;
}
