/*
 * Tests of khalad's configuration (daemon/config.c): the defaults, a full file, every class of
 * error with its exact message (FILE:LINE: [section] key: what), the command-line overrides,
 * dump-then-reload, the per-type sections, the derived paths and the redis_url forms.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "khala/error.h"

static char g_err[512];
static khala_config_t g_cfg;

static void setup(void) {
    g_err[0] = '\0';
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
}

TestSuite(config, .init = setup, .timeout = 30);

/* Load text over g_cfg as "khalad.conf". */
static int load(const char *text) {
    return khala__config_load_string(&g_cfg, text, "khalad.conf", g_err, sizeof(g_err));
}

/* text must fail with KHALA_ECONFIG and exactly this message, leaving g_cfg as it was. */
static void expect_error(const char *text, const char *message) {
    khala_config_t before = g_cfg;
    int rc = load(text);
    cr_assert_eq(rc, KHALA_ECONFIG, "rc %d for:\n%s", rc, text);
    cr_assert_str_eq(g_err, message);
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0, "failed load changed the config");
}

static void expect_set_error(const char *key, const char *value, const char *message) {
    khala_config_t before = g_cfg;
    int rc = khala__config_set(&g_cfg, key, value, g_err, sizeof(g_err));
    cr_assert_eq(rc, KHALA_ECONFIG, "rc %d for %s=%s", rc, key, value);
    cr_assert_str_eq(g_err, message);
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0, "failed set changed the config");
}

static void set_ok(const char *key, const char *value) {
    int rc = khala__config_set(&g_cfg, key, value, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "set %s=%s: %d %s", key, value, rc, g_err);
}

/* Dump cfg, reload the text over fresh defaults, and require the same bytes. */
static void assert_roundtrip(const khala_config_t *cfg) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_not_null(f);
    cr_assert_eq(khala__config_dump(cfg, f), 0);
    fclose(f);
    khala_config_t back;
    khala__config_defaults(&back, "other");
    int rc = khala__config_load_string(&back, text, "dump", g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "reload of the dump: %s\n%s", g_err, text);
    cr_assert_eq(memcmp(&back, cfg, sizeof(back)), 0, "dump did not reload equal:\n%s", text);
    free(text);
}

Test(config, defaults_are_the_documented_values) {
    khala_config_t *c = &g_cfg;
    cr_assert_str_eq(c->cache.name, "default");
    cr_assert_str_eq(c->cache.socket, "");
    cr_assert_eq(c->cache.socket_mode, 0660);
    cr_assert_eq(c->l1.max_memory_mb, 100);
    cr_assert_eq(c->l1.max_items, 0);
    cr_assert_eq(khala__config_l1_items(c), 100u * 1024 * 1024 / 512);
    cr_assert_eq(c->l1.max_value_bytes, 1024 * 1024);
    cr_assert_eq(c->l1.ttl_seconds, 300);
    cr_assert_eq(c->l1.eviction_policy, KHALA_CONFIG_EVICT_S3FIFO);
    cr_assert_eq(c->l1.max_readers, 256);
    cr_assert_eq(c->l2.backend, KHALA_CONFIG_L2_DISK);
    cr_assert_eq(c->l2.ttl_seconds, 3600);
    cr_assert_eq(c->l2.max_items, 10000);
    cr_assert(c->l2.persistent);
    cr_assert_str_eq(c->l3.surrealdb_table, "cache_table"); /* the seed's */
    cr_assert_eq(c->l3.ttl_seconds, 86400);
    cr_assert_eq(c->l3.max_entries, 100000);
    cr_assert_eq(c->l3.cleanup_interval, 3600);
    cr_assert_eq(c->policies.write_mode, KHALA_CONFIG_WRITE_THROUGH);
    cr_assert_eq(c->policies.coherence, KHALA_CONFIG_COHERENCE_NONE);
    cr_assert_not(c->policies.preload_common);
    cr_assert_not(c->policies.predictive_cache);
    cr_assert_eq(c->policies.single_flight_timeout_ms, 5000);
    cr_assert_eq(khala__config_check(c, g_err, sizeof(g_err)), 0, "%s", g_err);
    /* The empty text changes nothing. */
    khala_config_t before = g_cfg;
    cr_assert_eq(load(""), 0);
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0);
}

Test(config, defaults_refuse_a_bad_name) {
    cr_assert_eq(khala__config_defaults(&g_cfg, "no/slash"), KHALA_ENAME);
    cr_assert_str_eq(g_cfg.cache.name, "default");
    cr_assert_eq(khala__config_defaults(&g_cfg, "mem-1"), 0);
    cr_assert_str_eq(g_cfg.cache.name, "mem-1");
}

Test(config, seg_sizes_follow_l1) {
    khala_seg_config_t s;
    khala__config_seg(&g_cfg, &s);
    cr_assert_eq(s.max_bytes, 100ull << 20);
    cr_assert_eq(s.max_items, 204800);
    cr_assert_eq(s.max_value, 1024 * 1024);
    cr_assert_eq(s.max_readers, 256);
    cr_assert_eq(s.ring_size, 256);
    set_ok("l1.max_memory_mb", "1");
    khala__config_seg(&g_cfg, &s);
    cr_assert_eq(s.max_items, 2048);
    set_ok("l1.max_memory_mb", "32768");
    khala__config_seg(&g_cfg, &s);
    cr_assert_eq(s.max_items, KHALA_CONFIG_L1_ITEMS_MAX);
    set_ok("l1.max_items", "5000");
    set_ok("l1.max_readers", "8");
    khala__config_seg(&g_cfg, &s);
    cr_assert_eq(s.max_items, 5000);
    cr_assert_eq(s.max_readers, 8);
    set_ok("l1.max_items", "auto");
    cr_assert_eq(g_cfg.l1.max_items, 0);
}

static const char FULL[] = "# a full configuration\n"
                           "[cache]\n"
                           "name = mem.prod\n"
                           "socket = /run/khala/custom.sock\n"
                           "socket_mode = 0600\n"
                           "socket_group = khala\n"
                           "\n"
                           "[l1]\n"
                           "max_memory_mb = 256 ; MiB\n"
                           "max_items = 100000\n"
                           "max_value_bytes = 2097152\n"
                           "ttl_seconds = 600\n"
                           "eviction_policy = lru\n"
                           "max_readers = 64\n"
                           "[l2]\n"
                           "backend = redis\n"
                           "ttl_seconds = 7200\n"
                           "max_items = 10000\n"
                           "redis_url = redis://app:s3cret@redis.local:6380/2\n"
                           "persistent = no\n"
                           "path = /srv/khala/l2\n"
                           "[l3]\n"
                           "backend = disk\n"
                           "surrealdb_url =\n"
                           "surrealdb_table = khala_cache\n"
                           "surrealdb_namespace = khala\n"
                           "surrealdb_database = cache\n"
                           "ttl_seconds = 86400\n"
                           "max_entries = 100000\n"
                           "cleanup_interval = 3600\n"
                           "path =\n"
                           "[policies]\n"
                           "write_mode = write_behind\n"
                           "coherence = pubsub\n"
                           "preload_common = on\n"
                           "predictive_cache = NO\n"
                           "stale_serve_seconds = 0\n"
                           "negative_ttl_seconds = 0\n"
                           "ttl_jitter_pct = 5\n"
                           "single_flight_timeout_ms = 2500\n"
                           "[type.embedding]\n"
                           "levels = l2, l3\n"
                           "l1_ttl_seconds = 0\n"
                           "l2_ttl_seconds = 999\n"
                           "l3_ttl_seconds = 604800\n"
                           "write_mode = write_through\n"
                           "quota_pct = 0\n"
                           "  [type.search_result]\n"
                           "  l1_ttl_seconds = 50\n";

