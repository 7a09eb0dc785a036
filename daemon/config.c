/*
 * khalad's configuration: INI text in, a checked khala_config_t out.
 *
 * HOW IT WORKS
 *
 * The format is INI as inih (Debian's libinih) reads it: `[section]` lines, `key = value` lines,
 * comments on lines of their own starting with '#' or ';', and inline comments starting with
 * " ;". inih does the lexing; everything else is here, driven by one table of keys (KEYS_*,
 * SECTIONS below). A key's entry gives its kind (number, octal mode, boolean, enum, levels,
 * string), where it lives in khala_config_t and its range or validator. Parsing, the
 * command-line overrides and the dump all walk the same table, so a key cannot be readable but
 * not dumpable, or range-checked in the file but not on the command line.
 *
 * A load runs in five steps:
 *
 *   1. Copy the caller's configuration into a scratch one; every write goes to the scratch.
 *   2. Feed inih the text one line at a time through our own reader (line_reader). It counts
 *      lines, since the Debian build of inih does not pass line numbers to the handler; it
 *      refuses lines longer than KHALA_CONFIG_LINE_MAX (inih would silently cut them in two);
 *      it strips leading blanks, which turns off inih's indented-continuation lines (a
 *      continuation would otherwise look like a duplicate key); and it checks `[section]`
 *      names itself, because inih reports a section only when a key follows it.
 *   3. For each key, the handler finds the key in the table, refuses a second setting of it
 *      (the line of the first is remembered), and parses the value into the scratch.
 *   4. The first error stops the reader, so the message is about the first bad line. inih's
 *      own syntax errors (a line that is neither a section nor key = value) come back as its
 *      return value and are reported if they come first.
 *   5. khala__config_check() checks the values together, the keys that have no effect yet
 *      among them ("Keys that have no effect yet", below); on success the scratch is copied
 *      back. So on any failure the caller's configuration is untouched.
 *
 * khala__config_set() does step 3 for one override and no more, and khala__config_load() runs
 * steps 1 to 4 on the file, step 3 for every override, then step 5 once: the order of the
 * overrides never changes the result. The seed's section names ([l1_cache]...) map to ours in
 * find_section(), its "coherence = immediate" is a second name of pubsub in COHERENCE_NAMES;
 * the names of types, levels and write modes come from their lists (KHALA_TYPE_LIST,
 * KHALA_LEVEL_LIST, KHALA_MODE_LIST), so this file holds no copy of them.
 *
 * Invariants:
 *   - Every string field is NUL-padded to its full size (set_str zeroes the buffer), so two
 *     equal configurations are equal byte for byte, and a dump reloads to the same bytes.
 *   - Every value the table accepts can be written on one line and read back: strings refuse
 *     control characters, surrounding blanks and a ';' after a blank (which inih would take
 *     for a comment), and their buffers are far shorter than KHALA_CONFIG_LINE_MAX.
 *
 * Rejected alternatives: TOML or YAML (no parser in Debian 12 that is both small and
 * maintained in C; INI covers flat sections, which is all this needs); inih's INI_HANDLER_LINENO
 * (a compile-time option of the library, off in Debian's build); setting inih's process-wide
 * ini_allow_multiline (a global; the reader does the same locally).
 *
 * Historical note: until issue 9 each override was checked with the whole configuration as it
 * stood, so `--set l2.backend=redis` had to follow `--set l2.redis_url=...`; and keys without
 * effect were accepted at any value (stale_serve_seconds = 60 was even the default).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acl.h"
#include "channel.h"
#include "errbuf.h"
#include "khala/error.h"
#include "redact.h"

#define MIB (1024u * 1024u)

/* Per-type defaults, by id. 0 TTLs follow the level; DEFAULT write mode follows [policies].
 * The reasoning is in docs/operating.md ("[type.<name>]"). Quotas are 0 (none) while they have
 * no effect ("Keys that have no effect yet"); the shares planned for them are search_result 15,
 * embedding 40, agent_response 10 and search_index 15 (80% in all). No type is encrypted by
 * default: encryption needs a key file ([crypto] key_file). */
#define L123 (KHALA_CONFIG_LEVEL_L1 | KHALA_CONFIG_LEVEL_L2 | KHALA_CONFIG_LEVEL_L3)
#define L12 (KHALA_CONFIG_LEVEL_L1 | KHALA_CONFIG_LEVEL_L2)
#define L23 (KHALA_CONFIG_LEVEL_L2 | KHALA_CONFIG_LEVEL_L3)
static const khala_config_type_t TYPE_DEFAULTS[KHALA_CONFIG_NTYPES] = {
    /* memory_entity: the common case, everything from the levels. */
    {L123, 0, 0, 0, KHALA_CONFIG_WRITE_DEFAULT, 0, false},
    /* search_result: goes stale as memories change; short-lived, not worth L3. */
    {L12, 60, 600, 0, KHALA_CONFIG_WRITE_DEFAULT, 0, false},
    /* embedding: large, costly to compute, never wrong for the same input. */
    {L123, 3600, 86400, 604800, KHALA_CONFIG_WRITE_BEHIND, 0, false},
    /* entity_relationship: the levels' defaults. */
    {L123, 0, 0, 0, KHALA_CONFIG_WRITE_DEFAULT, 0, false},
    /* agent_response: conversational, short-lived. */
    {L12, 120, 1800, 0, KHALA_CONFIG_WRITE_DEFAULT, 0, false},
    /* verification: a verdict holds for a while. */
    {L123, 600, 0, 0, KHALA_CONFIG_WRITE_DEFAULT, 0, false},
    /* search_index: large and rebuildable. */
    {L123, 600, 7200, 0, KHALA_CONFIG_WRITE_BEHIND, 0, false},
    /* consolidation: periodic summaries, read rarely: kept off L1. */
    {L23, 0, 0, 604800, KHALA_CONFIG_WRITE_DEFAULT, 0, false},
};

/* ------------------------------------------------------------------------------------------ */
/* The key table                                                                              */
/* ------------------------------------------------------------------------------------------ */

typedef enum kind {
    K_U32,    /* decimal, min..max */
    K_AUTO,   /* K_U32, or "auto" stored as 0 */
    K_MODE,   /* octal permission bits */
    K_BOOL,   /* true/false, yes/no, on/off, 1/0 */
    K_ENUM,   /* one of names[] */
    K_LEVELS, /* "l1,l2,l3", any non-empty subset */
    K_STR,    /* a string, checked by check() */
    K_LIST,   /* K_STR lines that may repeat: each appends ('\n'-separated); empty clears */
} kind_t;

typedef struct enum_name {
    const char *name;
    int value;
} enum_name_t;

/* A string validator: 0 if v is acceptable, else -1 with what is wrong in msg. */
typedef int (*str_check_fn)(const char *v, char *msg, size_t len);

typedef struct key_desc {
    const char *name;
    kind_t kind;
    size_t off;               /* in khala_config_t, or in khala_config_type_t for type keys */
    size_t size;              /* K_STR: buffer size */
    uint32_t min, max;        /* K_U32, K_AUTO, K_MODE */
    const enum_name_t *names; /* K_ENUM: NULL-terminated */
    str_check_fn check;       /* K_STR, may be NULL */
} key_desc_t;

static int check_name(const char *v, char *msg, size_t len);
static int check_socket(const char *v, char *msg, size_t len);
static int check_path(const char *v, char *msg, size_t len);
static int check_group(const char *v, char *msg, size_t len);
static int check_redis_url(const char *v, char *msg, size_t len);
static int check_http_url(const char *v, char *msg, size_t len);
static int check_ident(const char *v, char *msg, size_t len);
static int check_namespace(const char *v, char *msg, size_t len);
static int check_key_file(const char *v, char *msg, size_t len);
static int check_rule(const char *v, char *msg, size_t len);
static int check_audit_path(const char *v, char *msg, size_t len);
static int check_rate(const char *v, char *msg, size_t len);

static const enum_name_t EVICTION_NAMES[] = {
    {"s3fifo", KHALA_CONFIG_EVICT_S3FIFO}, {"lru", KHALA_CONFIG_EVICT_LRU}, {NULL, 0}};
static const enum_name_t L2_NAMES[] = {
    {"disk", KHALA_CONFIG_L2_DISK}, {"redis", KHALA_CONFIG_L2_REDIS}, {NULL, 0}};
static const enum_name_t L3_NAMES[] = {
    {"disk", KHALA_CONFIG_L3_DISK}, {"surrealdb", KHALA_CONFIG_L3_SURREALDB}, {NULL, 0}};
/* The write modes' config names, from KHALA_MODE_LIST. [policies] write_mode takes every mode
 * but DEFAULT, which comes first: its table starts one entry later. */
#define WRITE_NAME_(NAME, v, wire, conf) {conf, KHALA_CONFIG_WRITE_##NAME},
static const enum_name_t TYPE_WRITE_NAMES[] = {KHALA_MODE_LIST(WRITE_NAME_){NULL, 0}};
#undef WRITE_NAME_
#define POLICY_WRITE_NAMES (TYPE_WRITE_NAMES + 1)
_Static_assert(KHALA_CONFIG_WRITE_DEFAULT == 0, "DEFAULT is the first write mode");
/* "immediate" is the seed's name: every change reaches every cache at once. On one host that
 * holds whatever the value (all workers read one L1); across hosts it is what pubsub does. The
 * dump writes the first name of a value, so "pubsub". */
