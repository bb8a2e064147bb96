/* test_plan.c: the planner (src/cmd/planner.c). Its step times against the
 * worked examples of benchmarks/COMM_MODEL.md (computed there by hand from
 * the same inputs), its memory counts against independent counts, and its
 * choice of grid. Its memory against real runs' peak resident memory is a
 * benchmark (benchmarks/run.sh, ONLY=plan: the models are too large for a
 * unit test). */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "cmd/planner.h"
#include "core/params.h"

/* COMM_MODEL.md's cluster: 64 cores x 140 GFLOP/s per node, 10 GB/s network,
 * 5 GB/s shared memory, 5 us per hop. */
static st_plan_machine comm_model_machine(double mfu)
{
    return (st_plan_machine){.node_memory = 256e9, .usable = 0.9, .node_gflops = 64 * 140.0, .mfu = mfu,
                             .shm_gbs = 5, .net_gbs = 10, .latency_us = 5};
}

START_TEST(step_time_matches_comm_model)
{
    /* GPT-2-124M, 16 nodes of one rank, 16 rows x 1024: 2.841 + 0.093 + 0.002 = 2.936 s, 89,300 tokens/s */
    st_plan p = {.ranks = 16, .tp = 1, .seq = 1024, .batch = 16, .micro = 1, .ranks_per_node = 1};
    ck_assert_int_eq(st_plan_named_shape("gpt2-124m", &p.cfg), ST_OK);
    st_plan_machine m = comm_model_machine(0.55);
    st_plan_time t;
    st_plan_time_of(&p, &m, &t);
    ck_assert_msg(fabs(t.compute - 2.841) < 0.001, "compute %.4f", t.compute);
    ck_assert_msg(fabs(t.dp - 0.095) < 0.001, "dp %.4f (0.093 + 0.002 latency)", t.dp);
    ck_assert_double_eq(t.tp, 0);
    ck_assert_msg(fabs(t.tokens_per_s - 89300) < 100, "%.0f tokens/s", t.tokens_per_s);
    /* the 1B Llama, t = 2, 16 nodes, 16 micro-batches of 1 x 2048: 46.97 + 3.55 + 0.93 = 51.45 s, 10,190 tokens/s */
    p = (st_plan){.ranks = 32, .tp = 2, .zero = 1, .seq = 2048, .batch = 1, .micro = 16, .ranks_per_node = 2};
    ck_assert_int_eq(st_plan_named_shape("llama-1b", &p.cfg), ST_OK);
    m = comm_model_machine(0.64);
    st_plan_time_of(&p, &m, &t);
    ck_assert_msg(fabs(t.compute - 46.97) < 0.01, "compute %.3f", t.compute);
    ck_assert_msg(fabs(t.tp - 3.55) < 0.01, "tp %.3f", t.tp);
    ck_assert_msg(fabs(t.dp - 0.93) < 0.01, "dp %.3f", t.dp);
    ck_assert_msg(fabs(t.step - 51.45) < 0.01, "step %.3f", t.step);
    ck_assert_msg(fabs(t.tokens_per_s - 10190) < 10, "%.0f tokens/s", t.tokens_per_s);
    /* t = 8 on the same 16 nodes (eight ranks per node): the table's 54.2 s and
     * 9,680 tokens/s are its terms 46.97 + 6.21 + 0.93 rounded up */
    p.ranks = 128, p.tp = 8, p.ranks_per_node = 8;
    st_plan_time_of(&p, &m, &t);
    ck_assert_msg(fabs(t.step - 54.2) < 0.1, "step %.3f", t.step);
    ck_assert_msg(fabs(t.tokens_per_s - 9680) < 20, "%.0f tokens/s", t.tokens_per_s);
}
END_TEST

/* Weights against st_config_num_params (counted from the config, not the
 * layout), tp and ZeRO-1 splits, recomputation keeping one layer of the
 * per-layer activations. */
