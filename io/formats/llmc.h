/* llmc.h: GPT-2 checkpoints of Andrej Karpathy's llm.c (train_gpt2.py's
 * write_model, read by train_gpt2.c's gpt2_build_from_checkpoint).
 *
 * The file is a header of 256 int32: [0] magic 20240326, [1] version (3: fp32
 * tensors, 5: bf16 tensors), [2] maxT, [3] V, [4] L, [5] NH, [6] C, [7] Vp (the
 * vocabulary padded for the GPU, Vp >= V); then the tensors, each stacked over
 * layers:
 *   wte (Vp, C), wpe (maxT, C), ln1w (L, C), ln1b (L, C), qkvw (L, 3C, C),
 *   qkvb (L, 3C), attprojw (L, C, C), attprojb (L, C), ln2w (L, C), ln2b (L, C),
 *   fcw (L, 4C, C), fcb (L, 4C), fcprojw (L, C, 4C), fcprojb (L, C),
 *   lnfw (C), lnfb (C).
 * Linear weights are [out, in]. The fused qkv rows are q, then k, then v.
 */
#ifndef ST_LLMC_H
#define ST_LLMC_H

#include "core/config.h"
#include "io/formats/model_source.h"

/* Open an llm.c GPT-2 checkpoint as a model source (io/formats/model_source.h):
 * cfg is family gpt2, d_ff = 4C, tied embeddings, norm_eps 1e-5, vocab_size = V.
 * The vocabulary padding rows are dropped, the fused qkv is split into q/k/v,
 * bf16 files are widened to fp32 exactly. The header is checked against the
 * file size before anything is allocated. */
st_err st_llmc_open(st_model_source *s, const char *path);

#endif
