/* hf.h: Hugging Face model directories <-> a shardtune config and parameters.
 *
 * A directory holds config.json, the weights as model.safetensors or as
 * shards model-0000K-of-0000N.safetensors listed by
 * model.safetensors.index.json ({"weight_map": {tensor: shard file}}), and
 * tokenizer.json (+ tokenizer_config.json, generation_config.json).
 *
 * Architectures:
 *   GPT2LMHeadModel      gpt2 family. Its linear layers are Conv1D with
 *                        weights [in, out]: transposed on the way in and out;
 *                        attn.c_attn fuses q, k, v along out. Names may carry
 *                        the "transformer." prefix or not; attn.bias /
 *                        attn.masked_bias buffers are skipped.
 *   LlamaForCausalLM     llama family, the same names as shardtune's own.
 *   MistralForCausalLM   llama family (no sliding window in effect).
 *   Qwen2ForCausalLM     llama family with q/k/v bias.
 * Config keys shardtune cannot honour (rope_scaling, biases on o_proj or the
 * MLP, sliding windows, other activations, quantization_config, ...) are
 * refused with a message naming the key, never silently ignored; so is any
 * tensor the model would not use.
 *
 * Export writes the same layouts back: gpt2 -> GPT2LMHeadModel with
 * "transformer." names; llama -> LlamaForCausalLM, or Qwen2ForCausalLM when
 * the model has q/k/v bias.
 */
#ifndef ST_HF_H
#define ST_HF_H

#include <stddef.h>

#include "core/config.h"
#include "core/err.h"
#include "core/params.h"
#include "io/formats/model_source.h"
#include "io/formats/safetensors.h"
#include "io/tok/tokenizer.h"

/* config.json text (n bytes) -> cfg; name is used in messages. */
st_err st_hf_config_parse(const char *text, size_t n, const char *name, st_config *cfg);

/* A model's shape from its config.json: path is the file or the directory
 * holding it (for plans: no weights are read). */
st_err st_hf_read_config(const char *path, st_config *cfg);

/* Open the model in dir as a model source (io/formats/model_source.h):
 * config.json and the safetensors headers are read; tensors (F32, F16 or
 * BF16) are read one at a time later. */
st_err st_hf_open(st_model_source *s, const char *dir);

/* Write dir (created if missing): config.json, model.safetensors (dtype F32,
 * F16 or BF16), generation_config.json and, from tok (may be NULL),
 * tokenizer.json + tokenizer_config.json: an "hf" tokenizer is written back
 * as its original files; "gpt2" and "byte" as an equivalent byte-level BPE
 * tokenizer.json; "llama2c" has no tokenizer.json form here (warning). Every
 * file goes to NAME.tmp first and all are renamed only when all are
 * complete. */
st_err st_hf_write(const char *dir, const st_config *cfg, const float *params, const st_tokenizer *tok,
                   st_dtype dtype);

/* A sequence-classification head for st_hf_write_classifier: HF's
 * *ForSequenceClassification "score" (no bias; pooled at the last token). */
typedef struct {
    int n_labels;
    const float *weight;          /* (n_labels, d_model) */
    const char *const *labels;    /* n_labels names (id2label) */
} st_hf_head;

/* dir as a GPT2ForSequenceClassification / LlamaForSequenceClassification /
 * Qwen2ForSequenceClassification (the body without the LM head, plus
 * score.weight; config with id2label, label2id and, for classifiers,
 * pad_token_id = eos, which transformers needs to find each row's last token
 * in a padded batch). A reward model is the n_labels = 1 case, as TRL's
 * RewardTrainer saves it; it gets no pad token, as its sequences end with eos
 * (see config_json).
 * Otherwise as st_hf_write. */
st_err st_hf_write_classifier(const char *dir, const st_config *cfg, const float *params, const st_tokenizer *tok,
                              st_dtype dtype, const st_hf_head *head);

/* A LoRA adapter as PEFT writes it: DIR/adapter_config.json (r, lora_alpha,
 * lora_dropout, target_modules) and DIR/adapter_model.safetensors with
 * tensors base_model.model.<name> (lora_A (r, in), lora_B (out, r)). lora is
 * the adapters' whole (tp 1) tensor table, params its buffer. Llama family. */
st_err st_hf_write_peft(const char *dir, const st_config *cfg, const st_layout *lora, const float *params,
                        int rank, float alpha, float dropout, const char *const *target_modules, int n_targets,
                        st_dtype dtype);

#endif
