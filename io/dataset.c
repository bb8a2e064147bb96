/* dataset.c: dataset.h5 — the collective writer, the per-rank reader and
 * the batch loader. The layout is documented in dataset.h. */
#include "io/dataset.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/rng.h"
#include "io/h5util.h"
#include "mpi/grid.h"

#define ST_DATASET_FORMAT "shardtune-dataset"
#define ST_DATASET_VERSION 1
#define MAX_LABEL_LEN 1024
#define MAX_LABELS (1 << 20)

static const char *const kinds[] = {"text", "sft", "chat", "pref", "classify"};

static int kind_known(const char *k)
{
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (!strcmp(kinds[i], k)) return 1;
    return 0;
}

/* ==== rank-local documents =============================================== */

/* Resize *p to n elements of elem bytes. */
static st_err resize(void **p, size_t n, size_t elem, const char *what)
{
    if (n > SIZE_MAX / elem) ST_FAIL(ST_ERR_MEM, "too many %s (%zu)", what, n);
    void *q = realloc(*p, n * elem);
    if (!q) ST_FAIL(ST_ERR_MEM, "out of memory for %zu %s", n, what);
    *p = q;
    return ST_OK;
}

static size_t next_cap(size_t cap, size_t need)
{
    size_t c = cap ? cap : 1024;
    while (c < need) c *= 2;
    return c;
}

st_err st_docs_add(st_docs *d, const st_tokseq *seq, uint8_t split, int32_t label)
{
    size_t need = d->n_tokens + seq->n;
    if (need > d->cap_tokens) {
        size_t cap = next_cap(d->cap_tokens, need);
        ST_TRY(resize((void **)&d->tokens, cap, sizeof *d->tokens, "tokens"));
        ST_TRY(resize((void **)&d->mask, cap, 1, "mask values"));
        d->cap_tokens = cap;
    }
    if (d->n_docs == d->cap_docs) {
        size_t cap = next_cap(d->cap_docs, d->n_docs + 1);
        ST_TRY(resize((void **)&d->doc_len, cap, sizeof *d->doc_len, "documents"));
        ST_TRY(resize((void **)&d->split, cap, 1, "documents"));
        ST_TRY(resize((void **)&d->label, cap, sizeof *d->label, "documents"));
        d->cap_docs = cap;
    }
    memcpy(d->tokens + d->n_tokens, seq->ids, seq->n * sizeof *seq->ids);
    memcpy(d->mask + d->n_tokens, seq->mask, seq->n);
    d->n_tokens = need;
    d->doc_len[d->n_docs] = (int64_t)seq->n;
    d->split[d->n_docs] = split;
    d->label[d->n_docs] = label;
    d->n_docs++;
    return ST_OK;
}

void st_docs_free(st_docs *d)
{
    free(d->tokens);
    free(d->mask);
    free(d->doc_len);
    free(d->split);
    free(d->label);
    memset(d, 0, sizeof *d);
}

/* ==== the collective writer ============================================== */

/* Create 1-D dataset name (total elements of ftype) and write this rank's
 * count elements at off, collectively. Rounds of at most 1 GiB per rank keep
 * every MPI-IO call under its 2 GiB limit; all ranks run the same rounds. */
static st_err write_array(hid_t loc, MPI_Comm comm, hid_t dxpl, const char *name, hid_t ftype,
                          hid_t mtype, int64_t total, int64_t off, int64_t count, const void *buf)
{
    st_err e = ST_OK;
    hid_t space = H5I_INVALID_HID, mspace = H5I_INVALID_HID, dcpl = H5I_INVALID_HID;
    hid_t d = H5I_INVALID_HID;
    size_t elem = H5Tget_size(mtype);
    int64_t step = ((int64_t)1 << 30) / (int64_t)elem;
    int64_t max_rounds = (count + step - 1) / step;
    ST_TRY(st_allreduce(comm, &max_rounds, 1, ST_M_I64, ST_OP_MAX));

    hsize_t dim = (hsize_t)total;
    if ((space = H5Screate_simple(1, &dim, NULL)) < 0 || (dcpl = H5Pcreate(H5P_DATASET_CREATE)) < 0 ||
        H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) < 0)
        ST_H5_GOTO(e, done, "cannot set up dataset /%s", name);
    d = H5Dcreate2(loc, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d < 0) ST_H5_GOTO(e, done, "cannot create dataset /%s of %lld values", name, (long long)total);
    for (int64_t r = 0; r < max_rounds; r++) {
        int64_t lo = r * step, n = count - lo < step ? count - lo : step;
        st_h5_close(&mspace);
        if (n > 0) {
            hsize_t start = (hsize_t)(off + lo), cnt = (hsize_t)n;
            if (H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, NULL, &cnt, NULL) < 0 ||
                (mspace = H5Screate_simple(1, &cnt, NULL)) < 0)
                ST_H5_GOTO(e, done, "cannot select /%s[%lld..+%lld]", name, (long long)start, (long long)n);
        } else if (H5Sselect_none(space) < 0 || (mspace = H5Scopy(space)) < 0) {
            ST_H5_GOTO(e, done, "cannot select nothing in /%s", name);
        }
        static const int64_t dummy[1];
        const void *src = n > 0 ? (const char *)buf + (size_t)lo * elem : (const void *)dummy;
        if (H5Dwrite(d, mtype, mspace, space, dxpl, src) < 0)
            ST_H5_GOTO(e, done, "cannot write dataset /%s", name);
    }
done:
    st_h5_close(&mspace);
    st_h5_close(&d);
    st_h5_close(&dcpl);
    st_h5_close(&space);
    return e;
}

