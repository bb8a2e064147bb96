/* test_mpi2_grid.c: the parallel-equivalence suite (tests/grid_suite.c)
 * on every process grid of 2 ranks: tp x dp, with and without ZeRO-1. */
#include "harness.h"

int main(int argc, char **argv)
{
    static const th_grid grids[] = {{2, 0}, {1, 0}, {1, 1}};
    return th_grid_suite_main(argc, argv, "grid2", grids, (int)(sizeof grids / sizeof grids[0]));
}
