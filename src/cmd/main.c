/* main.c: the shardtune binary. Starts MPI, dispatches to a subcommand, and
 * makes sure a failure anywhere stops the job everywhere with a message. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "core/timer.h"
#include "kernels/kernels.h"
#include "mpi/job.h"

static const struct {
    const char *name, *summary;
} commands[] = {
    {"prepare", "tokenize JSONL/CSV data into a dataset.h5"},
    {"train", "pretrain or fine-tune a model on a dataset (mpirun for many ranks)"},

    {"eval", "loss, perplexity, accuracy, macro-F1, exact match of a checkpoint on a dataset"},
    {"generate", "sample text from a checkpoint (e.g. candidate answers for raters)"},
    {"score", "score candidate answers with a reward model"},
    {"convert", "import a Hugging Face directory, llama2.c or llm.c model into a checkpoint"},
    {"export", "write a checkpoint as a Hugging Face directory or a GGUF file"},
    {"tokenize", "text to token ids and back with a model's tokenizer (to check it against other tools)"},
    {"inspect", "describe a checkpoint: format, config, step, tensors, checksums"},
    {"chat-template", "render a chat template over JSONL conversations (for checking it)"},
    {"plan", "memory per rank, the grid to use and the step time of a training run, before it starts"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: [mpirun -np N] shardtune COMMAND [options]   (COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-13s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nThreads per rank: OMP_NUM_THREADS, else cores per node / ranks per node.\n");
}

static st_err dispatch(int argc, char **argv, MPI_Comm world)
{
    const char *cmd = argv[0];
    if (!strcmp(cmd, "train")) return st_cmd_train(argc, argv, world);
    if (!strcmp(cmd, "generate")) return st_cmd_generate(argc, argv, world);
    if (!strcmp(cmd, "eval")) return st_cmd_eval(argc, argv, world);
    if (!strcmp(cmd, "score")) return st_cmd_score(argc, argv, world);

    if (!strcmp(cmd, "tokenize")) return st_cmd_tokenize(argc, argv, world);
    if (!strcmp(cmd, "inspect")) return st_cmd_inspect(argc, argv, world);
    if (!strcmp(cmd, "convert")) return st_cmd_convert(argc, argv, world);
    if (!strcmp(cmd, "export")) return st_cmd_export(argc, argv, world);
    if (!strcmp(cmd, "chat-template")) return st_cmd_chat_template(argc, argv, world);
    if (!strcmp(cmd, "plan")) return st_cmd_plan(argc, argv, world);
    if (!strcmp(cmd, "prepare")) {
        st_grid g;
        ST_TRY(st_grid_init(&g, world, 1));
        st_err e = st_cmd_prepare(argc, argv, &g);
        st_grid_free(&g);
        return e;
    }
    ST_FAIL(ST_ERR_ARG, "unknown command '%s' (run `shardtune --help` for the list)", cmd);
}

int main(int argc, char **argv)
{
    st_clock_start(); /* start-up lines count from here */
    int rank = 0, size = 1;
    /* Open MPI's MPI-IO (OMPIO) defaults to two-phase collective buffering
     * (fcoll vulcan), which saved our checkpoints 1.1-1.5x slower than direct
     * per-rank writes on an idle local disk and about 2x slower with busy
     * cores (benchmarks/RESULTS.md, section 4). Set OMPI_MCA_fcoll yourself
     * (e.g. vulcan on Lustre) to override this default. */
    setenv("OMPI_MCA_fcoll", "individual", 0);
    /* Every MPI_File_open and close of OMPIO's default shared-file-pointer
     * component (sm) sets up and tears down a shared segment among the
     * ranks: about 0.05 s each per checkpoint save with busy cores. HDF5
     * never uses shared file pointers, so the component that does nothing
     * until they are used is enough (OMPI_MCA_sharedfp overrides). */
    setenv("OMPI_MCA_sharedfp", "individual", 0);
    if (st_job_start(&argc, &argv, &rank, &size)) return 1;
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        if (!rank) usage(argc < 2 ? stderr : stdout);
        st_job_finish(ST_OK, 0);
        return argc < 2 ? 2 : 0;
    }
    st_err e = dispatch(argc - 1, argv + 1, MPI_COMM_WORLD);
    if (e && e != ST_STOPPED) st_error_print(stderr, rank);
    st_kernels_shutdown();
    /* every rank exits nonzero if any failed (mpi/job.h) */
    return st_job_finish(e, 10.0);
}