/* /label_names: n fixed-length strings, written by rank 0. */
static st_err write_label_names(hid_t file, hid_t dxpl, int rank, int n, char *const *names)
{
    st_err e = ST_OK;
    size_t width = 1;
    if (n < 1 || n > MAX_LABELS) ST_FAIL(ST_ERR_INTERNAL, "%d label names", n);
    for (int i = 0; i < n; i++) {
        size_t l = strlen(names[i]) + 1;
        if (l > 4096) ST_FAIL(ST_ERR_ARG, "label name %d is %zu bytes long; at most 4095 are allowed", i, l - 1);
        if (l > width) width = l;
    }
    char *buf = calloc((size_t)n, width);
    hid_t type = H5I_INVALID_HID, space = H5I_INVALID_HID, d = H5I_INVALID_HID;
    if (!buf) ST_FAIL(ST_ERR_MEM, "out of memory for %d label names", n);
    for (int i = 0; i < n; i++) memcpy(buf + (size_t)i * width, names[i], strlen(names[i]));
    hsize_t dim = (hsize_t)n;
    if ((type = H5Tcopy(H5T_C_S1)) < 0 || H5Tset_size(type, width) < 0 ||
        H5Tset_strpad(type, H5T_STR_NULLTERM) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0 ||
        (space = H5Screate_simple(1, &dim, NULL)) < 0)
        ST_H5_GOTO(e, done, "cannot set up /label_names");
    d = H5Dcreate2(file, "label_names", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (d < 0) ST_H5_GOTO(e, done, "cannot create /label_names");
    if (rank != 0 && H5Sselect_none(space) < 0) ST_H5_GOTO(e, done, "cannot select nothing");
    if (H5Dwrite(d, type, space, space, dxpl, buf) < 0) ST_H5_GOTO(e, done, "cannot write /label_names");
done:
    st_h5_close(&d);
    st_h5_close(&space);
    st_h5_close(&type);
    free(buf);
    return e;
}

/* Where this rank's part goes, and the totals. */
typedef struct {
    int rank, size;
    int64_t doc0, tok0;          /* first global doc and token of this rank */
    int64_t n_docs, n_tokens;    /* totals */
} part_pos;

static st_err write_attrs(hid_t file, const st_dataset_info *info, const part_pos *pp,
                          const st_tokenizer *tok, const char *tok_kind, const char *created)
{
    ST_TRY(st_h5_attr_write_str(file, "format", ST_DATASET_FORMAT));
    ST_TRY(st_h5_attr_write_i32(file, "version", ST_DATASET_VERSION));
    ST_TRY(st_h5_attr_write_str(file, "kind", info->kind));
    ST_TRY(st_h5_attr_write_u64(file, "tokenizer_hash", st_tokenizer_hash(tok)));
    ST_TRY(st_h5_attr_write_str(file, "tokenizer_kind", tok_kind));
    ST_TRY(st_h5_attr_write_i32(file, "vocab_size", st_tokenizer_vocab_size(tok)));
    ST_TRY(st_h5_attr_write_str(file, "template", info->template_name ? info->template_name : ""));
    ST_TRY(st_h5_attr_write_str(file, "source", info->source ? info->source : ""));
    ST_TRY(st_h5_attr_write_str(file, "created", created));
    ST_TRY(st_h5_attr_write_i64(file, "n_records", info->n_records));
    ST_TRY(st_h5_attr_write_i64(file, "n_docs", pp->n_docs));
    ST_TRY(st_h5_attr_write_i64(file, "n_tokens", pp->n_tokens));
    ST_TRY(st_h5_attr_write_i64(file, "n_skipped", info->n_skipped));
    ST_TRY(st_h5_attr_write_i64(file, "n_truncated_prompt", info->n_truncated_prompt));
    ST_TRY(st_h5_attr_write_i64(file, "n_truncated_response", info->n_truncated_response));
    ST_TRY(st_h5_attr_write_i32(file, "max_len", info->max_len));
    ST_TRY(st_h5_attr_write_f32(file, "val_fraction", info->val_fraction));
    ST_TRY(st_h5_attr_write_u64(file, "seed", info->seed));
    ST_TRY(st_h5_attr_write_i32(file, "n_labels", info->n_labels));
    return ST_OK;
}

/* Everything below /; the file is open on every rank of comm. */
static st_err write_body(hid_t file, MPI_Comm comm, hid_t dxpl, const st_dataset_info *info,
                         const part_pos *pp, const st_docs *local, const uint8_t *blob,
                         size_t blob_n, const char *tok_kind, int64_t *scratch)
{
    int64_t nd = (int64_t)local->n_docs, nt = (int64_t)local->n_tokens;
    ST_TRY(write_array(file, comm, dxpl, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, pp->n_tokens,
                       pp->tok0, nt, local->tokens));
    ST_TRY(write_array(file, comm, dxpl, "loss_mask", H5T_STD_U8LE, H5T_NATIVE_UINT8, pp->n_tokens,
                       pp->tok0, nt, local->mask));
    /* offsets: this rank's doc starts; the last rank adds the end */
    int last = pp->rank == pp->size - 1;
    scratch[0] = pp->tok0;
    for (int64_t i = 0; i < nd; i++) scratch[i + 1] = scratch[i] + local->doc_len[i];
    ST_TRY(write_array(file, comm, dxpl, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, pp->n_docs + 1,
                       pp->doc0, nd + last, scratch));
    ST_TRY(write_array(file, comm, dxpl, "split", H5T_STD_U8LE, H5T_NATIVE_UINT8, pp->n_docs,
                       pp->doc0, nd, local->split));
    if (!strcmp(info->kind, "classify")) {
        ST_TRY(write_array(file, comm, dxpl, "labels", H5T_STD_I32LE, H5T_NATIVE_INT32, pp->n_docs,
                           pp->doc0, nd, local->label));
        ST_TRY(write_label_names(file, dxpl, pp->rank, info->n_labels, info->label_names));
    }
    if (!strcmp(info->kind, "pref")) {
        hid_t g = H5Gcreate2(file, "pairs", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0) ST_H5_FAIL("cannot create group /pairs");
        st_err e = ST_OK;
        for (int side = 0; side < 2 && !e; side++) {
            for (int64_t i = 0; i < nd / 2; i++) scratch[i] = pp->doc0 + 2 * i + side;
            e = write_array(g, comm, dxpl, side ? "rejected" : "chosen", H5T_STD_I64LE,
                            H5T_NATIVE_INT64, pp->n_docs / 2, pp->doc0 / 2, nd / 2, scratch);
        }
        H5Gclose(g);
        ST_TRY(e);
    }
    ST_TRY(st_h5_bytes_write(file, "tokenizer", blob, blob_n, pp->rank == 0, dxpl));
    hid_t td = H5Dopen2(file, "tokenizer", H5P_DEFAULT);
    if (td < 0) ST_H5_FAIL("cannot reopen /tokenizer");
    st_err e = st_h5_attr_write_str(td, "kind", tok_kind);
    H5Dclose(td);
    return e;
}

static st_err write_file(const char *tmp, MPI_Comm comm, const st_tokenizer *tok,
                         const st_dataset_info *info, const st_docs *local, const part_pos *pp,
                         const char *created)
{
    st_err e = ST_OK;
    hid_t fapl = H5I_INVALID_HID, dxpl = H5I_INVALID_HID, file = H5I_INVALID_HID;
    const char *tok_kind = NULL;
    uint8_t *blob = NULL;
    size_t blob_n = 0;
    int64_t *scratch = NULL;

    ST_TRY_GOTO(e, st_tokenizer_to_blob(tok, &tok_kind, &blob, &blob_n), done);
    scratch = malloc((local->n_docs + 1) * sizeof *scratch);
    if (!scratch) ST_FAIL_GOTO(e, done, ST_ERR_MEM, "out of memory for %zu offsets", local->n_docs + 1);
    ST_TRY_GOTO(e, st_h5_fapl_mpio(comm, &fapl), done);
    ST_TRY_GOTO(e, st_h5_dxpl_mpio(1, &dxpl), done);
    file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (file < 0) ST_H5_GOTO(e, done, "cannot create %s (is the directory there and writable?)", tmp);
    ST_TRY_GOTO(e, write_body(file, comm, dxpl, info, pp, local, blob, blob_n, tok_kind, scratch), done);
    ST_TRY_GOTO(e, write_attrs(file, info, pp, tok, tok_kind, created), done);
    herr_t rc = H5Fclose(file);
    file = H5I_INVALID_HID;
    if (rc < 0) ST_H5_GOTO(e, done, "cannot close %s (disk full?)", tmp);
done:
    st_h5_close(&file);
    st_h5_close(&dxpl);
    st_h5_close(&fapl);
    free(scratch);
    free(blob);
    return e;
}

st_err st_dataset_write(const char *path, MPI_Comm comm, const st_tokenizer *tok,
                        const st_dataset_info *info, const st_docs *local)
{
    part_pos pp = {0};
    st_h5_quiet();
    pp.rank = st_comm_rank(comm);
    pp.size = st_comm_size(comm);
    st_err e = ST_OK;
    if (!kind_known(info->kind))
        e = st_error_set(ST_ERR_INTERNAL, __FILE__, __LINE__, __func__, "unknown dataset kind '%s'", info->kind);
    else if (!strcmp(info->kind, "pref") && local->n_docs % 2)
        e = st_error_set(ST_ERR_INTERNAL, __FILE__, __LINE__, __func__,
                         "preference docs must come in pairs (rank has %zu docs)", local->n_docs);
    ST_TRY(st_agree(comm, e));

    int64_t mine[2] = {(int64_t)local->n_docs, (int64_t)local->n_tokens}, before[2], total[2] = {mine[0], mine[1]};
    ST_TRY(st_exscan_sum_i64(comm, mine, before, 2));
    ST_TRY(st_allreduce(comm, total, 2, ST_M_I64, ST_OP_SUM));
    pp.doc0 = before[0];
    pp.tok0 = before[1];
    pp.n_docs = total[0];
    pp.n_tokens = total[1];
    if (pp.n_docs == 0)
        ST_FAIL(ST_ERR_ARG, "no documents to write to %s: every record was skipped or the input "
                "is empty", path);

    char created[32] = "";
    if (pp.rank == 0) {
        time_t now = time(NULL);
        strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    }
    ST_TRY(st_bcast(comm, created, sizeof created, ST_M_U8, 0));

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) ST_FAIL(ST_ERR_MEM, "out of memory");
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    e = write_file(tmp, comm, tok, info, local, &pp, created);
    e = st_agree(comm, e);
    if (!e && pp.rank == 0 && rename(tmp, path) != 0)
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot rename %s to %s: %s", tmp, path,
                         strerror(errno));
    e = st_agree(comm, e);
    if (e && pp.rank == 0) unlink(tmp);
    free(tmp);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* ==== the reader ========================================================= */

