/* fuzz_safetensors.c: libFuzzer harness for io/safetensors (not part of make check).
 *
 * Build and run by hand from the repo root:
 *   clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Isrc -Iio \
 *     $(pkg-config --cflags libcjson) tests/fuzz/fuzz_safetensors.c io/formats/safetensors.c src/core/err.c \
 *     $(pkg-config --libs libcjson) -lm -o /tmp/fuzz_safetensors
 *   /tmp/fuzz_safetensors -max_total_time=300 /tmp/fuzz_st_corpus
 *
 * The input is a whole file. It is parsed from memory (the header checks),
 * and every entry that parses must lie inside the data and agree with its
 * shape; then the same bytes go through a memfd and st_safetensors_open /
 * st_safetensors_read, which reads every F32 / F16 / BF16 tensor.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "io/formats/safetensors.h"

static void check_entries(const st_safetensors *f, const uint8_t *data, size_t size)
{
    uint64_t room = size - f->data_start, total = 0;
    for (int i = 0; i < f->n; i++) {
        const st_safetensors_entry *e = &f->t[i];
        if (e->begin > e->end || e->end > room) __builtin_trap();
        if (e->end - e->begin != e->numel * st_dtype_size(e->dtype)) __builtin_trap();
        if (st_safetensors_find(f, e->name) != e) __builtin_trap();
        total += e->end - e->begin;
        volatile uint8_t sink = 0;   /* ASan flags any byte outside the input */
        for (uint64_t k = e->begin; k < e->end; k++) sink ^= data[f->data_start + k];
        (void)sink;
    }
    if (total != room) __builtin_trap();   /* the tensors tile the data */
}

static void read_through_file(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz_safetensors", 0);
    if (fd < 0) return;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    st_safetensors f;
    if (st_safetensors_open(&f, path) == ST_OK) {
        for (int i = 0; i < f.n; i++) {
            const st_safetensors_entry *e = &f.t[i];
            if (e->dtype != ST_DT_F32 && e->dtype != ST_DT_F16 && e->dtype != ST_DT_BF16) continue;
            float *buf = malloc(e->numel * sizeof *buf + 1);
            if (buf && st_safetensors_read(&f, e, buf) != ST_OK) __builtin_trap();
            free(buf);
        }
        st_safetensors_close(&f);
    }
    st_error_clear();
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_safetensors f;
    if (st_safetensors_parse(&f, "fuzz", data, size, size) == ST_OK) {
        check_entries(&f, data, size);
        st_safetensors_close(&f);
    }
    st_error_clear();
    read_through_file(data, size);
    return 0;
}
