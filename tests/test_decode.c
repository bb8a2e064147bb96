/* test_decode.c: the decoding engine (src/model/decode.c) against the double
 * reference model: greedy answers are the reference's argmax at every step;
 * a row's answer does not depend on the rows decoded with it (nor on a
 * prompt's prefill being shared); stop tokens and room end answers; draws
 * follow the model's probabilities (and top-k's renormalised ones). */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "model/decode.h"
#include "mpi_check.h"
#include "ref.h"
#include "testcfg.h"

enum { NEW = 6 };

/* a model whose norms and biases are not trivially 1 and 0 */
static void make_model(st_model *m, const st_config *cfg, int B)
{
    ck_assert_int_eq(st_model_create(m, cfg, MPI_COMM_SELF, B, cfg->max_seq, ST_MODEL_INFER), 0);
    st_model_init(m, 5);
    st_rng r;
    st_rng_seed(&r, 9);
    for (size_t i = 0; i < m->lay.numel; i++) m->params[i] += 0.3f * (float)(st_rng_uniform(&r) - 0.5);
}

/* The reference's logits at the last position of seq (n tokens): out (V). */
static void ref_last_logits(ref_model *r, const int32_t *seq, int n, double *out)
{
    const int V = r->cfg.vocab_size;
    int tok[64], tgt[64];
    for (int i = 0; i < n; i++) tok[i] = seq[i], tgt[i] = 0;
    double *all = malloc(sizeof(double) * n * V);
    ref_model_forward_backward(r, tok, tgt, NULL, 1, n, 1.0, all, 0);
    memcpy(out, all + (size_t)(n - 1) * V, sizeof(double) * V);
    free(all);
}

static void check_greedy(st_config cfg)
{
    enum { B = 3 };
    st_model m;
    make_model(&m, &cfg, B);
    ref_model r;
    ck_assert_int_eq(ref_model_init(&r, &cfg), 0);
    ref_model_set_params(&r, m.params);
    /* prompts of 1, 5 and 3 tokens decode together */
    const int plen[B] = {1, 5, 3};
    int32_t prompt[B][5], out[B][NEW];
    st_decode_row rows[B];
    st_rng g;
    st_rng_seed(&g, 4);
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < plen[b]; i++) prompt[b][i] = (int32_t)st_rng_below(&g, (uint64_t)cfg.vocab_size);
        rows[b] = (st_decode_row){.prompt = prompt[b], .plen = plen[b], .key = (uint64_t)b, .out = out[b]};
    }
    st_decoder d;
    ck_assert_int_eq(st_decoder_init(&d, &m, B), 0);
    const st_decode_opts o = {.s = {.temperature = 0}, .max_new = NEW, .chunk = 2};
    ck_assert_int_eq(st_decode(&d, rows, B, &o), 0);
    double *lg = malloc(sizeof(double) * cfg.vocab_size);
    for (int b = 0; b < B; b++) {
        ck_assert_int_eq(rows[b].len, NEW);
        ck_assert_int_eq(rows[b].stopped, 0);
        int32_t seq[32];
        memcpy(seq, prompt[b], sizeof(int32_t) * plen[b]);
        for (int t = 0; t < NEW; t++) {
            ref_last_logits(&r, seq, plen[b] + t, lg);
            int best = 0;
            for (int v = 1; v < cfg.vocab_size; v++) if (lg[v] > lg[best]) best = v;
            ck_assert_msg(out[b][t] == best, "row %d token %d: decoded %d, reference argmax %d", b, t, out[b][t], best);
            seq[plen[b] + t] = out[b][t];
        }
    }
    ck_assert_int_eq(d.tokens, B * NEW);
    free(lg);
    st_decoder_free(&d);
    ref_model_free(&r);
    st_model_free(&m);
}

START_TEST(greedy_llama_is_reference_argmax) { check_greedy(cfg_llama()); }
END_TEST
START_TEST(greedy_gpt2_is_reference_argmax) { check_greedy(cfg_gpt2()); }
END_TEST

