/* test_options.c: recipes and the command line. Defaults < recipe < command
 * line; unknown keys, wrong types, values out of range and keys a recipe sets
 * twice are errors naming the key and line. */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cmd/options.h"

typedef struct {
    int n_layer, zero;
    float lr, beta2;
    int64_t steps;
    char *targets, *data;
} topts;
static topts V; /* the test's options, as a command's own struct */
static const st_option opts[] = {
    {"model.n_layer", ST_OPT_INT, offsetof(topts, n_layer), "4", "layers", "[1,)"},
    {"optim.lr", ST_OPT_FLOAT, offsetof(topts, lr), "3e-4", "learning rate", "(0,)"},
    {"steps", ST_OPT_INT64, offsetof(topts, steps), "100", "steps", "[0,)"},
    {"grid.zero", ST_OPT_BOOL, offsetof(topts, zero), "false", "ZeRO-1", NULL},
    {"lora.targets", ST_OPT_STRING, offsetof(topts, targets), "q,v", "targets", NULL},
    {"optim.beta2", ST_OPT_FLOAT, offsetof(topts, beta2), NULL, "kept from the struct (a defaults table elsewhere)",
     "[0,1)"},
    {"data.train", ST_OPT_PATH, offsetof(topts, data), NULL, "a file", NULL},
};
#define N_OPTS ((int)(sizeof opts / sizeof opts[0]))

static char path[64];

static void write_recipe(const char *text)
{
    snprintf(path, sizeof path, "/tmp/st-recipe-XXXXXX.yaml");
    int fd = mkstemps(path, 5);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

START_TEST(layers_of_settings)
{
    write_recipe("model:\n  n_layer: 6\noptim:\n  lr: 1.0e-3\ngrid: {zero: true}\nlora:\n  targets: [q, k, down]\n");
    st_options o;
    ck_assert_int_eq(st_options_init(&o, opts, N_OPTS, &V), 0);
    ck_assert_int_eq(V.n_layer, 4); /* defaults first */
    char *argv[] = {"train", path, "--set", "model.n_layer=8", "--steps", "7", NULL}, *pos[1];
    int help = 0, np = 0;
    ck_assert_int_eq(st_options_parse(&o, 6, argv, &help, pos, 0, &np), 0);
    ck_assert_int_eq(V.n_layer, 8);            /* the command line beats the recipe */
    ck_assert(V.lr == 1.0e-3f);                /* the recipe beats the default */
    ck_assert_int_eq(V.steps, 7);
    ck_assert_int_eq(V.zero, 1);               /* flow maps work */
    ck_assert_str_eq(V.targets, "q,k,down");   /* lists become comma-separated */
    ck_assert_ptr_nonnull(strstr(o.recipe_text, "n_layer: 6")); /* kept for the checkpoint */
    st_options_free(&o);
    unlink(path);
}
END_TEST

START_TEST(unknown_key_names_key_line_and_suggestion)
{
    write_recipe("model:\n  n_layer: 6\noptim:\n  lrr: 1.0e-3\n");
    st_options o;
    ck_assert_int_eq(st_options_init(&o, opts, N_OPTS, &V), 0);
    ck_assert_int_eq(st_options_load_yaml(&o, path), ST_ERR_ARG);
    const char *msg = st_error_message();
    char want[128];
    snprintf(want, sizeof want, "%s:4", path);
    ck_assert_ptr_nonnull(strstr(msg, want));            /* file and line */
    ck_assert_ptr_nonnull(strstr(msg, "'optim.lrr'"));   /* the key */
    ck_assert_ptr_nonnull(strstr(msg, "'optim.lr'"));    /* what was meant */
    st_options_free(&o);
    unlink(path);
}
END_TEST

START_TEST(wrong_types_are_errors)
{
    st_options o;
    ck_assert_int_eq(st_options_init(&o, opts, N_OPTS, &V), 0);
    ck_assert_int_eq(st_options_set(&o, "model.n_layer", "four", "--set"), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "expects an integer"));
    ck_assert_int_eq(st_options_set(&o, "optim.lr", "1e-3x", "--set"), ST_ERR_ARG);
    ck_assert_int_eq(st_options_set(&o, "optim.lr", "nan", "--set"), ST_ERR_ARG);
    ck_assert_int_eq(st_options_set(&o, "grid.zero", "maybe", "--set"), ST_ERR_ARG);
    ck_assert_int_eq(st_options_set(&o, "model.n_layer", "99999999999", "--set"), ST_ERR_ARG);
    ck_assert_int_eq(V.n_layer, 4); /* a refused value changes nothing */
    write_recipe("model:\n  n_layer: [1, 2\n");
    ck_assert_int_eq(st_options_load_yaml(&o, path), ST_ERR_FORMAT); /* YAML syntax, with line */
    ck_assert_ptr_nonnull(strstr(st_error_message(), "YAML syntax error"));
    unlink(path);
    write_recipe("- just\n- a list\n");
    ck_assert_int_eq(st_options_load_yaml(&o, path), ST_ERR_FORMAT);
    unlink(path);
    ck_assert_int_eq(st_options_load_yaml(&o, "/nonexistent/recipe.yaml"), ST_ERR_IO);
    st_options_free(&o);
}
END_TEST