Test(config, full_file_sets_every_key) {
    int rc = load(FULL);
    cr_assert_eq(rc, 0, "%s", g_err);
    khala_config_t *c = &g_cfg;
    cr_assert_str_eq(c->cache.name, "mem.prod");
    cr_assert_str_eq(c->cache.socket, "/run/khala/custom.sock");
    cr_assert_eq(c->cache.socket_mode, 0600);
    cr_assert_str_eq(c->cache.socket_group, "khala");
    cr_assert_eq(c->l1.max_memory_mb, 256);
    cr_assert_eq(c->l1.max_items, 100000);
    cr_assert_eq(c->l1.max_value_bytes, 2097152);
    cr_assert_eq(c->l1.ttl_seconds, 600);
    cr_assert_eq(c->l1.eviction_policy, KHALA_CONFIG_EVICT_LRU);
    cr_assert_eq(c->l1.max_readers, 64);
    cr_assert_eq(c->l2.backend, KHALA_CONFIG_L2_REDIS);
    cr_assert_eq(c->l2.ttl_seconds, 7200);
    cr_assert_eq(c->l2.max_items, 10000);
    cr_assert_str_eq(c->l2.redis_url, "redis://app:s3cret@redis.local:6380/2");
    cr_assert_not(c->l2.persistent);
    cr_assert_str_eq(c->l2.path, "/srv/khala/l2");
    cr_assert_eq(c->l3.backend, KHALA_CONFIG_L3_DISK);
    cr_assert_str_eq(c->l3.surrealdb_table, "khala_cache");
    cr_assert_eq(c->policies.write_mode, KHALA_CONFIG_WRITE_BEHIND);
    cr_assert_eq(c->policies.coherence, KHALA_CONFIG_COHERENCE_PUBSUB);
    cr_assert(c->policies.preload_common);
    cr_assert_not(c->policies.predictive_cache);
    cr_assert_eq(c->policies.stale_serve_seconds, 0);
    cr_assert_eq(c->policies.negative_ttl_seconds, 0);
    cr_assert_eq(c->policies.ttl_jitter_pct, 5);
    cr_assert_eq(c->policies.single_flight_timeout_ms, 2500);
    int e = khala__config_type_id("embedding");
    cr_assert_eq(c->types[e].levels, KHALA_CONFIG_LEVEL_L2 | KHALA_CONFIG_LEVEL_L3);
    cr_assert_eq(c->types[e].l2_ttl_seconds, 999);
    cr_assert_eq(c->types[e].write_mode, KHALA_CONFIG_WRITE_THROUGH);
    cr_assert_eq(c->types[khala__config_type_id("search_result")].l1_ttl_seconds, 50);
    char path[256];
    cr_assert_eq(khala__config_socket_path(c, path, sizeof(path)), 0);
    cr_assert_str_eq(path, "/run/khala/custom.sock");
    cr_assert_eq(khala__config_store_path(c, 2, path, sizeof(path)), 0);
    cr_assert_str_eq(path, "/srv/khala/l2");
}

Test(config, load_file_reads_a_file_and_names_it) {
    char path[] = "/tmp/khala-config-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char text[] = "[l1]\nmax_memory_mb = 64\n[l2]\nttl_seconds = soon\n";
    cr_assert_eq(write(fd, text, sizeof(text) - 1), (ssize_t)sizeof(text) - 1);
    close(fd);
    khala_config_t before = g_cfg;
    cr_assert_eq(khala__config_load_file(&g_cfg, path, g_err, sizeof(g_err)), KHALA_ECONFIG);
    char want[256];
    snprintf(want, sizeof(want), "%s:4: [l2] ttl_seconds: 'soon' is not a number", path);
    cr_assert_str_eq(g_err, want);
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0);
    /* Fixed, it loads. */
    FILE *f = fopen(path, "w");
    fputs("[l1]\nmax_memory_mb = 64\n", f);
    fclose(f);
    cr_assert_eq(khala__config_load_file(&g_cfg, path, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(g_cfg.l1.max_memory_mb, 64);
    unlink(path);
}

Test(config, unreadable_file_returns_errno_and_names_it) {
    khala_config_t before = g_cfg;
    int rc = khala__config_load_file(&g_cfg, "/nonexistent/khalad.conf", g_err, sizeof(g_err));
    cr_assert_eq(rc, -ENOENT);
    cr_assert_str_eq(g_err, "/nonexistent/khalad.conf: cannot read: No such file or directory");
    rc = khala__config_load_file(&g_cfg, "/tmp", g_err, sizeof(g_err));
    cr_assert_eq(rc, -EISDIR);
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0);
}

Test(config, file_with_nul_byte_is_refused) {
    char path[] = "/tmp/khala-config-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_eq(write(fd, "[l1]\n\0x", 7), 7);
    close(fd);
    cr_assert_eq(khala__config_load_file(&g_cfg, path, g_err, sizeof(g_err)), KHALA_ECONFIG);
    char want[256];
    snprintf(want, sizeof(want), "%s: holds a NUL byte; is it a text file?", path);
    cr_assert_str_eq(g_err, want);
    unlink(path);
}

Test(config, bad_values_name_file_line_section_and_key) {
    expect_error("[l1]\n\n# comment\nmax_memory_mb = lots\n",
                 "khalad.conf:4: [l1] max_memory_mb: 'lots' is not a number");
    expect_error("[l1]\nmax_memory_mb = -5\n",
                 "khalad.conf:2: [l1] max_memory_mb: '-5' is not a number");
    expect_error("[l1]\nmax_memory_mb =\n",
                 "khalad.conf:2: [l1] max_memory_mb: '' is not a number");
    expect_error("[l1]\nmax_memory_mb = 0\n",
                 "khalad.conf:2: [l1] max_memory_mb: '0' is out of range (1 to 32768)");
    expect_error("[l1]\nmax_memory_mb = 99999999999999999999\n",
                 "khalad.conf:2: [l1] max_memory_mb: '99999999999999999999' is out of range (1 to "
                 "32768)");
    expect_error("[l1]\nmax_items = 8\n",
                 "khalad.conf:2: [l1] max_items: '8' is out of range (auto, or 16 to 67108864)");
    expect_error("[l1]\neviction_policy = arc\n",
                 "khalad.conf:2: [l1] eviction_policy: 'arc' is not one of s3fifo, lru");
    expect_error("[l2]\npersistent = maybe\n",
                 "khalad.conf:2: [l2] persistent: 'maybe' is not a boolean (true/false, yes/no, "
                 "on/off, 1/0)");
    expect_error("[cache]\nsocket_mode = 0680\n",
                 "khalad.conf:2: [cache] socket_mode: '0680' is not an octal mode");
    expect_error("[cache]\nsocket_mode = 1777\n",
                 "khalad.conf:2: [cache] socket_mode: '1777' is out of range (0 to 0777)");
    expect_error("[cache]\nname = a/b\n",
                 "khalad.conf:2: [cache] name: 'a/b' is not a cache name (1 to 64 bytes of "
                 "[A-Za-z0-9_.-])");
    expect_error("[cache]\nsocket = run/k.sock\n",
                 "khalad.conf:2: [cache] socket: 'run/k.sock' is not an absolute path");
    expect_error("[l3]\nsurrealdb_table = x;DROP\n",
                 "khalad.conf:2: [l3] surrealdb_table: 'x;DROP' is not an identifier "
                 "([A-Za-z_][A-Za-z0-9_]*)");
    expect_error("[l3]\nsurrealdb_url = ftp://x\n",
                 "khalad.conf:2: [l3] surrealdb_url: is not an http:// or https:// URL");
    expect_error("[policies]\nttl_jitter_pct = 51\n",
                 "khalad.conf:2: [policies] ttl_jitter_pct: '51' is out of range (0 to 50)");
    expect_error("[policies]\nwrite_mode = default\n",
                 "khalad.conf:2: [policies] write_mode: 'default' is not one of write_through, "
                 "write_behind");
    /* A long value is cut in the message. */
    expect_error("[l1]\nttl_seconds = 1234567890123456789012345678901234567890123456789\n",
                 "khalad.conf:2: [l1] ttl_seconds: '1234567890123456789012345678901234567890...' "
                 "is out of range (1 to 315360000)");
}

