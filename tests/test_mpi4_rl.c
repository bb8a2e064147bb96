/* test_mpi4_rl.c: the RL methods' equivalence suite (tests/rl_suite.c) on
 * tp 2 x dp 2 (4 ranks), with and without ZeRO-1. */
#include "harness.h"

int main(int argc, char **argv)
{
    static const th_grid grids[] = {{2, 0}, {2, 1}};
    return th_rl_suite_main(argc, argv, "rl4", grids, (int)(sizeof grids / sizeof grids[0]));
}
