/* bench_step.c: one rank's training step on a GPT-2-124M-shaped and a
 * Llama-shaped model of similar size: step time, tokens/s, and model FLOP
 * utilisation (6N + attention FLOPs per token, PaLM's definition) against
 * the matrix-product rate this program measures through oneDNN on the same
 * cores and threads: fp32's for fp32 steps, bf16's for bf16 mixed precision
 * (the bf16 weight copy's refresh is timed with the optimizer).
 *
 *   OMP_NUM_THREADS=2 build/benchmarks/bench_step [B T steps [fp32|bf16|both [gpt2|all]]]
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "kernels/peak.h"
#include "model/model.h"
#include "model/optim.h"

static int bench(const char *name, st_config cfg, int B, int T, int steps, int bf16, double peak)
{
    st_model m;
    if (st_model_create(&m, &cfg, MPI_COMM_SELF, B, T, 1)) { st_error_print(stderr, 0); return 1; }
    st_model_init(&m, 1);
    if (st_model_set_precision(&m, bf16)) { st_error_print(stderr, 0); return 1; }
    st_optim_config oc;
    st_optim_config_default(&oc);
    st_adamw o;
    if (st_adamw_init(&o, &m.lay, 0, m.lay.numel, &oc)) { st_error_print(stderr, 0); return 1; }
    int32_t *tok = malloc(sizeof(int32_t) * B * T), *tgt = malloc(sizeof(int32_t) * B * T);
    float *mask = malloc(sizeof(float) * B * T);
    st_rng r;
    st_rng_seed(&r, 1);
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)st_rng_below(&r, cfg.vocab_size);
        tgt[i] = (int32_t)st_rng_below(&r, cfg.vocab_size);
        mask[i] = 1.0f;
    }
    double tf = 0, tb = 0, to = 0, t_all = 0;
    for (int s = -1; s < steps; s++) { /* step -1 warms up (creates every primitive) */
        double loss, t0 = st_now();
        st_model_zero_grad(&m);
        if (st_model_forward(&m, tok, tgt, mask, B, T, 1.0f / (B * T), &loss)) { st_error_print(stderr, 0); return 1; }
        double t1 = st_now();
        if (st_model_backward(&m, tok)) { st_error_print(stderr, 0); return 1; }
        double t2 = st_now();
        st_adamw_update(&o, m.params, m.grads, 1e-4f);
        st_model_sync_bf16(&m);
        double t3 = st_now();
        if (s >= 0) { tf += t1 - t0; tb += t2 - t1; to += t3 - t2; t_all += t3 - t0; }
    }
    double step = t_all / steps, tps = B * T / step;
    double flops = st_config_flops_per_token(&cfg, T) * B * T / step / 1e9;
    printf("%-28s %s %6.1fM params  B=%d T=%d  step %7.3f s (fwd %.3f, bwd %.3f, adamw %.3f)  %7.0f tok/s  %6.1f GFLOP/s  MFU %5.1f%%  (%d primitives)\n",
           name, bf16 ? "bf16" : "fp32", st_config_num_params(&cfg) / 1e6, B, T, step, tf / steps, tb / steps,
           to / steps, tps, flops, 100.0 * flops / peak, st_kernels_cache_size());
    printf("RESULT bench=step model=%s precision=%s B=%d T=%d step_s=%.3f tok_s=%.1f mfu=%.3f\n", name,
           bf16 ? "bf16" : "fp32", B, T, step, tps, flops / peak);
    fflush(stdout);
    free(tok); free(tgt); free(mask);
    st_adamw_free(&o);
    st_model_free(&m);
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int B = argc > 1 ? atoi(argv[1]) : 4, T = argc > 2 ? atoi(argv[2]) : 256, steps = argc > 3 ? atoi(argv[3]) : 3;
    const char *prec = argc > 4 ? argv[4] : "both", *which = argc > 5 ? argv[5] : "all";
    double peak[2] = {0, 0};
    int n = 2048;
    for (int bf16 = 0; bf16 < 2; bf16++) {
        if (!strcmp(prec, bf16 ? "fp32" : "bf16")) continue;
        if (st_measure_peak_gflops(n, bf16, &peak[bf16])) { st_error_print(stderr, 0); return 1; }
        printf("oneDNN %s matmul %dx%dx%d: %.1f GFLOP/s (the MFU ceiling of %s steps)\n", bf16 ? "bf16" : "fp32",
               n, n, n, peak[bf16], bf16 ? "bf16" : "fp32");
    }
    st_config gpt2 = {.family = ST_FAMILY_GPT2, .n_layer = 12, .d_model = 768, .n_head = 12, .n_kv_head = 12,
                      .d_ff = 3072, .vocab_size = 50257, .max_seq = 1024, .norm_eps = 1e-5f, .tied_embeddings = 1};
    /* a Llama-family model of similar size (SmolLM-135M's shape) */
    st_config llama = {.family = ST_FAMILY_LLAMA, .n_layer = 30, .d_model = 576, .n_head = 9, .n_kv_head = 3,
                       .d_ff = 1536, .vocab_size = 49152, .max_seq = 2048, .norm_eps = 1e-5f,
                       .rope_theta = 10000.0f, .tied_embeddings = 1};
    int rc = 0;
    for (int bf16 = 0; bf16 < 2 && !rc; bf16++) {
        if (!strcmp(prec, bf16 ? "fp32" : "bf16")) continue;
        rc = bench("gpt2-124M", gpt2, B, T, steps, bf16, peak[bf16]);
        if (!rc && strcmp(which, "gpt2")) rc = bench("llama (SmolLM-135M shape)", llama, B, T, steps, bf16, peak[bf16]);
    }
    st_kernels_shutdown();
    MPI_Finalize();
    return rc;
}