START_TEST(memory_counts)
{
    st_plan p = {.ranks = 1, .tp = 1, .seq = 256, .batch = 4, .micro = 1, .ranks_per_node = 1};
    ck_assert_int_eq(st_plan_named_shape("gpt2-124m", &p.cfg), ST_OK);
    st_plan_memory one, two, z, bf;
    ck_assert_int_eq(st_plan_memory_of(&p, &one), ST_OK);
    ck_assert_double_eq(one.weights, 4.0 * st_config_num_params(&p.cfg));
    ck_assert_double_eq(one.grads, one.weights);
    ck_assert_double_eq(one.moments, 2 * one.weights);
    ck_assert_double_eq(one.mpi, 0);
    ck_assert(one.acts_recompute < one.acts);
    p.ranks = 2, p.tp = 2;
    ck_assert_int_eq(st_plan_memory_of(&p, &two), ST_OK);
    /* split tensors halve; the position table, norms and row-parallel biases stay whole */
    ck_assert(two.weights > one.weights / 2 && two.weights < 0.55 * one.weights);
    ck_assert(two.mpi == 0); /* dp 1 */
    p.ranks = 8, p.tp = 2, p.zero = 1;
    ck_assert_int_eq(st_plan_memory_of(&p, &z), ST_OK);
    ck_assert_double_eq(z.moments, 2 * 4.0 * ceil(two.weights / 4 / 4));
    ck_assert(z.mpi > 0 && z.mpi < z.weights / 2); /* the largest bucket: the embeddings */
    p.bf16 = 1;
    ck_assert_int_eq(st_plan_memory_of(&p, &bf), ST_OK);
    ck_assert(bf.bf16 > z.weights / 2 && bf.bf16 < z.weights / 2 + 2 * 256 * 4 * (25129 + 3072 + 10)); /* + scratch */
    ck_assert_double_eq(bf.total - z.total, bf.bf16);
    p.seq = 2048; /* beyond GPT-2's 1024 positions */
    ck_assert_int_ne(st_plan_memory_of(&p, &bf), ST_OK);
}
END_TEST

/* The fastest grid that fits; the least memory when nothing does. */
START_TEST(recommendation)
{
    st_plan p = {.ranks = 64, .seq = 2048, .batch = 1, .micro = 1, .ranks_per_node = 16};
    ck_assert_int_eq(st_plan_named_shape("llama-7b", &p.cfg), ST_OK);
    st_plan_machine m = comm_model_machine(0.64);
    m.node_memory = 128e9;
    int fits = 0;
    st_plan q = p;
    ck_assert_int_eq(st_plan_recommend(&q, &m, &fits), ST_OK);
    ck_assert_int_eq(fits, 1);
    st_plan_memory mem;
    ck_assert_int_eq(st_plan_memory_of(&q, &mem), ST_OK);
    ck_assert((q.recompute ? mem.total_recompute : mem.total) <= 0.9 * 8e9);
    /* a smaller tp would not fit, whatever else is chosen */
    for (int tp = 1; tp < q.tp; tp *= 2) {
        st_plan r = q;
        r.tp = tp, r.zero = 1;
        ck_assert_int_eq(st_plan_memory_of(&r, &mem), ST_OK);
        ck_assert(mem.total_recompute > 0.9 * 8e9);
    }
    /* with memory to spare, recomputation (a third more compute) is not chosen */
    m.node_memory = 4096e9;
    q = p;
    ck_assert_int_eq(st_plan_recommend(&q, &m, &fits), ST_OK);
    ck_assert_int_eq(fits, 1);
    ck_assert_int_eq(q.recompute, 0);
    /* 2 GB nodes hold no grid of 64 ranks: the smallest is returned */
    m.node_memory = 2e9;
    q = p;
    ck_assert_int_eq(st_plan_recommend(&q, &m, &fits), ST_OK);
    ck_assert_int_eq(fits, 0);
    ck_assert_int_eq(q.tp, 16);
    ck_assert_int_eq(q.zero, 1);
    ck_assert_int_eq(q.recompute, 1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("plan");
    tcase_add_test(tc, step_time_matches_comm_model);
    tcase_add_test(tc, memory_counts);
    tcase_add_test(tc, recommendation);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
