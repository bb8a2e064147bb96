/* h5util.c: checked HDF5 helpers (see h5util.h). */
#include "io/h5util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- errors ------------------------------------------------------------ */

void st_h5_quiet(void)
{
    const char *dbg = getenv("SHARDTUNE_HDF5_DEBUG");
    if (dbg && *dbg && strcmp(dbg, "0")) return;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

#define SNAP_CAP 1024
static _Thread_local char snap[SNAP_CAP];

typedef struct { int taken; size_t len; } walk_state;

/* Walking upward starts at the innermost frame, where the cause is named
 * ("truncated file: eof = ..."); two frames are enough context. */
static herr_t walk_cb(unsigned n, const H5E_error2_t *err, void *data)
{
    (void)n;
    walk_state *w = data;
    if (w->taken >= 2 || !err->desc || !err->desc[0]) return 0;
    int k = snprintf(snap + w->len, SNAP_CAP - w->len, "%s%s", w->taken ? "; " : "", err->desc);
    if (k > 0) w->len += (size_t)k;
    if (w->len >= SNAP_CAP) w->len = SNAP_CAP - 1;
    w->taken++;
    return 0;
}

const char *st_h5_snapshot(void)
{
    walk_state w = {0, 0};
    snap[0] = '\0';
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, &w);
    return snap;
}

st_err st_h5_check_regular(const char *path)
{
    struct stat sb;
    if (stat(path, &sb)) ST_FAIL(ST_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode))
        ST_FAIL(ST_ERR_IO, "%s is not a regular file (%s): shardtune reads HDF5 files", path,
                S_ISFIFO(sb.st_mode) ? "a FIFO" : S_ISDIR(sb.st_mode) ? "a folder" : "a device or socket");
    return ST_OK;
}

st_err st_h5_error_set(const char *file, int line, const char *func, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (snap[0]) return st_error_set(ST_ERR_HDF5, file, line, func, "%s (HDF5: %s)", msg, snap);
    return st_error_set(ST_ERR_HDF5, file, line, func, "%s", msg);
}

/* ---- ids --------------------------------------------------------------- */

void st_h5_close(hid_t *id)
{
    if (*id < 0) return;
    switch (H5Iget_type(*id)) {
    case H5I_FILE: H5Fclose(*id); break;
    case H5I_GROUP: H5Gclose(*id); break;
    case H5I_DATATYPE: H5Tclose(*id); break;
    case H5I_DATASPACE: H5Sclose(*id); break;
    case H5I_DATASET: H5Dclose(*id); break;
    case H5I_ATTR: H5Aclose(*id); break;
    case H5I_GENPROP_LST: H5Pclose(*id); break;
    default: break;
    }
    *id = H5I_INVALID_HID;
}

const char *st_h5_where(hid_t loc, char *buf, size_t cap)
{
    char file[1024] = "?", obj[512] = "?";
    if (H5Fget_name(loc, file, sizeof file) < 0) strcpy(file, "?");
    if (H5Iget_name(loc, obj, sizeof obj) <= 0) strcpy(obj, "/");
    snprintf(buf, cap, "%s:%s", file, obj);
    return buf;
}

st_err st_h5_fapl_mpio(MPI_Comm comm, hid_t *fapl)
{
    *fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (*fapl < 0) ST_H5_FAIL("cannot create an HDF5 file access property list");
    if (H5Pset_fapl_mpio(*fapl, comm, MPI_INFO_NULL) < 0) {
        st_h5_snapshot();
        st_h5_close(fapl);
        return st_h5_error_set(__FILE__, __LINE__, __func__, "cannot select the HDF5 MPI-IO driver");
    }
    return ST_OK;
}

st_err st_h5_dxpl_mpio(int collective, hid_t *dxpl)
{
    *dxpl = H5Pcreate(H5P_DATASET_XFER);
    if (*dxpl < 0) ST_H5_FAIL("cannot create an HDF5 transfer property list");
    if (H5Pset_dxpl_mpio(*dxpl, collective ? H5FD_MPIO_COLLECTIVE : H5FD_MPIO_INDEPENDENT) < 0) {
        st_h5_snapshot();
        st_h5_close(dxpl);
        return st_h5_error_set(__FILE__, __LINE__, __func__, "cannot set the MPI-IO transfer mode");
    }
    return ST_OK;
}

int st_h5_has_link(hid_t loc, const char *name) { return H5Lexists(loc, name, H5P_DEFAULT) > 0; }
int st_h5_has_attr(hid_t loc, const char *name) { return H5Aexists(loc, name) > 0; }

/* ---- attribute writers --------------------------------------------------- */