static const enum_name_t COHERENCE_NAMES[] = {{"none", KHALA_CONFIG_COHERENCE_NONE},
                                              {"pubsub", KHALA_CONFIG_COHERENCE_PUBSUB},
                                              {"immediate", KHALA_CONFIG_COHERENCE_PUBSUB},
                                              {NULL, 0}};

_Static_assert(sizeof(khala_config_eviction_t) == sizeof(int), "enum fields are written as int");
_Static_assert(sizeof(khala_config_write_mode_t) == sizeof(int), "enum fields are written as int");

#define OFF(f) offsetof(khala_config_t, f)
#define U32(n, f, lo, hi)                                                                          \
    { n, K_U32, OFF(f), 0, lo, hi, NULL, NULL }
#define BOOL(n, f)                                                                                 \
    { n, K_BOOL, OFF(f), 0, 0, 0, NULL, NULL }
#define ENUM(n, f, names)                                                                          \
    { n, K_ENUM, OFF(f), 0, 0, 0, names, NULL }
#define STR(n, f, chk)                                                                             \
    { n, K_STR, OFF(f), sizeof(((khala_config_t *)0)->f), 0, 0, NULL, chk }
#define TTL_MAX KHALA_CONFIG_TTL_MAX

static const key_desc_t KEYS_CACHE[] = {
    STR("name", cache.name, check_name),
    STR("socket", cache.socket, check_socket),
    {"socket_mode", K_MODE, OFF(cache.socket_mode), 0, 0, 0777, NULL, NULL},
    STR("socket_group", cache.socket_group, check_group),
};
static const key_desc_t KEYS_L1[] = {
    U32("max_memory_mb", l1.max_memory_mb, 1, KHALA_CONFIG_L1_MEMORY_MB_MAX),
    {"max_items", K_AUTO, OFF(l1.max_items), 0, KHALA_CONFIG_L1_ITEMS_MIN,
     KHALA_CONFIG_L1_ITEMS_MAX, NULL, NULL},
    U32("max_value_bytes", l1.max_value_bytes, 1, KHALA_CONFIG_L1_VALUE_MAX),
    U32("ttl_seconds", l1.ttl_seconds, 1, TTL_MAX),
    ENUM("eviction_policy", l1.eviction_policy, EVICTION_NAMES),
    U32("max_readers", l1.max_readers, 1, KHALA_CONFIG_L1_READERS_MAX),
};
static const key_desc_t KEYS_L2[] = {
    ENUM("backend", l2.backend, L2_NAMES),
    U32("ttl_seconds", l2.ttl_seconds, 1, TTL_MAX),
    U32("max_items", l2.max_items, 1, INT32_MAX),
    STR("redis_url", l2.redis_url, check_redis_url),
    BOOL("persistent", l2.persistent),
    STR("path", l2.path, check_path),
    U32("max_memory_mb", l2.max_memory_mb, 1, 1024u * 1024u),
    STR("namespace", l2.namespace_, check_namespace),
    U32("timeout_ms", l2.timeout_ms, 1, 60000),
    U32("pool_size", l2.pool_size, 1, KHALA_CONFIG_L2_POOL_MAX),
    U32("queue_max", l2.queue_max, 1, KHALA_CONFIG_L2_QUEUE_MAX),
    U32("sync_every_ms", l2.sync_every_ms, 0, 60000),
    BOOL("redis_owned", l2.redis_owned),
};
static const key_desc_t KEYS_L3[] = {
    ENUM("backend", l3.backend, L3_NAMES),
    STR("surrealdb_url", l3.surrealdb_url, check_http_url),
    STR("surrealdb_table", l3.surrealdb_table, check_ident),
    STR("surrealdb_namespace", l3.surrealdb_namespace, check_ident),
    STR("surrealdb_database", l3.surrealdb_database, check_ident),
    U32("ttl_seconds", l3.ttl_seconds, 1, TTL_MAX),
    U32("max_entries", l3.max_entries, 1, INT32_MAX),
    U32("cleanup_interval", l3.cleanup_interval, 1, 86400),
    STR("path", l3.path, check_path),
    U32("max_memory_mb", l3.max_memory_mb, 1, 16u * 1024u * 1024u),
    BOOL("persistent", l3.persistent),
    U32("timeout_ms", l3.timeout_ms, 1, 60000),
    U32("pool_size", l3.pool_size, 1, KHALA_CONFIG_L2_POOL_MAX),
    U32("queue_max", l3.queue_max, 1, KHALA_CONFIG_L2_QUEUE_MAX),
    U32("sync_every_ms", l3.sync_every_ms, 0, 60000),
    U32("cleanup_batch", l3.cleanup_batch, 1, 1000000),
    U32("archive_retention_seconds", l3.archive_retention_seconds, 0, TTL_MAX),
    STR("similarity_threshold", l3.similarity_threshold, check_rate),
    U32("embedding_dim", l3.embedding_dim, 0, 65536),
};
static const key_desc_t KEYS_POLICIES[] = {
    ENUM("write_mode", policies.write_mode, POLICY_WRITE_NAMES),
    ENUM("coherence", policies.coherence, COHERENCE_NAMES),
    BOOL("preload_common", policies.preload_common),
    BOOL("predictive_cache", policies.predictive_cache),
    U32("stale_serve_seconds", policies.stale_serve_seconds, 0, 86400),
    U32("negative_ttl_seconds", policies.negative_ttl_seconds, 0, 86400),
    U32("ttl_jitter_pct", policies.ttl_jitter_pct, 0, 50),
    U32("single_flight_timeout_ms", policies.single_flight_timeout_ms, 1, 600000),
    BOOL("preload_relationships", policies.preload_relationships),
};
/* [server]: khalad's connection limits (docs/operating.md, "Limits"). */
static const key_desc_t KEYS_SERVER[] = {
    U32("max_connections", server.max_connections, 1, KHALA_CONFIG_SERVER_CONNS_MAX),
    U32("max_output_bytes", server.max_output_bytes, KHALA_CONFIG_SERVER_OUTPUT_MIN, UINT32_MAX),
    U32("max_buffer_bytes", server.max_buffer_bytes, KHALA_CONFIG_SERVER_BUFFER_MIN, UINT32_MAX),
    U32("frame_timeout_ms", server.frame_timeout_ms, 100, 3600000),
};
static const key_desc_t KEYS_ACCESS[] = {
    {"rule", K_LIST, OFF(access.rule), sizeof(((khala_config_t *)0)->access.rule), 0, 0, NULL,
     check_rule},
};
static const key_desc_t KEYS_AUDIT[] = {
    STR("path", audit.path, check_audit_path),
    STR("read_sample_rate", audit.read_sample_rate, check_rate),
};
#define TOFF(f) offsetof(khala_config_type_t, f)
static const key_desc_t KEYS_TYPE[] = {
    {"levels", K_LEVELS, TOFF(levels), 0, 0, 0, NULL, NULL},
    {"l1_ttl_seconds", K_U32, TOFF(l1_ttl_seconds), 0, 0, TTL_MAX, NULL, NULL},
    {"l2_ttl_seconds", K_U32, TOFF(l2_ttl_seconds), 0, 0, TTL_MAX, NULL, NULL},
    {"l3_ttl_seconds", K_U32, TOFF(l3_ttl_seconds), 0, 0, TTL_MAX, NULL, NULL},
    {"write_mode", K_ENUM, TOFF(write_mode), 0, 0, 0, TYPE_WRITE_NAMES, NULL},
    {"quota_pct", K_U32, TOFF(quota_pct), 0, 0, 100, NULL, NULL},
    {"encrypt", K_BOOL, TOFF(encrypt), 0, 0, 0, NULL, NULL},
};
/* [crypto]: encryption at rest (daemon/crypt.h). */
static const key_desc_t KEYS_CRYPTO[] = {
    STR("key_file", crypto.key_file, check_key_file),
};

#define NKEYS(a) (sizeof(a) / sizeof((a)[0]))

/* Sections in file order. Sections from index SEC_TYPE0 on are the types, by id. */
typedef struct section {
    const char *name; /* NULL for the types: "type." + the type's name (KHALA_TYPE_LIST) */
    const key_desc_t *keys;
    size_t nkeys;
} section_t;

static const section_t SECTIONS[] = {
    {"cache", KEYS_CACHE, NKEYS(KEYS_CACHE)},
    {"l1", KEYS_L1, NKEYS(KEYS_L1)},
    {"l2", KEYS_L2, NKEYS(KEYS_L2)},
    {"l3", KEYS_L3, NKEYS(KEYS_L3)},
    {"policies", KEYS_POLICIES, NKEYS(KEYS_POLICIES)},
    {"crypto", KEYS_CRYPTO, NKEYS(KEYS_CRYPTO)},
    {"server", KEYS_SERVER, NKEYS(KEYS_SERVER)},
    {"access", KEYS_ACCESS, NKEYS(KEYS_ACCESS)},
    {"audit", KEYS_AUDIT, NKEYS(KEYS_AUDIT)},
};
enum {
    SEC_CACHE,
    SEC_L1,
    SEC_L2,
    SEC_L3,
    SEC_POLICIES,
    SEC_CRYPTO,
    SEC_SERVER,
    SEC_ACCESS,
    SEC_AUDIT
}; /* indexes into SECTIONS */
#define SEC_TYPE0 ((int)NKEYS(SECTIONS))
#define NSECTIONS (SEC_TYPE0 + KHALA_CONFIG_NTYPES)
/* The most keys any section has; key ids are sec * KEYS_PER_SEC + index. */
#define KEYS_PER_SEC 24
#define TYPE_PREFIX "type."
_Static_assert(NKEYS(KEYS_CACHE) <= KEYS_PER_SEC && NKEYS(KEYS_L1) <= KEYS_PER_SEC &&
                   NKEYS(KEYS_L2) <= KEYS_PER_SEC && NKEYS(KEYS_L3) <= KEYS_PER_SEC &&
                   NKEYS(KEYS_POLICIES) <= KEYS_PER_SEC && NKEYS(KEYS_TYPE) <= KEYS_PER_SEC &&
                   NKEYS(KEYS_SERVER) <= KEYS_PER_SEC,
               "a section has more keys than KEYS_PER_SEC");