Test(config, structure_errors_are_reported_with_their_line) {
    expect_error("[l1]\nmax_memroy_mb = 5\n", "khalad.conf:2: [l1] max_memroy_mb: unknown key");
    expect_error("[l1]\nttl_seconds = 5\n[l9]\n", "khalad.conf:3: [l9]: unknown section");
    expect_error("[type.embeddings]\nquota_pct = 1\n",
                 "khalad.conf:1: [type.embeddings]: unknown section");
    expect_error("[l1]\nttl_seconds = 5\n\n[l2]\n[l1]\nttl_seconds = 6\n",
                 "khalad.conf:6: [l1] ttl_seconds: duplicate key (first set on line 2)");
    expect_error("name = x\n[cache]\n", "khalad.conf:1: key 'name' is outside any section");
    expect_error("[l1]\nttl_seconds = 5\njust words\n",
                 "khalad.conf:3: syntax error: expected '[section]' or 'key = value'");
    expect_error("[l1\n", "khalad.conf:1: syntax error: expected '[section]' or 'key = value'");
    /* The first error wins, whichever kind it is. */
    expect_error("[l1]\njunk\nttl_seconds = x\n",
                 "khalad.conf:2: syntax error: expected '[section]' or 'key = value'");
    expect_error("[l1]\nttl_seconds = x\njunk\n",
                 "khalad.conf:2: [l1] ttl_seconds: 'x' is not a number");
    /* An indented line is a line of its own, not a continuation of the previous value. */
    expect_error("[l1]\nttl_seconds = 5\n    6\n",
                 "khalad.conf:3: syntax error: expected '[section]' or 'key = value'");
    char text[KHALA_CONFIG_LINE_MAX + 64];
    memset(text, 'x', sizeof(text));
    memcpy(text, "[l1]\n", 5);
    text[sizeof(text) - 2] = '\n';
    text[sizeof(text) - 1] = '\0';
    expect_error(text, "khalad.conf:2: line is longer than 1024 bytes");
}

Test(config, accepted_syntax_variants) {
    const char text[] = "\xef\xbb\xbf; a BOM, comments of both kinds\r\n"
                        "# hash comment\r\n"
                        "[l1]\r\n"
                        "\tttl_seconds=42   ; inline comment\r\n"
                        "max_readers : 12\r\n"
                        "[l2]\n"
                        "persistent = OFF\n";
    cr_assert_eq(load(text), 0, "%s", g_err);
    cr_assert_eq(g_cfg.l1.ttl_seconds, 42);
    cr_assert_eq(g_cfg.l1.max_readers, 12);
    cr_assert_not(g_cfg.l2.persistent);
    /* Booleans: every spelling. */
    const char *yes[] = {"true", "yes", "on", "1", "True"};
    const char *no[] = {"false", "no", "off", "0", "NO"};
    for (size_t i = 0; i < 5; i++) {
        set_ok("policies.preload_common", yes[i]);
        cr_assert(g_cfg.policies.preload_common);
        set_ok("policies.preload_common", no[i]);
        cr_assert_not(g_cfg.policies.preload_common);
    }
}

Test(config, consistency_errors_name_the_key) {
    expect_error("[l1]\nmax_memory_mb = 1\nmax_value_bytes = 2000000\n",
                 "khalad.conf:3: [l1] max_value_bytes: 2000000 does not fit in max_memory_mb (1 "
                 "MiB)");
    expect_error("[l2]\nbackend = redis\n", "khalad.conf:2: [l2] backend: 'redis' needs [l2] "
                                            "redis_url");
    expect_error("[policies]\ncoherence = pubsub\n",
                 "khalad.conf:2: [policies] coherence: 'pubsub' (or 'immediate') needs [l2] "
                 "backend = redis (it is Redis pub/sub)");
    expect_error("[type.search_result]\nlevels = l1,l4\n",
                 "khalad.conf:2: [type.search_result] levels: 'l1,l4' is not a list of levels "
                 "(l1, l2, l3, comma-separated)");
    expect_error("[type.search_result]\nlevels = l1,l1\n",
                 "khalad.conf:2: [type.search_result] levels: 'l1,l1' names l1 twice");
    expect_error("[type.search_result]\nlevels =\n",
                 "khalad.conf:2: [type.search_result] levels: '' is not a list of levels (l1, "
                 "l2, l3, comma-separated)");
    /* A value set earlier (no line in this load) is cited by file only. */
    set_ok("l1.max_memory_mb", "1");
    set_ok("l1.max_value_bytes", "1048576");
    expect_error("[l1]\nmax_memory_mb = 2\nmax_value_bytes = 3000000\n",
                 "khalad.conf:3: [l1] max_value_bytes: 3000000 does not fit in max_memory_mb (2 "
                 "MiB)");
}

Test(config, set_overrides_with_the_same_validation) {
    set_ok("l1.max_memory_mb", "200");
    cr_assert_eq(g_cfg.l1.max_memory_mb, 200);
    set_ok("type.embedding.l1_ttl_seconds", "30");
    cr_assert_eq(g_cfg.types[2].l1_ttl_seconds, 30);
    set_ok("cache.name", "other");
    cr_assert_str_eq(g_cfg.cache.name, "other");
    expect_set_error("l1.max_memory_mb", "lots",
                     "--set: [l1] max_memory_mb: 'lots' is not a number");
    expect_set_error("l1.max_memroy_mb", "1", "--set: [l1] max_memroy_mb: unknown key");
    expect_set_error("l7.x", "1", "--set: [l7]: unknown section");
    expect_set_error("ttl_seconds", "1", "--set: 'ttl_seconds' is not section.key");
    expect_set_error("type.nope.quota_pct", "1", "--set: [type.nope]: unknown section");
    expect_set_error("l2.path", "/a ;b",
                     "--set: [l2] path: '/a ;b' holds \" ;\", which starts a "
                     "comment");
    expect_set_error("l2.path", "/a\tb", "--set: [l2] path: '/a?b' holds a control character");
    expect_set_error("l2.path", " /a", "--set: [l2] path: ' /a' starts or ends with a blank");
    char longpath[KHALA_CONFIG_PATH_MAX + 8];
    memset(longpath, 'p', sizeof(longpath));
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = '\0';
    int rc = khala__config_set(&g_cfg, "l3.path", longpath, g_err, sizeof(g_err));
    cr_assert_eq(rc, KHALA_ECONFIG);
    cr_assert(strstr(g_err, "bytes, longer than 511"), "%s", g_err);
}

