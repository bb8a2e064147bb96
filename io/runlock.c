/* runlock.c: one run per run directory (runlock.h). */
#include "io/runlock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

st_err st_run_lock(const char *dir, int *fd)
{
    char path[4200], who[512] = "";
    *fd = -1;
    if (snprintf(path, sizeof path, "%s/run.lock", dir) >= (int)sizeof path) ST_FAIL(ST_ERR_ARG, "path too long: %s", dir);
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0) ST_FAIL(ST_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    if (flock(f, LOCK_EX | LOCK_NB)) {
        int err = errno;
        if (err == EWOULDBLOCK) {
            ssize_t n = pread(f, who, sizeof who - 1, 0);
            who[n > 0 ? n : 0] = '\0';
            who[strcspn(who, "\n")] = '\0';
            close(f);
            ST_FAIL(ST_ERR_ARG, "run directory %s is in use by another run (%s); two runs in one directory would "
                    "mix their checkpoints and metrics: give each its own out_dir, or wait for that one to end",
                    dir, who[0] ? who : "holder unknown");
        }
        close(f);
        if (err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS) {
            fprintf(stderr, "shardtune: warning: %s: this file system has no locks (%s), so nothing keeps a second "
                    "run out of this directory\n", path, strerror(err));
            return ST_OK;
        }
        ST_FAIL(ST_ERR_IO, "cannot lock %s: %s", path, strerror(err));
    }
    /* who holds it, for the message another run gets */
    char host[256] = "?", when[32] = "";
    gethostname(host, sizeof host - 1);
    time_t now = time(NULL);
    struct tm tm;
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
    const char *job = getenv("SLURM_JOB_ID");
    int n = snprintf(who, sizeof who, "pid %d on %s%s%s, since %s\n", (int)getpid(), host, job ? ", Slurm job " : "",
                     job ? job : "", when);
    if (ftruncate(f, 0) || pwrite(f, who, (size_t)n, 0) != n) { /* the lock holds without the note */ }
    *fd = f;
    return ST_OK;
}

void st_run_unlock(int *fd)
{
    if (*fd >= 0) close(*fd); /* closing the descriptor releases the flock */
    *fd = -1;
}
