/* test_mpi2_convert.c: `shardtune convert` on 2 ranks, where each rank reads
 * and writes disjoint source tensors into one parallel HDF5 file, writes the
 * same checkpoint as on 1 rank: the same tensors bit for bit (each equal to
 * the source read whole), checksums that verify, the same tokenizer. Sources:
 * llama2.c's stories260K (a real third-party file, with its tokenizer found
 * beside it), a GPT-2 Hugging Face directory (fused c_attn: one source tensor
 * fills q, k and v) in f32 and bf16, and an llm.c file (padded vocabulary).
 * A truncated source fails on both ranks and leaves no output. The genuine
 * stories260K then generates llama2.c's own greedy text. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"
#include "core/params.h"
#include "harness.h"
#include "io/checkpoint.h"
#include "io/formats/hf.h"
#include "io/formats/llama2c.h"
#include "io/formats/llmc.h"
#include "io/formats/model_open.h"
#include "io/formats/safetensors.h"

static char DIR_[256];
static int RANK;

static const char *tmp_path(const char *name)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 512, "%s/%s", DIR_, name);
    return b;
}

static st_err convert_on(MPI_Comm comm, const char *src, const char *out, const char *tokenizer)
{
    char *argv[8] = {"convert", (char *)src, "--out", (char *)out, NULL};
    int argc = 4;
    if (tokenizer) argv[argc++] = "--tokenizer", argv[argc++] = (char *)tokenizer;
    st_error_clear();
    return st_cmd_convert(argc, argv, comm);
}

/* Rank 0: both checkpoints hold the same config, tokenizer and bit-identical
 * tensors, equal to want (the source read whole, 1x1 layout). */
static int same_checkpoints(const char *a, const char *b, const float *want, size_t n_want, int want_tok)
{
    st_config ca, cb;
    st_layout la, lb;
    float *pa = NULL, *pb = NULL;
    char *ka = NULL, *kb = NULL;
    uint8_t *ba = NULL, *bb = NULL;
    size_t na = 0, nb = 0;
    ck_assert_msg(st_ckpt_load_whole(a, &ca, &la, &pa, &ka, &ba, &na) == ST_OK, "%s", st_error_message());
    ck_assert_msg(st_ckpt_load_whole(b, &cb, &lb, &pb, &kb, &bb, &nb) == ST_OK, "%s", st_error_message());
    ck_assert(!memcmp(&ca, &cb, sizeof ca));
    ck_assert_uint_eq(la.numel, lb.numel);
    ck_assert_uint_eq(la.numel, n_want);
    int same = !memcmp(pa, pb, la.numel * sizeof *pa) && !memcmp(pa, want, n_want * sizeof *pa);
    ck_assert_int_eq(!!ka, want_tok);
    ck_assert_int_eq(!!kb, want_tok);
    if (want_tok) ck_assert(!strcmp(ka, kb) && na == nb && !memcmp(ba, bb, na));
    free(pa), free(pb), free(ka), free(kb), free(ba), free(bb);
    st_layout_free(&la);
    st_layout_free(&lb);
    return same;
}

/* Convert src on 2 ranks and on rank 0 alone; compare on rank 0. */
static void check_source(const char *src, const char *tag, const char *format,
                         const char *tokenizer, int want_tok)
{
    char a[600], b[600];
    snprintf(a, sizeof a, "%s/%s_np2.h5", DIR_, tag);
    snprintf(b, sizeof b, "%s/%s_np1.h5", DIR_, tag);
    st_err e = convert_on(MPI_COMM_WORLD, src, a, tokenizer);
    ck_assert_msg(e == ST_OK, "2-rank convert of %s: %s", src, st_error_message());
    int same = 1;
    if (RANK == 0) {
        e = convert_on(MPI_COMM_SELF, src, b, tokenizer);
        ck_assert_msg(e == ST_OK, "1-rank convert of %s: %s", src, st_error_message());
        st_config c;
        float *w = NULL;
        ck_assert_msg(st_model_source_read_file(src, format, &c, &w) == ST_OK, "%s", st_error_message());
        st_layout lay;
        ck_assert_int_eq(st_layout_init(&lay, &c, 1, 0), ST_OK);
        same = same_checkpoints(a, b, w, lay.numel, want_tok);
        st_layout_free(&lay);
        free(w);
    }
    MPI_Bcast(&same, 1, MPI_INT, 0, MPI_COMM_WORLD);
    ck_assert_msg(same, "%s: the 2-rank and 1-rank checkpoints differ from each other or the source", tag);
}