Test(config, dump_then_reload_gives_the_same_config) {
    assert_roundtrip(&g_cfg);
    cr_assert_eq(load(FULL), 0, "%s", g_err);
    /* FULL's redis_url holds a password, which a dump never shows (so it cannot reload equal):
     * dump_redacts_the_redis_password checks that case. */
    set_ok("l2.redis_url", "redis://app@redis.local:6380/2");
    assert_roundtrip(&g_cfg);
    set_ok("access.rule", "user:65534 read,write prefix:reports/");
    set_ok("access.rule", "group:0 read type:embedding");
    set_ok("audit.path", "/var/log/khala/audit.log");
    set_ok("audit.read_sample_rate", "0.25");
    assert_roundtrip(&g_cfg);
    set_ok("l1.max_items", "auto");
    set_ok("cache.socket", "");
    set_ok("cache.socket_mode", "0");
    set_ok("type.verification.levels", "l1");
    assert_roundtrip(&g_cfg);
    set_ok("l2.redis_url", "redis://h/1");
    set_ok("l2.backend", "redis");
    set_ok("policies.coherence", "immediate");
    assert_roundtrip(&g_cfg);
}

Test(config, dump_shows_derived_values_in_comments) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_eq(khala__config_dump(&g_cfg, f), 0);
    fclose(f);
    cr_assert(strstr(text, "# max_items: auto = 204800\nmax_items = auto\n"), "%s", text);
    cr_assert(strstr(text, "socket_mode = 0660\n"), "%s", text);
    cr_assert(strstr(text, "[type.consolidation]\nlevels = l2,l3\n"), "%s", text);
    cr_assert(strstr(text, "# l1_ttl_seconds: 0 = [l1] ttl_seconds = 300\nl1_ttl_seconds = 0\n"),
              "%s", text);
    cr_assert(strstr(text, "# write_mode: default = [policies] write_mode = write_through\n"), "%s",
              text);
    if (geteuid() == 0)
        cr_assert(strstr(text, "# socket: empty = derived from name: /run/khala/default.sock\n"
                               "socket =\n"),
                  "%s", text);
    free(text);
}

Test(config, type_sections_and_their_defaults) {
    for (int t = 0; t < KHALA_CONFIG_NTYPES; t++) {
        const char *name = khala__config_type_name(t);
        cr_assert_not_null(name);
        cr_assert_eq(khala__config_type_id(name), t);
        cr_assert_neq(g_cfg.types[t].levels, 0);
    }
    cr_assert_null(khala__config_type_name(8));
    cr_assert_null(khala__config_type_name(-1));
    cr_assert_eq(khala__config_type_id("Embedding"), KHALA_ECONFIG);
    cr_assert_str_eq(khala__config_type_name(0), "memory_entity");
    cr_assert_str_eq(khala__config_type_name(7), "consolidation");
    int sr = khala__config_type_id("search_result"), emb = khala__config_type_id("embedding");
    int me = khala__config_type_id("memory_entity");
    /* Inherited TTLs follow the level; explicit ones do not. */
    cr_assert_eq(khala__config_type_ttl(&g_cfg, me, 1), 300);
    cr_assert_eq(khala__config_type_ttl(&g_cfg, sr, 1), 60);
    cr_assert_eq(khala__config_type_ttl(&g_cfg, emb, 3), 604800);
    cr_assert_eq(khala__config_type_ttl(&g_cfg, me, 4), 0);
    set_ok("l1.ttl_seconds", "120");
    cr_assert_eq(khala__config_type_ttl(&g_cfg, me, 1), 120);
    cr_assert_eq(khala__config_type_ttl(&g_cfg, sr, 1), 60);
    /* Write modes: "default" follows [policies]. */
    cr_assert_eq(khala__config_type_write_mode(&g_cfg, me), KHALA_CONFIG_WRITE_THROUGH);
    cr_assert_eq(khala__config_type_write_mode(&g_cfg, emb), KHALA_CONFIG_WRITE_BEHIND);
    set_ok("policies.write_mode", "write_behind");
    cr_assert_eq(khala__config_type_write_mode(&g_cfg, me), KHALA_CONFIG_WRITE_BEHIND);
    cr_assert_eq(load("[type.memory_entity]\nwrite_mode = write_through\nlevels = l1\n"
                      "l1_ttl_seconds = 10\n"),
                 0, "%s", g_err);
    cr_assert_eq(khala__config_type_write_mode(&g_cfg, me), KHALA_CONFIG_WRITE_THROUGH);
    cr_assert_eq(g_cfg.types[me].levels, KHALA_CONFIG_LEVEL_L1);
    cr_assert_eq(khala__config_type_ttl(&g_cfg, me, 1), 10);
    /* Every type section is known, with every key. */
    for (int t = 0; t < KHALA_CONFIG_NTYPES; t++) {
        char key[96];
        snprintf(key, sizeof(key), "type.%s.l2_ttl_seconds", khala__config_type_name(t));
        set_ok(key, "77");
        cr_assert_eq(khala__config_type_ttl(&g_cfg, t, 2), 77);
    }
}

