/* options.c: the option table, from YAML (libyaml) and the command line. */
#include "cmd/options.h"
#include "mpi/comm.h"
#include "mpi/grid.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* The field of option i in the bound struct. */
#define FIELD(o, i, type) ((type *)((char *)(o)->base + (o)->opt[i].off))
#define IS_TEXT(type) ((type) == ST_OPT_STRING || (type) == ST_OPT_PATH)

static void format_value(const st_options *o, int i, char *buf, size_t n)
{
    switch (o->opt[i].type) {
    case ST_OPT_INT: snprintf(buf, n, "%d", *FIELD(o, i, int)); break;
    case ST_OPT_INT64: snprintf(buf, n, "%lld", (long long)*FIELD(o, i, int64_t)); break;
    case ST_OPT_FLOAT: snprintf(buf, n, "%g", *FIELD(o, i, float)); break;
    case ST_OPT_BOOL: snprintf(buf, n, "%s", *FIELD(o, i, int) ? "true" : "false"); break;
    case ST_OPT_STRING:
    case ST_OPT_PATH: snprintf(buf, n, "%s", *FIELD(o, i, char *) ? *FIELD(o, i, char *) : "unset"); break;
    }
}

st_err st_options_init(st_options *o, const st_option *opt, int n, void *base)
{
    memset(o, 0, sizeof *o);
    o->opt = opt;
    o->n = n;
    o->base = base;
    ST_ALLOC(o->origin, n, "option origins");
    ST_ALLOC(o->def, n, "option defaults");
    for (int i = 0; i < n; i++) {
        if (IS_TEXT(opt[i].type)) *FIELD(o, i, char *) = NULL;
        if (opt[i].def) ST_TRY(st_options_set(o, opt[i].key, opt[i].def, "default"));
        free(o->origin[i]);
        o->origin[i] = strdup("default");
        char buf[64];
        format_value(o, i, buf, sizeof buf);
        o->def[i] = strdup(opt[i].def ? opt[i].def : buf);
        if (!o->origin[i] || !o->def[i]) ST_FAIL(ST_ERR_MEM, "out of memory");
    }
    return ST_OK;
}

void st_options_free(st_options *o)
{
    for (int i = 0; i < o->n; i++) {
        if (IS_TEXT(o->opt[i].type)) {
            free(*FIELD(o, i, char *));
            *FIELD(o, i, char *) = NULL;
        }
        if (o->origin) free(o->origin[i]);
        if (o->def) free(o->def[i]);
    }
    free(o->origin);
    free(o->def);
    free(o->recipe_text);
    memset(o, 0, sizeof *o);
}

static int find(const st_options *o, const char *key)
{
    for (int i = 0; i < o->n; i++)
        if (!strcmp(o->opt[i].key, key)) return i;
    return -1;
}

/* The closest known key, to suggest on a typo. */
static const char *closest(const st_options *o, const char *key)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1;
    for (int i = 0; i < o->n; i++) {
        const char *k = o->opt[i].key;
        size_t la = strlen(key), lb = strlen(k);
        if (la > 64 || lb > 64) continue;
        size_t d[65][65];
        for (size_t a = 0; a <= la; a++) d[a][0] = a;
        for (size_t b = 0; b <= lb; b++) d[0][b] = b;
        for (size_t a = 1; a <= la; a++)
            for (size_t b = 1; b <= lb; b++) {
                size_t c = d[a - 1][b - 1] + (key[a - 1] != k[b - 1]);
                if (d[a - 1][b] + 1 < c) c = d[a - 1][b] + 1;
                if (d[a][b - 1] + 1 < c) c = d[a][b - 1] + 1;
                d[a][b] = c;
            }
        if (d[la][lb] < best_d) best_d = d[la][lb], best = k;
    }
    return best_d <= 3 ? best : NULL;
}

/* Is v inside range ("[0,1)", "(0,)", ...; NULL = anything)? *text says which
 * values are, for the message. A malformed range is a bug in a table. */