/* n values of file type ftype from buf (memory type mtype); n == 0: scalar. */
static st_err attr_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int n, const void *buf)
{
    st_err e = ST_OK;
    char where[1600];
    hid_t space = H5I_INVALID_HID, a = H5I_INVALID_HID;
    if (H5Aexists(loc, name) > 0 && H5Adelete(loc, name) < 0)
        ST_H5_GOTO(e, done, "%s: cannot replace attribute '%s'", st_h5_where(loc, where, sizeof where), name);
    hsize_t dim = (hsize_t)n;
    space = n ? H5Screate_simple(1, &dim, NULL) : H5Screate(H5S_SCALAR);
    if (space < 0) ST_H5_GOTO(e, done, "cannot create a dataspace for attribute '%s'", name);
    a = H5Acreate2(loc, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    if (a < 0 || H5Awrite(a, mtype, buf) < 0)
        ST_H5_GOTO(e, done, "%s: cannot write attribute '%s'", st_h5_where(loc, where, sizeof where), name);
done:
    st_h5_close(&a);
    st_h5_close(&space);
    return e;
}

st_err st_h5_attr_write_i64(hid_t loc, const char *name, int64_t v)
{
    return attr_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &v);
}

st_err st_h5_attr_write_i32(hid_t loc, const char *name, int v)
{
    return attr_write(loc, name, H5T_STD_I32LE, H5T_NATIVE_INT, 0, &v);
}

st_err st_h5_attr_write_u64(hid_t loc, const char *name, uint64_t v)
{
    return attr_write(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &v);
}

st_err st_h5_attr_write_f32(hid_t loc, const char *name, float v)
{
    return attr_write(loc, name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 0, &v);
}

st_err st_h5_attr_write_u64s(hid_t loc, const char *name, const uint64_t *v, int n)
{
    if (n < 1) ST_FAIL(ST_ERR_INTERNAL, "attribute '%s' needs at least one value", name);
    return attr_write(loc, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, n, v);
}

/* Fixed-length UTF-8 string type holding len bytes plus the terminating NUL. */
static hid_t str_type(size_t len)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return t;
    if (H5Tset_size(t, len + 1) < 0 || H5Tset_strpad(t, H5T_STR_NULLTERM) < 0 ||
        H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return H5I_INVALID_HID;
    }
    return t;
}

st_err st_h5_attr_write_str(hid_t loc, const char *name, const char *s)
{
    hid_t t = str_type(strlen(s));
    if (t < 0) ST_H5_FAIL("cannot create a string type for attribute '%s'", name);
    st_err e = attr_write(loc, name, t, t, 0, s);
    H5Tclose(t);
    return e;
}

/* ---- attribute readers --------------------------------------------------- */

/* Open attribute name of loc after checking it exists, is of class cls and
 * holds exactly n values. */
static st_err attr_open(hid_t loc, const char *name, H5T_class_t cls, hssize_t n, hid_t *out)
{
    st_err e = ST_OK;
    char where[1600];
    hid_t a = H5I_INVALID_HID, type = H5I_INVALID_HID, space = H5I_INVALID_HID;
    *out = H5I_INVALID_HID;
    htri_t ex = H5Aexists(loc, name);
    if (ex < 0) ST_H5_GOTO(e, done, "%s: cannot look up attribute '%s'", st_h5_where(loc, where, sizeof where), name);
    if (!ex) ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s has no attribute '%s'", st_h5_where(loc, where, sizeof where), name);
    if ((a = H5Aopen(loc, name, H5P_DEFAULT)) < 0 || (type = H5Aget_type(a)) < 0 || (space = H5Aget_space(a)) < 0)
        ST_H5_GOTO(e, done, "%s: cannot open attribute '%s'", st_h5_where(loc, where, sizeof where), name);
    H5T_class_t have = H5Tget_class(type);
    hssize_t np = H5Sget_simple_extent_npoints(space);
    static const char *cls_name[] = {"integer", "float", "time", "string", "bitfield", "opaque",
                                     "compound", "reference", "enum", "vlen", "array"};
    if (have != cls)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: attribute '%s' is of class %s, expected %s",
                     st_h5_where(loc, where, sizeof where), name,
                     have >= 0 && have <= H5T_ARRAY ? cls_name[have] : "unknown", cls_name[cls]);
    if (np != n)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: attribute '%s' holds %lld values, expected %lld",
                     st_h5_where(loc, where, sizeof where), name, (long long)np, (long long)n);
    *out = a;
    a = H5I_INVALID_HID;
done:
    st_h5_close(&space);
    st_h5_close(&type);
    st_h5_close(&a);
    return e;
}