struct st_dataset {
    char *path;
    hid_t file, d_tokens, d_mask;
    char *kind;
    uint64_t tok_hash;
    int vocab_size;
    int64_t n_docs, n_tokens, n_pairs;
    int64_t *offsets;          /* (n_docs+1) */
    uint8_t *split;            /* (n_docs) */
    int32_t *labels;           /* (n_docs) or NULL */
    int n_labels;
    char **label_names;        /* (n_labels) */
    int64_t *chosen, *rejected; /* (n_pairs) */
};

/* Open 1-D integer dataset name; *n its length. */
static st_err open_1d(st_dataset *ds, const char *name, hid_t *d, int64_t *n)
{
    hid_t space = H5I_INVALID_HID, type = H5I_INVALID_HID;
    st_err e = ST_OK;
    if (!st_h5_has_link(ds->file, name))
        ST_FAIL(ST_ERR_FORMAT, "%s has no dataset /%s (not a dataset file made by 'shardtune prepare'?)",
                ds->path, name);
    *d = H5Dopen2(ds->file, name, H5P_DEFAULT);
    if (*d < 0) ST_H5_FAIL("%s: cannot open /%s", ds->path, name);
    if ((space = H5Dget_space(*d)) < 0 || (type = H5Dget_type(*d)) < 0)
        ST_H5_GOTO(e, done, "%s: cannot inspect /%s", ds->path, name);
    if (H5Sget_simple_extent_ndims(space) != 1 || H5Tget_class(type) != H5T_INTEGER)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s:/%s is not a 1-D integer array", ds->path, name);
    *n = (int64_t)H5Sget_simple_extent_npoints(space);
done:
    st_h5_close(&type);
    st_h5_close(&space);
    if (e) st_h5_close(d);
    return e;
}

