/*
 * Access control (daemon/acl.h).
 *
 * HOW IT WORKS
 *
 * khala__acl_rights() decides in three steps, the ones acl.h lists:
 *
 *   1. root and khalad's user: every right.
 *   2. Walk the rules. A rule names the peer when its uid is the peer's, its gid is the peer's
 *      primary group or one of its supplementary groups, or it is `any`. Remember that some
 *      rule named it, and when the rule's scope covers the key, add its rights.
 *   3. When no rule named the peer: the defaults (socket group: read, write, invalidate;
 *      others: read).
 *
 * Why "named peers get only what rules grant" rather than "rules add to the defaults": the
 * defaults give every member of the socket's group write access, and an operator who writes
 * `group:analysts read` for a group of socket members means them to read only. Rules that can
 * only add cannot say that. Why root and khalad's user are outside the rules: they can open the
 * segments and the state directory directly, so refusing them here would protect nothing.
 *
 * A rule set is at most KHALA_ACL_RULES_MAX rules and each request walks it once (with one
 * cached group lookup per connection, daemon/server.c); nothing is allocated.
 */
#include "acl.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>

#include "errbuf.h"
#include "debug.h"
#include "khala/error.h"
#include "proto.h"

static const struct {
    const char *name;
    unsigned bits;
} RIGHT_NAMES[] = {
    {"read", KHALA_RIGHT_READ},
    {"write", KHALA_RIGHT_WRITE},
    {"invalidate", KHALA_RIGHT_INVALIDATE},
    {"admin", KHALA_RIGHT_ADMIN},
    {"all", KHALA_RIGHT_ALL},
    {"none", 0},
};
#define NRIGHT_NAMES (sizeof(RIGHT_NAMES) / sizeof(RIGHT_NAMES[0]))

const char *khala__acl_right_name(unsigned right) {
    for (size_t i = 0; i < 4; i++)
        if (RIGHT_NAMES[i].bits == right)
            return RIGHT_NAMES[i].name;
    return "?";
}

/* A decimal id, or -1. */
static long parse_id(const char *s) {
    if (!*s || !isdigit((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*end || errno || v > UINT32_MAX - 1u)
        return -1;
    return (long)v;
}

static int parse_who(const char *w, khala_acl_rule_t *r, char *err, size_t errlen) {
    char q[KHALA_ERRBUF_QUOTE_CAP];
    if (strcmp(w, "any") == 0) {
        r->who = KHALA_ACL_ANY;
        return 0;
    }
    if (strncmp(w, "user:", 5) == 0) {
        long id = parse_id(w + 5);
        struct passwd *pw = id < 0 ? getpwnam(w + 5) : NULL;
        if (id < 0 && !pw)
            return khala__errbuf(err, errlen, KHALA_ECONFIG, "user '%s' is unknown",
                                 khala__errbuf_quote(w + 5, strlen(w + 5), q, sizeof(q)));
        r->who = KHALA_ACL_USER;
        r->id = id >= 0 ? (uint32_t)id : (uint32_t)pw->pw_uid;
        return 0;
    }
    if (strncmp(w, "group:", 6) == 0) {
        long id = parse_id(w + 6);
        struct group *gr = id < 0 ? getgrnam(w + 6) : NULL;
        if (id < 0 && !gr)
            return khala__errbuf(err, errlen, KHALA_ECONFIG, "group '%s' is unknown",
                                 khala__errbuf_quote(w + 6, strlen(w + 6), q, sizeof(q)));
        r->who = KHALA_ACL_GROUP;
        r->id = id >= 0 ? (uint32_t)id : (uint32_t)gr->gr_gid;
        return 0;
    }
    return khala__errbuf(err, errlen, KHALA_ECONFIG,
                         "'%s' names no one (user:NAME|UID, group:NAME|GID or any)",
                         khala__errbuf_quote(w, strlen(w), q, sizeof(q)));
}

static int parse_rights(char *list, unsigned *out, char *err, size_t errlen) {
    char q[KHALA_ERRBUF_QUOTE_CAP];
    unsigned bits = 0;
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < NRIGHT_NAMES && strcmp(RIGHT_NAMES[i].name, t) != 0)
            i++;
        if (i == NRIGHT_NAMES)
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "'%s' is not a right (read, write, invalidate, admin, all, none)",
                                 khala__errbuf_quote(t, strlen(t), q, sizeof(q)));
        bits |= RIGHT_NAMES[i].bits;
    }
    *out = bits;
    return 0;
}

static int parse_scope(const char *s, khala_acl_rule_t *r, char *err, size_t errlen) {
    char q[KHALA_ERRBUF_QUOTE_CAP];
    if (strncmp(s, "prefix:", 7) == 0) {
        size_t n = strlen(s + 7);
        if (n == 0 || n > KHALA_KEY_MAX)
            return khala__errbuf(err, errlen, KHALA_ECONFIG,
                                 "prefix: must be followed by 1 to %d bytes", KHALA_KEY_MAX);
        r->scope = KHALA_ACL_PREFIX;
        r->prefix_len = n;
        memcpy(r->prefix, s + 7, n + 1);
        return 0;
    }
    if (strncmp(s, "type:", 5) == 0) {
        khala_type_t t;
        if (khala__proto_type_parse(s + 5, strlen(s + 5), &t) != 0)
            return khala__errbuf(err, errlen, KHALA_ECONFIG, "'%s' is not a data type",
                                 khala__errbuf_quote(s + 5, strlen(s + 5), q, sizeof(q)));
        r->scope = KHALA_ACL_TYPE;
        r->type = (int)t;
        return 0;
    }
    return khala__errbuf(err, errlen, KHALA_ECONFIG,
                         "'%s' is not a scope (prefix:BYTES or type:NAME)",
                         khala__errbuf_quote(s, strlen(s), q, sizeof(q)));
}