START_TEST(test_llama2c_stories)
{
    /* no tokenizer.bin beside it here: the checkpoints store none (a warning) */
    check_source(th_data_path("llama2c/stories260K.bin"), "l2c", "llama2c", NULL, 0);
}
END_TEST

/* The genuine stories260K with its tokenizer, converted on 2 ranks, greedily
 * continues "Once upon a time" exactly as llama2.c's run.c does
 * (data/llama2c/greedy_once_upon_a_time.txt, its stdout for -t 0.0 -n 200:
 * 200 positions: bos, the 4 prompt pieces, 200 - 4 new tokens, a newline). It
 * fails when generate puts no bos before the prompt (run.c does). */
START_TEST(test_llama2c_greedy_text)
{
    char tok[4200];
    snprintf(tok, sizeof tok, "llama2c:%s", th_data_path("llama2c/tok512.bin"));
    const char *ckpt = tmp_path("stories.h5"), *gen = tmp_path("greedy.jsonl");
    ck_assert_msg(convert_on(MPI_COMM_WORLD, th_data_path("llama2c/stories260K.bin"), ckpt, tok) == ST_OK, "%s",
                  st_error_message());
    char *argv[] = {"generate", (char *)ckpt, "--prompt", "Once upon a time", "--temperature", "0",
                    "--max_new", "196", "--out", (char *)gen, NULL};
    st_error_clear();
    ck_assert_msg(st_cmd_generate(10, argv, MPI_COMM_WORLD) == ST_OK, "%s", st_error_message());
    if (RANK == 0) {
        char *line = th_read_file(gen, NULL), *want = th_read_file(th_data_path("llama2c/greedy_once_upon_a_time.txt"), NULL);
        cJSON *j = cJSON_Parse(line);
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt"), *c = cJSON_GetObjectItemCaseSensitive(j, "completion");
        ck_assert(cJSON_IsString(p) && cJSON_IsString(c));
        size_t np = strlen(p->valuestring), nc = strlen(c->valuestring);
        char *got = malloc(np + nc + 2);
        snprintf(got, np + nc + 2, "%s%s\n", p->valuestring, c->valuestring);
        size_t k = 0;
        while (got[k] && got[k] == want[k]) k++;
        ck_assert_msg(!strcmp(got, want), "greedy text leaves llama2.c's after %zu characters: \"%.40s\" vs \"%.40s\"",
                      k, got + k, want + k);
        free(got), free(line), free(want);
        cJSON_Delete(j);
    }
}
END_TEST

/* generate --logits on 2 tp ranks: a NumPy .npy (version 1, '<f4', shape
 * (prompts, max_new, vocab)) whose rows' argmax are the greedy tokens. */
START_TEST(test_generate_logits)
{
    char tok[4200];
    snprintf(tok, sizeof tok, "llama2c:%s", th_data_path("llama2c/tok512.bin"));
    const char *ckpt = tmp_path("stories_lg.h5"), *prompts = tmp_path("p.jsonl"), *gen = tmp_path("g.jsonl"),
               *npy = tmp_path("logits.npy");
    ck_assert_msg(convert_on(MPI_COMM_WORLD, th_data_path("llama2c/stories260K.bin"), ckpt, tok) == ST_OK, "%s",
                  st_error_message());
    if (RANK == 0) {
        static const char p[] = "{\"prompt\": \"Once upon a time\"}\n{\"prompt\": \"The cat\"}\n";
        th_write_file(prompts, p, strlen(p));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    char *argv[] = {"generate", (char *)ckpt, "--prompts", (char *)prompts, "--temperature", "0", "--max_new", "6",
                    "--tp", "2", "--out", (char *)gen, "--logits", (char *)npy, NULL};
    st_error_clear();
    ck_assert_msg(st_cmd_generate(14, argv, MPI_COMM_WORLD) == ST_OK, "%s", st_error_message());
    if (RANK == 0) {
        size_t n;
        char *f = th_read_file(npy, &n);
        ck_assert(n > 10 && !memcmp(f, "\x93NUMPY\x01\x00", 8));
        size_t hl = (unsigned char)f[8] | (size_t)(unsigned char)f[9] << 8;
        ck_assert_uint_eq((10 + hl) % 64, 0);
        ck_assert_msg(strstr(f + 10, "'descr': '<f4', 'fortran_order': False, 'shape': (2, 6, 512,)"), "%.*s",
                      (int)hl, f + 10);
        ck_assert_uint_eq(n, 10 + hl + 2 * 6 * 512 * sizeof(float));
        const float *x = (const float *)(f + 10 + hl);
        char *lines = th_read_file(gen, NULL), *save = NULL;
        int i = 0;
        for (char *l = strtok_r(lines, "\n", &save); l; l = strtok_r(NULL, "\n", &save), i++) {
            cJSON *j = cJSON_Parse(l);
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "completion_ids");
            ck_assert_int_eq(cJSON_GetArraySize(c), 6);
            for (int s = 0; s < 6; s++) {
                const float *row = x + ((size_t)i * 6 + (size_t)s) * 512;
                int best = 0;
                for (int v = 1; v < 512; v++) if (row[v] > row[best]) best = v;
                ck_assert_int_eq(best, cJSON_GetArrayItem(c, s)->valueint);
            }
            cJSON_Delete(j);
        }
        ck_assert_int_eq(i, 2);
        free(lines), free(f);
    }
}
END_TEST

