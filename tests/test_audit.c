/*
 * Tests of daemon/audit.c: the line's fields and escaping, the sampling at rates 0 and 1, the
 * file opened O_APPEND and reopened after a rotation. The integration test
 * (tests/integration/test_access.c) reads the lines of a real khalad.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit.h"

static char g_dir[64], g_path[96], g_err[256];

static void setup(void) {
    snprintf(g_dir, sizeof(g_dir), "/tmp/khala-audit-XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_path, sizeof(g_path), "%s/audit.log", g_dir);
}

static void teardown(void) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    (void)system(cmd);
}

TestSuite(audit, .init = setup, .fini = teardown, .timeout = 10);

static size_t read_all(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "%s", path);
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    cr_assert_geq(n, 0);
    buf[n] = '\0';
    return (size_t)n;
}

Test(audit, a_line_holds_every_field_escaped) {
    khala_audit_t a;
    cr_assert_eq(khala__audit_open(&a, "", "0.5", g_err, sizeof(g_err)), 0, "%s", g_err);
    khala_audit_event_t e = {.event = "denied",
                             .uid = 65534,
                             .gid = 65533,
                             .pid = 42,
                             .comm = "wor\"ker",
                             .op = "put",
                             .key = "a\"b\\c\x01\xff",
                             .klen = 7,
                             .right = "write",
                             .rc = -1017};
    char line[KHALA_AUDIT_LINE_MAX];
    size_t n = khala__audit_format(&a, &e, 1796454000123LL, line, sizeof(line));
    cr_assert_str_eq(line, "{\"time\":\"2026-12-05T07:00:00.123Z\",\"event\":\"denied\","
                           "\"uid\":65534,\"gid\":65533,\"pid\":42,\"comm\":\"wor\\\"ker\","
                           "\"op\":\"put\",\"key\":\"a\\\"b\\\\c\\u0001\\u00ff\","
                           "\"right\":\"write\",\"rc\":-1017}\n");
    cr_assert_eq(n, strlen(line));
    /* A read line carries the rate; a selector takes the key's place. */
    khala_audit_event_t r = {.event = "read", .op = "flush", .prefix = "rep", .plen = 3};
    khala__audit_format(&a, &r, 0, line, sizeof(line));
    cr_assert(strstr(line, ",\"prefix\":\"rep\",\"sample_rate\":0.5,\"rc\":0}\n"), "%s", line);
}

Test(audit, a_long_key_list_is_cut_and_the_line_stays_whole) {
    khala_audit_t a;
    cr_assert_eq(khala__audit_open(&a, "", "0", g_err, sizeof(g_err)), 0);
    static char key[250];
    memset(key, 'k', sizeof(key));
    const void *keys[64];
    size_t lens[64];
    for (int i = 0; i < 64; i++) {
        keys[i] = key;
        lens[i] = sizeof(key);
    }
    khala_audit_event_t e = {
        .event = "admin", .op = "warm", .keys = keys, .klens = lens, .nkeys = 64};
    char line[KHALA_AUDIT_LINE_MAX];
    size_t n = khala__audit_format(&a, &e, 0, line, sizeof(line));
    cr_assert_lt(n, sizeof(line));
    cr_assert(strstr(line, "],\"keys_omitted\":"), "%s", line);
    cr_assert(n > 6 && strcmp(line + n - 8, "\"rc\":0}\n") == 0, "%s", line + n - 20);
}

Test(audit, rate_1_samples_every_read_and_rate_0_none) {
    khala_audit_t a;
    cr_assert_eq(khala__audit_open(&a, g_path, "1", g_err, sizeof(g_err)), 0, "%s", g_err);
    for (int i = 0; i < 1000; i++)
        cr_assert(khala__audit_sample(&a));
    khala__audit_close(&a);
    cr_assert_eq(khala__audit_open(&a, g_path, "0", g_err, sizeof(g_err)), 0, "%s", g_err);
    for (int i = 0; i < 1000; i++)
        cr_assert_not(khala__audit_sample(&a));
    khala__audit_close(&a);
    /* A rate in between samples some, not all (bounds generous: 1000 draws at 0.5). */
    cr_assert_eq(khala__audit_open(&a, g_path, "0.5", g_err, sizeof(g_err)), 0, "%s", g_err);
    int n = 0;
    for (int i = 0; i < 1000; i++)
        n += khala__audit_sample(&a);
    cr_assert(n > 300 && n < 700, "%d of 1000", n);
    khala__audit_close(&a);
    /* Off: never. */
    cr_assert_eq(khala__audit_open(&a, "", "1", g_err, sizeof(g_err)), 0);
    cr_assert_not(khala__audit_sample(&a));
    cr_assert_eq(khala__audit_open(&a, "", "2", g_err, sizeof(g_err)), -EINVAL);
}

Test(audit, the_file_is_reopened_after_a_rotation) {
    khala_audit_t a;
    cr_assert_eq(khala__audit_open(&a, g_path, "0", g_err, sizeof(g_err)), 0, "%s", g_err);
    khala_audit_event_t e = {.event = "admin", .op = "flush"};
    cr_assert_eq(khala__audit_write(&a, &e), 0);
    char rotated[128], buf[4096];
    snprintf(rotated, sizeof(rotated), "%s.1", g_path);
    cr_assert_eq(rename(g_path, rotated), 0);
    e.op = "config";
    cr_assert_eq(khala__audit_write(&a, &e), 0); /* still the old file, as logrotate expects */
    khala__audit_tick(&a, 1000000);              /* the check finds the path gone */
    e.op = "warm";
    cr_assert_eq(khala__audit_write(&a, &e), 0);
    read_all(rotated, buf, sizeof(buf));
    cr_assert(strstr(buf, "\"op\":\"flush\"") && strstr(buf, "\"op\":\"config\""), "%s", buf);
    cr_assert_null(strstr(buf, "\"op\":\"warm\""), "%s", buf);
    read_all(g_path, buf, sizeof(buf));
    cr_assert(strstr(buf, "\"op\":\"warm\""), "%s", buf);
    cr_assert_eq(a.lines, 3);
    khala__audit_close(&a);
}

Test(audit, a_file_that_cannot_be_opened_is_an_error_naming_it) {
    khala_audit_t a;
    char bad[128];
    snprintf(bad, sizeof(bad), "%s/no/such/dir/audit.log", g_dir);
    cr_assert_eq(khala__audit_open(&a, bad, "0", g_err, sizeof(g_err)), -ENOENT);
    cr_assert(strstr(g_err, bad), "%s", g_err);
}