int khala__acl_rule_parse(const char *text, khala_acl_rule_t *out, char *err, size_t errlen) {
    char buf[512], *words[4];
    size_t n = 0;
    KHALA_ASSERT(text && out);
    if (strlen(text) >= sizeof(buf))
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "rule is longer than %zu bytes",
                             sizeof(buf) - 1);
    memcpy(buf, text, strlen(text) + 1);
    for (char *save = NULL, *w = strtok_r(buf, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
        if (n == 4)
            break;
        words[n++] = w;
    }
    if (n < 2 || n > 3)
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "a rule is WHO RIGHTS [SCOPE], e.g. \"group:analysts read "
                             "prefix:reports/\"");
    khala_acl_rule_t r;
    memset(&r, 0, sizeof(r));
    r.type = -1;
    int rc;
    if ((rc = parse_who(words[0], &r, err, errlen)) != 0 ||
        (rc = parse_rights(words[1], &r.rights, err, errlen)) != 0 ||
        (n == 3 && (rc = parse_scope(words[2], &r, err, errlen)) != 0))
        return rc;
    if (r.scope != KHALA_ACL_EVERY_KEY && (r.rights & KHALA_RIGHT_ADMIN))
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "admin cannot be scoped: admin operations act on the whole cache");
    *out = r;
    return 0;
}

int khala__acl_init(khala_acl_t *acl, const char *rules, uid_t owner, long socket_gid, char *err,
                    size_t errlen) {
    memset(acl, 0, sizeof(*acl));
    acl->owner = owner;
    acl->socket_gid = socket_gid;
    for (const char *p = rules; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[512];
        if (len >= sizeof(line))
            return khala__errbuf(err, errlen, KHALA_ECONFIG, "rule %zu is too long",
                                 acl->nrules + 1);
        memcpy(line, p, len);
        line[len] = '\0';
        p = nl ? nl + 1 : p + len;
        if (!len)
            continue;
        if (acl->nrules == KHALA_ACL_RULES_MAX)
            return khala__errbuf(err, errlen, KHALA_ECONFIG, "more than %d rules",
                                 KHALA_ACL_RULES_MAX);
        char why[256];
        if (khala__acl_rule_parse(line, &acl->rules[acl->nrules], why, sizeof(why)) != 0)
            return khala__errbuf(err, errlen, KHALA_ECONFIG, "rule '%s': %s", line, why);
        acl->nrules++;
    }
    return 0;
}

static int in_group(const khala_acl_peer_t *p, gid_t gid) {
    if (p->gid == gid)
        return 1;
    return p->in_group ? p->in_group(p->arg, gid) : 0;
}

static int names(const khala_acl_rule_t *r, const khala_acl_peer_t *p) {
    switch (r->who) {
        case KHALA_ACL_USER:
            return p->uid == (uid_t)r->id;
        case KHALA_ACL_GROUP:
            return in_group(p, (gid_t)r->id);
        case KHALA_ACL_ANY:
            return 1;
    }
    return 0;
}

static int covers(const khala_acl_rule_t *r, const void *key, size_t klen, int type) {
    switch (r->scope) {
        case KHALA_ACL_EVERY_KEY:
            return 1;
        case KHALA_ACL_PREFIX:
            return key && klen >= r->prefix_len && memcmp(key, r->prefix, r->prefix_len) == 0;
        case KHALA_ACL_TYPE:
            return key && type >= 0 && type == r->type;
    }
    return 0;
}

unsigned khala__acl_rights(const khala_acl_t *acl, const khala_acl_peer_t *p, const void *key,
                           size_t klen, int type) {
    KHALA_ASSERT(acl && p && acl->nrules <= KHALA_ACL_RULES_MAX);
    KHALA_ASSERT(key || type < 0);
    /* Step 1. */
    if (p->uid == 0 || p->uid == acl->owner)
        return KHALA_RIGHT_ALL;
    /* Step 2. */
    unsigned rights = 0;
    int named = 0;
    for (size_t i = 0; i < acl->nrules; i++) {
        const khala_acl_rule_t *r = &acl->rules[i];
        if (!names(r, p))
            continue;
        named = 1;
        if (covers(r, key, klen, type))
            rights |= r->rights;
    }
    if (named)
        return rights;
    /* Step 3. */
    if (acl->socket_gid >= 0 && in_group(p, (gid_t)acl->socket_gid))
        return KHALA_RIGHT_READ | KHALA_RIGHT_WRITE | KHALA_RIGHT_INVALIDATE;
    return KHALA_RIGHT_READ;
}

int khala__acl_log_allow(khala_acl_t *acl, int64_t now_ms, uint64_t *skipped) {
    if (now_ms - acl->log_window_ms >= KHALA_ACL_LOG_WINDOW_MS || now_ms < acl->log_window_ms) {
        acl->log_window_ms = now_ms;
        acl->log_lines = 0;
    }
    if (acl->log_lines >= KHALA_ACL_LOG_BURST) {
        acl->log_skipped++;
        *skipped = 0;
        return 0;
    }
    acl->log_lines++;
    *skipped = acl->log_skipped;
    acl->log_skipped = 0;
    return 1;
}
