/* binfile.c: see binfile.h. */
#include "io/binfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

st_err st_open_checkpoint_file(const char *kind, const char *path, int64_t header_bytes, int *fd, int64_t *size)
{
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0) ST_FAIL(ST_ERR_IO, "cannot open %s checkpoint '%s': %s", kind, path, strerror(errno));
    struct stat st;
    if (fstat(*fd, &st)) ST_FAIL(ST_ERR_IO, "%s checkpoint '%s': fstat: %s", kind, path, strerror(errno));
    if (!S_ISREG(st.st_mode)) ST_FAIL(ST_ERR_IO, "%s checkpoint '%s' is not a regular file", kind, path);
    if (st.st_size < header_bytes)
        ST_FAIL(ST_ERR_FORMAT, "%s checkpoint '%s' is %lld bytes, shorter than its %lld-byte header", kind, path,
                (long long)st.st_size, (long long)header_bytes);
    *size = (int64_t)st.st_size;
    return ST_OK;
}

st_err st_pread_all(int fd, const char *kind, const char *path, int64_t *off, void *dst, size_t n,
                    const char *what)
{
    char *p = dst;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)*off);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0)
            ST_FAIL(ST_ERR_IO, "%s checkpoint '%s': reading %s at byte %lld: %s", kind, path, what,
                    (long long)*off, strerror(errno));
        if (got == 0)
            ST_FAIL(ST_ERR_FORMAT, "%s checkpoint '%s' ends at byte %lld, inside %s "
                    "(did the file change while it was read?)", kind, path, (long long)*off, what);
        p += got;
        n -= (size_t)got;
        *off += got;
    }
    return ST_OK;
}
