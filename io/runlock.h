/* runlock.h: one run per run directory. Two trains writing one out_dir (a
 * job array started with the same recipe, a resubmission while the first job
 * still runs) would interleave checkpoints, latest and metrics.jsonl. The
 * first takes an exclusive lock (flock) on OUT/run.lock for its whole life
 * and writes who it is there; a second is refused with that line. The kernel
 * drops the lock when the process ends, however it ends, so a killed run
 * never leaves a stale lock. File systems without locks are warned about. */
#ifndef ST_RUNLOCK_H
#define ST_RUNLOCK_H

#include "core/err.h"

/* Lock dir (which exists): *fd holds the lock (-1: this file system has no
 * locks; a warning says so). One process of the job calls it. */
st_err st_run_lock(const char *dir, int *fd);
/* Release (fd < 0: nothing held); sets *fd = -1. */
void st_run_unlock(int *fd);

#endif