/* Read 1-D integer dataset name whole as mtype; it must hold expect values. */
static st_err read_1d(st_dataset *ds, const char *name, hid_t mtype, int64_t expect, void **out)
{
    hid_t d;
    int64_t n;
    *out = NULL;
    ST_TRY(open_1d(ds, name, &d, &n));
    st_err e = ST_OK;
    size_t elem = H5Tget_size(mtype);
    if (n != expect)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s:/%s holds %lld values, expected %lld", ds->path,
                     name, (long long)n, (long long)expect);
    if ((uint64_t)n > SIZE_MAX / elem - 1)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s:/%s is too large", ds->path, name);
    *out = malloc((size_t)n * elem + 1);
    if (!*out) ST_FAIL_GOTO(e, done, ST_ERR_MEM, "out of memory reading %s:/%s", ds->path, name);
    if (n > 0 && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, *out) < 0)
        ST_H5_GOTO(e, done, "%s: cannot read /%s", ds->path, name);
done:
    H5Dclose(d);
    if (e) {
        free(*out);
        *out = NULL;
    }
    return e;
}

static st_err read_label_names(st_dataset *ds)
{
    st_err e = ST_OK;
    hid_t d = H5I_INVALID_HID, space = H5I_INVALID_HID, type = H5I_INVALID_HID, mtype = H5I_INVALID_HID;
    char *buf = NULL;
    if (!st_h5_has_link(ds->file, "label_names"))
        ST_FAIL(ST_ERR_FORMAT, "%s has no dataset /label_names (kind classify needs it)", ds->path);
    if ((d = H5Dopen2(ds->file, "label_names", H5P_DEFAULT)) < 0 || (space = H5Dget_space(d)) < 0 ||
        (type = H5Dget_type(d)) < 0)
        ST_H5_GOTO(e, done, "%s: cannot open /label_names", ds->path);
    size_t width = H5Tget_size(type);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    if (H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) != 0 || width < 1 ||
        width > MAX_LABEL_LEN + 1 || H5Sget_simple_extent_ndims(space) != 1)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s:/label_names is not a 1-D array of fixed-length "
                     "strings of at most %d bytes", ds->path, MAX_LABEL_LEN);
    if (n != ds->n_labels)
        ST_FAIL_GOTO(e, done, ST_ERR_FORMAT, "%s:/label_names holds %lld names but attribute "
                     "n_labels is %d", ds->path, (long long)n, ds->n_labels);
    if ((mtype = H5Tcopy(type)) < 0) ST_H5_GOTO(e, done, "cannot copy a string type");
    buf = calloc((size_t)n + 1, width);
    ds->label_names = calloc((size_t)n + 1, sizeof *ds->label_names);
    if (!buf || !ds->label_names) ST_FAIL_GOTO(e, done, ST_ERR_MEM, "out of memory for label names");
    if (n > 0 && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        ST_H5_GOTO(e, done, "%s: cannot read /label_names", ds->path);
    for (hssize_t i = 0; i < n; i++) {
        const char *s = buf + (size_t)i * width;
        ds->label_names[i] = strndup(s, strnlen(s, width));
        if (!ds->label_names[i]) ST_FAIL_GOTO(e, done, ST_ERR_MEM, "out of memory for label names");
    }
done:
    free(buf);
    st_h5_close(&mtype);
    st_h5_close(&type);
    st_h5_close(&space);
    st_h5_close(&d);
    return e;
}

/* Offsets start at 0, never decrease and end at n_tokens; splits are 0/1;
 * labels and pair indices are in range. */
static st_err validate(st_dataset *ds)
{
    if (ds->offsets[0] != 0)
        ST_FAIL(ST_ERR_FORMAT, "%s:/offsets[0] is %lld, expected 0", ds->path, (long long)ds->offsets[0]);
    for (int64_t i = 0; i < ds->n_docs; i++)
        if (ds->offsets[i + 1] < ds->offsets[i])
            ST_FAIL(ST_ERR_FORMAT, "%s:/offsets decreases at doc %lld (%lld -> %lld)", ds->path,
                    (long long)i, (long long)ds->offsets[i], (long long)ds->offsets[i + 1]);
    if (ds->offsets[ds->n_docs] != ds->n_tokens)
        ST_FAIL(ST_ERR_FORMAT, "%s:/offsets ends at %lld but /tokens holds %lld tokens", ds->path,
                (long long)ds->offsets[ds->n_docs], (long long)ds->n_tokens);
    for (int64_t i = 0; i < ds->n_docs; i++) {
        if (ds->split[i] > 1)
            ST_FAIL(ST_ERR_FORMAT, "%s:/split[%lld] = %d, expected 0 (train) or 1 (validation)",
                    ds->path, (long long)i, ds->split[i]);
        if (ds->labels && (ds->labels[i] < 0 || ds->labels[i] >= ds->n_labels))
            ST_FAIL(ST_ERR_FORMAT, "%s:/labels[%lld] = %d is outside [0, %d)", ds->path,
                    (long long)i, ds->labels[i], ds->n_labels);
    }
    for (int64_t i = 0; i < ds->n_pairs; i++)
        if (ds->chosen[i] < 0 || ds->chosen[i] >= ds->n_docs || ds->rejected[i] < 0 ||
            ds->rejected[i] >= ds->n_docs)
            ST_FAIL(ST_ERR_FORMAT, "%s:/pairs entry %lld points at docs (%lld, %lld), outside [0, %lld)",
                    ds->path, (long long)i, (long long)ds->chosen[i], (long long)ds->rejected[i],
                    (long long)ds->n_docs);
    return ST_OK;
}