static st_err check_range(const char *range, double v, int *inside, char *text, size_t cap)
{
    *inside = 1;
    if (!range) return ST_OK;
    char lo_br, hi_br, lo[32] = "", hi[32] = "";
    const char *comma = strchr(range, ',');
    size_t n = strlen(range);
    if (n < 3 || !comma || (range[0] != '[' && range[0] != '(') || (range[n - 1] != ']' && range[n - 1] != ')') ||
        comma - range - 1 >= (long)sizeof lo || range + n - comma - 2 >= (long)sizeof hi)
        ST_FAIL(ST_ERR_INTERNAL, "malformed option range '%s'", range);
    lo_br = range[0], hi_br = range[n - 1];
    snprintf(lo, sizeof lo, "%.*s", (int)(comma - range - 1), range + 1);
    snprintf(hi, sizeof hi, "%.*s", (int)(range + n - comma - 2), comma + 1);
    if (lo[0]) *inside &= lo_br == '[' ? v >= atof(lo) : v > atof(lo);
    if (hi[0]) *inside &= hi_br == ']' ? v <= atof(hi) : v < atof(hi);
    if (lo[0] && hi[0]) snprintf(text, cap, "in %s", range);
    else if (lo[0]) snprintf(text, cap, "%s %s", lo_br == '[' ? ">=" : ">", lo);
    else snprintf(text, cap, "%s %s", hi_br == ']' ? "<=" : "<", hi);
    return ST_OK;
}

st_err st_options_set(st_options *o, const char *key, const char *value, const char *where)
{
    int i = find(o, key);
    if (i < 0) {
        const char *near = closest(o, key);
        ST_FAIL(ST_ERR_ARG, "%s: unknown option '%s'%s%s%s (--help lists them all)", where, key,
                near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
    }
    const st_option *op = &o->opt[i];
    char *end = NULL;
    errno = 0;
    switch (op->type) {
    case ST_OPT_INT:
    case ST_OPT_INT64: {
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || (op->type == ST_OPT_INT && (v < -2147483647LL || v > 2147483647LL)))
            ST_FAIL(ST_ERR_ARG, "%s: option '%s' expects an integer, got '%s'", where, key, value);
        if (op->type == ST_OPT_INT) *FIELD(o, i, int) = (int)v;
        else *FIELD(o, i, int64_t) = v;
        break;
    }
    case ST_OPT_FLOAT: {
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v))
            ST_FAIL(ST_ERR_ARG, "%s: option '%s' expects a number, got '%s'", where, key, value);
        *FIELD(o, i, float) = (float)v;
        break;
    }
    case ST_OPT_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes") || !strcmp(value, "on"))
            *FIELD(o, i, int) = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no") || !strcmp(value, "off"))
            *FIELD(o, i, int) = 0;
        else ST_FAIL(ST_ERR_ARG, "%s: option '%s' expects true or false, got '%s'", where, key, value);
        break;
    case ST_OPT_STRING:
    case ST_OPT_PATH: {
        char *s = strdup(value);
        if (!s) ST_FAIL(ST_ERR_MEM, "out of memory");
        free(*FIELD(o, i, char *));
        *FIELD(o, i, char *) = s;
        break;
    }
    }
    if (op->type == ST_OPT_INT || op->type == ST_OPT_INT64 || op->type == ST_OPT_FLOAT) {
        double v = op->type == ST_OPT_INT ? *FIELD(o, i, int) : op->type == ST_OPT_INT64 ? (double)*FIELD(o, i, int64_t)
                                                                                        : *FIELD(o, i, float);
        int inside;
        char allowed[80];
        ST_TRY(check_range(op->range, v, &inside, allowed, sizeof allowed));
        if (!inside) ST_FAIL(ST_ERR_ARG, "%s: option '%s' is %s; it must be %s", where, key, value, allowed);
    }
    free(o->origin[i]);
    o->origin[i] = strdup(where);
    return ST_OK;
}

/* ---- YAML ------------------------------------------------------------- */

typedef struct {
    yaml_parser_t p;
    const char *path;
    struct { char key[256]; size_t line; } *seen; /* the keys this file set, to refuse a second setting */
    int n_seen, cap_seen;
} yreader;

