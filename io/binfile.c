/* binfile.c: see binfile.h. */
#include "binfile.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

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