static st_err open_body(st_dataset *ds)
{
    char *format = NULL;
    int version = 0;
    st_err e = st_h5_attr_read_str(ds->file, "format", 64, &format);
    if (!e && strcmp(format, ST_DATASET_FORMAT))
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                         "%s is a '%s' file, not a shardtune dataset", ds->path, format);
    free(format);
    ST_TRY(e);
    ST_TRY(st_h5_attr_read_int(ds->file, "version", 1, ST_DATASET_VERSION, &version));
    ST_TRY(st_h5_attr_read_str(ds->file, "kind", 32, &ds->kind));
    if (!kind_known(ds->kind))
        ST_FAIL(ST_ERR_FORMAT, "%s: unknown dataset kind '%s' (expected text, sft, chat, pref or "
                "classify)", ds->path, ds->kind);
    ST_TRY(st_h5_attr_read_u64(ds->file, "tokenizer_hash", &ds->tok_hash));
    ST_TRY(st_h5_attr_read_int(ds->file, "vocab_size", 1, 1 << 24, &ds->vocab_size));

    int64_t n_mask, n_off;
    ST_TRY(open_1d(ds, "tokens", &ds->d_tokens, &ds->n_tokens));
    ST_TRY(open_1d(ds, "loss_mask", &ds->d_mask, &n_mask));
    if (n_mask != ds->n_tokens)
        ST_FAIL(ST_ERR_FORMAT, "%s:/loss_mask holds %lld values but /tokens %lld", ds->path,
                (long long)n_mask, (long long)ds->n_tokens);
    hid_t d;
    ST_TRY(open_1d(ds, "offsets", &d, &n_off));
    H5Dclose(d);
    if (n_off < 2)
        ST_FAIL(ST_ERR_FORMAT, "%s:/offsets holds %lld values; a dataset has at least one document",
                ds->path, (long long)n_off);
    ds->n_docs = n_off - 1;
    ST_TRY(read_1d(ds, "offsets", H5T_NATIVE_INT64, n_off, (void **)&ds->offsets));
    ST_TRY(read_1d(ds, "split", H5T_NATIVE_UINT8, ds->n_docs, (void **)&ds->split));

    if (!strcmp(ds->kind, "classify")) {
        ST_TRY(st_h5_attr_read_int(ds->file, "n_labels", 1, MAX_LABELS, &ds->n_labels));
        ST_TRY(read_1d(ds, "labels", H5T_NATIVE_INT32, ds->n_docs, (void **)&ds->labels));
        ST_TRY(read_label_names(ds));
    }
    if (!strcmp(ds->kind, "pref")) {
        hid_t pd;
        ST_TRY(open_1d(ds, "pairs/chosen", &pd, &ds->n_pairs));
        H5Dclose(pd);
        ST_TRY(read_1d(ds, "pairs/chosen", H5T_NATIVE_INT64, ds->n_pairs, (void **)&ds->chosen));
        ST_TRY(read_1d(ds, "pairs/rejected", H5T_NATIVE_INT64, ds->n_pairs, (void **)&ds->rejected));
    }
    return validate(ds);
}

st_err st_dataset_open(st_dataset **out, const char *path)
{
    *out = NULL;
    st_dataset *ds;
    ST_ALLOC(ds, 1, "dataset");
    ds->file = ds->d_tokens = ds->d_mask = H5I_INVALID_HID;
    st_h5_quiet();
    st_err e = ST_OK;
    if (!(ds->path = strdup(path))) {
        free(ds);
        ST_FAIL(ST_ERR_MEM, "out of memory");
    }
    if (access(path, R_OK) != 0) {
        e = st_error_set(ST_ERR_IO, __FILE__, __LINE__, __func__, "cannot read dataset %s "
                         "(make it with 'shardtune prepare --input ... --out %s')", path, path);
    } else if ((e = st_h5_check_regular(path))) {
        st_error_trace(__FILE__, __LINE__, __func__);
    } else if ((ds->file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "cannot open %s as HDF5 (damaged, or "
                            "not a dataset file?)", path);
    } else {
        e = open_body(ds);
    }
    if (e) {
        st_error_trace(__FILE__, __LINE__, __func__);
        st_dataset_close(ds);
        return e;
    }
    *out = ds;
    return ST_OK;
}

void st_dataset_close(st_dataset *ds)
{
    if (!ds) return;
    st_h5_close(&ds->d_tokens);
    st_h5_close(&ds->d_mask);
    st_h5_close(&ds->file);
    if (ds->label_names)
        for (int i = 0; i < ds->n_labels; i++) free(ds->label_names[i]);
    free(ds->label_names);
    free(ds->path);
    free(ds->kind);
    free(ds->offsets);
    free(ds->split);
    free(ds->labels);
    free(ds->chosen);
    free(ds->rejected);
    free(ds);
}