Test(config, redis_url_forms) {
    khala_config_redis_url_t u;
    char err[128];
    cr_assert_eq(
        khala__config_redis_url_parse("redis://app:pw@redis.local:6380/2", &u, err, sizeof(err)), 0,
        "%s", err);
    cr_assert_str_eq(u.user, "app");
    cr_assert_str_eq(u.password, "pw");
    cr_assert_str_eq(u.host, "redis.local");
    cr_assert_eq(u.port, 6380);
    cr_assert_eq(u.db, 2);
    cr_assert_not(u.tls);
    cr_assert_eq(khala__config_redis_url_parse("redis://localhost", &u, err, sizeof(err)), 0);
    cr_assert_eq(u.port, 6379);
    cr_assert_eq(u.db, 0);
    cr_assert_str_eq(u.user, "");
    cr_assert_eq(
        khala__config_redis_url_parse("rediss://:only-pw@[::1]:7000/", &u, err, sizeof(err)), 0,
        "%s", err);
    cr_assert(u.tls);
    cr_assert_str_eq(u.host, "[::1]");
    cr_assert_str_eq(u.password, "only-pw");
    cr_assert_eq(u.port, 7000);
    cr_assert_eq(
        khala__config_redis_url_parse("unix:///run/redis/redis.sock?db=5", &u, err, sizeof(err)), 0,
        "%s", err);
    cr_assert_str_eq(u.path, "/run/redis/redis.sock");
    cr_assert_eq(u.db, 5);
    cr_assert_eq(u.port, 0);
    cr_assert_eq(khala__config_redis_url_parse("unix:///tmp/r.sock", &u, err, sizeof(err)), 0);

    static const struct {
        const char *url, *msg;
    } bad[] = {
        {"http://x", "is not a redis://, rediss:// or unix:// URL"},
        {"redis://", "has no host"},
        {"redis://h:0", "has port 0, allowed 1 to 65535"},
        {"redis://h:99999", "has port 99999, allowed 1 to 65535"},
        {"redis://h:", "has a bad port"},
        {"redis://h/x", "has a bad database number (0 to 65535)"},
        {"redis://h/1?x=1", "has a bad database number (0 to 65535)"},
        {"redis://h?db=1", "has a query; write the database as /N"},
        {"redis://@h", "has an empty user before '@'"},
        {"redis://h$", "has a bad character 0x24 after the host"},
        {"redis://[zz]", "has a bad [IPv6] host"},
        {"unix://relative", "is not unix:///absolute/path[?db=N] (a socket path of at most 107 "
                            "bytes)"},
        {"unix:///r.sock?x=1", "has a bad query (only ?db=N is understood)"},
        {"unix:///r.sock?db=", "has a bad database number (0 to 65535)"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        cr_assert_eq(khala__config_redis_url_parse(bad[i].url, &u, err, sizeof(err)), KHALA_ECONFIG,
                     "%s accepted", bad[i].url);
        cr_assert_str_eq(err, bad[i].msg, "%s", bad[i].url);
    }
    /* In a file, the message names the key. */
    expect_error("[l2]\nredis_url = redis://h:0\n",
                 "khalad.conf:2: [l2] redis_url: has port 0, allowed 1 to 65535");
    cr_assert_eq(load("[l2]\nbackend = redis\nredis_url = redis://10.0.0.5:6379/0\n"), 0, "%s",
                 g_err);
}

Test(config, derived_paths_follow_the_name_as_root) {
    if (geteuid() != 0)
        cr_skip_test("needs root");
    char p[256];
    set_ok("cache.name", "mem");
    cr_assert_eq(khala__config_socket_path(&g_cfg, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/run/khala/mem.sock");
    cr_assert_eq(khala__config_store_path(&g_cfg, 2, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/var/lib/khala/mem/l2");
    cr_assert_eq(khala__config_store_path(&g_cfg, 3, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/var/lib/khala/mem/l3");
    cr_assert_eq(khala__config_store_path(&g_cfg, 1, p, sizeof(p)), -EINVAL);
    cr_assert_eq(khala__config_socket_path(&g_cfg, p, 8), -ENAMETOOLONG);
}

Test(config, l3_store_sits_next_to_a_configured_l2_store) {
    char p[256];
    set_ok("l2.path", "/srv/k/l2");
    cr_assert_eq(khala__config_store_path(&g_cfg, 3, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/srv/k/l3");
    /* Never the L2 store itself. */
    set_ok("l2.path", "/srv/l3");
    cr_assert_eq(khala__config_store_path(&g_cfg, 3, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/srv/l3-l3");
    set_ok("l2.path", "/srv/k/l2u"); /* not another khalad's /srv/k/l3 */
    cr_assert_eq(khala__config_store_path(&g_cfg, 3, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/srv/k/l2u-l3");
    set_ok("l3.path", "/data/cold");
    cr_assert_eq(khala__config_store_path(&g_cfg, 3, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/data/cold");
}

Test(config, derived_paths_for_a_user) {
    /* Criterion runs each test in its own process, so dropping root here affects only it. */
    if (geteuid() == 0 && setresuid(65534, 65534, 65534) != 0)
        cr_skip_test("cannot drop to uid 65534");
    unsigned uid = (unsigned)geteuid();
    char p[256], want[256];
    setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
    setenv("XDG_STATE_HOME", "/home/u/.state", 1);
    cr_assert_eq(khala__config_socket_path(&g_cfg, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/run/user/1000/khala/default.sock");
    cr_assert_eq(khala__config_store_path(&g_cfg, 2, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/home/u/.state/khala/default/l2");
    unsetenv("XDG_RUNTIME_DIR");
    unsetenv("XDG_STATE_HOME");
    setenv("HOME", "/home/u", 1);
    cr_assert_eq(khala__config_socket_path(&g_cfg, p, sizeof(p)), 0);
    snprintf(want, sizeof(want), "/tmp/khala-%u/default.sock", uid);
    cr_assert_str_eq(p, want);
    cr_assert_eq(khala__config_store_path(&g_cfg, 3, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/home/u/.local/state/khala/default/l3");
    unsetenv("HOME");
    cr_assert_eq(khala__config_store_path(&g_cfg, 3, p, sizeof(p)), 0);
    snprintf(want, sizeof(want), "/tmp/khala-%u/state/default/l3", uid);
    cr_assert_str_eq(p, want);
    /* An explicit socket wins. */
    set_ok("cache.socket", "/srv/k.sock");
    cr_assert_eq(khala__config_socket_path(&g_cfg, p, sizeof(p)), 0);
    cr_assert_str_eq(p, "/srv/k.sock");
}

Test(config, check_refuses_a_hand_made_inconsistency) {
    g_cfg.l1.max_value_bytes = 200 * 1024 * 1024;
    cr_assert_eq(khala__config_check(&g_cfg, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_str_eq(g_err, "config: [l1] max_value_bytes: 209715200 does not fit in "
                            "max_memory_mb (100 MiB)");
    /* A NULL message buffer is allowed. */
    cr_assert_eq(khala__config_check(&g_cfg, NULL, 0), KHALA_ECONFIG);
}

Test(config, example_file_loads_to_the_defaults) {
    /* daemon/khalad.conf.example sets every key to its default: it documents them truly. */
    char path[4096];
    snprintf(path, sizeof(path), "%s", __FILE__);
    char *slash = strrchr(path, '/');
    cr_assert_not_null(slash, "__FILE__ is not a path: %s", __FILE__);
    snprintf(slash, sizeof(path) - (size_t)(slash - path), "/../daemon/khalad.conf.example");
    khala_config_t before = g_cfg;
    int rc = khala__config_load_file(&g_cfg, path, g_err, sizeof(g_err));
    cr_assert_eq(rc, 0, "%s", g_err);
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0, "the example is not the defaults");
}

/* ------------------------------------------------------------------------------------------ */
/* Configuration means what it says                                                            */
/* ------------------------------------------------------------------------------------------ */

Test(config, keys_without_effect_are_refused_unless_at_their_default) {
    expect_error("[policies]\nstale_serve_seconds = 60\n",
                 "khalad.conf:2: [policies] stale_serve_seconds: '60' has no effect yet (serving "
                 "stale values is not built): only the default, 0, is accepted");
    expect_error("[policies]\nnegative_ttl_seconds = 30\n",
                 "khalad.conf:2: [policies] negative_ttl_seconds: '30' has no effect yet (caching "
                 "\"no such item\" answers is not built): only the default, 0, is accepted");
    expect_error("[policies]\npredictive_cache = true\n",
                 "khalad.conf:2: [policies] predictive_cache: 'true' has no effect yet (khalad "
                 "does not prefetch: measured, it did not raise the hit ratio): only the "
                 "default, false, is accepted");
    expect_error("[type.embedding]\nquota_pct = 40\n",
                 "khalad.conf:2: [type.embedding] quota_pct: '40' has no effect yet (per-type L1 "
                 "quotas are not built): only the default, 0, is accepted");
    /* Every one of them at its default loads, and changes nothing. */
    khala_config_t before = g_cfg;
    cr_assert_eq(load("[policies]\nstale_serve_seconds = 0\nnegative_ttl_seconds = 0\n"
                      "predictive_cache = no\n[type.embedding]\nquota_pct = 0\n"),
                 0, "%s", g_err);
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0);
}

Test(config, l2_capacity_keys_are_refused_on_redis_only) {
    /* On disk they bound the store. */
    cr_assert_eq(load("[l2]\nmax_items = 500\nmax_memory_mb = 64\n"), 0, "%s", g_err);
    cr_assert_eq(g_cfg.l2.max_items, 500);
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    expect_error("[l2]\nbackend = redis\nredis_url = redis://h\nmax_items = 500\n",
                 "khalad.conf:4: [l2] max_items: '500' has no effect with [l2] backend = redis "
                 "(Redis bounds L2 itself, by its maxmemory): only the default, 10000, is "
                 "accepted");
    expect_error("[l2]\nmax_memory_mb = 64\nbackend = redis\nredis_url = redis://h\n",
                 "khalad.conf:2: [l2] max_memory_mb: '64' has no effect with [l2] backend = "
                 "redis (Redis bounds L2 itself, by its maxmemory): only the default, 1024, is "
                 "accepted");
    cr_assert_eq(load("[l2]\nbackend = redis\nredis_url = redis://h\nmax_items = 10000\n"), 0, "%s",
                 g_err);
}

Test(config, l3_is_configurable) {
    /* Since issue 12 every [l3] key has its effect, and a type may live on any levels. */
    cr_assert_eq(load("[type.memory_entity]\nlevels = l1,l2\n[type.consolidation]\nlevels = l2\n"
                      "[type.search_result]\nlevels = l1,l2,l3\nl3_ttl_seconds = 60\n"
                      "[l3]\nttl_seconds = 60\npath = /srv/l3\nmax_entries = 5\n"
                      "archive_retention_seconds = 0\nsimilarity_threshold = 0.75\n"),
                 0, "%s", g_err);
    cr_assert_eq(g_cfg.types[KHALA_TYPE_CONSOLIDATION].levels, KHALA_CONFIG_LEVEL_L2);
    cr_assert_eq(g_cfg.types[KHALA_TYPE_SEARCH_RESULT].levels,
                 KHALA_CONFIG_LEVEL_L1 | KHALA_CONFIG_LEVEL_L2 | KHALA_CONFIG_LEVEL_L3);
    cr_assert_eq(g_cfg.types[KHALA_TYPE_SEARCH_RESULT].l3_ttl_seconds, 60);
    cr_assert_str_eq(g_cfg.l3.path, "/srv/l3");
    cr_assert_eq(g_cfg.l3.max_entries, 5);
    cr_assert_eq(g_cfg.l3.archive_retention_seconds, 0);
    cr_assert_str_eq(g_cfg.l3.similarity_threshold, "0.75");
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    expect_error("[l3]\nbackend = surrealdb\n",
                 "khalad.conf:2: [l3] backend: 'surrealdb' needs [l3] surrealdb_url");
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    cr_assert_eq(load("[l3]\nbackend = surrealdb\n"
                      "surrealdb_url = http://root:s3cret@127.0.0.1:8000\n"),
                 0, "%s", g_err);
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    expect_error("[l3]\nsurrealdb_url = http://:pw@127.0.0.1:8000\n",
                 "khalad.conf:2: [l3] surrealdb_url: has credentials without a user name "
                 "(user:password@host)");
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    expect_error(
        "[l3]\nsimilarity_threshold = 1.5\n",
        "khalad.conf:2: [l3] similarity_threshold: '1.5' is not a rate from 0 to 1 (e.g. 0.01)");
}

Test(config, surrealdb_url_takes_credentials_through_set) {
    /* The chaos checker's form (a --set, as khalad gets it from tests/harness): the check once
     * read "root:root@..." as a host and a bad port, and khalad could not start on SurrealDB. */
    set_ok("l3.surrealdb_url", "http://root:root@127.0.0.1:38000");
    set_ok("l3.backend", "surrealdb");
    cr_assert_str_eq(g_cfg.l3.surrealdb_url, "http://root:root@127.0.0.1:38000");
    set_ok("l3.surrealdb_url", "https://app:p%40ss@db.example:8000/rpc");
    set_ok("l3.surrealdb_url", "http://db:8000");
    expect_set_error("l3.surrealdb_url", "http://@db:8000",
                     "--set: [l3] surrealdb_url: has credentials without a user name "
                     "(user:password@host)");
    expect_set_error("l3.surrealdb_url", "http://root:root@:8000",
                     "--set: [l3] surrealdb_url: has no host");
}

Test(config, rediss_is_refused_when_the_file_is_read) {
    /* khalad --check reads the file as khalad does: TLS is refused there, not at connect. */
    expect_error("[l2]\nbackend = redis\nredis_url = rediss://h:6380/0\n",
                 "khalad.conf:3: [l2] redis_url: rediss:// (TLS) is not supported by this "
                 "build; use redis:// or unix://");
    expect_set_error("l2.redis_url", "rediss://h",
                     "--set: [l2] redis_url: rediss:// (TLS) is not supported by this build; use "
                     "redis:// or unix://");
}

Test(config, set_overrides_apply_in_any_order_and_are_checked_together) {
    /* The backend before its URL, pubsub before the backend: each --set checks its value only;
     * khala__config_check, after the last one, checks them together. */
    set_ok("policies.coherence", "pubsub");
    set_ok("l2.backend", "redis");
    cr_assert_eq(khala__config_check(&g_cfg, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_str_eq(g_err, "config: [l2] backend: 'redis' needs [l2] redis_url");
    set_ok("l2.redis_url", "redis://h/2");
    cr_assert_eq(khala__config_check(&g_cfg, g_err, sizeof(g_err)), 0, "%s", g_err);
    khala_config_t a = g_cfg;

    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    set_ok("l2.redis_url", "redis://h/2");
    set_ok("l2.backend", "redis");
    set_ok("policies.coherence", "pubsub");
    cr_assert_eq(memcmp(&a, &g_cfg, sizeof(a)), 0, "the order changed the result");

    /* A key without effect is refused by the check, whichever override came first. */
    set_ok("l2.max_items", "5");
    cr_assert_eq(khala__config_check(&g_cfg, g_err, sizeof(g_err)), KHALA_ECONFIG);
    set_ok("l2.backend", "disk");
    set_ok("policies.coherence", "none");
    cr_assert_eq(khala__config_check(&g_cfg, g_err, sizeof(g_err)), 0, "%s", g_err);
}

/* The seed's cache_config, written as INI with its own section and key names (docs/operating.md,
 * "The seed's configuration"), plus the one line it needs: its redis_url meant a Redis L2. */
static const char SEED[] = "[l1_cache]\n"
                           "max_memory_mb = 100\n"
                           "ttl_seconds = 300\n"
                           "eviction_policy = lru\n"
                           "[l2_cache]\n"
                           "backend = redis\n"
                           "redis_url = redis://localhost:6379/2\n"
                           "ttl_seconds = 3600\n"
                           "max_items = 10000\n"
                           "persistent = True\n"
                           "[l3_cache]\n"
                           "ttl_seconds = 86400\n"
                           "max_entries = 100000\n"
                           "cleanup_interval = 3600\n"
                           "[policies]\n"
                           "write_mode = write_through\n"
                           "coherence = immediate\n"
                           "preload_common = True\n"
                           "predictive_cache = False\n";

Test(config, the_seeds_names_are_aliases_of_ours) {
    cr_assert_eq(load(SEED), 0, "%s", g_err);
    khala_config_t *c = &g_cfg;
    cr_assert_eq(c->l1.eviction_policy, KHALA_CONFIG_EVICT_LRU);
    cr_assert_eq(c->l2.backend, KHALA_CONFIG_L2_REDIS);
    cr_assert_str_eq(c->l2.redis_url, "redis://localhost:6379/2");
    cr_assert(c->l2.persistent);
    cr_assert_eq(c->policies.coherence, KHALA_CONFIG_COHERENCE_PUBSUB);
    cr_assert(c->policies.preload_common);
    assert_roundtrip(c); /* dumped under our names: [l1], coherence = pubsub */

    /* An alias is the same section: a key set under both names is a duplicate. */
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    expect_error("[l1]\nttl_seconds = 5\n[l1_cache]\nttl_seconds = 6\n",
                 "khalad.conf:4: [l1] ttl_seconds: duplicate key (first set on line 2)");
    /* Its values without effect are refused like ours. */
    cr_assert_eq(load("[l3_cache]\nsurrealdb_table = seed_table\n"), 0, "%s", g_err);
    cr_assert_str_eq(g_cfg.l3.surrealdb_table, "seed_table");
    cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);
    expect_error("[policies]\npredictive_cache = True\n",
                 "khalad.conf:2: [policies] predictive_cache: 'true' has no effect yet (khalad "
                 "does not prefetch: measured, it did not raise the hit ratio): only the "
                 "default, false, is accepted");
    /* "immediate" across hosts is Redis pub/sub, so it needs Redis like pubsub. */
    expect_error("[policies]\ncoherence = immediate\n",
                 "khalad.conf:2: [policies] coherence: 'pubsub' (or 'immediate') needs [l2] "
                 "backend = redis (it is Redis pub/sub)");
    expect_set_error("l1_cache.max_memory_mb", "x",
                     "--set: [l1] max_memory_mb: 'x' is not a number");
}

Test(config, write_mode_and_level_names_come_from_the_lists) {
    /* The config's names of the write modes and levels are those of KHALA_MODE_LIST and
     * KHALA_LEVEL_LIST: each parses to its value and dumps back. */
#define MODE_NAME(NAME, v, wire, conf)                                                             \
    do {                                                                                           \
        cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);                                     \
        set_ok("type.verification.write_mode", conf);                                              \
        cr_assert_eq(g_cfg.types[KHALA_TYPE_VERIFICATION].write_mode, KHALA_CONFIG_WRITE_##NAME);  \
        cr_assert_eq((int)KHALA_CONFIG_WRITE_##NAME, (int)KHALA_MODE_##NAME);                      \
        assert_roundtrip(&g_cfg);                                                                  \
    } while (0);
    KHALA_MODE_LIST(MODE_NAME)
#undef MODE_NAME
    expect_set_error("policies.write_mode", "default",
                     "--set: [policies] write_mode: 'default' is not one of write_through, "
                     "write_behind");
#define LEVEL_NAME(NAME, name, stores)                                                             \
    if (stores) {                                                                                  \
        cr_assert_eq(khala__config_defaults(&g_cfg, NULL), 0);                                     \
        set_ok("type.memory_entity.levels", name);                                                 \
        cr_assert_eq(g_cfg.types[0].levels, KHALA_LEVEL_BIT(KHALA_LEVEL_##NAME));                  \
    } else {                                                                                       \
        expect_set_error("type.memory_entity.levels", name,                                        \
                         "--set: [type.memory_entity] levels: '" name                              \
                         "' is not a list of levels (l1, l2, l3, comma-separated)");               \
    }
    KHALA_LEVEL_LIST(LEVEL_NAME)
#undef LEVEL_NAME
}

Test(config, load_applies_the_file_then_the_overrides_and_checks_once) {
    char dir[] = "/tmp/khala_cfg_XXXXXX", path[64];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/khalad.conf", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs("[l2]\nbackend = redis\n[policies]\ncoherence = pubsub\n", f);
    fclose(f);
    /* The file alone is incomplete; an override gives the URL. */
    khala_config_t before = g_cfg;
    cr_assert_eq(khala__config_load_file(&g_cfg, path, g_err, sizeof(g_err)), KHALA_ECONFIG);
    const char *const url[] = {"l2.redis_url=redis://h/3"};
    cr_assert_eq(khala__config_load(&g_cfg, path, url, 1, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(g_cfg.l2.backend, KHALA_CONFIG_L2_REDIS);
    cr_assert_str_eq(g_cfg.l2.redis_url, "redis://h/3");
    /* An override undoes what the file alone would make inconsistent: backend back to disk
     * needs coherence none, in either order. */
    g_cfg = before;
    const char *const local[] = {"l2.backend=disk", "policies.coherence=none"};
    const char *const local_rev[] = {"policies.coherence=none", "l2.backend=disk"};
    khala_config_t a = g_cfg, b = g_cfg;
    cr_assert_eq(khala__config_load(&a, path, local, 2, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(khala__config_load(&b, path, local_rev, 2, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0);
    cr_assert_eq(a.l2.backend, KHALA_CONFIG_L2_DISK);
    /* The whole is checked: a message cites the file's line, or --set for an override. */
    const char *const only_disk[] = {"l2.backend=disk"};
    cr_assert_eq(khala__config_load(&g_cfg, path, only_disk, 1, g_err, sizeof(g_err)),
                 KHALA_ECONFIG);
    char want[256];
    snprintf(want, sizeof(want),
             "%s:4: [policies] coherence: 'pubsub' (or 'immediate') needs [l2] backend = redis "
             "(it is Redis pub/sub)",
             path);
    cr_assert_str_eq(g_err, want);
    const char *const stale[] = {"policies.stale_serve_seconds=5", "l2.redis_url=redis://h"};
    cr_assert_eq(khala__config_load(&g_cfg, path, stale, 2, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_str_eq(g_err, "--set: [policies] stale_serve_seconds: '5' has no effect yet "
                            "(serving stale values is not built): only the default, 0, is "
                            "accepted");
    const char *const bad[] = {"l2.backend"};
    cr_assert_eq(khala__config_load(&g_cfg, NULL, bad, 1, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_str_eq(g_err, "--set: 'l2.backend' is not section.key=value");
    cr_assert_eq(memcmp(&before, &g_cfg, sizeof(before)), 0, "failed loads changed the config");
    cr_assert_eq(khala__config_load(&g_cfg, "/nonexistent/k.conf", NULL, 0, g_err, sizeof(g_err)),
                 -ENOENT);
    unlink(path);
    rmdir(dir);
}

/* ------------------------------------------------------------------------------------------ */
/* Encryption at rest: [crypto] and [type.*] encrypt                                          */
/* ------------------------------------------------------------------------------------------ */

Test(config, encrypt_needs_a_key_file_and_the_key_file_an_absolute_path) {
    expect_error("[type.agent_response]\nencrypt = true\n",
                 "khalad.conf:2: [type.agent_response] encrypt: true needs [crypto] key_file "
                 "(the keys values are sealed with)");
    expect_error("[crypto]\nkey_file = keys.txt\n",
                 "khalad.conf:2: [crypto] key_file: 'keys.txt' is not an absolute path");
    expect_error("[type.embedding]\nencrypt = maybe\n",
                 "khalad.conf:2: [type.embedding] encrypt: 'maybe' is not a boolean (true/false, "
                 "yes/no, on/off, 1/0)");
    cr_assert_eq(load("[crypto]\nkey_file = /etc/khala/keys\n[type.agent_response]\nencrypt = "
                      "yes\n[type.verification]\nencrypt = on\n"),
                 0, "%s", g_err);
    cr_assert_str_eq(g_cfg.crypto.key_file, "/etc/khala/keys");
    cr_assert_eq(khala__config_encrypted_types(&g_cfg),
                 (1u << KHALA_TYPE_AGENT_RESPONSE) | (1u << KHALA_TYPE_VERIFICATION));
    /* The dump carries both, and reloads to the same configuration. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_eq(khala__config_dump(&g_cfg, f), 0);
    fclose(f);
    cr_assert(strstr(text, "[crypto]\nkey_file = /etc/khala/keys\n"), "%s", text);
    khala_config_t again;
    cr_assert_eq(khala__config_defaults(&again, NULL), 0);
    cr_assert_eq(khala__config_load_string(&again, text, "dump", g_err, sizeof(g_err)), 0, "%s",
                 g_err);
    cr_assert_eq(memcmp(&again, &g_cfg, sizeof(again)), 0);
    free(text);
    /* By override too, checked together: the key file may come after the type. */
    khala_config_t c;
    cr_assert_eq(khala__config_defaults(&c, NULL), 0);
    const char *sets[] = {"type.agent_response.encrypt=true", "crypto.key_file=/k"};
    cr_assert_eq(khala__config_load(&c, NULL, sets, 2, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(khala__config_load(&c, NULL, sets, 1, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(khala__config_defaults(&c, NULL), 0);
    cr_assert_eq(khala__config_load(&c, NULL, sets, 1, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert(strstr(g_err, "[type.agent_response] encrypt: true needs [crypto] key_file"), "%s",
              g_err);
}

/* [server]: the defaults, the ranges, one request of the largest value must fit in
 * max_buffer_bytes, and the frame limit follows [l1] max_value_bytes. */
Test(config, server_limits_are_checked_and_the_frame_limit_follows_the_value_limit) {
    cr_assert_eq(load("[server]\nmax_connections = 10\nframe_timeout_ms = 500\n"), 0, "%s", g_err);
    cr_assert_eq(g_cfg.server.max_connections, 10);
    cr_assert_eq(g_cfg.server.frame_timeout_ms, 500);
    cr_assert_eq(g_cfg.server.max_output_bytes, 8u * 1024 * 1024);
    cr_assert_eq(g_cfg.server.max_buffer_bytes, 256u * 1024 * 1024);
    cr_assert_eq(khala__config_server_max_frame(&g_cfg), KHALA_FRAME_MAX_DEFAULT);
    expect_error("[server]\nmax_connections = 0\n",
                 "khalad.conf:2: [server] max_connections: '0' is out of range (1 to 1000000)");
    expect_error("[l1]\nmax_value_bytes = 4194304\n[server]\nmax_buffer_bytes = 2097152\n",
                 "khalad.conf:4: [server] max_buffer_bytes: 2097152 is less than one request of "
                 "the largest value (4259844 bytes, from [l1] max_value_bytes 4194304)");
    cr_assert_eq(load("[l1]\nmax_value_bytes = 4194304\n"), 0, "%s", g_err);
    cr_assert_eq(khala__config_server_max_frame(&g_cfg), 4194304u + 65536u);
}

/* Bug 5: the dump (khalactl config, khalad --check) never shows the Redis password; an error
 * message that quotes the URL does not either. */
Test(config, dump_redacts_the_redis_password) {
    cr_assert_eq(load(FULL), 0, "%s", g_err);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    cr_assert_eq(khala__config_dump(&g_cfg, f), 0);
    fclose(f);
    cr_assert_null(strstr(text, "s3cret"), "%s", text);
    cr_assert(strstr(text, "redis_url = redis://app:***@redis.local:6380/2\n"), "%s", text);
    free(text);
    cr_assert_eq(khala__config_set(&g_cfg, "l2.redis_url", "redis://app:s3cret@h:1/2 ;x", g_err,
                                   sizeof(g_err)),
                 KHALA_ECONFIG);
    cr_assert_null(strstr(g_err, "s3cret"), "%s", g_err);
    cr_assert(strstr(g_err, "redis://app:***@h"), "%s", g_err);
}

/* [access] rule lines repeat and append, an empty one clears, and each is checked with a
 * message naming the key and what is wrong. */
Test(config, access_rules_append_and_are_checked) {
    cr_assert_eq(load("[access]\n"
                      "rule = user:65534 read prefix:reports/\n"
                      "rule = any none\n"),
                 0, "%s", g_err);
    cr_assert_str_eq(g_cfg.access.rule, "user:65534 read prefix:reports/\nany none");
    set_ok("access.rule", "");
    cr_assert_str_eq(g_cfg.access.rule, "");
    expect_error("[access]\nrule = user:65534 wrte\n",
                 "khalad.conf:2: [access] rule: 'wrte' is not a right (read, write, invalidate, "
                 "admin, all, none)");
    expect_error("[access]\nrule = someone read\n",
                 "khalad.conf:2: [access] rule: 'someone' names no one (user:NAME|UID, "
                 "group:NAME|GID or any)");
    expect_error("[access]\nrule = group:0 admin prefix:a\n",
                 "khalad.conf:2: [access] rule: admin cannot be scoped: admin operations act on "
                 "the whole cache");
    expect_error("[access]\nrule = group:0 read type:nosuchtype\n",
                 "khalad.conf:2: [access] rule: 'nosuchtype' is not a data type");
    expect_error("[access]\nrule = group:no-such-group-here read\n",
                 "khalad.conf:2: [access] rule: group 'no-such-group-here' is unknown");
    expect_error("[access]\nrule = any\n",
                 "khalad.conf:2: [access] rule: a rule is WHO RIGHTS [SCOPE], e.g. "
                 "\"group:analysts read prefix:reports/\"");
}

Test(config, audit_keys_are_checked) {
    cr_assert_str_eq(g_cfg.audit.path, "-");
    cr_assert_str_eq(g_cfg.audit.read_sample_rate, "0");
    set_ok("audit.path", "");
    set_ok("audit.read_sample_rate", "1");
    expect_set_error("audit.path", "audit.log",
                     "--set: [audit] path: 'audit.log' is not an absolute path");
    expect_set_error("audit.read_sample_rate", "1.5",
                     "--set: [audit] read_sample_rate: '1.5' is not a rate from 0 to 1 (e.g. "
                     "0.01)");
    expect_set_error("audit.read_sample_rate", "-0",
                     "--set: [audit] read_sample_rate: '-0' is not a rate from 0 to 1 (e.g. "
                     "0.01)");
}

/* A socket every local user may write to (connect to) is refused, already at --check. */
Test(config, world_writable_socket_mode_is_refused) {
    expect_error("[cache]\nsocket_mode = 0666\n",
                 "khalad.conf:2: [cache] socket_mode: 0666 lets every local user write to the "
                 "socket (connect); refused: use 0660 with socket_group, and [access] rules "
                 "(docs/security.md)");
    cr_assert_eq(load("[cache]\nsocket_mode = 0664\n"), 0, "%s", g_err);
}