/* A key the file sets a second time is a mistake one of the two lines hides. */
static st_err note_key(yreader *r, const char *key, size_t line)
{
    for (int i = 0; i < r->n_seen; i++)
        if (!strcmp(r->seen[i].key, key))
            ST_FAIL(ST_ERR_FORMAT, "%s:%zu: '%s' is set twice (first at line %zu); keep one", r->path, line, key,
                    r->seen[i].line);
    if (r->n_seen == r->cap_seen) {
        int cap = r->cap_seen ? 2 * r->cap_seen : 32;
        void *p = realloc(r->seen, (size_t)cap * sizeof *r->seen);
        if (!p) ST_FAIL(ST_ERR_MEM, "out of memory reading %s", r->path);
        r->seen = p;
        r->cap_seen = cap;
    }
    snprintf(r->seen[r->n_seen].key, sizeof r->seen[r->n_seen].key, "%s", key);
    r->seen[r->n_seen++].line = line;
    return ST_OK;
}

static st_err next_event(yreader *r, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&r->p, ev))
        ST_FAIL(ST_ERR_FORMAT, "%s:%zu:%zu: YAML syntax error: %s", r->path,
                r->p.problem_mark.line + 1, r->p.problem_mark.column + 1,
                r->p.problem ? r->p.problem : "unknown");
    return ST_OK;
}

static st_err load_map(st_options *o, yreader *r, const char *prefix);

/* rel, written in the recipe at recipe_path, as a path from here: the
 * recipe's real folder joined with rel, with "." and ".." taken out (safe
 * after realpath: no symbolic links are left in the folder part). */
