/* test_mpi4_grid.c: the parallel-equivalence suite (tests/grid_suite.c)
 * on every process grid of 4 ranks: tp x dp, with and without ZeRO-1. */
#include "harness.h"

int main(int argc, char **argv)
{
    static const th_grid grids[] = {{1, 0}, {2, 0}, {4, 0}, {2, 1}, {1, 1}};
    return th_grid_suite_main(argc, argv, "grid4", grids, (int)(sizeof grids / sizeof grids[0]));
}
