/* jinja_arena.c: the bump allocator that holds a parsed template's tokens
 * and syntax tree, freed all at once with the template. */
#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "io/chat/jinja_internal.h"

struct jx_chunk {
    jx_chunk *next;
    size_t used, cap;
    alignas(max_align_t) unsigned char data[];
};

void *jx_alloc(jx_arena *a, size_t n)
{
    if (n > ((size_t)1 << 40)) return NULL;
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->head->used + n > a->head->cap) {
        size_t cap = n > 65536 ? n : 65536;
        jx_chunk *c = malloc(sizeof *c + cap);
        if (!c) return NULL;
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = a->head->data + a->head->used;
    a->head->used += n;
    memset(p, 0, n);
    return p;
}

void jx_arena_free(jx_arena *a)
{
    for (jx_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
}
