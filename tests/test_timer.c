/* test_timer.c: the progress line's ETA is rounded once, so it never reads
 * "10m60s" (659.6 s used to: minutes floored, seconds rounded apart). */
#include <check.h>
#include <math.h>

#include "core/timer.h"

static const char *eta(double s)
{
    static char buf[32];
    st_format_eta(buf, sizeof buf, s);
    return buf;
}

START_TEST(eta_rounds_once)
{
    ck_assert_str_eq(eta(0), "0s");
    ck_assert_str_eq(eta(59.4), "59s");
    ck_assert_str_eq(eta(89.6), "1m30s");
    ck_assert_str_eq(eta(659.6), "11m00s");
    ck_assert_str_eq(eta(3599.7), "60m00s");
    ck_assert_str_eq(eta(5399.6), "1h30m");
    ck_assert_str_eq(eta(7199.9), "2h00m");
    ck_assert_str_eq(eta(-1), "?");
    ck_assert_str_eq(eta(NAN), "?");
    ck_assert_str_eq(eta(INFINITY), "?");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("timer");
    TCase *tc = tcase_create("timer");
    tcase_add_test(tc, eta_rounds_once);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}
