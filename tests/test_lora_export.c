/* test_lora_export.c: adapters through a checkpoint. Saved as the "lora" set
 * and merged back (what generate, eval and export --merge-lora do), the merged
 * model's logits equal base + adapters; --to peft writes exactly the trained
 * adapter values under PEFT's names. */
#include <check.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rng.h"
#include "harness.h"
#include "io/lora_ckpt.h"
#include "io/checkpoint.h"
#include "io/formats/hf.h"
#include "model/lora.h"
#include "model/model.h"
#include "mpi_check.h"

START_TEST(merged_checkpoint_equals_base_plus_adapters)
{
    st_config cfg = {.family = ST_FAMILY_LLAMA, .n_layer = 2, .d_model = 24, .n_head = 6, .n_kv_head = 2,
                     .d_ff = 40, .vocab_size = 37, .max_seq = 16, .norm_eps = 1e-5f, .rope_theta = 1e4f,
                     .tied_embeddings = 0};
    enum { T = 7 };
    st_model m;
    ck_assert_int_eq(st_model_create(&m, &cfg, MPI_COMM_SELF, 1, T, 0), 0);
    st_model_init(&m, 3);
    st_lora_config lc = {.rank = 4, .alpha = 8.0f};
    ck_assert_int_eq(st_lora_parse_targets("q,v,o,down", &lc.targets), 0);
    st_lora *l;
    ck_assert_int_eq(st_lora_create(&l, &m.lay, &lc, T, 5), 0);
    st_rng r;
    st_rng_seed(&r, 9);
    float *lp = st_lora_params(l);
    for (size_t i = 0; i < st_lora_numel(l); i++) lp[i] = 0.3f * (float)(st_rng_uniform(&r) - 0.5); /* B != 0 */
    /* save base + the "lora" set */
    char dir[256], path[300];
    th_tmpdir(MPI_COMM_SELF, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ckpt.h5", dir);
    st_grid g;
    ck_assert_int_eq(st_grid_init(&g, MPI_COMM_SELF, 1), 0);
    char meta[] = "{\"rank\":4,\"alpha\":8,\"dropout\":0,\"targets\":\"q,v,o,down\"}";
    st_ckpt_tensors t = {.lay = &m.lay, .params = m.params, .n_sets = 1};
    t.sets[0] = (st_ckpt_set){.group = "lora", .lay = st_lora_layout(l), .params = lp, .meta = meta};
    ck_assert_int_eq(st_ckpt_save_file(path, &g, &t, NULL, NULL, NULL, 0), 0);
    /* logits of the last position with the adapters attached */
    int32_t tok[T] = {1, 5, 9, 2, 30, 7, 11};
    float *a = malloc(sizeof(float) * m.lay.vocab_l), *b = malloc(sizeof(float) * m.lay.vocab_l);
    st_kvcache c;
    m.adapter = st_lora_adapter(l);
    st_lora_set_step(l, 0, 0);
    ck_assert_int_eq(st_kvcache_create(&c, &m, 1), 0);
    ck_assert_int_eq(st_model_forward_cached(&m, &c, tok, T, a), 0);
    st_kvcache_free(&c);
    /* a fresh model from the file, adapters merged: no adapter attached */
    st_model m2;
    ck_assert_int_eq(st_model_create(&m2, &cfg, MPI_COMM_SELF, 1, T, 0), 0);
    st_model_init(&m2, 99);
    st_ckpt_tensors t2 = {.lay = &m2.lay, .params = m2.params};
    ck_assert_int_eq(st_ckpt_load(path, &g, &t2, NULL, NULL, ST_CKPT_WEIGHTS_ONLY, NULL, NULL, NULL), 0);
    int merged = 0;
    ck_assert_int_eq(st_lora_merge_checkpoint(path, &g, &m2.lay, m2.params, &merged), 0);
    ck_assert_int_eq(merged, 1);
    ck_assert_int_eq(st_kvcache_create(&c, &m2, 1), 0);
    ck_assert_int_eq(st_model_forward_cached(&m2, &c, tok, T, b), 0);
    st_kvcache_free(&c);
    double d = 0, mx = 0;
    for (int i = 0; i < cfg.vocab_size; i++) d = fmax(d, fabs(a[i] - b[i])), mx = fmax(mx, fabs(a[i]));
    ck_assert_msg(d / mx < 1e-5, "merged logits differ by %.3g of %.3g", d, mx);
    /* and they differ from the base alone: the adapters did something */
    st_model m3;
    ck_assert_int_eq(st_model_create(&m3, &cfg, MPI_COMM_SELF, 1, T, 0), 0);
    st_model_init(&m3, 3);
    ck_assert_int_eq(st_kvcache_create(&c, &m3, 1), 0);
    ck_assert_int_eq(st_model_forward_cached(&m3, &c, tok, T, b), 0);
    st_kvcache_free(&c);
    double d3 = 0;
    for (int i = 0; i < cfg.vocab_size; i++) d3 = fmax(d3, fabs(a[i] - b[i]));
    ck_assert(d3 > 1e-3);
    /* PEFT export: exactly the adapter values, under base_model.model.<name> */
    char peft[300];
    snprintf(peft, sizeof peft, "%s/peft", dir);
    static const char *const mods[] = {"q_proj", "v_proj", "o_proj", "down_proj"};
    ck_assert_int_eq(st_hf_write_peft(peft, &cfg, st_lora_layout(l), lp, 4, 8.0f, 0.0f, mods, 4, ST_DT_F32), 0);
    char stp[400];
    snprintf(stp, sizeof stp, "%s/adapter_model.safetensors", peft);
    st_safetensors f;
    ck_assert_int_eq(st_safetensors_open(&f, stp), 0);
    const st_layout *ll = st_lora_layout(l);
    ck_assert_int_eq(f.n, ll->n_tensors);
    for (int i = 0; i < ll->n_tensors; i++) {
        char name[160];
        snprintf(name, sizeof name, "base_model.model.%s", ll->tensors[i].name);
        const st_safetensors_entry *e = st_safetensors_find(&f, name);
        ck_assert_msg(e != NULL, "%s missing", name);
        float *x = malloc(sizeof(float) * e->numel);
        ck_assert_int_eq(st_safetensors_read(&f, e, x), 0);
        ck_assert(memcmp(x, lp + ll->tensors[i].offset, sizeof(float) * e->numel) == 0);
        free(x);
    }
    st_safetensors_close(&f);
    /* GPT-2 has no separate q/k/v modules: refused with a clear message */
    st_config gc = cfg;
    gc.family = ST_FAMILY_GPT2;
    ck_assert_int_eq(st_hf_write_peft(peft, &gc, ll, lp, 4, 8, 0, mods, 4, ST_DT_F32), ST_ERR_ARG);
    free(a), free(b);
    st_model_free(&m3);
    st_model_free(&m2);
    st_grid_free(&g);
    st_lora_free(l);
    st_model_free(&m);
    th_rm_rf(dir);
}
END_TEST

int main(int argc, char **argv)
{
    Suite *s = suite_create("lora_export");
    TCase *tc = tcase_create("lora_export");
    tcase_add_test(tc, merged_checkpoint_equals_base_plus_adapters);
    suite_add_tcase(s, tc);
    return st_run_serial_mpi_suite(&argc, &argv, s);
}
