/* tok_llmc.c: llm.c's GPT-2 tokenizer file (gpt2_tokenizer.bin).
 *
 *   header: 256 little-endian uint32: magic 20240328, version (1 or 2),
 *           vocab size, eot id (version 2; version 1 means 50256)
 *   then per token, in id order: uint8 length (>= 1), that many raw bytes
 *
 * The file holds each token's bytes but no merge list, which is all llm.c
 * needs to decode. To encode, this file's order is the merge order: in the
 * GPT-2 vocabulary token 256 + i is the result of merge i, so a token's id is
 * its merge priority. Merging therefore follows tiktoken's rule: repeatedly
 * join the adjacent pair whose concatenation is the vocabulary entry of the
 * lowest id (ties: leftmost). That rule gives GPT-2's encodings exactly (the
 * tests compare it with encoder.json + vocab.bpe on real text). Every split of
 * every token into two vocabulary entries becomes one pair-map entry ranked
 * by the token's id.
 *
 * Vocabulary strings are stored in GPT-2's byte-level spelling
 * (bytes_to_unicode) so the rest of the byte-level BPE code applies as is.
 */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

enum { LLMC_TOK_MAGIC = 20240328, LLMC_TOK_HEADER = 256 * 4 };

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Raw bytes -> byte-level spelling into buf (at most 2 bytes per byte). */
static size_t spell(const st_tokenizer *t, const uint8_t *s, size_t n, char *buf)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + m, t->byte_chr[s[i]], t->byte_chr_len[s[i]]);
        m += t->byte_chr_len[s[i]];
    }
    return m;
}

/* The vocabulary: every record checked against the file's end. */
static st_err read_tokens(st_tokenizer *t, const uint8_t *d, size_t n, const char *name, int32_t eot)
{
    size_t pos = LLMC_TOK_HEADER;
    char buf[2 * 255];
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (pos >= n)
            ST_FAIL(ST_ERR_FORMAT, "%s: truncated at token %d of %d (byte %zu); the file may be cut short", name,
                    id, t->n_vocab, pos);
        size_t len = d[pos];
        if (len == 0) ST_FAIL(ST_ERR_FORMAT, "%s: token %d at byte %zu has length 0", name, id, pos);
        if (len > n - pos - 1)
            ST_FAIL(ST_ERR_FORMAT, "%s: token %d at byte %zu has length %zu, past the end of the file (%zu bytes)",
                    name, id, pos, len, n);
        const uint8_t *s = d + pos + 1;
        /* the eot token is "<|endoftext|>" in plain text; all others are spelled byte-level */
        if (id == eot) ST_TRY(st_tok_set_text(t, id, (const char *)s, len, name));
        else ST_TRY(st_tok_set_text(t, id, buf, spell(t, s, len, buf), name));
        if (id != eot) {
            int32_t dup = st_tok_strmap_get(&t->vocab, t->text[id], t->text_len[id]);
            if (dup >= 0)
                ST_FAIL(ST_ERR_FORMAT, "%s: token %d repeats the bytes of token %d; token bytes must be unique",
                        name, id, dup);
            ST_TRY(st_tok_strmap_put(&t->vocab, t->text[id], t->text_len[id], id, 0));
        }
        pos += 1 + len;
    }
    if (pos != n)
        ST_FAIL(ST_ERR_FORMAT, "%s: %zu bytes follow the last of the %d tokens the header announces", name, n - pos,
                t->n_vocab);
    return ST_OK;
}

/* Every split of every multi-byte token into two vocabulary entries, ranked
 * by the token's id. Splits fall on byte boundaries of the raw token, i.e. on
 * character boundaries of its spelling. */
static st_err derive_merges(st_tokenizer *t, int32_t eot)
{
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (id == eot) continue;
        const char *s = t->text[id];
        uint32_t n = t->text_len[id];
        for (uint32_t k = 1; k < n; k++) {
            if (((uint8_t)s[k] & 0xC0) == 0x80) continue;   /* inside a stand-in character */
            int32_t a = st_tok_strmap_get(&t->vocab, s, k);
            int32_t b = a < 0 ? -1 : st_tok_strmap_get(&t->vocab, s + k, n - k);
            if (b >= 0) ST_TRY(st_tok_bpe_put_merge(t, a, b, id, id));
        }
    }
    return ST_OK;
}

st_err st_tok_llmc_build(st_tokenizer *t, const char *name)
{
    const uint8_t *d = t->file[0];
    size_t n = t->file_len[0];
    if (n < LLMC_TOK_HEADER)
        ST_FAIL(ST_ERR_FORMAT, "%s: %zu bytes is shorter than llm.c's 1024-byte tokenizer header", name, n);
    uint32_t magic = get_u32(d), version = get_u32(d + 4), vocab = get_u32(d + 8);
    if (magic != LLMC_TOK_MAGIC)
        ST_FAIL(ST_ERR_FORMAT, "%s: magic %u is not llm.c's tokenizer magic %d (is this gpt2_tokenizer.bin?)", name,
                magic, LLMC_TOK_MAGIC);
    if (version != 1 && version != 2)
        ST_FAIL(ST_ERR_FORMAT, "%s: tokenizer version %u; shardtune reads llm.c versions 1 and 2", name, version);
    if (vocab < 257 || vocab > ST_TOK_MAX_VOCAB)
        ST_FAIL(ST_ERR_FORMAT, "%s: vocabulary size %u is outside 257..%d", name, vocab, ST_TOK_MAX_VOCAB);
    uint32_t eot = version == 1 ? 50256 : get_u32(d + 12);
    if (eot < 256 || eot >= vocab)
        ST_FAIL(ST_ERR_FORMAT, "%s: end-of-text id %u is outside 256..%u", name, eot, vocab - 1);

    ST_TRY(st_tok_alloc_vocab(t, (int32_t)vocab));
    st_tok_bpe_byte_chars(t);   /* the byte-level spelling, needed before the vocabulary */
    ST_TRY(read_tokens(t, d, n, name, (int32_t)eot));
    ST_TRY(derive_merges(t, (int32_t)eot));
    ST_TRY(st_tok_bpe_add_stage(t, st_tok_gpt2_pattern, strlen(st_tok_gpt2_pattern), name));
    st_tok_added a = {.content = t->text[eot], .len = t->text_len[eot], .id = (int32_t)eot, .special = 1};
    ST_TRY(st_tok_build_added_re(t, &a, 1, name));
    t->bos = t->eos = (int32_t)eot;
    ST_TRY(st_tok_bpe_finish(t, name));
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0)
            ST_FAIL(ST_ERR_FORMAT, "%s: no token holds the single byte 0x%02X, so some text cannot be encoded", name, b);
    return ST_OK;
}