static st_err attr_read(hid_t loc, const char *name, H5T_class_t cls, hid_t mtype, int n, void *buf)
{
    hid_t a;
    char where[1600];
    ST_TRY(attr_open(loc, name, cls, n, &a));
    herr_t rc = H5Aread(a, mtype, buf);
    if (rc < 0) st_h5_snapshot();
    H5Aclose(a);
    if (rc < 0)
        return st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot read attribute '%s'",
                               st_h5_where(loc, where, sizeof where), name);
    return ST_OK;
}

st_err st_h5_attr_read_i64(hid_t loc, const char *name, int64_t *v)
{
    return attr_read(loc, name, H5T_INTEGER, H5T_NATIVE_INT64, 1, v);
}

st_err st_h5_attr_read_int(hid_t loc, const char *name, int lo, int hi, int *v)
{
    int64_t x;
    char where[1600];
    ST_TRY(st_h5_attr_read_i64(loc, name, &x));
    if (x < lo || x > hi)
        ST_FAIL(ST_ERR_FORMAT, "%s: attribute '%s' = %lld is outside [%d, %d]",
                st_h5_where(loc, where, sizeof where), name, (long long)x, lo, hi);
    *v = (int)x;
    return ST_OK;
}

st_err st_h5_attr_read_u64(hid_t loc, const char *name, uint64_t *v)
{
    return attr_read(loc, name, H5T_INTEGER, H5T_NATIVE_UINT64, 1, v);
}

st_err st_h5_attr_read_f32(hid_t loc, const char *name, float *v)
{
    return attr_read(loc, name, H5T_FLOAT, H5T_NATIVE_FLOAT, 1, v);
}

st_err st_h5_attr_read_u64s(hid_t loc, const char *name, uint64_t *v, int n)
{
    return attr_read(loc, name, H5T_INTEGER, H5T_NATIVE_UINT64, n, v);
}

/* Read one string element from an attribute (is_attr) or a dataset. */
static st_err read_str(hid_t obj, int is_attr, const char *what, size_t max_len, char **out)
{
    st_err e = ST_OK;
    char where[1600];
    hid_t type = H5I_INVALID_HID, mtype = H5I_INVALID_HID, space = H5I_INVALID_HID;
    char *buf = NULL, *vl = NULL;
    *out = NULL;
    type = is_attr ? H5Aget_type(obj) : H5Dget_type(obj);
    space = is_attr ? H5Aget_space(obj) : H5Dget_space(obj);
    if (type < 0 || space < 0) ST_H5_GOTO(e, done, "%s: cannot inspect '%s'", st_h5_where(obj, where, sizeof where), what);
    if (H5Tget_class(type) != H5T_STRING || H5Sget_simple_extent_npoints(space) != 1)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: '%s' is not a single string",
                     st_h5_where(obj, where, sizeof where), what);
    if ((mtype = H5Tcopy(type)) < 0) ST_H5_GOTO(e, done, "cannot copy a string type");
    htri_t var = H5Tis_variable_str(type);
    if (var < 0) ST_H5_GOTO(e, done, "%s: cannot inspect the string type of '%s'", st_h5_where(obj, where, sizeof where), what);
    if (var) {
        herr_t rc = is_attr ? H5Aread(obj, mtype, &vl) : H5Dread(obj, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, &vl);
        if (rc < 0) ST_H5_GOTO(e, done, "%s: cannot read string '%s'", st_h5_where(obj, where, sizeof where), what);
        size_t len = vl ? strnlen(vl, max_len + 1) : 0;
        if (len > max_len)
            ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: string '%s' is longer than %zu bytes",
                         st_h5_where(obj, where, sizeof where), what, max_len);
        if (!(buf = malloc(len + 1))) ST_FAIL_GOTO(e, done, ST_ERR_MEM, "out of memory reading '%s'", what);
        if (len) memcpy(buf, vl, len);
        buf[len] = '\0';
    } else {
        size_t size = H5Tget_size(type);
        if (size == 0 || size > max_len + 1)
            ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: string '%s' has %zu bytes, at most %zu allowed",
                         st_h5_where(obj, where, sizeof where), what, size, max_len);
        if (!(buf = malloc(size + 1))) ST_FAIL_GOTO(e, done, ST_ERR_MEM, "out of memory reading '%s'", what);
        herr_t rc = is_attr ? H5Aread(obj, mtype, buf) : H5Dread(obj, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
        if (rc < 0) ST_H5_GOTO(e, done, "%s: cannot read string '%s'", st_h5_where(obj, where, sizeof where), what);
        buf[size] = '\0';
    }
    *out = buf;
    buf = NULL;
done:
    if (vl) H5Dvlen_reclaim(mtype, space, H5P_DEFAULT, &vl);
    free(buf);
    st_h5_close(&mtype);
    st_h5_close(&space);
    st_h5_close(&type);
    return e;
}