int64_t st_dataset_num_docs(const st_dataset *ds) { return ds->n_docs; }
int64_t st_dataset_num_tokens(const st_dataset *ds) { return ds->n_tokens; }
int64_t st_dataset_num_pairs(const st_dataset *ds) { return ds->n_pairs; }
const char *st_dataset_kind(const st_dataset *ds) { return ds->kind; }
const char *st_dataset_path(const st_dataset *ds) { return ds->path; }
uint64_t st_dataset_tokenizer_hash(const st_dataset *ds) { return ds->tok_hash; }
int st_dataset_vocab_size(const st_dataset *ds) { return ds->vocab_size; }
int st_dataset_num_labels(const st_dataset *ds) { return ds->n_labels; }

const char *st_dataset_label_name(const st_dataset *ds, int i)
{
    return i >= 0 && i < ds->n_labels ? ds->label_names[i] : NULL;
}

int64_t st_dataset_doc_len(const st_dataset *ds, int64_t i) { return ds->offsets[i + 1] - ds->offsets[i]; }
int st_dataset_doc_split(const st_dataset *ds, int64_t i) { return ds->split[i]; }
int st_dataset_doc_label(const st_dataset *ds, int64_t i) { return ds->labels ? ds->labels[i] : -1; }

void st_dataset_pair(const st_dataset *ds, int64_t i, int64_t *chosen, int64_t *rejected)
{
    *chosen = ds->chosen[i];
    *rejected = ds->rejected[i];
}

st_err st_dataset_tokenizer(const st_dataset *ds, st_tokenizer **out)
{
    *out = NULL;
    uint8_t *blob = NULL;
    size_t n = 0;
    char *kind = NULL;
    ST_TRY(st_h5_bytes_read(ds->file, "tokenizer", (size_t)1 << 31, &blob, &n));
    st_err e = ST_OK;
    hid_t d = H5Dopen2(ds->file, "tokenizer", H5P_DEFAULT);
    if (d < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot open /tokenizer", ds->path);
    } else {
        e = st_h5_attr_read_str(d, "kind", 32, &kind);
        H5Dclose(d);
    }
    if (!e) e = st_tokenizer_from_blob(out, kind, blob, n);
    if (!e && st_tokenizer_hash(*out) != ds->tok_hash) {
        st_tokenizer_free(*out);
        *out = NULL;
        e = st_error_set(ST_ERR_FORMAT, __FILE__, __LINE__, __func__,
                         "%s:/tokenizer does not match the file's tokenizer_hash (damaged file?)",
                         ds->path);
    }
    free(blob);
    free(kind);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}

/* Read tokens and mask [start, start+n) of the file into tok, msk (no checks). */
static st_err read_tokens(const st_dataset *ds, hid_t fspace, hid_t mspace, int64_t start,
                          int64_t n, int64_t dst, int32_t *tok, uint8_t *msk)
{
    hsize_t fs = (hsize_t)start, ms = (hsize_t)dst, cnt = (hsize_t)n;
    if (H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &fs, NULL, &cnt, NULL) < 0 ||
        H5Sselect_hyperslab(mspace, H5S_SELECT_SET, &ms, NULL, &cnt, NULL) < 0)
        ST_H5_FAIL("%s: cannot select tokens [%lld, %lld)", ds->path, (long long)start,
                   (long long)(start + n));
    if (H5Dread(ds->d_tokens, H5T_NATIVE_INT32, mspace, fspace, H5P_DEFAULT, tok) < 0)
        ST_H5_FAIL("%s: cannot read /tokens [%lld, %lld)", ds->path, (long long)start, (long long)(start + n));
    if (H5Dread(ds->d_mask, H5T_NATIVE_UINT8, mspace, fspace, H5P_DEFAULT, msk) < 0)
        ST_H5_FAIL("%s: cannot read /loss_mask [%lld, %lld)", ds->path, (long long)start,
                   (long long)(start + n));
    return ST_OK;
}

/* Tokens must be vocabulary ids and mask values 0/1. */
static st_err check_tokens(const st_dataset *ds, int64_t start, const int32_t *tok,
                           const uint8_t *msk, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (tok[i] < 0 || tok[i] >= ds->vocab_size)
            ST_FAIL(ST_ERR_FORMAT, "%s:/tokens[%lld] = %d is outside the vocabulary [0, %d)",
                    ds->path, (long long)(start + i), tok[i], ds->vocab_size);
        if (msk[i] > 1)
            ST_FAIL(ST_ERR_FORMAT, "%s:/loss_mask[%lld] = %d, expected 0 or 1", ds->path,
                    (long long)(start + i), msk[i]);
    }
    return ST_OK;
}

st_err st_dataset_read_doc(const st_dataset *ds, int64_t i, int32_t **tokens, uint8_t **mask,
                           size_t *n)
{
    *tokens = NULL;
    *mask = NULL;
    *n = 0;
    if (i < 0 || i >= ds->n_docs)
        ST_FAIL(ST_ERR_ARG, "%s: doc %lld does not exist (%lld docs)", ds->path, (long long)i,
                (long long)ds->n_docs);
    int64_t start = ds->offsets[i], len = ds->offsets[i + 1] - start;
    hsize_t dim = (hsize_t)(len > 0 ? len : 1);
    hid_t fspace = H5Dget_space(ds->d_tokens), mspace = H5Screate_simple(1, &dim, NULL);
    int32_t *t = malloc((size_t)dim * sizeof *t);
    uint8_t *m = malloc((size_t)dim);
    st_err e = ST_OK;
    if (fspace < 0 || mspace < 0) {
        st_h5_snapshot();
        e = st_h5_error_set(__FILE__, __LINE__, __func__, "%s: cannot set up a read", ds->path);
    } else if (!t || !m) {
        e = st_error_set(ST_ERR_MEM, __FILE__, __LINE__, __func__, "out of memory for doc %lld", (long long)i);
    } else if (len > 0) {
        e = read_tokens(ds, fspace, mspace, start, len, 0, t, m);
        if (!e) e = check_tokens(ds, start, t, m, len);
    }
    st_h5_close(&fspace);
    st_h5_close(&mspace);
    if (e) {
        free(t);
        free(m);
        st_error_trace(__FILE__, __LINE__, __func__);
        return e;
    }
    *tokens = t;
    *mask = m;
    *n = (size_t)len;
    return ST_OK;
}

