/* commands.h: the subcommands of the shardtune binary. Each takes its own
 * argv (argv[0] is the subcommand name), answers --help, and runs on every
 * rank of the world communicator it is given. */
#ifndef ST_COMMANDS_H
#define ST_COMMANDS_H

#include <mpi.h>

#include "core/err.h"
#include "mpi/grid.h"

st_err st_cmd_train(int argc, char **argv, MPI_Comm world);
st_err st_cmd_generate(int argc, char **argv, MPI_Comm world);
st_err st_cmd_eval(int argc, char **argv, MPI_Comm world);
st_err st_cmd_score(int argc, char **argv, MPI_Comm world);
st_err st_cmd_inspect(int argc, char **argv, MPI_Comm world);
st_err st_cmd_convert(int argc, char **argv, MPI_Comm world);
st_err st_cmd_export(int argc, char **argv, MPI_Comm world);
st_err st_cmd_tokenize(int argc, char **argv, MPI_Comm world);
st_err st_cmd_plan(int argc, char **argv, MPI_Comm world);
st_err st_cmd_prepare(int argc, char **argv, const st_grid *g);
st_err st_cmd_chat_template(int argc, char **argv, MPI_Comm world);

#endif