static st_err join_recipe_dir(const char *recipe_path, const char *rel, char **out)
{
    char *copy = strdup(recipe_path), *dir = NULL;
    if (!copy) ST_FAIL(ST_ERR_MEM, "out of memory");
    char *slash = strrchr(copy, '/');
    if (slash) *slash = '\0';
    dir = realpath(slash ? (copy[0] ? copy : "/") : ".", NULL);
    free(copy);
    if (!dir) ST_FAIL(ST_ERR_IO, "cannot resolve the folder of recipe '%s': %s", recipe_path, strerror(errno));
    size_t cap = strlen(dir) + strlen(rel) + 2;
    char *joined = malloc(cap), *res = malloc(cap + 1);
    if (!joined || !res) {
        free(dir), free(joined), free(res);
        ST_FAIL(ST_ERR_MEM, "out of memory");
    }
    snprintf(joined, cap, "%s/%s", dir, rel);
    free(dir);
    /* component by component: "." goes, ".." drops the last kept one */
    size_t n = 0;
    res[0] = '\0';
    char *save = NULL;
    for (char *c = strtok_r(joined, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        if (!strcmp(c, ".")) continue;
        if (!strcmp(c, "..")) {
            while (n > 0 && res[n - 1] != '/') n--;
            if (n > 0) n--;
            res[n] = '\0';
            continue;
        }
        n += (size_t)sprintf(res + n, "/%s", c);
    }
    if (!n) strcpy(res, "/");
    free(joined);
    *out = res;
    return ST_OK;
}

/* A value after a key: scalar, nested map, or a sequence of scalars. */
static st_err load_value(st_options *o, yreader *r, const char *key, yaml_event_t *ev)
{
    char where[600];
    snprintf(where, sizeof where, "%s:%zu", r->path, ev->start_mark.line + 1);
    st_err e = ST_OK;
    if (ev->type != YAML_MAPPING_START_EVENT) ST_TRY(note_key(r, key, ev->start_mark.line + 1));
    if (ev->type == YAML_SCALAR_EVENT) {
        const char *value = (const char *)ev->data.scalar.value;
        int i = find(o, key);
        char *full = NULL;
        if (i >= 0 && o->opt[i].type == ST_OPT_PATH && value[0] && value[0] != '/') {
            ST_TRY(join_recipe_dir(r->path, value, &full));
            value = full;
        }
        e = st_options_set(o, key, value, where);
        free(full);
    } else if (ev->type == YAML_MAPPING_START_EVENT) {
        e = load_map(o, r, key);
    } else if (ev->type == YAML_SEQUENCE_START_EVENT) {
        char buf[2048] = "";
        for (;;) {
            yaml_event_t it;
            ST_TRY(next_event(r, &it));
            if (it.type == YAML_SEQUENCE_END_EVENT) { yaml_event_delete(&it); break; }
            if (it.type != YAML_SCALAR_EVENT) {
                yaml_event_delete(&it);
                ST_FAIL(ST_ERR_FORMAT, "%s: option '%s' takes a list of plain values", where, key);
            }
            if (strlen(buf) + it.data.scalar.length + 2 >= sizeof buf) {
                yaml_event_delete(&it);
                ST_FAIL(ST_ERR_FORMAT, "%s: list for '%s' is too long", where, key);
            }
            if (buf[0]) strcat(buf, ",");
            strcat(buf, (const char *)it.data.scalar.value);
            yaml_event_delete(&it);
        }
        e = st_options_set(o, key, buf, where);
    } else {
        ST_FAIL(ST_ERR_FORMAT, "%s: unexpected YAML element for '%s'", where, key);
    }
    return e;
}

static st_err load_map(st_options *o, yreader *r, const char *prefix)
{
    for (;;) {
        yaml_event_t k;
        ST_TRY(next_event(r, &k));
        if (k.type == YAML_MAPPING_END_EVENT) { yaml_event_delete(&k); return ST_OK; }
        if (k.type != YAML_SCALAR_EVENT) {
            size_t line = k.start_mark.line + 1;
            yaml_event_delete(&k);
            ST_FAIL(ST_ERR_FORMAT, "%s:%zu: expected a key", r->path, line);
        }
        char key[256];
        snprintf(key, sizeof key, "%s%s%s", prefix, prefix[0] ? "." : "", (const char *)k.data.scalar.value);
        yaml_event_delete(&k);
        yaml_event_t v;
        ST_TRY(next_event(r, &v));
        st_err e = load_value(o, r, key, &v);
        yaml_event_delete(&v);
        if (e) { st_error_trace(__FILE__, __LINE__, __func__); return e; }
    }
}

st_err st_options_load_yaml(st_options *o, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) ST_FAIL(ST_ERR_IO, "cannot open recipe '%s': %s", path, strerror(errno));
    /* keep the text: a checkpoint stores the recipe that made it */
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0 || n > (1 << 22)) { fclose(f); ST_FAIL(ST_ERR_FORMAT, "recipe '%s' is not a small text file", path); }
    free(o->recipe_text);
    o->recipe_text = calloc((size_t)n + 1, 1);
    if (!o->recipe_text || fread(o->recipe_text, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        ST_FAIL(ST_ERR_IO, "cannot read recipe '%s'", path);
    }
    fclose(f);
    yreader r = {.path = path};
    if (!yaml_parser_initialize(&r.p)) ST_FAIL(ST_ERR_MEM, "cannot start the YAML parser");
    yaml_parser_set_input_string(&r.p, (const unsigned char *)o->recipe_text, (size_t)n);
    st_err e = ST_OK;
    for (;;) {
        yaml_event_t ev;
        if ((e = next_event(&r, &ev))) break;
        yaml_event_type_t t = ev.type;
        if (t == YAML_MAPPING_START_EVENT) {
            yaml_event_delete(&ev);
            if ((e = load_map(o, &r, ""))) break;
            continue;
        }
        if (t == YAML_SCALAR_EVENT || t == YAML_SEQUENCE_START_EVENT) {
            size_t line = ev.start_mark.line + 1;
            yaml_event_delete(&ev);
            yaml_parser_delete(&r.p);
            free(r.seen);
            ST_FAIL(ST_ERR_FORMAT, "%s:%zu: a recipe is a map of key: value lines", path, line);
        }
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT) break;
    }
    yaml_parser_delete(&r.p);
    free(r.seen);
    if (e) { st_error_trace(__FILE__, __LINE__, __func__); return e; }
    return ST_OK;
}

/* ---- command line ------------------------------------------------------- */

static int is_yaml(const char *s)
{
    size_t n = strlen(s);
    return (n > 5 && !strcmp(s + n - 5, ".yaml")) || (n > 4 && !strcmp(s + n - 4, ".yml"));
}