/* ==== batches ============================================================ */

st_err st_batch_alloc(st_batch *b, int B, int T)
{
    memset(b, 0, sizeof *b);
    if (B < 1 || T < 1) ST_FAIL(ST_ERR_ARG, "batch shape (%d, %d) must be positive", B, T);
    size_t bt = (size_t)B * (size_t)T;
    b->B = B;
    b->T = T;
    b->tokens = calloc(bt, sizeof *b->tokens);
    b->targets = calloc(bt, sizeof *b->targets);
    b->mask = calloc(bt, sizeof *b->mask);
    b->labels = calloc((size_t)B, sizeof *b->labels);
    b->lengths = calloc((size_t)B, sizeof *b->lengths);
    b->n_targets = calloc((size_t)B, sizeof *b->n_targets);
    if (!b->tokens || !b->targets || !b->mask || !b->labels || !b->lengths || !b->n_targets) {
        st_batch_free(b);
        ST_FAIL(ST_ERR_MEM, "out of memory for a batch of %d x %d tokens", B, T);
    }
    return ST_OK;
}

void st_batch_free(st_batch *b)
{
    free(b->tokens);
    free(b->targets);
    free(b->mask);
    free(b->labels);
    free(b->lengths);
    free(b->n_targets);
    memset(b, 0, sizeof *b);
}

/* ==== the loader ========================================================= */

struct st_loader {
    st_dataset *ds;
    st_sample_mode mode;
    int T;
    uint64_t seed;
    int pairs;              /* DOCS over a pref dataset: units are pairs */
    int64_t n_sel;          /* selected docs (or pairs) */
    int64_t *sel;           /* (n_sel) their indices */
    int64_t *cum;           /* STREAM: (n_sel+1) token starts of the selected docs in the stream */
    int64_t n_units;        /* what the permutation shuffles: windows, docs or pairs */
    int64_t n_samples;      /* per epoch */
    int64_t *perm;          /* (n_units) permutation of the epoch perm_epoch */
    int64_t perm_epoch;
    int32_t *tok;           /* (T+1) scratch */
    uint8_t *msk;           /* (T+1) scratch */
    hid_t fspace, mspace;
    int64_t n_truncated;
};

st_err st_loader_create(st_loader **out, st_dataset *ds, st_sample_mode mode, int T, uint64_t seed,
                        int split)
{
    *out = NULL;
    if (T < 1) ST_FAIL(ST_ERR_ARG, "sequence length T = %d must be positive", T);
    if (split < -1 || split > 1) ST_FAIL(ST_ERR_ARG, "split %d: expected -1 (all), 0 (train) or 1 (validation)", split);
    if (mode != ST_SAMPLE_STREAM && mode != ST_SAMPLE_DOCS) ST_FAIL(ST_ERR_ARG, "unknown sample mode %d", mode);
    st_loader *l;
    ST_ALLOC(l, 1, "loader");
    l->ds = ds;
    l->mode = mode;
    l->T = T;
    l->seed = seed;
    l->perm_epoch = -1;
    l->fspace = l->mspace = H5I_INVALID_HID;
    l->pairs = mode == ST_SAMPLE_DOCS && ds->n_pairs > 0;
    st_err e = ST_OK;
    static const char *split_name[] = {"all", "train", "validation"};

    int64_t n_all = l->pairs ? ds->n_pairs : ds->n_docs;
    l->sel = malloc((size_t)n_all * sizeof *l->sel);
    if (!l->sel) ST_FAIL_GOTO(e, fail, ST_ERR_MEM, "out of memory for %lld indices", (long long)n_all);
    for (int64_t i = 0; i < n_all; i++) {
        int64_t doc = l->pairs ? ds->chosen[i] : i;
        if (split < 0 || ds->split[doc] == split) l->sel[l->n_sel++] = i;
    }
    if (l->n_sel == 0)
        ST_FAIL_GOTO(e, fail, ST_ERR_ARG, "%s: the %s split is empty (prepare with a different "
                     "--val-fraction?)", ds->path, split_name[split + 1]);
    if (mode == ST_SAMPLE_STREAM) {
        l->cum = malloc((size_t)(l->n_sel + 1) * sizeof *l->cum);
        if (!l->cum) ST_FAIL_GOTO(e, fail, ST_ERR_MEM, "out of memory for the stream index");
        l->cum[0] = 0;
        for (int64_t k = 0; k < l->n_sel; k++)
            l->cum[k + 1] = l->cum[k] + st_dataset_doc_len(ds, l->sel[k]);
        int64_t n = l->cum[l->n_sel];
        if (n < (int64_t)T + 1)
            ST_FAIL_GOTO(e, fail, ST_ERR_ARG, "%s: the %s split has %lld tokens, fewer than one "
                         "window of T+1 = %d", ds->path, split_name[split + 1], (long long)n, T + 1);
        l->n_units = l->n_samples = (n - 1) / T;
    } else {
        l->n_units = l->n_sel;
        l->n_samples = l->pairs ? 2 * l->n_sel : l->n_sel;
    }
    hsize_t dim = (hsize_t)T + 1;
    l->perm = malloc((size_t)l->n_units * sizeof *l->perm);
    l->tok = malloc(dim * sizeof *l->tok);
    l->msk = malloc(dim);
    if (!l->perm || !l->tok || !l->msk) ST_FAIL_GOTO(e, fail, ST_ERR_MEM, "out of memory for the loader");
    if ((l->fspace = H5Dget_space(ds->d_tokens)) < 0 || (l->mspace = H5Screate_simple(1, &dim, NULL)) < 0)
        ST_H5_GOTO(e, fail, "%s: cannot set up the loader's dataspaces", ds->path);
    *out = l;
    return ST_OK;
fail:
    st_loader_free(l);
    return e;
}

