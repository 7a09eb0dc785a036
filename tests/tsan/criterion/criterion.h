/*
 * A minimal stand-in for <criterion/criterion.h>, used only by the ThreadSanitizer build.
 *
 * Why: Criterion cannot start under TSan. Its boxfort runner reserves an "inheritable arena" at
 * addresses that TSan's shadow memory already claims, and aborts with "Could not initialize
 * inheritable arena" (Snaipe/Criterion#274, open since 2018). The tests labelled `concurrency`
 * are thread tests, exactly the ones TSan exists for, so in that build they compile against
 * this header and tests/tsan/runner.c instead, unchanged. Everything else runs under the real
 * Criterion in the plain and ASan builds.
 *
 * Supported: TestSuite(suite, .init, .fini, .timeout), Test(suite, name, same options), and
 * the cr_assert family and cr_log_* used by those tests. Each test runs in a forked child (the
 * runner forks while it has one thread, which TSan allows), as Criterion does.
 */
#ifndef KHALA_TESTS_TSAN_CRITERION_H
#define KHALA_TESTS_TSAN_CRITERION_H

#include <stdio.h>
#include <string.h>

struct khala_ct_cfg {
    void (*init)(void);
    void (*fini)(void);
    double timeout; /* seconds; 0 for the runner's default */
    int signal;     /* unsupported: must stay 0 */
    int exit_code;  /* unsupported: must stay 0 */
    int disabled;
    const char *description;
};

void khala_ct_register(const char *suite, const char *name, void (*fn)(void),
                       const struct khala_ct_cfg *cfg, const struct khala_ct_cfg *suite_cfg);
void khala_ct_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));
void khala_ct_log(const char *level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define TestSuite(suite, ...)                                                                      \
    static const struct khala_ct_cfg khala_ct_suite_##suite = {__VA_ARGS__}

#define Test(suite, name, ...)                                                                     \
    static void khala_ct_fn_##suite##_##name(void);                                                \
    static const struct khala_ct_cfg khala_ct_cfg_##suite##_##name = {__VA_ARGS__};                \
    __attribute__((constructor)) static void khala_ct_reg_##suite##_##name(void) {                 \
        khala_ct_register(#suite, #name, khala_ct_fn_##suite##_##name,                             \
                          &khala_ct_cfg_##suite##_##name, &khala_ct_suite_##suite);                \
    }                                                                                              \
    static void khala_ct_fn_##suite##_##name(void)

/* The message is optional, as in Criterion: " " glues onto a format literal or stands alone. */
#define KHALA_CT_CHECK(cond, expr, ...)                                                            \
    do {                                                                                           \
        if (!(cond))                                                                               \
            khala_ct_fail(__FILE__, __LINE__, expr, " " __VA_ARGS__);                              \
    } while (0)

#define cr_assert(c, ...) KHALA_CT_CHECK((c), #c, __VA_ARGS__)
#define cr_expect(c, ...) KHALA_CT_CHECK((c), #c, __VA_ARGS__)
#define cr_assert_not(c, ...) KHALA_CT_CHECK(!(c), "!(" #c ")", __VA_ARGS__)
#define cr_assert_eq(a, b, ...) KHALA_CT_CHECK((a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...) KHALA_CT_CHECK((a) != (b), #a " != " #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...) KHALA_CT_CHECK((a) < (b), #a " < " #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...) KHALA_CT_CHECK((a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...) KHALA_CT_CHECK((a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...) KHALA_CT_CHECK((a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_assert_null(p, ...) KHALA_CT_CHECK((p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) KHALA_CT_CHECK((p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...)                                                                \
    KHALA_CT_CHECK(strcmp((a), (b)) == 0, "strcmp(" #a ", " #b ") == 0", __VA_ARGS__)
#define cr_assert_fail(...) khala_ct_fail(__FILE__, __LINE__, "cr_assert_fail", " " __VA_ARGS__)
#define cr_log_info(...) khala_ct_log("info", __VA_ARGS__)
#define cr_log_warn(...) khala_ct_log("warn", __VA_ARGS__)
#define cr_log_error(...) khala_ct_log("error", __VA_ARGS__)

#endif /* KHALA_TESTS_TSAN_CRITERION_H */