st_err st_h5_attr_read_str(hid_t loc, const char *name, size_t max_len, char **out)
{
    hid_t a;
    ST_TRY(attr_open(loc, name, H5T_STRING, 1, &a));
    st_err e = read_str(a, 1, name, max_len, out);
    H5Aclose(a);
    return e;
}

/* ---- small datasets ------------------------------------------------------ */

/* Create dataset name (type, space) and write buf collectively; ranks with
 * writer == 0 select nothing but still take part. */
static st_err small_dataset_write(hid_t loc, const char *name, hid_t type, hid_t space,
                                  const void *buf, int writer, hid_t dxpl)
{
    st_err e = ST_OK;
    char where[1600];
    hid_t d = H5I_INVALID_HID, fsel = H5I_INVALID_HID;
    d = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d < 0) ST_H5_GOTO(e, done, "%s: cannot create dataset '%s'", st_h5_where(loc, where, sizeof where), name);
    if (H5Sget_simple_extent_npoints(space) == 0) goto done;
    if ((fsel = H5Scopy(space)) < 0) ST_H5_GOTO(e, done, "cannot copy a dataspace");
    if (!writer && H5Sselect_none(fsel) < 0) ST_H5_GOTO(e, done, "cannot select nothing in '%s'", name);
    static const uint8_t dummy[1];
    if (H5Dwrite(d, type, fsel, fsel, dxpl, writer ? buf : dummy) < 0)
        ST_H5_GOTO(e, done, "%s: cannot write dataset '%s'", st_h5_where(loc, where, sizeof where), name);
done:
    st_h5_close(&fsel);
    st_h5_close(&d);
    return e;
}

st_err st_h5_str_dataset_write(hid_t loc, const char *name, const char *s, int writer, hid_t dxpl)
{
    hid_t t = str_type(strlen(s)), space = H5Screate(H5S_SCALAR);
    st_err e = ST_OK;
    if (t < 0 || space < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "cannot create the type of string dataset '%s'", name);
    } else {
        e = small_dataset_write(loc, name, t, space, s, writer, dxpl);
    }
    st_h5_close(&space);
    st_h5_close(&t);
    return e;
}

st_err st_h5_str_dataset_read(hid_t loc, const char *name, size_t max_len, char **out)
{
    char where[1600];
    *out = NULL;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) ST_H5_FAIL("%s: cannot open dataset '%s'", st_h5_where(loc, where, sizeof where), name);
    st_err e = read_str(d, 0, name, max_len, out);
    H5Dclose(d);
    return e;
}

st_err st_h5_bytes_write(hid_t loc, const char *name, const uint8_t *p, size_t n, int writer, hid_t dxpl)
{
    hsize_t dim = (hsize_t)n;
    hid_t space = H5Screate_simple(1, &dim, NULL);
    if (space < 0) ST_H5_FAIL("cannot create a dataspace of %zu bytes for '%s'", n, name);
    st_err e = small_dataset_write(loc, name, H5T_NATIVE_UINT8, space, p, writer, dxpl);
    H5Sclose(space);
    return e;
}

st_err st_h5_bytes_read(hid_t loc, const char *name, size_t max_n, uint8_t **out, size_t *n)
{
    st_err e = ST_OK;
    char where[1600];
    hid_t d = H5I_INVALID_HID, space = H5I_INVALID_HID, type = H5I_INVALID_HID;
    uint8_t *buf = NULL;
    *out = NULL;
    *n = 0;
    if ((d = H5Dopen2(loc, name, H5P_DEFAULT)) < 0 || (space = H5Dget_space(d)) < 0 || (type = H5Dget_type(d)) < 0)
        ST_H5_GOTO(e, done, "%s: cannot open dataset '%s'", st_h5_where(loc, where, sizeof where), name);
    hssize_t np = H5Sget_simple_extent_npoints(space);
    if (H5Sget_simple_extent_ndims(space) != 1 || H5Tget_class(type) != H5T_INTEGER || H5Tget_size(type) != 1)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: dataset '%s' is not a 1-D array of bytes",
                     st_h5_where(loc, where, sizeof where), name);
    if (np < 0 || (size_t)np > max_n)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s: dataset '%s' holds %lld bytes, at most %zu allowed",
                     st_h5_where(loc, where, sizeof where), name, (long long)np, max_n);
    if (np == 0) goto done;
    if (!(buf = malloc((size_t)np))) ST_FAIL_GOTO(e, done, ST_ERR_MEM, "out of memory reading %lld bytes of '%s'", (long long)np, name);
    if (H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        ST_H5_GOTO(e, done, "%s: cannot read dataset '%s'", st_h5_where(loc, where, sizeof where), name);
    *out = buf;
    *n = (size_t)np;
    buf = NULL;
done:
    free(buf);
    st_h5_close(&type);
    st_h5_close(&space);
    st_h5_close(&d);
    return e;
}
