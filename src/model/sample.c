/* sample.c: greedy, temperature, top-k and top-p (nucleus) sampling. */
#include "model/sample.h"

#include <math.h>
#include <stdlib.h>

static const float *cmp_p;
static int by_prob_desc(const void *a, const void *b)
{
    float pa = cmp_p[*(const int *)a], pb = cmp_p[*(const int *)b];
    return pa < pb ? 1 : pa > pb ? -1 : (*(const int *)a - *(const int *)b);
}

int st_sample_token(float *logits, int V, const st_sampling *s, st_rng *rng, int *idx)
{
    int best = 0;
    for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    if (s->temperature <= 0.0f) return best;
    /* softmax at temperature, stable */
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        logits[i] = expf((logits[i] - logits[best]) / s->temperature);
        sum += logits[i];
    }
    for (int i = 0; i < V; i++) { logits[i] = (float)(logits[i] / sum); idx[i] = i; }
    int keep = V;
    if ((s->top_k > 0 && s->top_k < V) || (s->top_p > 0.0f && s->top_p < 1.0f)) {
        cmp_p = logits;
        qsort(idx, (size_t)V, sizeof *idx, by_prob_desc);
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
    double u = st_rng_uniform(rng) * mass, c = 0.0;
    for (int i = 0; i < keep; i++) {
        c += logits[idx[i]];
        if (u < c) return idx[i];
    }
    return idx[keep - 1];
}
