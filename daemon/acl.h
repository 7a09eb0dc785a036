/*
 * Access control: which rights a peer of khalad's socket holds, for which keys (issue 10,
 * "Access control"; docs/security.md explains it for operators).
 *
 * A peer is who the kernel says connected (SO_PEERCRED: uid, primary gid; SO_PEERGROUPS: its
 * supplementary groups), so it cannot be forged. Rights are four bits: read, write, invalidate,
 * admin. Where they come from:
 *
 *   1. root and khalad's own user hold every right, always (the operator cannot lock itself
 *      out, and these can read the segments and the state directory anyway).
 *   2. A peer that at least one [access] rule names (by its uid, one of its groups, or `any`)
 *      holds exactly the rights the matching rules grant, for the keys their scopes cover: the
 *      union over the rules that name it and cover the key.
 *   3. A peer no rule names holds the defaults: members of the socket's group read, write and
 *      invalidate; anyone else (who can only connect if the socket's mode lets them) reads.
 *
 * A rule is one line, `WHO RIGHTS [SCOPE]`:
 *
 *     user:batch read,write prefix:reports/
 *     group:analysts read type:search_result
 *     any read
 *
 * WHO is user:NAME|UID, group:NAME|GID or any. RIGHTS is a comma-separated list of read,
 * write, invalidate, admin, or all, or none. SCOPE is prefix:BYTES (keys starting with BYTES) or
 * type:NAME (items of that data type; a key whose type khalad cannot see, such as one held
 * only below L1, is not covered), and without it the rule covers every key. admin is never
 * scoped: admin operations act on the whole cache.
 *
 * Start at khala__acl_init() and khala__acl_rights(). Single-threaded (khalad's loop).
 */
#ifndef KHALA_DAEMON_ACL_H
#define KHALA_DAEMON_ACL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "khala/cache.h"

/** The rights, as bits. */
enum {
    KHALA_RIGHT_READ = 1u << 0,       /* get, inspect, and seeing a key in keys */
    KHALA_RIGHT_WRITE = 1u << 1,      /* put, fill, touch, del, leading a load */
    KHALA_RIGHT_INVALIDATE = 1u << 2, /* invalidate one key */
    KHALA_RIGHT_ADMIN = 1u << 3,      /* flush, invalidate by prefix or type, config, warm */
    KHALA_RIGHT_ALL = 0xfu,
};

/** Rules one [access] section may hold. */
#define KHALA_ACL_RULES_MAX 64
/** Refusals logged per window; past it they are only counted, and the next line says how many
 * were left out (a peer that retries in a loop must not flood the log). */
#define KHALA_ACL_LOG_BURST 10u
#define KHALA_ACL_LOG_WINDOW_MS 10000

/** Whom a rule names. */
typedef enum khala_acl_who {
    KHALA_ACL_USER = 0,
    KHALA_ACL_GROUP = 1,
    KHALA_ACL_ANY = 2,
} khala_acl_who_t;

/** Which keys a rule covers. */
typedef enum khala_acl_scope {
    KHALA_ACL_EVERY_KEY = 0,
    KHALA_ACL_PREFIX = 1,
    KHALA_ACL_TYPE = 2,
} khala_acl_scope_t;

/** One parsed rule. */
typedef struct khala_acl_rule {
    khala_acl_who_t who;
    uint32_t id;     /* uid or gid; unused for ANY */
    unsigned rights; /* KHALA_RIGHT_* bits */
    khala_acl_scope_t scope;
    int type;                       /* KHALA_ACL_TYPE: the type id */
    size_t prefix_len;              /* KHALA_ACL_PREFIX: 1..KHALA_KEY_MAX bytes */
    char prefix[KHALA_KEY_MAX + 1]; /* NUL-terminated */
} khala_acl_rule_t;

/** The rules khalad runs with, and the refusal log's limiter. */
typedef struct khala_acl {
    /* immutable after khala__acl_init */
    khala_acl_rule_t rules[KHALA_ACL_RULES_MAX];
    size_t nrules;
    uid_t owner;     /* khalad's uid: every right */
    long socket_gid; /* the socket's group (defaults), -1 when none is configured */
    /* the log limiter (khala__acl_log_allow); loop thread only */
    int64_t log_window_ms; /* start of the current window */
    uint32_t log_lines;    /* lines logged in it */
    uint64_t log_skipped;  /* refusals not logged since the last line */
} khala_acl_t;

/** A peer as the rules see it. in_group(arg, gid) says whether it is in gid by a
 * supplementary group (daemon/server.h, khala__conn_peer_in_group); NULL: the primary alone. */
typedef struct khala_acl_peer {
    uid_t uid;
    gid_t gid;
    int (*in_group)(void *arg, gid_t gid);
    void *arg;
} khala_acl_peer_t;

/**
 * @brief Parse one rule, `WHO RIGHTS [SCOPE]` (see above). User and group names are looked up
 *        now (getpwnam, getgrnam).
 * @param[in] text the rule.
 * @param[out] out the rule; written only on success.
 * @param[out] err what is wrong ("'wrte' is not a right (read, write, invalidate, admin, all,
 *             none)"); may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; KHALA_ECONFIG for a rule that does not parse, names an unknown user, group or
 *         type, or scopes admin.
 */
int khala__acl_rule_parse(const char *text, khala_acl_rule_t *out, char *err, size_t errlen);

/**
 * @brief Set up @p acl from @p rules, one rule a line ('\n'-separated, as [access] rule lines
 *        are kept in khala_config_t).
 * @param[out] acl the rules; every field is written.
 * @param[in] rules the rules' text; "" for none.
 * @param[in] owner khalad's uid.
 * @param[in] socket_gid the socket's group, or -1.
 * @param[out] err the first bad rule and what is wrong; may be NULL.
 * @param[in] errlen size of @p err.
 * @return 0; KHALA_ECONFIG as khala__acl_rule_parse, or more than KHALA_ACL_RULES_MAX rules.
 */
int khala__acl_init(khala_acl_t *acl, const char *rules, uid_t owner, long socket_gid, char *err,
                    size_t errlen);

/**
 * @brief The rights @p p holds on a key of type @p type.
 * @param[in] acl the rules.
 * @param[in] p the peer.
 * @param[in] key, klen the key; NULL for rights over the whole cache (only unscoped rules count).
 * @param[in] type the key's data type id, or -1 when unknown (type-scoped rules do not count).
 * @return KHALA_RIGHT_* bits.
 */
unsigned khala__acl_rights(const khala_acl_t *acl, const khala_acl_peer_t *p, const void *key,
                           size_t klen, int type);

/**
 * @brief The name of one right ("read", "write", "invalidate", "admin").
 * @param[in] right one KHALA_RIGHT_* bit.
 * @return a static string; "?" for anything else.
 */
const char *khala__acl_right_name(unsigned right);

/**
 * @brief The refusal log's limiter: whether to log this refusal now.
 * @param[in,out] acl its limiter.
 * @param[in] now_ms a monotonic time.
 * @param[out] skipped refusals not logged since the last logged one (0 when none).
 * @return 1 to log (at most KHALA_ACL_LOG_BURST per KHALA_ACL_LOG_WINDOW_MS), 0 to count only.
 */
int khala__acl_log_allow(khala_acl_t *acl, int64_t now_ms, uint64_t *skipped);

#endif /* KHALA_DAEMON_ACL_H */
