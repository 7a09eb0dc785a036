/* Stand-in for <criterion/logging.h> in the TSan build: the cr_log_* macros live in
 * tests/tsan/criterion/criterion.h. */
#ifndef KHALA_TESTS_TSAN_LOGGING_H
#define KHALA_TESTS_TSAN_LOGGING_H
#include <criterion/criterion.h>
#endif /* KHALA_TESTS_TSAN_LOGGING_H */
