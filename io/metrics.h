/* metrics.h: what a run reports. A JSON line per step in OUT/metrics.jsonl
 * (machine-readable, continued across resumes, each step once), and a
 * loss-curve PNG drawn by gnuplot at the end of a run. Rank 0 only. */
#ifndef ST_METRICS_H
#define ST_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "core/err.h"

typedef struct {
    FILE *f;
    char path[4096];
} st_metrics;

st_err st_metrics_open(st_metrics *m, const char *dir);
/* A method's own number for the step's line ("reward_mean"). */
typedef struct {
    const char *key;
    double value;
} st_metric_kv;

/* One step. val_loss NAN means "not evaluated at this step" (a method's
 * own validation number may be negative). Other non-finite numbers are
 * written as null (JSON has no NaN) and mark the line
 * "nonfinite": true. extra (n_extra pairs, may be NULL) are added to the
 * line, those that are not finite (a number that does not apply) left out. */
void st_metrics_step(st_metrics *m, int64_t step, double loss, double val_loss, double lr,
                     double grad_norm, double tokens_per_s, double mfu, int64_t tokens_seen,
                     const st_metric_kv *extra, int n_extra);
void st_metrics_close(st_metrics *m);
/* Keep the lines of steps up to last_step (where a run starts or resumes)
 * and drop the rest, through a rewrite aside and a rename, so that each step
 * appears once however often the run was interrupted. */
st_err st_metrics_keep_upto(st_metrics *m, int64_t last_step);
/* Draw train (and validation) loss from metrics.jsonl into png with gnuplot.
 * A missing gnuplot is reported as a warning, not an error. */
st_err st_metrics_plot(const char *metrics_jsonl, const char *png, const char *title);

#endif