static st_err tokenize_on(const char *src, const char *in, const char *out, const char *more1, const char *more2)
{
    char *argv[12] = {"tokenize", (char *)src, "--input", (char *)in, "--out", (char *)out};
    int argc = 6;
    if (more1) argv[argc++] = (char *)more1, argv[argc++] = (char *)more2;
    st_error_clear();
    return st_cmd_tokenize(argc, argv, MPI_COMM_WORLD);
}

/* shardtune tokenize: a checkpoint's tokenizer or a spec; lines or JSONL;
 * bos by the tokenizer's rule; --decode back; errors name file and line.
 * Ids: Google's sentencepiece 0.1.97 on tok512.model (see test_dataset.c). */
START_TEST(test_tokenize_command)
{
    char tok[4200], spm[4200];
    snprintf(tok, sizeof tok, "llama2c:%s", th_data_path("llama2c/tok512.bin"));
    snprintf(spm, sizeof spm, "llama2c:%s", th_data_path("llama2c/tok512.model"));
    char ckpt[512], in[512], ids[512], back[512], js[512];   /* tmp_path keeps only 4 */
    snprintf(ckpt, sizeof ckpt, "%s", tmp_path("stories_tk.h5"));
    snprintf(in, sizeof in, "%s", tmp_path("t.txt"));
    snprintf(ids, sizeof ids, "%s", tmp_path("t.ids"));
    snprintf(back, sizeof back, "%s", tmp_path("t.back"));
    snprintf(js, sizeof js, "%s", tmp_path("t.jsonl"));
    ck_assert_msg(convert_on(MPI_COMM_WORLD, th_data_path("llama2c/stories260K.bin"), ckpt, tok) == ST_OK, "%s",
                  st_error_message());
    if (RANK == 0) {
        static const char lines[] = "Once upon a time\nCan you\n", jl[] = "{\"text\": \"  two  spaces  \"}\n\"Can you\"\n";
        th_write_file(in, lines, strlen(lines));
        th_write_file(js, jl, strlen(jl));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    ck_assert_msg(tokenize_on(ckpt, in, ids, NULL, NULL) == ST_OK, "%s", st_error_message());
    ck_assert_msg(tokenize_on(ckpt, ids, back, "--decode", "true") == ST_OK, "%s", st_error_message());
    if (RANK == 0) {
        char *got = th_read_file(ids, NULL), *txt = th_read_file(back, NULL);
        ck_assert_str_eq(got, "[1, 403, 407, 261, 378]\n[1, 410, 457, 303, 364]\n");
        ck_assert_str_eq(txt, "<s>Once upon a time\n<s>Can you\n");
        free(got), free(txt);
    }
    ck_assert_msg(tokenize_on(spm, js, ids, "--format", "jsonl") == ST_OK, "%s", st_error_message());
    if (RANK == 0) {
        char *got = th_read_file(ids, NULL);
        ck_assert_str_eq(got, "[1, 259, 424, 414, 262, 427, 412, 331, 419]\n[1, 410, 457, 303, 364]\n");
        free(got);
    }
    /* errors fail on every rank; rank 0, which read the file, names it */
    ck_assert_int_ne(tokenize_on(spm, in, ids, "--format", "jsonl"), ST_OK);   /* not JSON */
    if (RANK == 0) ck_assert_msg(strstr(st_error_message(), "t.txt:1"), "%s", st_error_message());
    ck_assert_int_ne(tokenize_on("nothere.h5", in, ids, NULL, NULL), ST_OK);
    if (RANK == 0) ck_assert_msg(strstr(st_error_message(), "neither a tokenizer spec"), "%s", st_error_message());
}
END_TEST

/* A GPT-2 model with distinct values everywhere, as a Hugging Face dir. */
static void write_gpt2_dir(const char *dir, st_dtype dtype)
{
    st_config c = {.family = ST_FAMILY_GPT2, .n_layer = 3, .d_model = 32, .n_head = 4, .n_kv_head = 4, .d_ff = 128,
                   .vocab_size = 301, .max_seq = 16, .norm_eps = 1e-5f, .tied_embeddings = 1};
    st_layout lay;
    ck_assert_int_eq(st_layout_init(&lay, &c, 1, 0), ST_OK);
    float *p = malloc(lay.numel * sizeof *p);
    for (size_t i = 0; i < lay.numel; i++) p[i] = (float)sin(0.37 * (double)i) * 0.5f;
    ck_assert_msg(st_hf_write(dir, &c, p, NULL, dtype) == ST_OK, "%s", st_error_message());
    free(p);
    st_layout_free(&lay);
}

START_TEST(test_hf_gpt2)
{
    if (RANK == 0) write_gpt2_dir(tmp_path("gpt2_f32"), ST_DT_F32);
    if (RANK == 0) write_gpt2_dir(tmp_path("gpt2_bf16"), ST_DT_BF16);
    MPI_Barrier(MPI_COMM_WORLD);
    char tok[4200];
    snprintf(tok, sizeof tok, "gpt2:%s", th_data_path("gpt2-bpe"));
    /* the vocabulary (50257) is larger than the model's 301: refused on both ranks */
    st_err e = convert_on(MPI_COMM_WORLD, tmp_path("gpt2_f32"), tmp_path("nope.h5"), tok);
    ck_assert_int_eq(e, ST_ERR_ARG);
    ck_assert(access(tmp_path("nope.h5"), F_OK) != 0);
    check_source(tmp_path("gpt2_f32"), "gpt2_f32", "hf", "byte", 1);
    check_source(tmp_path("gpt2_bf16"), "gpt2_bf16", "hf", NULL, 0);
}
END_TEST

/* An llm.c GPT-2 file (fp32, Vp > V) with values that differ per element. */
static void write_llmc(const char *path, long cut)
{
    const long maxT = 8, V = 50, Vp = 64, L = 2, NH = 2, C = 16;
    int32_t h[256] = {20240326, 3, (int32_t)maxT, (int32_t)V, (int32_t)L, (int32_t)NH, (int32_t)C, (int32_t)Vp};
    long n = (Vp + maxT) * C + L * (12 * C * C + 13 * C) + 2 * C;
    FILE *f = fopen(path, "wb");
    ck_assert(f);
    ck_assert(fwrite(h, sizeof h, 1, f) == 1);
    for (long i = 0; i < n - cut; i++) {
        float x = (float)cos(0.11 * (double)i);
        ck_assert(fwrite(&x, 4, 1, f) == 1);
    }
    fclose(f);
}

START_TEST(test_llmc)
{
    if (RANK == 0) write_llmc(tmp_path("gpt2.bin"), 0);
    if (RANK == 0) write_llmc(tmp_path("cut.bin"), 5);
    MPI_Barrier(MPI_COMM_WORLD);
    check_source(tmp_path("gpt2.bin"), "llmc", "llmc", NULL, 0);
    /* truncated: both ranks fail, naming the file, and nothing is written */
    st_err e = convert_on(MPI_COMM_WORLD, tmp_path("cut.bin"), tmp_path("cut.h5"), NULL);
    ck_assert_int_eq(e, ST_ERR_FORMAT);
    ck_assert_msg(strstr(st_error_message(), "cut.bin"), "%s", st_error_message());
    ck_assert(access(tmp_path("cut.h5"), F_OK) != 0 && access(tmp_path("cut.h5.tmp"), F_OK) != 0);
}
END_TEST

int main(int argc, char **argv)
{
    const TTest *const tests[] = {test_llama2c_stories, test_llama2c_greedy_text, test_generate_logits,
                                  test_tokenize_command, test_hf_gpt2, test_llmc};
    return th_mpi_dir_main(&argc, &argv, "convert_mpi2", 120, &RANK, DIR_, sizeof DIR_, tests,
                           (int)(sizeof tests / sizeof tests[0]));
}