/* A number without a default text keeps what its struct held (one table of
 * defaults, kept elsewhere: the optimizer's), and --help shows that value. */
/* set key=value from where; returns the status */
static st_err set(st_options *o, const char *key, const char *value) { return st_options_set(o, key, value, "--set"); }

START_TEST(values_out_of_range_are_errors)
{
    st_options o;
    ck_assert_int_eq(st_options_init(&o, opts, N_OPTS, &V), 0);
    ck_assert_int_eq(set(&o, "steps", "0"), 0);                 /* [0,): 0 is in */
    ck_assert_int_eq(set(&o, "steps", "-5"), ST_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(st_error_message(), "'steps' is -5; it must be >= 0"));
    ck_assert_int_eq(set(&o, "optim.lr", "0"), ST_ERR_ARG);     /* (0,): 0 is out */
    ck_assert_ptr_nonnull(strstr(st_error_message(), "must be > 0"));
    ck_assert_int_eq(set(&o, "optim.beta2", "0.999"), 0);
    ck_assert_int_eq(set(&o, "optim.beta2", "1"), ST_ERR_ARG);  /* [0,1): 1 is out */
    ck_assert_ptr_nonnull(strstr(st_error_message(), "in [0,1)"));
    ck_assert_int_eq(set(&o, "model.n_layer", "0"), ST_ERR_ARG);
    st_options_free(&o);
}
END_TEST

START_TEST(a_key_set_twice_is_an_error)
{
    /* the same key twice, and once nested and once dotted */
    const char *twice[] = {"steps: 10\noptim:\n  lr: 1.0e-3\nsteps: 20\n", "optim:\n  lr: 1.0e-3\noptim.lr: 2.0e-3\n"};
    const char *key[] = {"'steps'", "'optim.lr'"};
    for (int i = 0; i < 2; i++) {
        write_recipe(twice[i]);
        st_options o;
        ck_assert_int_eq(st_options_init(&o, opts, N_OPTS, &V), 0);
        ck_assert_int_eq(st_options_load_yaml(&o, path), ST_ERR_FORMAT);
        ck_assert_ptr_nonnull(strstr(st_error_message(), key[i]));
        ck_assert_ptr_nonnull(strstr(st_error_message(), "set twice"));
        st_options_free(&o);
        unlink(path);
    }
}
END_TEST

/* A relative path in a recipe is relative to the recipe's folder, whatever
 * the working directory; on the command line it stays as given. */
START_TEST(paths_in_a_recipe_are_relative_to_it)
{
    char top[64] = "/tmp/st-rcp-XXXXXX", sub[128], recipe[192], want[PATH_MAX + 16], real[PATH_MAX];
    ck_assert_ptr_nonnull(mkdtemp(top));
    snprintf(sub, sizeof sub, "%s/recipes", top);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    snprintf(recipe, sizeof recipe, "%s/r.yaml", sub);
    FILE *f = fopen(recipe, "w");
    ck_assert_ptr_nonnull(f);
    fputs("data:\n  train: ../data/./x.h5\n", f);
    fclose(f);
    ck_assert_ptr_nonnull(realpath(top, real));
    snprintf(want, sizeof want, "%s/data/x.h5", real);
    st_options o;
    ck_assert_int_eq(st_options_init(&o, opts, N_OPTS, &V), 0);
    ck_assert_int_eq(st_options_load_yaml(&o, recipe), 0);
    ck_assert_str_eq(V.data, want);
    ck_assert_int_eq(st_options_set(&o, "data.train", "rel/y.h5", "--set"), 0);
    ck_assert_str_eq(V.data, "rel/y.h5");
    st_options_free(&o);
    unlink(recipe);
    rmdir(sub);
    rmdir(top);
}
END_TEST

START_TEST(defaults_kept_from_the_struct)
{
    V.beta2 = 0.95f;
    st_options o;
    ck_assert_int_eq(st_options_init(&o, opts, N_OPTS, &V), 0);
    ck_assert(V.beta2 == 0.95f);
    char buf[4096] = "";
    FILE *f = fmemopen(buf, sizeof buf - 1, "w");
    st_options_print_help(&o, f);
    fclose(f);
    ck_assert_msg(strstr(buf, "--optim.beta2") && strstr(buf, "[default: 0.95]"), "%s", buf);
    ck_assert_int_eq(st_options_set(&o, "optim.beta2", "0.99", "--set"), 0);
    ck_assert(V.beta2 == 0.99f);
    st_options_free(&o);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("options");
    TCase *tc = tcase_create("options");
    tcase_add_test(tc, layers_of_settings);
    tcase_add_test(tc, unknown_key_names_key_line_and_suggestion);
    tcase_add_test(tc, wrong_types_are_errors);
    tcase_add_test(tc, defaults_kept_from_the_struct);
    tcase_add_test(tc, values_out_of_range_are_errors);
    tcase_add_test(tc, a_key_set_twice_is_an_error);
    tcase_add_test(tc, paths_in_a_recipe_are_relative_to_it);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
