/* tok_spm.c: a sentencepiece model file (tokenizer.model, tok512.model) read
 * as the llama2c kind, so its normalizer settings come along: llama2.c's
 * tokenizer.bin is an export of such a file that keeps the pieces and scores
 * but drops remove_extra_whitespaces and add_dummy_prefix.
 *
 * The file is a protobuf ModelProto; the fields read here (sentencepiece's
 * sentencepiece_model.proto):
 *   1 pieces (repeated): 1 piece (string), 2 score (float), 3 type (1 normal,
 *     2 unknown, 3 control, 4 user defined, 5 unused, 6 byte)
 *   2 trainer_spec: 3 model_type (2 = BPE, the only one accepted)
 *   3 normalizer_spec: 1 name, 2 precompiled_charsmap, 3 add_dummy_prefix,
 *     4 remove_extra_whitespaces (both default true)
 * Only BPE models with the "identity" normalizer (no character map) are
 * accepted: the others need sentencepiece's own normalisation tables.
 */
#include "io/tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p, *end;
} pb;

/* One varint; 0 when the buffer ends inside it. */
static int pb_varint(pb *b, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; b->p < b->end && shift < 64; shift += 7) {
        uint8_t c = *b->p++;
        *v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) return 1;
    }
    return 0;
}

/* The next field: its number, wire type, and its value (varint, or the bytes
 * of a length-delimited or fixed32 field in *sub). 0 at the end, -1 when
 * malformed. */
static int pb_field(pb *b, uint32_t *field, uint32_t *wire, uint64_t *v, pb *sub)
{
    if (b->p >= b->end) return 0;
    uint64_t key;
    if (!pb_varint(b, &key) || key >> 3 == 0 || key >> 3 > UINT32_MAX) return -1;
    *field = (uint32_t)(key >> 3), *wire = (uint32_t)(key & 7);
    size_t left;
    switch (*wire) {
    case 0: return pb_varint(b, v) ? 1 : -1;
    case 1: left = 8; break;
    case 2:
        if (!pb_varint(b, v)) return -1;
        left = (size_t)*v;
        if (*v > (uint64_t)(b->end - b->p)) return -1;
        break;
    case 5: left = 4; break;
    default: return -1;
    }
    if (left > (size_t)(b->end - b->p)) return -1;
    sub->p = b->p, sub->end = b->p + left;
    b->p += left;
    return 1;
}

int st_tok_spm_is_model(const uint8_t *d, size_t n)
{
    /* field 1 (a piece), length-delimited, holding field 1 (its text) first;
     * a tokenizer.bin's first int32 (max_token_length) cannot look so */
    if (!d || n <= 4 || d[0] != 0x0A) return 0;
    pb b = {d, d + n}, sub;
    uint32_t f, w;
    uint64_t v;
    return pb_field(&b, &f, &w, &v, &sub) == 1 && sub.end - sub.p >= 3 && sub.p[0] == 0x0A;
}

/* One piece: its text (U+2581 as ' ', as llama2.c's export writes it), score, type. */
static st_err piece(pb sub, const char *name, int32_t i, const uint8_t **s, size_t *len, float *score, int *type)
{
    uint32_t f, w;
    uint64_t v;
    pb val;
    int rc;
    *s = NULL, *len = 0, *score = 0, *type = 1;
    while ((rc = pb_field(&sub, &f, &w, &v, &val)) == 1) {
        if (f == 1 && w == 2) *s = val.p, *len = (size_t)(val.end - val.p);
        else if (f == 2 && w == 5) memcpy(score, val.p, 4);   /* little-endian, as protobuf writes */
        else if (f == 3 && w == 0) *type = (int)v;
    }
    if (rc < 0 || !*s) ST_FAIL(ST_ERR_FORMAT, "%s: piece %d is malformed", name, i);
    return ST_OK;
}

static st_err set_piece(st_tokenizer *t, int32_t i, const uint8_t *s, size_t len, float score, int type,
                        const char *name)
{
    char *txt = malloc(len + 1);
    if (!txt) ST_FAIL(ST_ERR_MEM, "out of memory");
    size_t m = 0;
    for (size_t k = 0; k < len;)
        if (len - k >= 3 && s[k] == 0xE2 && s[k + 1] == 0x96 && s[k + 2] == 0x81) txt[m++] = ' ', k += 3;
        else txt[m++] = (char)s[k++];
    st_err e = st_tok_set_text(t, i, txt, m, name);
    free(txt);
    ST_TRY(e);
    t->score[i] = score;
    /* control and unknown pieces are never made from text (sentencepiece's rule) */
    if (type != 2 && type != 3) ST_TRY(st_tok_strmap_put(&t->vocab, t->text[i], (uint32_t)m, i, 0));
    if (m > t->max_text_len) t->max_text_len = (uint32_t)m;
    return ST_OK;
}

/* The specs: model type and the normalizer settings. */
static st_err specs(st_tokenizer *t, uint32_t field, pb sub, const char *name)
{
    uint32_t f, w;
    uint64_t v;
    pb val;
    int rc;
    while ((rc = pb_field(&sub, &f, &w, &v, &val)) == 1) {
        if (field == 2 && f == 3 && w == 0 && v != 2)
            ST_FAIL(ST_ERR_FORMAT, "%s: sentencepiece model_type %llu is not BPE (2); only BPE models are supported",
                    name, (unsigned long long)v);
        if (field == 3 && f == 1 && w == 2 && !(val.end - val.p == 8 && !memcmp(val.p, "identity", 8)))
            ST_FAIL(ST_ERR_FORMAT, "%s: sentencepiece normalizer \"%.*s\" is not supported (only identity)", name,
                    (int)(val.end - val.p > 40 ? 40 : val.end - val.p), (const char *)val.p);
        if (field == 3 && f == 2 && w == 2 && val.end > val.p)
            ST_FAIL(ST_ERR_FORMAT, "%s: the sentencepiece normalizer has a character map; not supported", name);
        if (field == 3 && f == 3 && w == 0) t->spm_dummy_prefix = v != 0;
        if (field == 3 && f == 4 && w == 0) t->spm_strip_spaces = v != 0;
    }
    if (rc < 0) ST_FAIL(ST_ERR_FORMAT, "%s: malformed %s spec", name, field == 2 ? "trainer" : "normalizer");
    return ST_OK;
}

st_err st_tok_spm_walk(st_tokenizer *t, const uint8_t *d, size_t n, const char *name, int32_t *count)
{
    pb b = {d, d + n}, sub;
    uint32_t f, w;
    uint64_t v;
    int32_t i = 0;
    int rc;
    t->spm_dummy_prefix = t->spm_strip_spaces = 1;   /* protobuf defaults */
    while ((rc = pb_field(&b, &f, &w, &v, &sub)) == 1) {
        if (f == 1 && w == 2) {
            if (i == ST_TOK_MAX_VOCAB) ST_FAIL(ST_ERR_FORMAT, "%s: more than %d pieces", name, ST_TOK_MAX_VOCAB);
            const uint8_t *s;
            size_t len;
            float score;
            int type;
            ST_TRY(piece(sub, name, i, &s, &len, &score, &type));
            if (t->text) ST_TRY(set_piece(t, i, s, len, score, type, name));
            i++;
        } else if ((f == 2 || f == 3) && w == 2) {
            ST_TRY(specs(t, f, sub, name));
        }
    }
    if (rc < 0) ST_FAIL(ST_ERR_FORMAT, "%s: malformed sentencepiece model (protobuf) after %d pieces", name, i);
    *count = i;
    return ST_OK;
}
