/* test_mpi2_rl.c: the RL methods' equivalence suite (tests/rl_suite.c) on
 * the grids of 2 ranks: tp 2, dp 2, dp 2 with ZeRO-1. */
#include "harness.h"

int main(int argc, char **argv)
{
    static const th_grid grids[] = {{2, 0}, {1, 0}, {1, 1}};
    return th_rl_suite_main(argc, argv, "rl2", grids, (int)(sizeof grids / sizeof grids[0]));
}