static const section_t *section_of(int sec) {
    static const section_t type_sec = {NULL, KEYS_TYPE, NKEYS(KEYS_TYPE)};
    return sec < SEC_TYPE0 ? &SECTIONS[sec] : &type_sec;
}

/* The section's name as written in the file, into buf. */
static const char *section_name(int sec, char *buf, size_t len) {
    if (sec < SEC_TYPE0)
        return SECTIONS[sec].name;
    snprintf(buf, len, TYPE_PREFIX "%s", khala__proto_type_name((khala_type_t)(sec - SEC_TYPE0)));
    return buf;
}

/* The seed's section names (its cache_config dict), accepted as aliases of ours: the keys
 * inside them are ours too (docs/operating.md, "The seed's configuration"). A key set under
 * both names of a section is a duplicate, as the section index is the same. */
static const struct {
    const char *name;
    int sec;
} SECTION_ALIASES[] = {{"l1_cache", SEC_L1}, {"l2_cache", SEC_L2}, {"l3_cache", SEC_L3}};

/* Section index of name (n bytes), or -1. */
static int find_section(const char *name, size_t n) {
    for (int i = 0; i < SEC_TYPE0; i++)
        if (strlen(SECTIONS[i].name) == n && memcmp(SECTIONS[i].name, name, n) == 0)
            return i;
    for (size_t i = 0; i < NKEYS(SECTION_ALIASES); i++)
        if (strlen(SECTION_ALIASES[i].name) == n && memcmp(SECTION_ALIASES[i].name, name, n) == 0)
            return SECTION_ALIASES[i].sec;
    size_t plen = strlen(TYPE_PREFIX);
    khala_type_t t;
    if (n > plen && memcmp(name, TYPE_PREFIX, plen) == 0 &&
        khala__proto_type_parse(name + plen, n - plen, &t) == 0)
        return SEC_TYPE0 + (int)t;
    return -1;
}

static int find_key(int sec, const char *name) {
    const section_t *s = section_of(sec);
    for (size_t i = 0; i < s->nkeys; i++)
        if (strcmp(s->keys[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Where key k of section sec lives in cfg. */
static void *field_of(khala_config_t *cfg, int sec, const key_desc_t *k) {
    if (sec >= SEC_TYPE0)
        return (char *)&cfg->types[sec - SEC_TYPE0] + k->off;
    return (char *)cfg + k->off;
}

static const void *cfield_of(const khala_config_t *cfg, int sec, const key_desc_t *k) {
    return field_of((khala_config_t *)(uintptr_t)cfg, sec, k);
}

/* ------------------------------------------------------------------------------------------ */
/* Values                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* v quoted for a message: at most 40 bytes, non-printable bytes as '?'. */
static const char *quoted(const char *v, char *buf, size_t len) {
    size_t n = 0, i = 0;
    const size_t shown = 40;
    char clean[KHALA_CONFIG_LINE_MAX + 1];
    if (len < 4)
        return "";
    /* Redacted before it is cut: a password cut in two no longer looks like one. */
    v = khala__redact(v, clean, sizeof(clean));
    buf[n++] = '\'';
    for (; v[i] && i < shown && n + 5 < len; i++)
        buf[n++] = isprint((unsigned char)v[i]) ? v[i] : '?';
    if (v[i] && n + 5 < len) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n++] = '\'';
    buf[n] = '\0';
    return buf;
}

/* A detail message into msg (when msg and len are not 0); -1, which the callers turn into
 * KHALA_ECONFIG with a place. Through khala__errbuf, the one formatter of messages. */
#define msgf(msg, len, ...) khala__errbuf((msg), (len), -1, __VA_ARGS__)

/* Parse decimal (base 10) or octal (base 8) digits only; 0, or -1 "not a number", or -2
 * "out of range". */
static int parse_u32(const char *v, int base, uint32_t lo, uint32_t hi, uint32_t *out) {
    uint64_t x = 0;
    if (!*v)
        return -1;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p >= '0' + base)
            return -1;
        x = x * (uint64_t)base + (uint64_t)(*p - '0');
        if (x > UINT32_MAX)
            x = (uint64_t)UINT32_MAX + 1; /* keep counting digits, stay out of range */
    }
    if (x < lo || x > hi)
        return -2;
    *out = (uint32_t)x;
    return 0;
}

static int parse_bool(const char *v, bool *out) {
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < NKEYS(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* The storage levels' names, "l1, l2, l3", for messages. */
static const char *storage_level_names(char *buf, size_t len) {
    size_t n = 0;
    buf[0] = '\0';
    for (int lv = KHALA_LEVEL_L1; lv < KHALA_LEVEL_COUNT && n < len; lv++)
        if (KHALA_LEVEL_BIT(lv) & KHALA_LEVEL_STORAGE)
            n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? ", " : "",
                                  khala__proto_level_name((khala_level_t)lv));
    return buf;
}

/* A list of storage levels (KHALA_LEVEL_LIST), "l1,l2", into KHALA_LEVEL_BIT bits. */
static int parse_levels(const char *v, uint32_t *out, char *msg, size_t len) {
    char q[64], names[64];
    uint32_t bits = 0;
    const char *p = v;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *s = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        khala_level_t lv;
        uint32_t bit = 0;
        if (khala__proto_level_parse(s, (size_t)(p - s), &lv) == 0 &&
            (KHALA_LEVEL_BIT(lv) & KHALA_LEVEL_STORAGE))
            bit = KHALA_LEVEL_BIT(lv);
        if (!bit)
            return msgf(msg, len, "%s is not a list of levels (%s, comma-separated)",
                        quoted(v, q, sizeof(q)), storage_level_names(names, sizeof(names)));
        if (bits & bit)
            return msgf(msg, len, "%s names %s twice", quoted(v, q, sizeof(q)),
                        khala__proto_level_name(lv));
        bits |= bit;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        if (*p != ',')
            return msgf(msg, len, "%s is not a list of levels (%s, comma-separated)",
                        quoted(v, q, sizeof(q)), storage_level_names(names, sizeof(names)));
        p++;
    }
    *out = bits;
    return 0;
}

/* Write the levels in bits as parse_levels reads them ("l1,l2"); "" for none. */
static const char *format_levels(uint32_t bits, char *buf, size_t len) {
    size_t n = 0;
    buf[0] = '\0';
    for (int lv = KHALA_LEVEL_L1; lv < KHALA_LEVEL_COUNT && n < len; lv++)
        if (bits & KHALA_LEVEL_BIT(lv) & KHALA_LEVEL_STORAGE)
            n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? "," : "",
                                  khala__proto_level_name((khala_level_t)lv));
    return buf;
}

/* Zero the whole buffer before copying, so equal configurations are equal bytes. */
static void set_str(char *dst, size_t size, const char *v) {
    memset(dst, 0, size);
    memcpy(dst, v, strlen(v));
}

