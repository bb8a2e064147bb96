/* sample.h: choosing the next token from logits. */
#ifndef ST_SAMPLE_H
#define ST_SAMPLE_H

typedef struct {
    float temperature;  /* 0 = greedy (argmax) */
    int top_k;          /* keep the k most likely (0 = all) */
    float top_p;        /* keep the smallest set whose probability reaches p (1 = all) */
} st_sampling;

/* The token drawn from logits (V) with the uniform draw u in [0, 1) (the
 * caller's random stream: model/decode.h keys it by row and position).
 * Greedy ignores u. logits are overwritten (with probabilities); scratch
 * holds V ints. */
int st_sample_token(float *logits, int V, const st_sampling *s, double u, int *scratch);

#endif