/* Sampled answers: a row decoded alone, in a batch, after a row with the same
 * prompt (shared prefill) or with a copy of it, gives the same tokens. The
 * model holds one row of 16 positions: a one-token step runs 4 rows. */
START_TEST(a_row_does_not_depend_on_its_batch)
{
    st_config cfg = cfg_llama();
    enum { B = 4 };
    st_model m;
    make_model(&m, &cfg, 1);
    st_decoder d;
    ck_assert_int_eq(st_decoder_init(&d, &m, B), 0);
    const st_decode_opts o = {.s = {.temperature = 1.0f, .top_p = 1.0f}, .max_new = NEW};
    int32_t pa[4] = {3, 1, 4, 1}, pa_copy[4] = {3, 1, 4, 1}, pb[2] = {5, 9};
    int32_t alone[NEW], out[B][NEW];
    st_decode_row one = {.prompt = pa, .plen = 4, .key = 77, .out = alone};
    ck_assert_int_eq(st_decode(&d, &one, 1, &o), 0);
    /* rows: pb, pa (key 77), pa shared (key 78), a copy of pa (key 78) */
    st_decode_row rows[B] = {{.prompt = pb, .plen = 2, .key = 1, .out = out[0]},
                             {.prompt = pa, .plen = 4, .key = 77, .out = out[1]},
                             {.prompt = pa, .plen = 4, .key = 78, .out = out[2]},
                             {.prompt = pa_copy, .plen = 4, .key = 78, .out = out[3]}};
    ck_assert_int_eq(st_decode(&d, rows, B, &o), 0);
    ck_assert_int_eq(rows[1].len, one.len);
    ck_assert_mem_eq(out[1], alone, sizeof(int32_t) * one.len);
    ck_assert_int_eq(rows[2].len, rows[3].len);
    ck_assert_mem_eq(out[2], out[3], sizeof(int32_t) * rows[2].len);
    int differ = 0; /* another key draws another answer (very likely over 6 tokens of 37) */
    for (int t = 0; t < NEW; t++) differ |= out[1][t] != out[2][t];
    ck_assert(differ);
    st_decoder_free(&d);
    ck_assert_int_eq(st_decoder_init(&d, &m, 17), ST_ERR_ARG); /* more rows than 1 x 16 positions */
    st_model_free(&m);
}
END_TEST

/* A stop token ends an answer and is its last token; a row with little room
 * stops at max_len; rows that finished early do not disturb the others. */
START_TEST(stop_tokens_and_room)
{
    st_config cfg = cfg_gpt2();
    enum { B = 3 };
    st_model m;
    make_model(&m, &cfg, B);
    st_decoder d;
    ck_assert_int_eq(st_decoder_init(&d, &m, B), 0);
    int32_t p[3] = {2, 7, 11}, free_out[NEW], out[B][NEW];
    /* the answer without stops, then its third token made a stop token */
    st_decode_opts o = {.s = {.temperature = 0}, .max_new = NEW};
    st_decode_row ref = {.prompt = p, .plen = 3, .out = free_out};
    ck_assert_int_eq(st_decode(&d, &ref, 1, &o), 0);
    int32_t stop = free_out[2];
    int first = 0;
    while (free_out[first] != stop) first++;
    o.stop = &stop;
    o.n_stop = 1;
    o.max_len = cfg.max_seq;
    st_decode_row rows[B] = {{.prompt = p, .plen = 3, .out = out[0]},
                             {.prompt = p + 1, .plen = 2, .out = out[1]},
                             {.prompt = p, .plen = cfg.max_seq - 2, .out = out[2]}};
    int32_t longp[16] = {0};
    rows[2].prompt = longp; /* room for two tokens */
    ck_assert_int_eq(st_decode(&d, rows, B, &o), 0);
    ck_assert_int_eq(rows[0].len, first + 1);
    ck_assert_int_eq(rows[0].stopped, 1);
    ck_assert_mem_eq(out[0], free_out, sizeof(int32_t) * (first + 1));
    ck_assert_int_le(rows[2].len, 2);
    /* the middle row is what it is alone */
    int32_t mid[NEW];
    st_decode_row alone = {.prompt = p + 1, .plen = 2, .out = mid};
    ck_assert_int_eq(st_decode(&d, &alone, 1, &o), 0);
    ck_assert_int_eq(alone.len, rows[1].len);
    ck_assert_mem_eq(mid, out[1], sizeof(int32_t) * alone.len);
    /* no room at all */
    st_decode_row full = {.prompt = longp, .plen = cfg.max_seq, .out = mid};
    ck_assert_int_eq(st_decode(&d, &full, 1, &o), ST_ERR_ARG);
    st_decoder_free(&d);
    st_model_free(&m);
}
END_TEST

