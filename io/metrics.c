/* metrics.c: metrics.jsonl and the loss-curve PNG. */
#include "io/metrics.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

st_err st_metrics_open(st_metrics *m, const char *dir)
{
    snprintf(m->path, sizeof m->path, "%s/metrics.jsonl", dir);
    m->f = fopen(m->path, "a");
    if (!m->f) ST_FAIL(ST_ERR_IO, "cannot open '%s' for appending: %s", m->path, strerror(errno));
    return ST_OK;
}

/* "key":value, or "key":null for NaN and infinities (not JSON numbers) */
static void put_num(FILE *f, const char *key, const char *fmt, double x)
{
    fprintf(f, "\"%s\":", key);
    if (isfinite(x)) fprintf(f, fmt, x);
    else fprintf(f, "null");
}

void st_metrics_step(st_metrics *m, int64_t step, double loss, double val_loss, double lr,
                     double grad_norm, double tokens_per_s, double mfu, int64_t tokens_seen,
                     const st_metric_kv *extra, int n_extra)
{
    if (!m->f) return;
    fprintf(m->f, "{\"step\":%lld,", (long long)step);
    put_num(m->f, "loss", "%.9g", loss);
    if (!isnan(val_loss)) {
        fprintf(m->f, ",");
        put_num(m->f, "val_loss", "%.9g", val_loss);
    }
    for (int i = 0; i < n_extra; i++) /* a method's number that does not apply this step is NaN: left out */
        if (isfinite(extra[i].value)) fprintf(m->f, ",\"%s\":%.9g", extra[i].key, extra[i].value);
    fprintf(m->f, ",\"lr\":%.6g,", lr);
    put_num(m->f, "grad_norm", "%.6g", grad_norm);
    fprintf(m->f, ",\"tokens_per_s\":%.1f,\"mfu\":%.4f,\"tokens\":%lld", tokens_per_s, mfu, (long long)tokens_seen);
    if (!isfinite(loss) || !isfinite(grad_norm)) fprintf(m->f, ",\"nonfinite\":true");
    fprintf(m->f, "}\n");
    fflush(m->f);
}

st_err st_metrics_keep_upto(st_metrics *m, int64_t last_step)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", m->path);
    st_metrics_close(m);
    FILE *in = fopen(m->path, "r"), *out = in ? fopen(tmp, "w") : NULL;
    st_err e = ST_OK;
    if (in && !out) e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write '%s': %s", tmp, strerror(errno));
    char line[4096];
    while (!e && in && fgets(line, sizeof line, in)) {
        long long step;
        /* lines that are not ours (or cut by a crash) go too */
        if (sscanf(line, "{\"step\":%lld,", &step) == 1 && step <= last_step && strchr(line, '\n')) fputs(line, out);
    }
    if (in) fclose(in);
    if (out && (fflush(out) || fsync(fileno(out))) && !e)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write '%s': %s", tmp, strerror(errno));
    if (out && fclose(out) && !e)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot write '%s': %s", tmp, strerror(errno));
    if (!e && out && rename(tmp, m->path))
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename '%s' to '%s': %s", tmp, m->path,
                         strerror(errno));
    if (e) unlink(tmp);
    ST_TRY(e);
    m->f = fopen(m->path, "a");
    if (!m->f) ST_FAIL(ST_ERR_IO, "cannot open '%s' for appending: %s", m->path, strerror(errno));
    return ST_OK;
}

void st_metrics_close(st_metrics *m)
{
    if (m->f) fclose(m->f);
    m->f = NULL;
}

st_err st_metrics_plot(const char *metrics_jsonl, const char *png, const char *title)
{
    /* gnuplot reads columns, so pull step/loss/val_loss out of the JSON lines first */
    FILE *in = fopen(metrics_jsonl, "r");
    if (!in) ST_FAIL(ST_ERR_IO, "cannot read '%s': %s", metrics_jsonl, strerror(errno));
    char tsv[4200], gp[4200];
    snprintf(tsv, sizeof tsv, "%s.tsv", png);
    snprintf(gp, sizeof gp, "%s.gp", png);
    FILE *out = fopen(tsv, "w");
    if (!out) { fclose(in); ST_FAIL(ST_ERR_IO, "cannot write '%s': %s", tsv, strerror(errno)); }
    char line[4096];
    int rows = 0, val_rows = 0;
    while (fgets(line, sizeof line, in)) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        cJSON *s = cJSON_GetObjectItem(j, "step"), *l = cJSON_GetObjectItem(j, "loss"),
              *v = cJSON_GetObjectItem(j, "val_loss");
        if (cJSON_IsNumber(s) && cJSON_IsNumber(l)) {
            if (cJSON_IsNumber(v)) fprintf(out, "%g\t%g\t%g\n", s->valuedouble, l->valuedouble, v->valuedouble), val_rows++;
            else fprintf(out, "%g\t%g\tNaN\n", s->valuedouble, l->valuedouble);
            rows++;
        }
        cJSON_Delete(j);
    }
    fclose(in);
    fclose(out);
    FILE *g = fopen(gp, "w");
    if (!g) ST_FAIL(ST_ERR_IO, "cannot write '%s'", gp);
    fprintf(g, "set terminal png size 900,540\nset output '%s'\nset title '%s'\n"
               "set xlabel 'step'\nset ylabel 'loss (nats/token)'\nset grid\nset key top right\n"
               "set datafile missing 'NaN'\n",
            png, title);
    fprintf(g, "plot '%s' using 1:2 with lines lw 2 title 'train'%s\n", tsv,
            val_rows ? ", '' using 1:3 with linespoints pt 7 title 'validation'" : "");
    fclose(g);
    if (!rows) ST_FAIL(ST_ERR_FORMAT, "'%s' holds no steps to plot", metrics_jsonl);
    pid_t pid = fork();
    if (pid < 0) ST_FAIL(ST_ERR_IO, "fork failed: %s", strerror(errno));
    if (pid == 0) {
        execlp("gnuplot", "gnuplot", gp, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
            fprintf(stderr, "shardtune: warning: gnuplot not found; loss curve not drawn (apt-get install gnuplot-nox)\n");
        else
            ST_FAIL(ST_ERR_IO, "gnuplot failed drawing '%s' (script '%s')", png, gp);
    }
    return ST_OK;
}
