/* csv.h: CSV files with a header row, RFC 4180 quoting.
 *
 * Fields are separated by ',' and records by '\n' or "\r\n". A field may be
 * quoted with '"'; inside quotes '""' is one quote and line breaks belong to
 * the field. A quote inside an unquoted field, text after a closing quote and
 * a record whose field count differs from the header's are errors (files
 * from outside are checked, not guessed at). Blank lines are skipped. A UTF-8
 * byte-order mark before the header is dropped. Plain or gzip input.
 */
#ifndef ST_CSV_H
#define ST_CSV_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct st_csv st_csv;

/* Opens path and reads its header row (an empty file is an error). */
st_err st_csv_open(st_csv **out, const char *path);
void st_csv_close(st_csv *c);

int st_csv_num_cols(const st_csv *c);
const char *st_csv_col_name(const st_csv *c, int i);
/* Index of the column called name, or -1. */
int st_csv_find_col(const st_csv *c, const char *name);

/* Reads the next record; *eof = 1 when there is none. A malformed record
 * fails with ST_ERR_FORMAT "PATH:LINE: ..." and the reader stays usable: the
 * next call reads the record after it. I/O errors are ST_ERR_IO. */
st_err st_csv_next(st_csv *c, int *eof);
/* Field i of the current record (unquoted, NUL-terminated at [len]). */
const char *st_csv_field(const st_csv *c, int i, size_t *len);
/* First line of the current record (1-based, counting the header). */
int64_t st_csv_lineno(const st_csv *c);
/* The current record as it appears in the file (its lines joined by '\n'). */
const char *st_csv_raw(const st_csv *c, size_t *len);
const char *st_csv_path(const st_csv *c);

#endif
