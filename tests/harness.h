/* harness.h: running the real subcommands in-process from MPI tests, so the
 * parallel-equivalence and resume tests exercise exactly what users run. */
#ifndef ST_TEST_HARNESS_H
#define ST_TEST_HARNESS_H

#include <check.h>
#include <mpi.h>
#include <stdint.h>

#include "core/config.h"

/* A fresh temporary directory, the same path on every rank of comm. */
void th_tmpdir(MPI_Comm comm, char *out, size_t cap);
/* Write a small corpus and prepare it into DIR/data.h5 with the byte
 * tokenizer on every rank of comm. kind: "text" ({"text"}), "classify"
 * ({"text","label"}, 3 labels), "sft" ({"prompt","response"}), "rl" (the
 * same with prompts of 1-3 words: RL prompts) or "pref"
 * ({"prompt","chosen","rejected"}: 200 pairs). */
int th_make_dataset_kind(MPI_Comm comm, const char *dir, const char *kind);
int th_make_dataset(MPI_Comm comm, const char *dir);
/* Run `shardtune train` on comm with "--key value" pairs (NULL-terminated). */
int th_train(MPI_Comm comm, const char *const *args);
/* Losses of metrics.jsonl (step order); returns how many were read. */
int th_read_losses(const char *metrics_path, double *loss, int max);
/* Load a checkpoint's weights whole on this rank (1x1): *params malloc'd. */
int th_load_weights(const char *path, st_config *cfg, float **params, size_t *n);
/* ||a - b|| / ||b|| (2-norm) per tensor: the worst tensor's value and name.
 * (A max-norm would be dominated by AdamW's sign-like steps on elements whose
 * gradient is rounding noise.) */
double th_max_rel_diff(const st_config *cfg, const float *a, const float *b, char *worst, size_t cap);
void th_rm_rf(const char *dir);
/* Damage a checkpoint: flip one bit of byte `at` of dataset dset's data in
 * path (rank 0 of comm writes; plain POSIX I/O). Returns 1 on every rank when
 * it was done. */
int th_flip_byte(MPI_Comm comm, const char *path, const char *dset, long long at);
/* GPT-2's byte -> stand-in character (bytes_to_unicode), written from its
 * definition independently of io/tok/tok_bpe.c: out is NUL-terminated UTF-8. */
void th_gpt2_stand_in(int b, char out[3]);
/* A file or folder shipped in the repository's data/ (rel: "llama2c/stories260K.bin"),
 * found from the repository root or $SHARDTUNE_ROOT; the test fails naming the
 * path when it is missing. Returns one of 8 rotating static buffers. */
const char *th_data_path(const char *rel);
/* Write n bytes to path; the test fails if that is not possible. */
void th_write_file(const char *path, const void *data, size_t n);
/* path's bytes, NUL-terminated, malloc'd (*n = their count; n may be NULL);
 * the test fails if the file cannot be read. */
char *th_read_file(const char *path, size_t *n);



/* Parallel equivalence: train the same tiny model 10 steps on a 1x1 grid
 * (rank 0 alone) and on each grid of `grids` ("tp,zero" pairs over all ranks
 * of world), with the same global batch; returns the worst relative loss and
 * weight differences found (and prints each). family: "gpt2" or "llama". */
typedef struct { int tp, zero; } th_grid;
int th_check_grids(MPI_Comm world, const char *family, const th_grid *grids, int n_grids,
                   double *worst_loss, double *worst_weight);
/* The same for a method: data of kind (see th_make_dataset_kind) and extra
 * train arguments (NULL-terminated, e.g. {"--method","classify",NULL}). */
int th_check_grids_method(MPI_Comm world, const char *family, const th_grid *grids, int n_grids,
                          const char *kind, const char *const *extra, double *worst_loss,
                          double *worst_weight);

/* The same with `steps` steps, and the metrics.jsonl keys (NULL-terminated,
 * may be NULL) to compare with 1x1's at every step too (RL: the rewards and
 * answer lengths say the grids drew the same answers): worst_key[k], key k's
 * largest relative difference (denominator at least 1e-3). A key missing
 * from a run's metrics is an error. */
int th_check_grids_keys(MPI_Comm world, const char *family, const th_grid *grids, int n_grids, const char *kind,
                        const char *const *extra, const char *const *keys, int steps, double *worst_loss,
                        double *worst_weight, double *worst_key);
/* Values of key in metrics.jsonl (step order); returns how many were read. */
int th_read_metric(const char *metrics_path, const char *key, double *out, int max);

/* main() of an MPI test that works in one temporary directory: MPI_Init,
 * *rank and dir (the same fresh path on every rank), the tests as one case
 * with this timeout, the directory removed, MPI_Finalize. Returns nonzero
 * when a test failed on any rank. */
int th_mpi_dir_main(int *argc, char ***argv, const char *name, int timeout, int *rank, char *dir, size_t cap,
                    const TTest *const *tests, int n_tests);

/* The whole equivalence suite on these grids (tests/grid_suite.c). */
int th_grid_suite_main(int argc, char **argv, const char *name, const th_grid *grids, int n);
/* The RL methods' equivalence suite on these grids (tests/rl_suite.c). */
int th_rl_suite_main(int argc, char **argv, const char *name, const th_grid *grids, int n);

#endif