st_err st_options_parse(st_options *o, int argc, char **argv, int *help, char **positional,
                        int max_pos, int *n_pos)
{
    *help = 0;
    *n_pos = 0;
    /* the recipe first, so the command line overrides it wherever it stands */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { *help = 1; return ST_OK; }
        /* a bare *.yaml that is not the value of a preceding --key */
        if (argv[i][0] != '-' && is_yaml(argv[i]) &&
            (i == 1 || strncmp(argv[i - 1], "--", 2) || strchr(argv[i - 1], '=')))
            ST_TRY(st_options_load_yaml(o, argv[i]));
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--", 2)) {
            const char *kv = NULL;
            char key[256];
            if (!strcmp(a, "--set")) {
                if (i + 1 >= argc) ST_FAIL(ST_ERR_ARG, "--set needs key=value");
                kv = argv[++i];
                const char *eq = strchr(kv, '=');
                if (!eq) ST_FAIL(ST_ERR_ARG, "--set %s: expected key=value", kv);
                snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
                ST_TRY(st_options_set(o, key, eq + 1, "--set"));
                continue;
            }
            const char *eq = strchr(a + 2, '=');
            if (eq) {
                snprintf(key, sizeof key, "%.*s", (int)(eq - a - 2), a + 2);
                ST_TRY(st_options_set(o, key, eq + 1, "command line"));
                continue;
            }
            snprintf(key, sizeof key, "%s", a + 2);
            int k = find(o, key);
            if (k >= 0 && o->opt[k].type == ST_OPT_BOOL && (i + 1 >= argc || argv[i + 1][0] == '-')) {
                ST_TRY(st_options_set(o, key, "true", "command line"));
                continue;
            }
            if (i + 1 >= argc) {
                if (k < 0) ST_TRY(st_options_set(o, key, "", "command line")); /* unknown: reports it */
                ST_FAIL(ST_ERR_ARG, "option --%s needs a value", key);
            }
            ST_TRY(st_options_set(o, key, argv[++i], "command line"));
        } else if (is_yaml(a)) {
            continue; /* loaded above */
        } else {
            if (*n_pos >= max_pos)
                ST_FAIL(ST_ERR_ARG, "unexpected argument '%s' (see --help)", a);
            positional[(*n_pos)++] = argv[i];
        }
    }
    return ST_OK;
}

void st_options_print_help(const st_options *o, FILE *f)
{
    for (int i = 0; i < o->n; i++) {
        const st_option *op = &o->opt[i];
        fprintf(f, "  --%-24s %s [default: %s]\n", op->key, op->help, o->def[i]);
    }
}

st_err st_options_same_everywhere(const st_options *o, MPI_Comm comm, int argc, char **argv)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a over the arguments and the recipe */
    for (int i = 0; i <= argc; i++) {
        const char *a = i < argc ? argv[i] : o->recipe_text ? o->recipe_text : "";
        for (const char *c = a; ; c++) {
            h = (h ^ (unsigned char)*c) * 1099511628211ULL;
            if (!*c) break;
        }
    }
    uint64_t v[2] = {h, ~h};
    ST_TRY(st_allreduce(comm, v, 2, ST_M_U64, ST_OP_MAX));
    if (v[0] != ~v[1])
        ST_FAIL(ST_ERR_ARG, "the ranks were started with different arguments or read different recipe text; start "
                "every rank with the same command line (and the same recipe file on a shared file system)");
    return ST_OK;
}

void st_options_print(const st_options *o, FILE *f)
{
    for (int i = 0; i < o->n; i++) {
        char buf[4096];
        format_value(o, i, buf, sizeof buf);
        fprintf(f, "  %-26s = %s   (%s)\n", o->opt[i].key, IS_TEXT(o->opt[i].type) &&
                !*FIELD(o, i, char *) ? "(unset)" : buf, o->origin[i] ? o->origin[i] : "?");
    }
}

st_err st_options_run(int argc, char **argv, MPI_Comm world, const st_option *opt, int nopt, void *base,
                      const char *usage, const char *what, st_err (*fn)(const char *, MPI_Comm, void *))
{
    int help = 0, npos = 0;
    char *pos[1];
    const int rank = st_comm_rank(world);
    st_options o;
    ST_TRY(st_options_init(&o, opt, nopt, base));
    st_err e = st_options_parse(&o, argc, argv, &help, pos, 1, &npos);
    e = st_agree(world, e); /* a recipe one rank alone could not read */
    if (!e) e = st_options_same_everywhere(&o, world, argc, argv);
    if (!e && (help || npos != 1)) {
        if (!rank) {
            printf("%s", usage);
            st_options_print_help(&o, stdout);
        }
        if (!help) e = st_error_set(ST_ERR_ARG, __FILE__, __LINE__, __func__, "%s needs exactly one argument: %s", argv[0], what);
    } else if (!e) {
        e = fn(pos[0], world, base);
    }
    st_options_free(&o);
    if (e) st_error_trace(__FILE__, __LINE__, __func__);
    return e;
}
