/* faultgen: damage files the way faults do, for tests/faults/run.sh.
 *   faultgen attr-flip FILE OBJECT ATTR   flip the lowest bit of the first
 *                                         element of an integer attribute
 *                                         (bit rot in a checkpoint's header)
 *   faultgen gz-cut IN OUT                gzip IN into OUT up to the first
 *                                         line end past half of IN, then a
 *                                         sync flush and nothing more: a
 *                                         stream cut at a flush point, which
 *                                         inflates cleanly but has no end
 *                                         block and no trailer
 */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static int attr_flip(const char *path, const char *obj, const char *name)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return fprintf(stderr, "faultgen: cannot open %s\n", path), 1;
    hid_t a = H5Aopen_by_name(f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
    hid_t type = a < 0 ? -1 : H5Aget_type(a), space = a < 0 ? -1 : H5Aget_space(a);
    hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
    int rc = 1;
    if (a < 0 || type < 0 || n < 1 || H5Tget_class(type) != H5T_INTEGER) {
        fprintf(stderr, "faultgen: %s: no integer attribute %s on %s\n", path, name, obj);
    } else {
        long long *v = calloc((size_t)n, sizeof *v);
        if (v && H5Aread(a, H5T_NATIVE_LLONG, v) >= 0) {
            v[0] ^= 1;
            rc = H5Awrite(a, H5T_NATIVE_LLONG, v) < 0;
        }
        free(v);
        if (rc) fprintf(stderr, "faultgen: %s: cannot rewrite %s\n", path, name);
    }
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (a >= 0) H5Aclose(a);
    if (H5Fclose(f) < 0) rc = 1;
    return rc;
}

static int gz_cut(const char *in, const char *out)
{
    FILE *fi = fopen(in, "rb"), *fo = fopen(out, "wb");
    if (!fi || !fo) return fprintf(stderr, "faultgen: cannot open %s or %s\n", in, out), 1;
    fseek(fi, 0, SEEK_END);
    long size = ftell(fi), cut = 0;
    rewind(fi);
    unsigned char *buf = malloc((size_t)size + 1), *z = malloc((size_t)size + 1024);
    if (!buf || !z || fread(buf, 1, (size_t)size, fi) != (size_t)size) return fprintf(stderr, "faultgen: cannot read %s\n", in), 1;
    for (cut = size / 2; cut < size && buf[cut - 1] != '\n'; cut++) {}
    z_stream s;
    memset(&s, 0, sizeof s);
    if (deflateInit2(&s, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return 1;  /* 16: gzip wrapper */
    s.next_in = buf, s.avail_in = (uInt)cut;
    s.next_out = z, s.avail_out = (uInt)size + 1024;
    if (deflate(&s, Z_SYNC_FLUSH) != Z_OK) return fprintf(stderr, "faultgen: deflate failed\n"), 1;
    int rc = fwrite(z, 1, s.total_out, fo) != s.total_out;
    deflateEnd(&s);
    rc |= fclose(fo) != 0;
    fclose(fi);
    free(buf), free(z);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "attr-flip")) return attr_flip(argv[2], argv[3], argv[4]);
    if (argc == 4 && !strcmp(argv[1], "gz-cut")) return gz_cut(argv[2], argv[3]);
    fprintf(stderr, "usage: faultgen attr-flip FILE OBJECT ATTR | gz-cut IN OUT\n");
    return 2;
}
