/* commstats.h: how much this rank communicated, and how long it waited.
 * Counted by mpi/tp.c and mpi/dp.c; the trainer's timing table and the
 * benchmarks print them; the communication model in benchmarks/RESULTS.md is
 * checked against them. */
#ifndef ST_COMMSTATS_H
#define ST_COMMSTATS_H

#include <stdint.h>

typedef struct {
    double tp_seconds;     /* blocking tp collectives (all-reduces, CE exchanges) */
    uint64_t tp_bytes;     /* payload bytes handed to tp collectives */
    uint64_t tp_calls;
    double dp_wait_seconds;/* waiting for gradient buckets at the end of backward */
    uint64_t dp_bytes;     /* gradient bytes reduced over dp (plus ZeRO all-gather) */
} st_comm_stats;

extern st_comm_stats st_comm;
void st_comm_reset(void);

#endif