/* The first token over 4000 keys: frequencies within 4.5 standard errors of
 * the reference's softmax, and with top_k 3 only the 3 most likely appear,
 * in their renormalised proportions. */
START_TEST(draws_follow_the_probabilities)
{
    st_config cfg = cfg_llama();
    const int V = cfg.vocab_size, N = 4000;
    enum { B = 8 };
    st_model m;
    make_model(&m, &cfg, B);
    for (size_t i = 0; i < m.lay.numel; i++) m.params[i] *= 3.0f; /* a peakier distribution */
    ref_model r;
    ck_assert_int_eq(ref_model_init(&r, &cfg), 0);
    ref_model_set_params(&r, m.params);
    int32_t p[2] = {4, 2};
    double *lg = malloc(sizeof(double) * V), *prob = malloc(sizeof(double) * V);
    ref_last_logits(&r, p, 2, lg);
    double mx = lg[0], z = 0;
    for (int v = 0; v < V; v++) mx = fmax(mx, lg[v]);
    for (int v = 0; v < V; v++) z += prob[v] = exp(lg[v] - mx);
    for (int v = 0; v < V; v++) prob[v] /= z;
    st_decoder d;
    ck_assert_int_eq(st_decoder_init(&d, &m, B), 0);
    for (int k = 0; k < 2; k++) {
        st_decode_opts o = {.s = {.temperature = 1.0f, .top_k = k ? 3 : 0, .top_p = 1.0f}, .max_new = 1};
        int *count = calloc((size_t)V, sizeof *count);
        int32_t out[B];
        for (int i = 0; i < N; i += B) {
            st_decode_row rows[B];
            for (int b = 0; b < B; b++)
                rows[b] = (st_decode_row){.prompt = p, .plen = 2, .key = (uint64_t)(i + b) * 7919u, .out = out + b};
            ck_assert_int_eq(st_decode(&d, rows, B, &o), 0);
            for (int b = 0; b < B; b++) count[out[b]]++;
        }
        double want[64], kept = 0;
        int order[64];
        for (int v = 0; v < V; v++) order[v] = v;
        for (int a = 0; a < V; a++) /* by probability, descending */
            for (int b = a + 1; b < V; b++)
                if (prob[order[b]] > prob[order[a]]) { int t = order[a]; order[a] = order[b]; order[b] = t; }
        for (int i = 0; i < V; i++) want[order[i]] = !k || i < 3 ? prob[order[i]] : 0, kept += want[order[i]];
        for (int v = 0; v < V; v++) {
            const double q = want[v] / kept, se = sqrt(q * (1 - q) / N) + 1e-12;
            ck_assert_msg(fabs(count[v] / (double)N - q) < 4.5 * se + 1e-9,
                          "top_k %d token %d: frequency %.4f, probability %.4f", k ? 3 : 0, v, count[v] / (double)N, q);
        }
        free(count);
    }
    free(lg);
    free(prob);
    st_decoder_free(&d);
    ref_model_free(&r);
    st_model_free(&m);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("decode");
    TCase *tc = tcase_create("decode");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, greedy_llama_is_reference_argmax);
    tcase_add_test(tc, greedy_gpt2_is_reference_argmax);
    tcase_add_test(tc, a_row_does_not_depend_on_its_batch);
    tcase_add_test(tc, stop_tokens_and_room);
    tcase_add_test(tc, draws_follow_the_probabilities);
    suite_add_tcase(s, tc);
    return st_run_serial_mpi_suite(&argc, &argv, s);
}
