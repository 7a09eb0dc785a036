/*
 * Tests of daemon/acl.c: who holds which right on which key (issue 10, "Access control"). The
 * peers are values here (uid, gid, supplementary groups through a callback); the integration
 * test tests/integration/test_access.c checks the same rules through a real khalad with peers
 * that are really another user.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "acl.h"
#include "khala/error.h"

#define OWNER 1000
#define SOCKET_GID 2000
#define ANALYSTS 3000

static khala_acl_t g_acl;
static char g_err[256];

TestSuite(acl, .timeout = 10);

/* The supplementary groups of the peer under test: a list ending in 0. */
static gid_t g_groups[8];
static int in_groups(void *arg, gid_t gid) {
    (void)arg;
    for (size_t i = 0; g_groups[i]; i++)
        if (g_groups[i] == gid)
            return 1;
    return 0;
}

static khala_acl_peer_t peer(uid_t uid, gid_t gid) {
    return (khala_acl_peer_t){.uid = uid, .gid = gid, .in_group = in_groups};
}

static void init(const char *rules) {
    memset(g_groups, 0, sizeof(g_groups));
    cr_assert_eq(khala__acl_init(&g_acl, rules, OWNER, SOCKET_GID, g_err, sizeof(g_err)), 0, "%s",
                 g_err);
}

static unsigned rights(const khala_acl_peer_t *p, const char *key, int type) {
    return khala__acl_rights(&g_acl, p, key, key ? strlen(key) : 0, type);
}

Test(acl, without_rules_the_defaults_hold) {
    init("");
    khala_acl_peer_t root = peer(0, 0), owner = peer(OWNER, 1), member = peer(5000, SOCKET_GID),
                     other = peer(5001, 5001);
    cr_assert_eq(rights(&root, NULL, -1), KHALA_RIGHT_ALL);
    cr_assert_eq(rights(&owner, "k", -1), KHALA_RIGHT_ALL);
    cr_assert_eq(rights(&member, "k", -1),
                 KHALA_RIGHT_READ | KHALA_RIGHT_WRITE | KHALA_RIGHT_INVALIDATE);
    cr_assert_eq(rights(&other, "k", -1), KHALA_RIGHT_READ);
    /* A supplementary group counts like the primary one. */
    g_groups[0] = SOCKET_GID;
    cr_assert_eq(rights(&other, "k", -1),
                 KHALA_RIGHT_READ | KHALA_RIGHT_WRITE | KHALA_RIGHT_INVALIDATE);
}

Test(acl, a_named_peer_holds_only_what_its_rules_grant_for_the_key) {
    init("user:5000 read,write prefix:reports/\ngroup:3000 read type:embedding");
    khala_acl_peer_t batch = peer(5000, SOCKET_GID);
    cr_assert_eq(rights(&batch, "reports/q3", -1), KHALA_RIGHT_READ | KHALA_RIGHT_WRITE);
    cr_assert_eq(rights(&batch, "secrets/x", -1), 0, "the socket group's defaults no longer apply");
    cr_assert_eq(rights(&batch, "report", -1), 0, "shorter than the prefix");
    cr_assert_eq(rights(&batch, NULL, -1), 0, "a scoped rule grants nothing over the whole cache");
    /* A group rule by a supplementary group, scoped by type: the type must be known. */
    khala_acl_peer_t analyst = peer(5002, 5002);
    g_groups[0] = ANALYSTS;
    cr_assert_eq(rights(&analyst, "e1", 2), KHALA_RIGHT_READ);
    cr_assert_eq(rights(&analyst, "e1", 0), 0);
    cr_assert_eq(rights(&analyst, "e1", -1), 0);
    /* root and khalad's user are outside the rules. */
    init("any none");
    khala_acl_peer_t owner = peer(OWNER, 1), root = peer(0, 0), member = peer(5000, SOCKET_GID);
    cr_assert_eq(rights(&owner, "k", -1), KHALA_RIGHT_ALL);
    cr_assert_eq(rights(&root, "k", -1), KHALA_RIGHT_ALL);
    cr_assert_eq(rights(&member, "k", -1), 0);
}

Test(acl, rights_of_several_rules_add_up) {
    init("group:3000 read\ngroup:3000 write prefix:a/\nuser:5003 admin");
    khala_acl_peer_t p = peer(5003, ANALYSTS);
    cr_assert_eq(rights(&p, "a/1", -1), KHALA_RIGHT_READ | KHALA_RIGHT_WRITE | KHALA_RIGHT_ADMIN);
    cr_assert_eq(rights(&p, "b/1", -1), KHALA_RIGHT_READ | KHALA_RIGHT_ADMIN);
    cr_assert_eq(rights(&p, NULL, -1), KHALA_RIGHT_READ | KHALA_RIGHT_ADMIN);
}

Test(acl, bad_rules_are_refused_naming_the_rule) {
    cr_assert_eq(
        khala__acl_init(&g_acl, "any read\nuser:x:y read", OWNER, -1, g_err, sizeof(g_err)),
        KHALA_ECONFIG);
    cr_assert(strstr(g_err, "rule 'user:x:y read': user 'x:y' is unknown"), "%s", g_err);
    khala_acl_rule_t r;
    cr_assert_eq(khala__acl_rule_parse("any read prefix:", &r, g_err, sizeof(g_err)),
                 KHALA_ECONFIG);
    cr_assert(strstr(g_err, "prefix: must be followed by 1 to 250 bytes"), "%s", g_err);
    cr_assert_eq(khala__acl_rule_parse("any read a b", &r, g_err, sizeof(g_err)), KHALA_ECONFIG);
    cr_assert_eq(khala__acl_rule_parse("user:root all", &r, g_err, sizeof(g_err)), 0, "%s", g_err);
    cr_assert_eq(r.who, KHALA_ACL_USER);
    cr_assert_eq(r.id, 0);
    cr_assert_eq(r.rights, KHALA_RIGHT_ALL);
    cr_assert_str_eq(khala__acl_right_name(KHALA_RIGHT_INVALIDATE), "invalidate");
}

Test(acl, the_refusal_log_is_rate_limited_and_counts_what_it_left_out) {
    init("");
    uint64_t skipped = 0;
    unsigned logged = 0;
    for (int i = 0; i < 100; i++)
        logged += (unsigned)khala__acl_log_allow(&g_acl, 1000, &skipped);
    cr_assert_eq(logged, KHALA_ACL_LOG_BURST);
    cr_assert_eq(khala__acl_log_allow(&g_acl, 1000 + KHALA_ACL_LOG_WINDOW_MS, &skipped), 1);
    cr_assert_eq(skipped, 100 - KHALA_ACL_LOG_BURST);
}