/* Parse value v of key k into field. 0, or -1 with what is wrong in msg. */
static int set_value(void *field, const key_desc_t *k, const char *v, char *msg, size_t len) {
    char q[64];
    uint32_t u = 0;
    int rc;
    switch (k->kind) {
        case K_AUTO:
            if (strcasecmp(v, "auto") == 0 || strcmp(v, "0") == 0) {
                memcpy(field, &(uint32_t){0}, sizeof(uint32_t));
                return 0;
            }
            /* fall through */
        case K_U32:
        case K_MODE:
            rc = parse_u32(v, k->kind == K_MODE ? 8 : 10, k->min, k->max, &u);
            if (rc == -1)
                return msgf(msg, len, "%s is not %s", quoted(v, q, sizeof(q)),
                            k->kind == K_MODE ? "an octal mode" : "a number");
            if (rc == -2 && k->kind == K_MODE)
                return msgf(msg, len, "%s is out of range (0 to 0777)", quoted(v, q, sizeof(q)));
            if (rc == -2)
                return msgf(msg, len, "%s is out of range (%s%u to %u)", quoted(v, q, sizeof(q)),
                            k->kind == K_AUTO ? "auto, or " : "", k->min, k->max);
            memcpy(field, &u, sizeof(u));
            return 0;
        case K_BOOL:
            if (parse_bool(v, (bool *)field) != 0)
                return msgf(msg, len, "%s is not a boolean (true/false, yes/no, on/off, 1/0)",
                            quoted(v, q, sizeof(q)));
            return 0;
        case K_ENUM:
            for (const enum_name_t *e = k->names; e->name; e++)
                if (strcasecmp(v, e->name) == 0) {
                    memcpy(field, &e->value, sizeof(int));
                    return 0;
                }
            {
                char list[128];
                size_t n = 0;
                list[0] = '\0';
                for (const enum_name_t *e = k->names; e->name && n < sizeof(list); e++)
                    n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s",
                                          e == k->names ? "" : ", ", e->name);
                return msgf(msg, len, "%s is not one of %s", quoted(v, q, sizeof(q)), list);
            }
        case K_LEVELS:
            if (parse_levels(v, &u, msg, len) != 0)
                return -1;
            memcpy(field, &u, sizeof(u));
            return 0;
        case K_STR:
        case K_LIST: {
            size_t n = strlen(v);
            if (k->kind == K_LIST && n == 0) {
                memset(field, 0, k->size); /* an empty line clears the list */
                return 0;
            }
            if (n >= k->size)
                return msgf(msg, len, "%s is %zu bytes, longer than %zu", quoted(v, q, sizeof(q)),
                            n, k->size - 1);
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
                    return msgf(msg, len, "%s holds a control character", quoted(v, q, sizeof(q)));
            if (n && (isspace((unsigned char)v[0]) || isspace((unsigned char)v[n - 1])))
                return msgf(msg, len, "%s starts or ends with a blank", quoted(v, q, sizeof(q)));
            if (strstr(v, " ;"))
                return msgf(msg, len, "%s holds \" ;\", which starts a comment",
                            quoted(v, q, sizeof(q)));
            if (n && k->check && k->check(v, msg, len) != 0)
                return -1;
            if (k->kind == K_LIST) {
                size_t have = strlen(field);
                if (have + (have ? 1 : 0) + n >= k->size)
                    return msgf(msg, len, "the lines of this key hold more than %zu bytes",
                                k->size - 1);
                if (have)
                    ((char *)field)[have++] = '\n';
                memcpy((char *)field + have, v, n);
                return 0;
            }
            set_str(field, k->size, v);
            return 0;
        }
    }
    return msgf(msg, len, "internal error: unknown kind");
}

/* ------------------------------------------------------------------------------------------ */
/* String validators (called for non-empty values only)                                       */
/* ------------------------------------------------------------------------------------------ */

static int check_name(const char *v, char *msg, size_t len) {
    char q[64];
    return khala__seg_name_check(v, NULL, 0) == 0
               ? 0
               : msgf(msg, len, "%s is not a cache name (1 to %d bytes of [A-Za-z0-9_.-])",
                      quoted(v, q, sizeof(q)), KHALA_NAME_MAX);
}

static int check_namespace(const char *v, char *msg, size_t len) {
    return v[0] == '\0' ? 0 : check_name(v, msg, len);
}

static int check_path(const char *v, char *msg, size_t len) {
    char q[64];
    return v[0] == '/' ? 0 : msgf(msg, len, "%s is not an absolute path", quoted(v, q, sizeof(q)));
}

/* [crypto] key_file: empty (none) or an absolute path; the file itself is checked by
 * khala__crypt_load() at --check and at start. */
static int check_key_file(const char *v, char *msg, size_t len) {
    return v[0] ? check_path(v, msg, len) : 0;
}

static int check_socket(const char *v, char *msg, size_t len) {
    char q[64];
    if (check_path(v, msg, len) != 0)
        return -1;
    if (strlen(v) > KHALA_CONFIG_SOCKET_PATH_MAX)
        return msgf(msg, len, "%s is longer than a socket path may be (%d bytes)",
                    quoted(v, q, sizeof(q)), KHALA_CONFIG_SOCKET_PATH_MAX);
    return 0;
}

static int check_group(const char *v, char *msg, size_t len) {
    char q[64];
    for (const char *p = v; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '.') ||
            (p == v && *p == '-'))
            return msgf(msg, len, "%s is not a group name or number", quoted(v, q, sizeof(q)));
    return 0;
}

static int check_ident(const char *v, char *msg, size_t len) {
    char q[64];
    for (const char *p = v; *p; p++)
        if (!(isalpha((unsigned char)*p) || *p == '_' || (p > v && isdigit((unsigned char)*p))))
            return msgf(msg, len, "%s is not an identifier ([A-Za-z_][A-Za-z0-9_]*)",
                        quoted(v, q, sizeof(q)));
    return 0;
}

static int check_redis_url(const char *v, char *msg, size_t len) {
    khala_config_redis_url_t u;
    if (khala__config_redis_url_parse(v, &u, msg, len) != 0)
        return -1;
    /* Refused here, not only when khalad connects, so that `khalad --check` says it. */
    if (u.tls)
        return msgf(msg, len,
                    "rediss:// (TLS) is not supported by this build; use redis:// or "
                    "unix://");
    return 0;
}

static int check_rule(const char *v, char *msg, size_t len) {
    khala_acl_rule_t r;
    return khala__acl_rule_parse(v, &r, msg, len) == 0 ? 0 : -1;
}

static int check_audit_path(const char *v, char *msg, size_t len) {
    return strcmp(v, "-") == 0 ? 0 : check_path(v, msg, len);
}

static int check_rate(const char *v, char *msg, size_t len) {
    char q[64], *end;
    errno = 0;
    double r = strtod(v, &end);
    if (*end || errno || !(r >= 0.0 && r <= 1.0) || !isdigit((unsigned char)v[0]))
        return msgf(msg, len, "%s is not a rate from 0 to 1 (e.g. 0.01)", quoted(v, q, sizeof(q)));
    return 0;
}

static int host_char(char c) {
    return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

/* host[:port] at *p up to the first '/', '?' or end; host may be [ipv6]. Writes host into
 * host (size len) and the port (0 when absent); advances *p. */
static int parse_hostport(const char **p, char *host, size_t hlen, uint32_t *port, char *msg,
                          size_t len) {
    const char *s = *p, *e;
    if (*s == '[') {
        e = strchr(s, ']');
        if (!e || e == s + 1)
            return msgf(msg, len, "has a bad [IPv6] host");
        for (const char *c = s + 1; c < e; c++)
            if (!isxdigit((unsigned char)*c) && *c != ':' && *c != '.')
                return msgf(msg, len, "has a bad [IPv6] host");
        e++;
    } else {
        e = s;
        while (host_char(*e))
            e++;
    }
    if (e == s)
        return msgf(msg, len, "has no host");
    if ((size_t)(e - s) >= hlen)
        return msgf(msg, len, "has a host longer than %zu bytes", hlen - 1);
    memcpy(host, s, (size_t)(e - s));
    host[e - s] = '\0';
    *port = 0;
    if (*e == ':') {
        char digits[8];
        const char *d = ++e;
        while (isdigit((unsigned char)*e))
            e++;
        size_t n = (size_t)(e - d);
        if (n == 0 || n >= sizeof(digits))
            return msgf(msg, len, "has a bad port");
        memcpy(digits, d, n);
        digits[n] = '\0';
        if (parse_u32(digits, 10, 1, 65535, port) != 0)
            return msgf(msg, len, "has port %s, allowed 1 to 65535", digits);
    }
    if (*e && *e != '/' && *e != '?')
        return msgf(msg, len, "has a bad character 0x%02x after the host", (unsigned char)*e);
    *p = e;
    return 0;
}

static int parse_db(const char *s, uint32_t *db, char *msg, size_t len) {
    if (parse_u32(s, 10, 0, KHALA_CONFIG_REDIS_DB_MAX, db) != 0)
        return msgf(msg, len, "has a bad database number (0 to %u)", KHALA_CONFIG_REDIS_DB_MAX);
    return 0;
}

int khala__config_redis_url_parse(const char *url, khala_config_redis_url_t *out, char *err,
                                  size_t errlen) {
    khala_config_redis_url_t u;
    memset(&u, 0, sizeof(u));
    const char *p;
    if (strlen(url) >= KHALA_CONFIG_URL_MAX)
        goto bad_len;
    if (strncmp(url, "unix://", 7) == 0) {
        p = url + 7;
        if (*p != '/')
            goto bad_unix;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n < 2 || n > KHALA_CONFIG_SOCKET_PATH_MAX)
            goto bad_unix;
        memcpy(u.path, p, n);
        if (q) {
            if (strncmp(q, "?db=", 4) != 0) {
                msgf(err, errlen, "has a bad query (only ?db=N is understood)");
                return KHALA_ECONFIG;
            }
            if (parse_db(q + 4, &u.db, err, errlen) != 0)
                return KHALA_ECONFIG;
        }
    } else {
        if (strncmp(url, "redis://", 8) == 0) {
            p = url + 8;
        } else if (strncmp(url, "rediss://", 9) == 0) {
            p = url + 9;
            u.tls = true;
        } else {
            msgf(err, errlen, "is not a redis://, rediss:// or unix:// URL");
            return KHALA_ECONFIG;
        }
        /* userinfo: everything before the last '@' of the authority. */
        const char *auth_end = p + strcspn(p, "/?");
        const char *at = NULL;
        for (const char *c = p; c < auth_end; c++)
            if (*c == '@')
                at = c;
        if (at) {
            const char *colon = memchr(p, ':', (size_t)(at - p));
            const char *ue = colon ? colon : at;
            memcpy(u.user, p, (size_t)(ue - p));
            if (colon)
                memcpy(u.password, colon + 1, (size_t)(at - colon - 1));
            if (!colon && ue == p) {
                msgf(err, errlen, "has an empty user before '@'");
                return KHALA_ECONFIG;
            }
            p = at + 1;
        }
        if (parse_hostport(&p, u.host, sizeof(u.host), &u.port, err, errlen) != 0)
            return KHALA_ECONFIG;
        if (!u.port)
            u.port = 6379;
        if (*p == '/' && p[1]) {
            if (parse_db(p + 1, &u.db, err, errlen) != 0)
                return KHALA_ECONFIG;
        } else if (*p == '?') {
            msgf(err, errlen, "has a query; write the database as /N");
            return KHALA_ECONFIG;
        }
    }
    if (out)
        *out = u;
    return 0;
bad_len:
    msgf(err, errlen, "is longer than %d bytes", KHALA_CONFIG_URL_MAX - 1);
    return KHALA_ECONFIG;
bad_unix:
    msgf(err, errlen, "is not unix:///absolute/path[?db=N] (a socket path of at most %d bytes)",
         KHALA_CONFIG_SOCKET_PATH_MAX);
    return KHALA_ECONFIG;
}