int64_t st_loader_num_samples(const st_loader *l) { return l->n_samples; }
int64_t st_loader_num_truncated(const st_loader *l) { return l->n_truncated; }

void st_loader_free(st_loader *l)
{
    if (!l) return;
    st_h5_close(&l->fspace);
    st_h5_close(&l->mspace);
    free(l->sel);
    free(l->cum);
    free(l->perm);
    free(l->tok);
    free(l->msk);
    free(l);
}

/* perm = the permutation of epoch e: Fisher-Yates from a stream seeded by
 * (seed, epoch) alone. */
static void make_perm(st_loader *l, int64_t epoch)
{
    st_rng r;
    st_rng_seed(&r, st_splitmix64(l->seed) ^ st_splitmix64((uint64_t)epoch + 0x5eedULL));
    for (int64_t i = 0; i < l->n_units; i++) l->perm[i] = i;
    for (int64_t i = l->n_units - 1; i > 0; i--) {
        int64_t j = (int64_t)st_rng_below(&r, (uint64_t)i + 1);
        int64_t t = l->perm[i];
        l->perm[i] = l->perm[j];
        l->perm[j] = t;
    }
    l->perm_epoch = epoch;
}

/* STREAM: the T+1 stream tokens from a = w*T into l->tok, l->msk. Pieces of
 * consecutive docs that are also consecutive in the file are read at once. */
static st_err read_window(st_loader *l, int64_t w)
{
    const st_dataset *ds = l->ds;
    int64_t a = w * l->T, need = (int64_t)l->T + 1, pos = 0;
    int64_t lo = 0, hi = l->n_sel; /* the last selected doc with cum <= a */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2;
        if (l->cum[mid] <= a) lo = mid;
        else hi = mid;
    }
    int64_t run_start = -1, run_n = 0, run_dst = 0;
    for (int64_t k = lo; pos < need && k < l->n_sel; k++) {
        int64_t in_doc = a + pos - l->cum[k];
        int64_t avail = l->cum[k + 1] - l->cum[k] - in_doc;
        if (avail <= 0) continue;
        int64_t take = avail < need - pos ? avail : need - pos;
        int64_t fstart = ds->offsets[l->sel[k]] + in_doc;
        if (run_start >= 0 && run_start + run_n == fstart) {
            run_n += take;
        } else {
            if (run_start >= 0)
                ST_TRY(read_tokens(ds, l->fspace, l->mspace, run_start, run_n, run_dst, l->tok, l->msk));
            run_start = fstart;
            run_n = take;
            run_dst = pos;
        }
        pos += take;
    }
    ST_ASSERT(pos == need, "window %lld of %s ran past the stream", (long long)w, ds->path);
    ST_TRY(read_tokens(ds, l->fspace, l->mspace, run_start, run_n, run_dst, l->tok, l->msk));
    return check_tokens(ds, a, l->tok, l->msk, need);
}

/* Row r of b from the n tokens in l->tok, l->msk (n <= T+1). */
static void put_row(const st_loader *l, st_batch *b, int r, int64_t n, int32_t label)
{
    int T = l->T;
    int32_t *tok = b->tokens + (size_t)r * T, *tgt = b->targets + (size_t)r * T;
    float *m = b->mask + (size_t)r * T;
    int in = (int)(n < T ? n : T);
    for (int t = 0; t < T; t++) {
        int has_target = t + 1 < n;
        tok[t] = t < in ? l->tok[t] : 0;
        tgt[t] = has_target ? l->tok[t + 1] : 0;
        m[t] = has_target ? (float)l->msk[t + 1] : 0.0f;
    }
    b->lengths[r] = in;
    b->n_targets[r] = n - 1 < T ? (int)(n > 0 ? n - 1 : 0) : T;
    b->labels[r] = label;
}

st_err st_loader_fill(st_loader *l, st_batch *b, int64_t g0, int count, int shuffle)
{
    const st_dataset *ds = l->ds;
    if (b->T != l->T || count < 0 || count > b->B || g0 < 0)
        ST_FAIL(ST_ERR_ARG, "cannot fill %d rows from sample %lld into a (%d, %d) batch for T = %d",
                count, (long long)g0, b->B, b->T, l->T);
    for (int r = 0; r < count; r++) {
        int64_t g = g0 + r, epoch = g / l->n_samples, pos = g % l->n_samples;
        int64_t upos = l->pairs ? pos / 2 : pos;
        if (shuffle && l->perm_epoch != epoch) make_perm(l, epoch);
        int64_t unit = shuffle ? l->perm[upos] : upos;
        if (l->mode == ST_SAMPLE_STREAM) {
            ST_TRY(read_window(l, unit));
            put_row(l, b, r, (int64_t)l->T + 1, -1);
            continue;
        }
        int64_t doc = l->sel[unit];
        if (l->pairs) doc = pos % 2 ? ds->rejected[doc] : ds->chosen[doc];
        int64_t start = ds->offsets[doc], len = ds->offsets[doc + 1] - start;
        int64_t n = len < (int64_t)l->T + 1 ? len : (int64_t)l->T + 1;
        if (len > n) l->n_truncated++;
        if (n > 0) {
            ST_TRY(read_tokens(ds, l->fspace, l->mspace, start, n, 0, l->tok, l->msk));
            ST_TRY(check_tokens(ds, start, l->tok, l->msk, n));
        }
        put_row(l, b, r, n, ds->labels ? ds->labels[doc] : -1);
    }
    return ST_OK;
}

void st_batch_mask_all(st_batch *b, int rows)
{
    const int T = b->T;
    for (int i = 0; i < rows * T; i++) b->mask[i] = (i % T) < b->n_targets[i / T] ? 1.0f : 0.0f;
}
