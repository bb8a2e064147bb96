/* options.h: one option table fed by a YAML recipe, --set key=value and
 * --key value flags (PETSc's options database, in small).
 *
 * Every subcommand declares its options as a table of st_option over the
 * fields of its own options struct (offsets, so the table is constant and
 * the values live in the caller's struct, never in globals). Nested YAML
 * maps become dotted keys (optim: {lr: 1e-4} is "optim.lr"); a YAML sequence
 * becomes a comma-separated string. Unknown keys, values of the wrong type or
 * outside the option's range, and a key a recipe sets twice are errors naming
 * the key and where it came from ("recipe.yaml:12", "--set"), so a typo never
 * silently runs the wrong experiment.
 */
#ifndef ST_OPTIONS_H
#define ST_OPTIONS_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "core/err.h"

/* ST_OPT_PATH: a string naming a file or folder; a relative path written in
 * a recipe is relative to the recipe's folder (so a recipe works from any
 * directory), one given on the command line to the working directory. */
typedef enum { ST_OPT_INT, ST_OPT_INT64, ST_OPT_FLOAT, ST_OPT_BOOL, ST_OPT_STRING, ST_OPT_PATH } st_opt_type;

typedef struct {
    const char *key;   /* "optim.lr"; also accepted as --optim.lr on the command line */
    st_opt_type type;
    size_t off;        /* offsetof the field: int, int64_t, float, int (bool) or char * (malloc'd; string, path) */
    const char *def;   /* default, as text. NULL: strings start unset (NULL); numbers keep the value the
                        * struct holds before st_options_init (a table of defaults kept elsewhere) */
    const char *help;
    const char *range; /* numbers: the values allowed, "[lo,hi]" with ( ) for open ends and an empty
                        * side unbounded: "[0,)" >= 0, "(0,)" > 0, "[0,1)"; NULL = any */
} st_option;

typedef struct {
    const st_option *opt;
    int n;
    void *base;        /* the options struct the offsets point into */
    char **origin;     /* per option: where its value came from ("default", "file:line", "--set") */
    char **def;        /* per option: its default as text, for --help */
    char *recipe_text; /* the recipe file's contents, kept for the checkpoint */
} st_options;

/* Bind the table to the struct at base and apply the defaults. */
st_err st_options_init(st_options *o, const st_option *opt, int n, void *base);
void st_options_free(st_options *o);
st_err st_options_set(st_options *o, const char *key, const char *value, const char *where);
st_err st_options_load_yaml(st_options *o, const char *path);
/* Parse argv[1..]: "--help" sets *help; a bare argument ending in .yaml/.yml
 * is loaded as the recipe (at most one, before other settings apply);
 * --set k=v, --k v and --k=v set options. Other bare arguments are returned in
 * positional (up to max_pos; more is an error). Later sources override
 * earlier ones: defaults < recipe < command line. */
st_err st_options_parse(st_options *o, int argc, char **argv, int *help, char **positional,
                        int max_pos, int *n_pos);
void st_options_print_help(const st_options *o, FILE *f);
/* Every rank of comm was started with the same arguments and read the same
 * recipe text: else the ranks would build different models or grids and hang
 * in their first collective, so every rank fails here instead, saying so. */
st_err st_options_same_everywhere(const st_options *o, MPI_Comm comm, int argc, char **argv);
/* A subcommand taking one file argument (a checkpoint, a model): parse argv
 * against opt into the struct at base, answer --help with usage and the
 * option list (rank 0 of world), else run fn(file, world, base). `what` names
 * the argument in the error ("a checkpoint path"). The options' strings live
 * until fn returns. */
st_err st_options_run(int argc, char **argv, MPI_Comm world, const st_option *opt, int nopt, void *base,
                      const char *usage, const char *what, st_err (*fn)(const char *, MPI_Comm, void *));

/* "key = value  (origin)" for every option: what a run actually used. */
void st_options_print(const st_options *o, FILE *f);

#endif
