/*
 * Tests of khalad's log (daemon/log.c): each line is one JSON object with the line's own fields
 * (ts, level, msg) once, values escaped and URL passwords redacted; a caller field that would
 * repeat one of the line's own is a bug, asserted.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* The lines khala__log writes while fn runs, with stderr sent to a temporary file. */
static void capture(void (*fn)(void), char *out, size_t cap) {
    FILE *tmp = tmpfile();
    cr_assert_not_null(tmp);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    cr_assert(saved >= 0);
    cr_assert(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    fn();
    fflush(stderr);
    cr_assert(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    rewind(tmp);
    size_t n = fread(out, 1, cap - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
}

/* How many times needle occurs in s. */
static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static void log_one(void) {
    khala__log("warn", "a \"quoted\" message\nover two lines", "tier", "l2", "url",
               "redis://app:s3cret@db:6379/0", "empty", NULL, NULL);
}

Test(log, a_line_is_one_object_with_its_own_fields_once_escaped_and_redacted) {
    char buf[4096];
    capture(log_one, buf, sizeof(buf));
    cr_assert_eq(count(buf, "\n"), 1, "one line: %s", buf);
    cr_assert_eq(strncmp(buf, "{\"ts\":", 6), 0, "%s", buf);
    cr_assert_eq(count(buf, "\"level\":"), 1, "%s", buf);
    cr_assert_eq(count(buf, "\"msg\":"), 1, "%s", buf);
    cr_assert(strstr(buf, "\"level\":\"warn\""), "%s", buf);
    cr_assert(strstr(buf, "\"msg\":\"a \\\"quoted\\\" message\\u000aover two lines\""), "%s", buf);
    cr_assert(strstr(buf, "\"tier\":\"l2\""), "%s", buf);
    cr_assert(strstr(buf, "\"empty\":\"\""), "%s", buf);
    cr_assert_null(strstr(buf, "s3cret"), "the password is redacted: %s", buf);
    cr_assert(strstr(buf, "}\n"), "%s", buf);
}

/* A field named like the line's own ("level" for a cache level, as two messages once did) makes
 * an object whose meaning depends on the parser: asserted in Debug and test builds. */
#ifdef KHALA_DEBUG
Test(log, a_field_named_like_the_lines_own_is_asserted, .signal = SIGABRT) {
    khala__log("info", "a level is back", "level", "l2", NULL);
}
#endif
