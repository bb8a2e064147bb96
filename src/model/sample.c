/* sample.c: greedy, temperature, top-k and top-p (nucleus) sampling. */
#include "model/sample.h"

#include <math.h>
#include <stdlib.h>

/* most probable first; ties by id, so the order is total */
static int by_prob_desc(const void *a, const void *b, void *probs)
{
    const float *p = probs;
    const int ia = *(const int *)a, ib = *(const int *)b;
    return p[ia] < p[ib] ? 1 : p[ia] > p[ib] ? -1 : (ia - ib);
}

int st_sample_token(float *logits, int V, const st_sampling *s, double u, int *idx)
{
    int best = 0;
    for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    if (s->temperature <= 0.0f) return best;
    /* softmax at temperature, stable (the maximum read once: the loop overwrites it) */
    const float top = logits[best];
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        logits[i] = expf((logits[i] - top) / s->temperature);
        sum += logits[i];
    }
    for (int i = 0; i < V; i++) { logits[i] = (float)(logits[i] / sum); idx[i] = i; }
    int keep = V;
    if ((s->top_k > 0 && s->top_k < V) || (s->top_p > 0.0f && s->top_p < 1.0f)) {
        qsort_r(idx, (size_t)V, sizeof *idx, by_prob_desc, logits);
        if (s->top_k > 0 && s->top_k < keep) keep = s->top_k;
        if (s->top_p > 0.0f && s->top_p < 1.0f) {
            double c = 0.0;
            for (int i = 0; i < keep; i++) {
                c += logits[idx[i]];
                if (c >= s->top_p) { keep = i + 1; break; }
            }
        }
    }
    double mass = 0.0;
    for (int i = 0; i < keep; i++) mass += logits[idx[i]];
    double x = u * mass, c = 0.0;
    for (int i = 0; i < keep; i++) {
        c += logits[idx[i]];
        if (x < c) return idx[i];
    }
    return idx[keep - 1];
}