static int check_http_url(const char *v, char *msg, size_t len) {
    const char *p;
    char host[KHALA_CONFIG_URL_MAX];
    uint32_t port;
    if (strncmp(v, "http://", 7) == 0)
        p = v + 7;
    else if (strncmp(v, "https://", 8) == 0)
        p = v + 8;
    else
        return msgf(msg, len, "is not an http:// or https:// URL");
    /* user:password@ (Basic auth) before the host, as in redis_url. */
    const char *at = strchr(p, '@'), *slash = strchr(p, '/');
    if (at && (!slash || at < slash)) {
        if (at == p || *p == ':')
            return msgf(msg, len, "has credentials without a user name (user:password@host)");
        p = at + 1;
    }
    if (parse_hostport(&p, host, sizeof(host), &port, msg, len) != 0)
        return -1;
    for (; *p; p++)
        if (isspace((unsigned char)*p))
            return msgf(msg, len, "has a blank in its path");
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Where a message comes from: "FILE:LINE: " or "FILE: ". */
typedef struct origin {
    const char *name;
    int lines[NSECTIONS * KEYS_PER_SEC]; /* line a key was set on in this load, 0 = not set */
} origin_t;

static int key_id(int sec, int k) {
    return sec * KEYS_PER_SEC + k;
}

/* Write "ORIGIN[:LINE]: [section] key: what" into err and return KHALA_ECONFIG. sec < 0 leaves
 * out the section, k < 0 the key. */
static int report(char *err, size_t errlen, const origin_t *o, int line, int sec, int k,
                  const char *what) {
    char sbuf[64], where[160] = "";
    if (sec >= 0 && k >= 0)
        snprintf(where, sizeof(where), "[%s] %s: ", section_name(sec, sbuf, sizeof(sbuf)),
                 section_of(sec)->keys[k].name);
    else if (sec >= 0)
        snprintf(where, sizeof(where), "[%s]: ", section_name(sec, sbuf, sizeof(sbuf)));
    if (err && errlen) {
        if (line > 0)
            snprintf(err, errlen, "%s:%d: %s%s", o->name, line, where, what);
        else if (line < 0) /* set by an override of khala__config_load */
            snprintf(err, errlen, "--set: %s%s", where, what);
        else
            snprintf(err, errlen, "%s: %s%s", o->name, where, what);
    }
    return KHALA_ECONFIG;
}

/* A consistency error about key (sec, k): cites the line it was set on in this load, if any. */
static int report_key(char *err, size_t errlen, const origin_t *o, int sec, int k, const char *fmt,
                      ...) __attribute__((format(printf, 6, 7)));
static int report_key(char *err, size_t errlen, const origin_t *o, int sec, int k, const char *fmt,
                      ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return report(err, errlen, o, o->lines[key_id(sec, k)], sec, k, what);
}

/* ------------------------------------------------------------------------------------------ */
/* Consistency                                                                                */
/* ------------------------------------------------------------------------------------------ */

/* Index of key `name` in section sec; the names used here exist (the tests would fail). */
static int key_index(int sec, const char *name) {
    int k = find_key(sec, name);
    return k < 0 ? 0 : k;
}

/*
 * Keys that have no effect yet.
 *
 * Configuration means what it says: a key khalad reads but does not act on is refused, with a
 * message naming it and saying that it has no effect yet, unless it holds its default value.
 * Why not refuse such a key outright, whatever its value? `khalad --check` and `khalactl config`
 * write every key, and their output must load back; configs written for the seed, or for a
 * later khalad, name these keys too. Why is the default harmless? The default of each of these
 * keys says what khalad does without the feature: 0 for stale_serve_seconds,
 * negative_ttl_seconds and quota_pct (off, no quota), false for predictive_cache. (Until
 * issue 9, stale serving,
 * negative caching and quotas had non-zero defaults, which `khalactl config` printed as if they
 * worked; they are 0 now for that reason.) The L2 capacity keys on Redis keep defaults that
 * describe a store Redis bounds by itself: no item is affected by them. The alternative,
 * accepting any value with a warning in the log, is what the seed's users hit before: a
 * setting that reads as working and silently is not.
 */
typedef enum inert_when {
    INERT_ALWAYS,   /* the feature is not built */
    INERT_ON_REDIS, /* [l2] backend = redis */
} inert_when_t;

typedef struct inert {
    int sec;         /* SEC_*; SEC_TYPE0 stands for every [type.<name>] section */
    const char *key; /* NULL: every key of the section */
    inert_when_t when;
    const char *why; /* why it has no effect */
} inert_t;

static const inert_t INERT[] = {
    {SEC_L2, "max_items", INERT_ON_REDIS, "Redis bounds L2 itself, by its maxmemory"},
    {SEC_L2, "max_memory_mb", INERT_ON_REDIS, "Redis bounds L2 itself, by its maxmemory"},
    {SEC_POLICIES, "predictive_cache", INERT_ALWAYS,
     "khalad does not prefetch: measured, it did not raise the hit ratio"},
    {SEC_POLICIES, "stale_serve_seconds", INERT_ALWAYS, "serving stale values is not built"},
    {SEC_POLICIES, "negative_ttl_seconds", INERT_ALWAYS,
     "caching \"no such item\" answers is not built"},
    {SEC_TYPE0, "quota_pct", INERT_ALWAYS, "per-type L1 quotas are not built"},
};

/* The value of key k of section sec in cfg, as the file writes it, into buf. */
static const char *format_value(const khala_config_t *cfg, int sec, const key_desc_t *k, char *buf,
                                size_t len);

/* Key k of section sec: 0 if it holds its default or has an effect in cfg, else the message. */
static int check_inert(const khala_config_t *cfg, const khala_config_t *def, const origin_t *o,
                       int sec, int k, char *err, size_t errlen) {
    const key_desc_t *kd = &section_of(sec)->keys[k];
    int rsec = sec < SEC_TYPE0 ? sec : SEC_TYPE0;
    size_t size = kd->kind == K_STR || kd->kind == K_LIST ? kd->size
                  : kd->kind == K_BOOL                    ? sizeof(bool)
                                                          : sizeof(int);
    _Static_assert(sizeof(uint32_t) == sizeof(int), "numbers, enums and levels are 4 bytes");
    for (size_t i = 0; i < NKEYS(INERT); i++) {
        const inert_t *r = &INERT[i];
        if (r->sec != rsec || (r->key && strcmp(r->key, kd->name) != 0))
            continue;
        if (r->when == INERT_ON_REDIS && cfg->l2.backend != KHALA_CONFIG_L2_REDIS)
            continue;
        if (memcmp(cfield_of(cfg, sec, kd), cfield_of(def, sec, kd), size) == 0)
            return 0;
        char v[KHALA_CONFIG_URL_MAX + 8], dv[KHALA_CONFIG_URL_MAX + 8], q[64];
        format_value(cfg, sec, kd, v, sizeof(v));
        format_value(def, sec, kd, dv, sizeof(dv));
        return report_key(err, errlen, o, sec, k,
                          "%s has no effect %s (%s): only the default, %s, is accepted",
                          quoted(v, q, sizeof(q)),
                          r->when == INERT_ON_REDIS ? "with [l2] backend = redis" : "yet", r->why,
                          dv[0] ? dv : "empty");
    }
    return 0;
}

static int check_all(const khala_config_t *cfg, const origin_t *o, char *err, size_t errlen) {
    khala_config_t def;
    (void)khala__config_defaults(&def, NULL);
    for (int sec = 0; sec < NSECTIONS; sec++)
        for (int k = 0; k < (int)section_of(sec)->nkeys; k++) {
            int rc = check_inert(cfg, &def, o, sec, k, err, errlen);
            if (rc != 0)
                return rc;
        }
    uint64_t mem = (uint64_t)cfg->l1.max_memory_mb * MIB;
    if (cfg->l1.max_value_bytes > mem)
        return report_key(err, errlen, o, SEC_L1, key_index(SEC_L1, "max_value_bytes"),
                          "%u does not fit in max_memory_mb (%u MiB)", cfg->l1.max_value_bytes,
                          cfg->l1.max_memory_mb);
    /* [server]: one request of the largest value must fit in the input buffers. */
    uint64_t frame = (uint64_t)KHALA_FRAME_HEADER + khala__config_server_max_frame(cfg);
    if (cfg->server.max_buffer_bytes < frame)
        return report_key(err, errlen, o, SEC_SERVER, key_index(SEC_SERVER, "max_buffer_bytes"),
                          "%u is less than one request of the largest value (%llu bytes, from "
                          "[l1] max_value_bytes %u)",
                          cfg->server.max_buffer_bytes, (unsigned long long)frame,
                          cfg->l1.max_value_bytes);
    if (cfg->l2.backend == KHALA_CONFIG_L2_REDIS && !cfg->l2.redis_url[0])
        return report_key(err, errlen, o, SEC_L2, key_index(SEC_L2, "backend"),
                          "'redis' needs [l2] redis_url");
    if (cfg->policies.coherence == KHALA_CONFIG_COHERENCE_PUBSUB &&
        cfg->l2.backend != KHALA_CONFIG_L2_REDIS)
        return report_key(err, errlen, o, SEC_POLICIES, key_index(SEC_POLICIES, "coherence"),
                          "'pubsub' (or 'immediate') needs [l2] backend = redis (it is Redis "
                          "pub/sub)");
    if (cfg->cache.socket_mode & 002)
        return report_key(err, errlen, o, SEC_CACHE, key_index(SEC_CACHE, "socket_mode"),
                          "%04o lets every local user write to the socket (connect); refused: "
                          "use 0660 with socket_group, and [access] rules (docs/security.md)",
                          cfg->cache.socket_mode);
    if (cfg->policies.write_mode == KHALA_CONFIG_WRITE_DEFAULT)
        return report_key(err, errlen, o, SEC_POLICIES, key_index(SEC_POLICIES, "write_mode"),
                          "must be write_through or write_behind");
    for (int t = 0; t < KHALA_CONFIG_NTYPES; t++)
        if (cfg->types[t].encrypt && !cfg->crypto.key_file[0])
            return report_key(err, errlen, o, SEC_TYPE0 + t, key_index(SEC_TYPE0 + t, "encrypt"),
                              "true needs [crypto] key_file (the keys values are sealed with)");
    /* The quota checks (a sum of at most 100%, a quota only on a type that lives on l1)
     * return with quotas; git log has them. */
    if (cfg->l3.backend == KHALA_CONFIG_L3_SURREALDB && !cfg->l3.surrealdb_url[0])
        return report_key(err, errlen, o, SEC_L3, key_index(SEC_L3, "backend"),
                          "'surrealdb' needs [l3] surrealdb_url");
    for (int t = 0; t < KHALA_CONFIG_NTYPES; t++) {
        const khala_config_type_t *ty = &cfg->types[t];
        if (!ty->levels)
            return report_key(err, errlen, o, SEC_TYPE0 + t, key_index(SEC_TYPE0 + t, "levels"),
                              "names no level");
    }
    return 0;
}

int khala__config_check(const khala_config_t *cfg, char *err, size_t errlen) {
    static const origin_t none = {"config", {0}};
    return check_all(cfg, &none, err, errlen);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

typedef struct load {
    khala_config_t cfg; /* the scratch copy (step 1) */
    origin_t o;
    const char *pos; /* next line of the text; NULL at the end */
    int line;        /* number of the line last handed to inih */
    int failed;      /* an error is in err */
    char *err;
    size_t errlen;
} load_t;

/* Step 2: an fgets for inih over the text, one line per call. */
static char *line_reader(char *str, int num, void *stream) {
    load_t *l = stream;
    if (l->failed || !l->pos || !*l->pos)
        return NULL;
    const char *s = l->pos, *nl = strchr(s, '\n');
    size_t n = nl ? (size_t)(nl - s) : strlen(s);
    l->pos = nl ? nl + 1 : NULL;
    l->line++;
    /* inih needs room for "\r\n\0" after the longest line. */
    size_t cap = num > 3 ? (size_t)num - 3 : 0;
    if (n > KHALA_CONFIG_LINE_MAX || n > cap) {
        char what[96];
        snprintf(what, sizeof(what), "line is longer than %zu bytes",
                 cap < KHALA_CONFIG_LINE_MAX ? cap : (size_t)KHALA_CONFIG_LINE_MAX);
        report(l->err, l->errlen, &l->o, l->line, -1, -1, what);
        l->failed = 1;
        return NULL;
    }
    while (n && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    if (n && *s == '[') {
        const char *e = memchr(s, ']', n);
        if (e) {
            if (find_section(s + 1, (size_t)(e - s - 1)) < 0) {
                char what[160];
                snprintf(what, sizeof(what), "[%.*s]: unknown section",
                         (int)(e - s - 1 < 64 ? e - s - 1 : 64), s + 1);
                report(l->err, l->errlen, &l->o, l->line, -1, -1, what);
                l->failed = 1;
                return NULL;
            }
        }
    }
    memcpy(str, s, n);
    str[n] = '\n';
    str[n + 1] = '\0';
    return str;
}

/* Step 3: one key = value. */
static int handler(void *user, const char *section, const char *name, const char *value) {
    load_t *l = user;
    char what[256], q[64];
    if (l->failed)
        return 0;
    l->failed = 1;
    if (!section[0]) {
        snprintf(what, sizeof(what), "key %s is outside any section", quoted(name, q, sizeof(q)));
        report(l->err, l->errlen, &l->o, l->line, -1, -1, what);
        return 0;
    }
    int sec = find_section(section, strlen(section));
    if (sec < 0) { /* the reader saw every section line; this is a defence only */
        snprintf(what, sizeof(what), "[%.64s]: unknown section", section);
        report(l->err, l->errlen, &l->o, l->line, -1, -1, what);
        return 0;
    }
    int k = find_key(sec, name);
    if (k < 0) {
        char sbuf[64];
        snprintf(what, sizeof(what), "[%s] %.64s: unknown key",
                 section_name(sec, sbuf, sizeof(sbuf)), name);
        report(l->err, l->errlen, &l->o, l->line, -1, -1, what);
        return 0;
    }
    int *seen = &l->o.lines[key_id(sec, k)];
    if (*seen && section_of(sec)->keys[k].kind != K_LIST) {
        snprintf(what, sizeof(what), "duplicate key (first set on line %d)", *seen);
        report(l->err, l->errlen, &l->o, l->line, sec, k, what);
        return 0;
    }
    const key_desc_t *kd = &section_of(sec)->keys[k];
    if (set_value(field_of(&l->cfg, sec, kd), kd, value, what, sizeof(what)) != 0) {
        report(l->err, l->errlen, &l->o, l->line, sec, k, what);
        return 0;
    }
    *seen = l->line;
    l->failed = 0;
    return 1;
}

/* Steps 1 to 4 into l (zeroed by the caller), without the check of step 5. */
static int parse_text(load_t *l, const khala_config_t *cfg, const char *text,
                      const char *origin_name, char *err, size_t errlen) {
    l->cfg = *cfg; /* step 1 */
    l->o.name = origin_name ? origin_name : "config";
    l->pos = text;
    l->err = err;
    l->errlen = errlen;
    if (err && errlen)
        err[0] = '\0';
    /* Debian's inih sizes its line buffer from this process-wide variable (a VLA); the reader
     * never hands it more than it asked for, whatever the value. */
    int saved_max_line = ini_max_line;
    ini_max_line = KHALA_CONFIG_LINE_MAX + 3;
    int rc = ini_parse_stream(line_reader, l, handler, l); /* steps 2 and 3 */
    ini_max_line = saved_max_line;
    /* Step 4: the first error wins; the reader stops at ours, so a smaller line is inih's. */
    if (rc > 0 && (!l->failed || rc < l->line)) {
        report(err, errlen, &l->o, rc, -1, -1,
               "syntax error: expected '[section]' or 'key = value'");
        return KHALA_ECONFIG;
    }
    if (l->failed)
        return KHALA_ECONFIG;
    if (rc != 0) /* -2: inih could not allocate (only when built without INI_USE_STACK) */
        return report(err, errlen, &l->o, 0, -1, -1, "inih failed to parse the text");
    return 0;
}

int khala__config_load_string(khala_config_t *cfg, const char *text, const char *origin_name,
                              char *err, size_t errlen) {
    /* The scratch and the line table are about 7 KiB: on the heap would be as good, but a
     * load that cannot fail on memory is simpler to call. */
    load_t l;
    memset(&l, 0, sizeof(l));
    int rc = parse_text(&l, cfg, text, origin_name, err, errlen);
    if (rc == 0)
        rc = check_all(&l.cfg, &l.o, err, errlen); /* step 5 */
    if (rc != 0)
        return rc;
    *cfg = l.cfg;
    return 0;
}

/* The file at path into *out (NUL-terminated, free() it); 0, or an error with its message. */
static int read_text(const char *path, char **out, char *err, size_t errlen) {
    int rc = 0;
    char *text = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto fail_errno;
    }
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto fail_errno;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = -EISDIR;
        goto fail_errno;
    }
    /* Read up to one byte past the limit, so a longer file (or a pipe) is noticed. */
    text = malloc(KHALA_CONFIG_FILE_MAX + 2);
    if (!text) {
        rc = -ENOMEM;
        goto fail_errno;
    }
    size_t n = 0;
    while (n <= KHALA_CONFIG_FILE_MAX) {
        ssize_t r = read(fd, text + n, KHALA_CONFIG_FILE_MAX + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            goto fail_errno;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    if (n > KHALA_CONFIG_FILE_MAX) {
        rc = -EFBIG;
        if (err && errlen)
            snprintf(err, errlen, "%s: larger than %d bytes", path, KHALA_CONFIG_FILE_MAX);
        goto out;
    }
    if (memchr(text, '\0', n)) {
        origin_t o = {path, {0}};
        rc = report(err, errlen, &o, 0, -1, -1, "holds a NUL byte; is it a text file?");
        goto out;
    }
    text[n] = '\0';
    *out = text;
    text = NULL;
    goto out;
fail_errno:
    if (err && errlen)
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(-rc));
out:
    free(text);
    if (fd >= 0)
        close(fd);
    return rc;
}

int khala__config_load_file(khala_config_t *cfg, const char *path, char *err, size_t errlen) {
    char *text = NULL;
    int rc = read_text(path, &text, err, errlen);
    if (rc == 0)
        rc = khala__config_load_string(cfg, text, path, err, errlen);
    free(text);
    return rc;
}

/* Set key ("section.key") to value in cfg, checking the value alone; its section and key index
 * in *sec and *k. Messages come from "--set". */
static int set_one(khala_config_t *cfg, const char *key, const char *value, int *sec_out,
                   int *k_out, char *err, size_t errlen) {
    static const origin_t set_origin = {"--set", {0}};
    const origin_t *o = &set_origin;
    char what[256], q[64];
    const char *dot = strrchr(key, '.');
    if (!dot || dot == key || !dot[1]) {
        snprintf(what, sizeof(what), "%s is not section.key", quoted(key, q, sizeof(q)));
        return report(err, errlen, o, 0, -1, -1, what);
    }
    int sec = find_section(key, (size_t)(dot - key));
    if (sec < 0) {
        snprintf(what, sizeof(what), "[%.*s]: unknown section",
                 (int)(dot - key < 64 ? dot - key : 64), key);
        return report(err, errlen, o, 0, -1, -1, what);
    }
    int k = find_key(sec, dot + 1);
    if (k < 0) {
        char sbuf[64];
        snprintf(what, sizeof(what), "[%s] %.64s: unknown key",
                 section_name(sec, sbuf, sizeof(sbuf)), dot + 1);
        return report(err, errlen, o, 0, -1, -1, what);
    }
    /* set_value writes the field only on success. */
    const key_desc_t *kd = &section_of(sec)->keys[k];
    if (set_value(field_of(cfg, sec, kd), kd, value, what, sizeof(what)) != 0)
        return report(err, errlen, o, 0, sec, k, what);
    *sec_out = sec;
    *k_out = k;
    return 0;
}

int khala__config_set(khala_config_t *cfg, const char *key, const char *value, char *err,
                      size_t errlen) {
    int sec, k;
    if (err && errlen)
        err[0] = '\0';
    /* The value alone is checked here; the values together by khala__config_check() once every
     * override is set, so that the order of the overrides does not matter. */
    return set_one(cfg, key, value, &sec, &k, err, errlen);
}

int khala__config_load(khala_config_t *cfg, const char *path, const char *const *sets, size_t nsets,
                       char *err, size_t errlen) {
    load_t l;
    char *text = NULL;
    int rc = 0;
    memset(&l, 0, sizeof(l));
    if (err && errlen)
        err[0] = '\0';
    if (path) {
        if ((rc = read_text(path, &text, err, errlen)) != 0)
            return rc;
        rc = parse_text(&l, cfg, text, path, err, errlen);
        free(text);
        if (rc != 0)
            return rc;
    } else {
        l.cfg = *cfg;
        l.o.name = "config";
    }
    for (size_t i = 0; i < nsets; i++) {
        char key[160];
        const char *eq = strchr(sets[i], '=');
        int sec, k;
        if (!eq || (size_t)(eq - sets[i]) >= sizeof(key)) {
            char q[64];
            char what[128];
            snprintf(what, sizeof(what), "%s is not section.key=value",
                     quoted(sets[i], q, sizeof(q)));
            static const origin_t set_origin = {"--set", {0}};
            return report(err, errlen, &set_origin, 0, -1, -1, what);
        }
        memcpy(key, sets[i], (size_t)(eq - sets[i]));
        key[eq - sets[i]] = '\0';
        if ((rc = set_one(&l.cfg, key, eq + 1, &sec, &k, err, errlen)) != 0)
            return rc;
        l.o.lines[key_id(sec, k)] = -1; /* a consistency message says "--set" */
    }
    if ((rc = check_all(&l.cfg, &l.o, err, errlen)) != 0)
        return rc;
    *cfg = l.cfg;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Defaults and derived values                                                                */
/* ------------------------------------------------------------------------------------------ */

int khala__config_defaults(khala_config_t *cfg, const char *name) {
    int rc = 0;
    memset(cfg, 0, sizeof(*cfg));
    if (name && khala__seg_name_check(name, NULL, 0) != 0) {
        rc = KHALA_ENAME;
        name = NULL;
    }
    set_str(cfg->cache.name, sizeof(cfg->cache.name), name ? name : "default");
    cfg->cache.socket_mode = 0660;
    cfg->l1.max_memory_mb = 100;
    cfg->l1.max_items = 0;
    cfg->l1.max_value_bytes = KHALA_VALUE_MAX_DEFAULT;
    cfg->l1.ttl_seconds = 300;
    cfg->l1.eviction_policy = KHALA_CONFIG_EVICT_S3FIFO;
    cfg->l1.max_readers = 256;
    cfg->l2.backend = KHALA_CONFIG_L2_DISK;
    cfg->l2.ttl_seconds = 3600;
    cfg->l2.max_items = 10000;
    cfg->l2.persistent = true;
    cfg->l2.max_memory_mb = 1024;
    cfg->l2.timeout_ms = 1000;
    cfg->l2.pool_size = 4;
    cfg->l2.queue_max = 100000;
    cfg->l2.sync_every_ms = 1000;
    cfg->l3.backend = KHALA_CONFIG_L3_DISK;
    set_str(cfg->l3.surrealdb_table, sizeof(cfg->l3.surrealdb_table), "cache_table");
    set_str(cfg->l3.surrealdb_namespace, sizeof(cfg->l3.surrealdb_namespace), "khala");
    set_str(cfg->l3.surrealdb_database, sizeof(cfg->l3.surrealdb_database), "cache");
    cfg->l3.ttl_seconds = 86400;
    cfg->l3.max_entries = 100000;
    cfg->l3.cleanup_interval = 3600;
    cfg->l3.max_memory_mb = 10240;
    cfg->l3.persistent = true;
    cfg->l3.timeout_ms = 2000;
    cfg->l3.pool_size = 4;
    cfg->l3.queue_max = 100000;
    cfg->l3.sync_every_ms = 1000;
    cfg->l3.cleanup_batch = 1000;
    cfg->l3.archive_retention_seconds = 604800;
    set_str(cfg->l3.similarity_threshold, sizeof(cfg->l3.similarity_threshold), "0.9");
    cfg->l3.embedding_dim = 0;
    set_str(cfg->audit.path, sizeof(cfg->audit.path), "-");
    set_str(cfg->audit.read_sample_rate, sizeof(cfg->audit.read_sample_rate), "0");
    cfg->policies.write_mode = KHALA_CONFIG_WRITE_THROUGH;
    cfg->policies.coherence = KHALA_CONFIG_COHERENCE_NONE;
    cfg->policies.stale_serve_seconds = 0; /* no effect yet: see "Keys that have no effect" */
    cfg->policies.negative_ttl_seconds = 0;
    cfg->policies.ttl_jitter_pct = 10;
    cfg->policies.single_flight_timeout_ms = 5000;
    cfg->server.max_connections = 4096;
    cfg->server.max_output_bytes = 8u * MIB;
    cfg->server.max_buffer_bytes = 256u * MIB;
    cfg->server.frame_timeout_ms = 10000;
    memcpy(cfg->types, TYPE_DEFAULTS, sizeof(TYPE_DEFAULTS));
    return rc;
}

uint32_t khala__config_l1_items(const khala_config_t *cfg) {
    if (cfg->l1.max_items)
        return cfg->l1.max_items;
    uint64_t n = (uint64_t)cfg->l1.max_memory_mb * MIB / KHALA_CONFIG_L1_BYTES_PER_ITEM;
    if (n > KHALA_CONFIG_L1_ITEMS_MAX)
        n = KHALA_CONFIG_L1_ITEMS_MAX;
    return (uint32_t)n;
}

uint32_t khala__config_server_max_frame(const khala_config_t *cfg) {
    uint64_t n = (uint64_t)cfg->l1.max_value_bytes + KHALA_CONFIG_FRAME_ROOM;
    if (n < KHALA_FRAME_MAX_DEFAULT)
        n = KHALA_FRAME_MAX_DEFAULT;
    if (n > KHALA_FRAME_MAX_CEILING)
        n = KHALA_FRAME_MAX_CEILING;
    return (uint32_t)n;
}

void khala__config_seg(const khala_config_t *cfg, khala_seg_config_t *out) {
    khala__seg_config_init(out);
    out->max_items = khala__config_l1_items(cfg);
    out->max_bytes = (uint64_t)cfg->l1.max_memory_mb * MIB;
    out->max_value = cfg->l1.max_value_bytes;
    out->max_readers = cfg->l1.max_readers;
}

static int fmt_path(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fmt_path(char *buf, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* A non-empty environment variable that is an absolute path, or NULL (the XDG rule). */
static const char *env_dir(const char *var) {
    const char *v = getenv(var);
    return v && v[0] == '/' ? v : NULL;
}

int khala__config_socket_path(const khala_config_t *cfg, char *buf, size_t len) {
    int rc;
    /* The derived path is the client's rule (lib/channel.c), so that workers, khalactl and
     * khalad cannot disagree on it. */
    if (cfg->cache.socket[0])
        rc = fmt_path(buf, len, "%s", cfg->cache.socket);
    else
        rc = khala__chan_default_path(cfg->cache.name, buf, len);
    if (rc == 0 && strlen(buf) > KHALA_CONFIG_SOCKET_PATH_MAX)
        rc = -ENAMETOOLONG;
    return rc;
}

int khala__config_store_path(const khala_config_t *cfg, int level, char *buf, size_t len) {
    const char *name = cfg->cache.name, *dir;
    if (level != 2 && level != 3)
        return -EINVAL;
    const char *set = level == 2 ? cfg->l2.path : cfg->l3.path;
    if (set[0])
        return fmt_path(buf, len, "%s", set);
    if (level == 3 && cfg->l2.path[0]) {
        /* Next to a configured L2 store: /srv/k/l2 -> /srv/k/l3, else /srv/cache -> /srv/cache-l3
         * (never a directory another khalad's L2 would derive too). */
        const char *l2 = cfg->l2.path;
        size_t n = strlen(l2);
        if (n >= 3 && strcmp(l2 + n - 3, "/l2") == 0)
            return fmt_path(buf, len, "%.*s/l3", (int)(n - 3), l2);
        return fmt_path(buf, len, "%s-l3", l2);
    }
    if (geteuid() == 0)
        return fmt_path(buf, len, "/var/lib/khala/%s/l%d", name, level);
    if ((dir = env_dir("XDG_STATE_HOME")))
        return fmt_path(buf, len, "%s/khala/%s/l%d", dir, name, level);
    if ((dir = env_dir("HOME")))
        return fmt_path(buf, len, "%s/.local/state/khala/%s/l%d", dir, name, level);
    return fmt_path(buf, len, "/tmp/khala-%u/state/%s/l%d", (unsigned)geteuid(), name, level);
}

const char *khala__config_l2_namespace(const khala_config_t *cfg) {
    return cfg->l2.namespace_[0] ? cfg->l2.namespace_ : cfg->cache.name;
}

uint32_t khala__config_type_ttl(const khala_config_t *cfg, int type, int level) {
    if (type < 0 || type >= KHALA_CONFIG_NTYPES)
        return 0;
    const khala_config_type_t *t = &cfg->types[type];
    switch (level) {
        case 1:
            return t->l1_ttl_seconds ? t->l1_ttl_seconds : cfg->l1.ttl_seconds;
        case 2:
            return t->l2_ttl_seconds ? t->l2_ttl_seconds : cfg->l2.ttl_seconds;
        case 3:
            return t->l3_ttl_seconds ? t->l3_ttl_seconds : cfg->l3.ttl_seconds;
        default:
            return 0;
    }
}

khala_config_write_mode_t khala__config_type_write_mode(const khala_config_t *cfg, int type) {
    if (type < 0 || type >= KHALA_CONFIG_NTYPES)
        return KHALA_CONFIG_WRITE_THROUGH;
    khala_config_write_mode_t m = cfg->types[type].write_mode;
    if (m == KHALA_CONFIG_WRITE_DEFAULT)
        m = cfg->policies.write_mode;
    return m == KHALA_CONFIG_WRITE_BEHIND ? KHALA_CONFIG_WRITE_BEHIND : KHALA_CONFIG_WRITE_THROUGH;
}

uint32_t khala__config_encrypted_types(const khala_config_t *cfg) {
    uint32_t bits = 0;
    for (int t = 0; t < KHALA_CONFIG_NTYPES; t++)
        if (cfg->types[t].encrypt)
            bits |= 1u << t;
    return bits;
}

const char *khala__config_type_name(int id) {
    return id >= 0 && id < KHALA_CONFIG_NTYPES ? khala__proto_type_name((khala_type_t)id) : NULL;
}

int khala__config_type_id(const char *name) {
    khala_type_t t;
    return khala__proto_type_parse(name, strlen(name), &t) == 0 ? (int)t : KHALA_ECONFIG;
}

/* ------------------------------------------------------------------------------------------ */
/* Dump                                                                                       */
/* ------------------------------------------------------------------------------------------ */

static const char *enum_name(const enum_name_t *names, int v) {
    for (; names->name; names++)
        if (names->value == v)
            return names->name;
    return "?";
}

/* A comment with the effective value of a derived key, or nothing. */
static void dump_note(const khala_config_t *cfg, int sec, const key_desc_t *k, FILE *out) {
    char path[KHALA_CONFIG_PATH_MAX + 64];
    uint32_t v;
    if (sec == SEC_CACHE && strcmp(k->name, "socket") == 0 && !cfg->cache.socket[0] &&
        khala__config_socket_path(cfg, path, sizeof(path)) == 0)
        fprintf(out, "# socket: empty = derived from name: %s\n", path);
    else if ((sec == SEC_L2 || sec == SEC_L3) && strcmp(k->name, "path") == 0 &&
             !((const char *)cfield_of(cfg, sec, k))[0] &&
             khala__config_store_path(cfg, sec == SEC_L2 ? 2 : 3, path, sizeof(path)) == 0)
        fprintf(out, "# path: empty = derived from name: %s\n", path);
    else if (sec == SEC_L2 && cfg->l2.backend == KHALA_CONFIG_L2_REDIS &&
             (strcmp(k->name, "max_items") == 0 || strcmp(k->name, "max_memory_mb") == 0))
        fprintf(out, "# %s: no effect with backend = redis (Redis bounds itself)\n", k->name);
    else if (k->kind == K_AUTO && !cfg->l1.max_items)
        fprintf(out, "# max_items: auto = %u\n", khala__config_l1_items(cfg));
    else if (sec >= SEC_TYPE0 && strncmp(k->name, "l", 1) == 0 && strstr(k->name, "_ttl_") &&
             (memcpy(&v, cfield_of(cfg, sec, k), sizeof(v)), v == 0))
        fprintf(out, "# %s: 0 = [l%c] ttl_seconds = %u\n", k->name, k->name[1],
                khala__config_type_ttl(cfg, sec - SEC_TYPE0, k->name[1] - '0'));
    else if (sec >= SEC_TYPE0 && k->kind == K_ENUM &&
             cfg->types[sec - SEC_TYPE0].write_mode == KHALA_CONFIG_WRITE_DEFAULT)
        fprintf(out, "# write_mode: default = [policies] write_mode = %s\n",
                enum_name(POLICY_WRITE_NAMES, (int)cfg->policies.write_mode));
}

static const char *format_value(const khala_config_t *cfg, int sec, const key_desc_t *k, char *buf,
                                size_t len) {
    const void *f = cfield_of(cfg, sec, k);
    uint32_t u;
    int e;
    switch (k->kind) {
        case K_AUTO:
        case K_U32:
            memcpy(&u, f, sizeof(u));
            if (k->kind == K_AUTO && u == 0)
                snprintf(buf, len, "auto");
            else
                snprintf(buf, len, "%u", u);
            break;
        case K_MODE:
            memcpy(&u, f, sizeof(u));
            snprintf(buf, len, "%04o", u);
            break;
        case K_BOOL:
            snprintf(buf, len, "%s", *(const bool *)f ? "true" : "false");
            break;
        case K_ENUM:
            memcpy(&e, f, sizeof(e));
            snprintf(buf, len, "%s", enum_name(k->names, e));
            break;
        case K_LEVELS:
            memcpy(&u, f, sizeof(u));
            format_levels(u, buf, len);
            break;
        case K_STR:
        case K_LIST:
            snprintf(buf, len, "%s", (const char *)f);
            break;
    }
    return buf;
}

/* A K_LIST key: one line per element; a comment when it has none, since an empty line would
 * read back as "clear", which is the same thing but says less. */
static void dump_list(const char *list, const char *name, FILE *out) {
    if (!list[0]) {
        fprintf(out, "# %s: none\n", name);
        return;
    }
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, "\n");
        fprintf(out, "%s = %.*s\n", name, (int)n, p);
        p += n + (p[n] == '\n');
    }
}

int khala__config_dump(const khala_config_t *cfg, FILE *out) {
    char sbuf[64], v[KHALA_CONFIG_LINE_MAX], r[KHALA_CONFIG_LINE_MAX];
    fprintf(out, "# khalad configuration (effective values)\n");
    for (int sec = 0; sec < NSECTIONS; sec++) {
        const section_t *s = section_of(sec);
        if (sec == SEC_TYPE0)
            fprintf(out, "\n# [type.*]: no effect yet: quota_pct\n");
        fprintf(out, "\n[%s]\n", section_name(sec, sbuf, sizeof(sbuf)));
        for (size_t i = 0; i < s->nkeys; i++) {
            const key_desc_t *k = &s->keys[i];
            dump_note(cfg, sec, k, out);
            if (k->kind == K_LIST) {
                dump_list(cfield_of(cfg, sec, k), k->name, out);
                continue;
            }
            format_value(cfg, sec, k, v, sizeof(v));
            fprintf(out, "%s =%s%s\n", k->name, v[0] ? " " : "", khala__redact(v, r, sizeof(r)));
        }
    }
    fflush(out);
    return ferror(out) ? -EIO : 0;
}
