/*
 * Encryption at rest through a real khalad (docs/security.md, "Encryption at rest"): values of a
 * type marked `encrypt = true` are ciphertext in the LMDB disk store, in Redis and in the write
 * journal (each read directly: the file's bytes, a raw GET), while other types stay plaintext;
 * a value altered in LMDB or Redis, or moved to another key, is refused (a miss), counted in stats and
 * shown as refused by inspect, never returned; keys rotate without a flush (a value written
 * under key 1 reads back after key 2 is added and khalad restarted, new values carry id 2); a
 * key file readable by others, or owned by another user, stops khalad and --check with a
 * message naming the file and the problem.
 *
 * The types under test live on L2 only ([type.*] levels = l2), so that every get reads L2 and a
 * value altered there is seen at once. A private redis-server (tests/redis_util.h) per test.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "channel.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"
#include "redis_util.h"

#define KEY1 "1111111111111111111111111111111111111111111111111111111111111111"
#define KEY2 "2222222222222222222222222222222222222222222222222222222222222222"
#define SECRET "SECRET-the-patients-diagnosis"
#define PLAIN "PLAIN-a-public-memory"

static const uint8_t MAGIC[4] = {0xC1, 'K', 'C', 'E'};

static tu_redis_t g_redis;
static char g_keys[160];
static char g_sets[10][200];

static void setup(void) {
    khalad_env_init("enc");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
    snprintf(g_keys, sizeof(g_keys), "%s/keys", khalad_dir());
}

static void teardown(void) {
    khalad_env_fini();
    tu_redis_stop(&g_redis);
}

TestSuite(encryption, .init = setup, .fini = teardown, .timeout = 120);

/* Helpers ------------------------------------------------------------------------------------ */

static void write_keys(const char *text, mode_t mode) {
    unlink(g_keys);
    int fd = open(g_keys, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0, "%s: %s", g_keys, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cr_assert_eq(chmod(g_keys, mode), 0);
}

/* khalad's overrides: the key file, agent_response encrypted, both test types on L2 only,
 * and Redis when redis is set. */
static void configure(int redis, const char *agent_write_mode) {
    int n = 0;
    snprintf(g_sets[n++], sizeof(g_sets[0]), "crypto.key_file=%s", g_keys);
    snprintf(g_sets[n++], sizeof(g_sets[0]), "type.agent_response.encrypt=true");
    snprintf(g_sets[n++], sizeof(g_sets[0]), "type.agent_response.levels=l2");
    snprintf(g_sets[n++], sizeof(g_sets[0]), "type.verification.encrypt=true"); /* l1 and l2 */
    snprintf(g_sets[n++], sizeof(g_sets[0]), "type.memory_entity.levels=l2");
    snprintf(g_sets[n++], sizeof(g_sets[0]), "type.agent_response.write_mode=%s", agent_write_mode);
    if (redis) {
        snprintf(g_sets[n++], sizeof(g_sets[0]), "l2.redis_url=redis://127.0.0.1:%u", g_redis.port);
        snprintf(g_sets[n++], sizeof(g_sets[0]), "l2.backend=redis");
    }
    for (int i = 0; i < n; i++)
        khalad_extra_sets[i] = g_sets[i];
    khalad_extra_sets[n] = NULL;
}

/* A private redis-server (g_redis), the key file with key 1 only, and khalad over both with
 * agent_response written in agent_write_mode. */
static void start_on_redis(const char *agent_write_mode) {
    tu_redis_start(&g_redis, NULL);
    write_keys("1 " KEY1 "\n", 0600);
    configure(1, agent_write_mode);
    khalad_start();
}

static int call(khala_chan_t *ch, khala_msg_t *m, khala_msg_t *r) {
    return khalad_call(ch, m, r, 10000);
}

static void put(khala_chan_t *ch, const char *key, khala_type_t type, const char *val) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
    m.value.ptr = (const uint8_t *)val;
    m.value.len = strlen(val);
    m.has |= KHALA_F_V | KHALA_F_TYPE;
    m.type = type;
    int rc = call(ch, &m, &r);
    cr_assert_eq(rc, 0, "put %s: %s (%.*s)", key, khala_strerror(rc), (int)r.err.len,
                 r.err.ptr ? (const char *)r.err.ptr : "");
    khala__proto_msg_free(&r);
}

/* get: its rc; the value (NUL-terminated) and the level that answered in val and lvl. */
static int get(khala_chan_t *ch, const char *key, char *val, size_t cap, khala_level_t *lvl) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    int rc = call(ch, &m, &r);
    val[0] = '\0';
    if (rc == 0) {
        cr_assert_lt(r.value.len, cap);
        memcpy(val, r.value.ptr, r.value.len);
        val[r.value.len] = '\0';
        if (lvl)
            *lvl = r.lvl;
    }
    khala__proto_msg_free(&r);
    return rc;
}

static const khala_kv_t *kv_find(const khala_kv_t *kv, size_t n, const char *name) {
    for (size_t i = 0; i < n; i++)
        if (kv[i].key.len == strlen(name) && memcmp(kv[i].key.ptr, name, kv[i].key.len) == 0)
            return &kv[i];
    return NULL;
}

/* stats: crypto.<name>. */
static uint64_t crypto_stat(khala_chan_t *ch, const char *name) {
    khala_msg_t m = khalad_req(KHALA_OP_STATS, NULL), r;
    cr_assert_eq(call(ch, &m, &r), 0);
    const khala_kv_t *c = kv_find(r.data, r.ndata, "crypto");
    cr_assert(c && c->kind == KHALA_KV_MAP, "stats has no crypto map");
    const khala_kv_t *v = kv_find(c->as.map.items, c->as.map.n, name);
    cr_assert(v, "stats has no crypto.%s", name);
    uint64_t x = v->as.u;
    khala__proto_msg_free(&r);
    return x;
}

/* inspect: its rc; when 0, the l2 map's state and error; else the reply's message in error. */
static int inspect_l2(khala_chan_t *ch, const char *key, char *state, char *error, size_t cap) {
    khala_msg_t m = khalad_req(KHALA_OP_INSPECT, key), r;
    int rc = call(ch, &m, &r);
    state[0] = '\0';
    if (rc != 0) {
        snprintf(error, cap, "%.*s", (int)r.err.len, r.err.ptr ? (const char *)r.err.ptr : "");
        khala__proto_msg_free(&r);
        return rc;
    }
    const khala_kv_t *l2 = kv_find(r.data, r.ndata, "l2");
    cr_assert(l2 && l2->kind == KHALA_KV_MAP, "inspect has no l2 map");
    const khala_kv_t *s = kv_find(l2->as.map.items, l2->as.map.n, "state");
    const khala_kv_t *e = kv_find(l2->as.map.items, l2->as.map.n, "error");
    cr_assert(s);
    snprintf(state, cap, "%.*s", (int)s->as.s.len, (const char *)s->as.s.ptr);
    snprintf(error, cap, "%.*s", e ? (int)e->as.s.len : 0, e ? (const char *)e->as.s.ptr : "");
    khala__proto_msg_free(&r);
    return 0;
}

/* Whether any file under dir holds needle (the LMDB files, read as bytes). */
static const char *g_needle;
static size_t g_needle_len;
static int g_found;

static int scan_file(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)ftw;
    if (flag != FTW_F || !S_ISREG(st->st_mode))
        return 0;
    /* The files are small; at most their first 256 MiB are read (the data sits at the start). */
    size_t cap = st->st_size < (256 << 20) ? (size_t)st->st_size : (size_t)256 << 20;
    char *buf = malloc(cap ? cap : 1);
    cr_assert(buf);
    FILE *f = fopen(path, "rb");
    cr_assert(f, "%s", path);
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    if (memmem(buf, n, g_needle, g_needle_len))
        g_found = 1;
    free(buf);
    return 0;
}

static int dir_holds(const char *dir, const void *needle, size_t len) {
    g_needle = needle;
    g_needle_len = len;
    g_found = 0;
    cr_assert_eq(nftw(dir, scan_file, 16, FTW_PHYS), 0, "cannot walk %s", dir);
    return g_found;
}

/* Flip a ciphertext byte of every envelope in the disk store's file path whose record (a
 * gap-byte header, then the envelope of a vlen-byte plaintext) comes after the bytes of key
 * (klen), and make the record's XXH32 agree again (daemon/tier_disk_record.c: the u32 at 4 is
 * XXH32 of bytes 8..end seeded with the type byte at 1), as anyone who can write the file can:
 * that sum catches accidents, the AEAD tag an attacker. How many were flipped. */
static int flip_after(const char *path, const char *key, size_t klen, size_t gap, size_t vlen) {
    FILE *f = fopen(path, "r+b");
    cr_assert(f, "%s", path);
    struct stat st;
    cr_assert_eq(fstat(fileno(f), &st), 0);
    size_t cap = (size_t)st.st_size, len, flipped = 0;
    uint8_t *buf = malloc(cap ? cap : 1);
    cr_assert(buf);
    len = fread(buf, 1, cap, f);
    for (uint8_t *m = buf; (m = memmem(m, len - (size_t)(m - buf), MAGIC, sizeof(MAGIC))); m++) {
        if ((size_t)(m - buf) < klen + gap || memcmp(m - gap - klen, key, klen) != 0)
            continue;
        size_t off = (size_t)(m - buf) + 8 + 24 + 1;
        buf[off] ^= 0x10;
        cr_assert_eq(fseek(f, (long)off, SEEK_SET), 0);
        cr_assert_eq(fwrite(&buf[off], 1, 1, f), 1);
        const uint8_t *rec = m - gap;
        size_t size = gap + vlen + 48; /* the envelope: 48 bytes beyond the plaintext */
        cr_assert_leq((size_t)(rec - buf) + size, len);
        uint32_t sum = XXH32(rec + 8, size - 8, rec[1]);
        cr_assert_eq(fseek(f, (long)(rec - buf) + 4, SEEK_SET), 0);
        cr_assert_eq(fwrite(&sum, sizeof(sum), 1, f), 1);
        flipped++;
    }
    fclose(f);
    free(buf);
    return (int)flipped;
}

static redisContext *redis(void) {
    redisContext *rc = redisConnect("127.0.0.1", (int)g_redis.port);
    cr_assert(rc && !rc->err, "redis: %s", rc ? rc->errstr : "no memory");
    return rc;
}

/* The raw Redis value of cache key key, into buf; its length. */
static size_t raw_get(redisContext *rc, const char *key, char *buf, size_t cap) {
    redisReply *r = redisCommand(rc, "GET khala:%s:%s", khalad_name, key);
    cr_assert(r && r->type == REDIS_REPLY_STRING, "no raw value of %s in Redis", key);
    cr_assert_lt((size_t)r->len, cap);
    memcpy(buf, r->str, (size_t)r->len);
    size_t n = (size_t)r->len;
    freeReplyObject(r);
    return n;
}

/* Overwrite the byte at off of cache key key's raw Redis value with b (SETRANGE keeps the TTL). */
static void redis_set_byte(redisContext *rc, const char *key, size_t off, char b) {
    char offs[32];
    snprintf(offs, sizeof(offs), "%zu", off);
    redisReply *r =
        redisCommand(rc, "SETRANGE khala:%s:%s %s %b", khalad_name, key, offs, &b, (size_t)1);
    cr_assert(r && r->type == REDIS_REPLY_INTEGER, "SETRANGE: %s", r ? r->str : rc->errstr);
    freeReplyObject(r);
}

/* Offset of the envelope in a raw value. */
static size_t envelope_at(const char *raw, size_t n) {
    const char *m = memmem(raw, n, MAGIC, sizeof(MAGIC));
    cr_assert(m, "the raw value holds no envelope");
    return (size_t)(m - raw);
}

/* Run khalad with the configuration of configure() (plus --check when check), expect it to
 * exit 1, and return its stderr in out. */
static void run_failing(int check, char *out, size_t cap) {
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char *argv[40];
        int n = 0;
        static char sock[200];
        snprintf(sock, sizeof(sock), "cache.socket=%s", khalad_sock);
        argv[n++] = (char *)KHALAD_PATH;
        argv[n++] = (char *)"--foreground";
        argv[n++] = (char *)"--name";
        argv[n++] = khalad_name;
        argv[n++] = (char *)"--set";
        argv[n++] = sock;
        for (int i = 0; khalad_extra_sets[i]; i++) {
            argv[n++] = (char *)"--set";
            argv[n++] = (char *)khalad_extra_sets[i];
        }
        if (check)
            argv[n++] = (char *)"--check";
        argv[n] = NULL;
        dup2(p[1], 2);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        close(p[0]);
        execv(KHALAD_PATH, argv);
        _exit(127);
    }
    close(p[1]);
    size_t len = 0;
    for (int waited = 0; waited < 200 && len + 1 < cap; waited++) { /* at most 20 s */
        struct pollfd pfd = {.fd = p[0], .events = POLLIN};
        if (poll(&pfd, 1, 100) <= 0)
            continue;
        ssize_t r = read(p[0], out + len, cap - 1 - len);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    out[len] = '\0';
    close(p[0]);
    int status = 0;
    pid_t w = 0;
    for (int i = 0; i < 1000 && (w = waitpid(pid, &status, WNOHANG)) == 0; i++)
        sleep_ms(10); /* bounded: 10 s */
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        cr_assert_fail("khalad did not stop; stderr: %s", out);
    }
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d; stderr: %s", status, out);
}

/* Tests -------------------------------------------------------------------------------------- */

Test(encryption, disk_store_holds_ciphertext_of_an_encrypted_type_and_plaintext_of_others) {
    write_keys("1 " KEY1 "\n", 0600);
    configure(0, "write_through");
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    put(ch, "s1", KHALA_TYPE_AGENT_RESPONSE, SECRET);
    put(ch, "p1", KHALA_TYPE_MEMORY_ENTITY, PLAIN);
    char val[256];
    khala_level_t lvl = KHALA_LEVEL_L1;
    cr_assert_eq(get(ch, "s1", val, sizeof(val), &lvl), 0);
    cr_assert_str_eq(val, SECRET);
    cr_assert_eq(lvl, KHALA_LEVEL_L2);
    cr_assert_geq(crypto_stat(ch, "sealed"), 1);
    cr_assert_geq(crypto_stat(ch, "opened"), 1);
    khala__chan_close(ch);
    khalad_kill(SIGTERM); /* the store's files are complete */

    char l2[200];
    snprintf(l2, sizeof(l2), "%s/l2", khalad_dir());
    cr_assert_not(dir_holds(l2, SECRET, strlen(SECRET)), "the LMDB store holds the plaintext");
    cr_assert(dir_holds(l2, MAGIC, sizeof(MAGIC)), "the LMDB store holds no envelope");
    cr_assert(dir_holds(l2, PLAIN, strlen(PLAIN)), "a type not encrypted stays plaintext");

    /* Read back by the next khalad. */
    khalad_start();
    ch = khalad_chan();
    cr_assert_eq(get(ch, "s1", val, sizeof(val), NULL), 0);
    cr_assert_str_eq(val, SECRET);
    put(ch, "s2", KHALA_TYPE_AGENT_RESPONSE, "SECRET-two");
    khala__chan_close(ch);
    khalad_kill(SIGTERM);

    /* One ciphertext byte of s1 flipped in the LMDB file, in every copy LMDB's copy-on-write
     * left (a leaf node holds the key, "s1", then the record: a 24-byte header, the value). */
    char data[240];
    snprintf(data, sizeof(data), "%s/data.mdb", l2);
    cr_assert_gt(flip_after(data, "s1", 2, 24, strlen(SECRET)), 0, "no envelope of s1 in %s", data);
    khalad_start();
    ch = khalad_chan();
    cr_assert_eq(get(ch, "s1", val, sizeof(val), NULL), KHALA_ENOTFOUND, "got '%s'", val);
    cr_assert_eq(crypto_stat(ch, "auth_failures"), 1);
    cr_assert_eq(get(ch, "s2", val, sizeof(val), NULL), 0);
    cr_assert_str_eq(val, "SECRET-two");
    khala__chan_close(ch);
}

Test(encryption, redis_holds_ciphertext_and_a_tampered_or_moved_value_is_refused_and_counted) {
    start_on_redis("write_through");
    khala_chan_t *ch = khalad_chan();
    put(ch, "s1", KHALA_TYPE_AGENT_RESPONSE, SECRET);
    put(ch, "s2", KHALA_TYPE_AGENT_RESPONSE, "SECRET-two");
    put(ch, "p1", KHALA_TYPE_MEMORY_ENTITY, PLAIN);
    redisContext *rc = redis();
    char raw[1024];
    size_t n = raw_get(rc, "s1", raw, sizeof(raw));
    cr_assert_null(memmem(raw, n, "SECRET", 6), "Redis holds the plaintext");
    size_t env = envelope_at(raw, n);
    n = raw_get(rc, "p1", raw, sizeof(raw));
    cr_assert(memmem(raw, n, PLAIN, strlen(PLAIN)), "a type not encrypted stays plaintext");

    char val[256], state[256], error[256];
    cr_assert_eq(get(ch, "s1", val, sizeof(val), NULL), 0);
    cr_assert_str_eq(val, SECRET);
    cr_assert_eq(crypto_stat(ch, "auth_failures"), 0);

    /* One ciphertext byte of s1 flipped in Redis (SETRANGE keeps the TTL). */
    n = raw_get(rc, "s1", raw, sizeof(raw));
    redis_set_byte(rc, "s1", env + 8 + 24 + 2, (char)(raw[env + 8 + 24 + 2] ^ 0x20));
    cr_assert_eq(get(ch, "s1", val, sizeof(val), NULL), KHALA_ENOTFOUND, "got '%s'", val);
    cr_assert_eq(crypto_stat(ch, "auth_failures"), 1);
    /* inspect says why rather than "no such key". */
    cr_assert_eq(inspect_l2(ch, "s1", state, error, sizeof(error)), KHALA_EAUTH);
    cr_assert(strstr(error, "l2 (redis)") && strstr(error, "failed authentication"), "%s", error);

    /* s2's whole raw value copied under s3 (its version and TTL with it): bound to s2. */
    n = raw_get(rc, "s2", raw, sizeof(raw));
    redisReply *r = redisCommand(rc, "SET khala:%s:s3 %b", khalad_name, raw, n);
    cr_assert(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    uint64_t before = crypto_stat(ch, "auth_failures"); /* inspect's read counted one too */
    cr_assert_eq(before, 2);
    cr_assert_eq(get(ch, "s3", val, sizeof(val), NULL), KHALA_ENOTFOUND, "got '%s'", val);
    cr_assert_eq(crypto_stat(ch, "auth_failures"), before + 1);
    cr_assert_eq(get(ch, "s2", val, sizeof(val), NULL), 0);
    cr_assert_str_eq(val, "SECRET-two");

    /* A type on L1 and L2: L1 still answers, inspect shows L2's copy refused. */
    put(ch, "v1", KHALA_TYPE_VERIFICATION, "SECRET-verdict");
    n = raw_get(rc, "v1", raw, sizeof(raw));
    env = envelope_at(raw, n);
    redis_set_byte(rc, "v1", n - 1, (char)(raw[n - 1] ^ 0x01)); /* the last byte of the tag */
    cr_assert_eq(inspect_l2(ch, "v1", state, error, sizeof(error)), 0, "%s", error);
    cr_assert_str_eq(state, "refused");
    cr_assert_str_eq(error, "KHALA_EAUTH");
    khala_level_t lvl = KHALA_LEVEL_L2;
    cr_assert_eq(get(ch, "v1", val, sizeof(val), &lvl), 0);
    cr_assert_str_eq(val, "SECRET-verdict");
    cr_assert_eq(lvl, KHALA_LEVEL_L1);
    redisFree(rc);
    khala__chan_close(ch);
}

Test(encryption, keys_rotate_without_a_flush) {
    start_on_redis("write_through");
    khala_chan_t *ch = khalad_chan();
    put(ch, "old", KHALA_TYPE_AGENT_RESPONSE, "SECRET-old");
    khala__chan_close(ch);
    khalad_kill(SIGTERM);

    write_keys("1 " KEY1 "\n2 " KEY2 "\n", 0600);
    khalad_start();
    ch = khalad_chan();
    char val[256];
    cr_assert_eq(get(ch, "old", val, sizeof(val), NULL), 0);
    cr_assert_str_eq(val, "SECRET-old");
    put(ch, "new", KHALA_TYPE_AGENT_RESPONSE, "SECRET-new");
    cr_assert_eq(crypto_stat(ch, "current_key_id"), 2);
    cr_assert_eq(crypto_stat(ch, "keys"), 2);
    redisContext *rc = redis();
    char raw[1024];
    size_t n = raw_get(rc, "old", raw, sizeof(raw)), e = envelope_at(raw, n);
    cr_assert_eq(memcmp(raw + e + 4, "\0\0\0\1", 4), 0, "the old value keeps key id 1");
    n = raw_get(rc, "new", raw, sizeof(raw));
    e = envelope_at(raw, n);
    cr_assert_eq(memcmp(raw + e + 4, "\0\0\0\2", 4), 0, "a new value is sealed with key id 2");
    redisFree(rc);
    khala__chan_close(ch);

    /* Key 1 taken out of the file: its values are refused, not returned. */
    khalad_kill(SIGTERM);
    write_keys("2 " KEY2 "\n", 0600);
    khalad_start();
    ch = khalad_chan();
    cr_assert_eq(get(ch, "old", val, sizeof(val), NULL), KHALA_ENOTFOUND, "got '%s'", val);
    cr_assert_eq(crypto_stat(ch, "unknown_key"), 1);
    cr_assert_eq(get(ch, "new", val, sizeof(val), NULL), 0);
    cr_assert_str_eq(val, "SECRET-new");
    khala__chan_close(ch);
}

/* stats crypto.current_key_id, polled (bounded: 10 s) until it is want. */
static uint64_t wait_key_id(khala_chan_t *ch, uint64_t want) {
    uint64_t id = 0;
    for (int i = 0; i < 1000 && (id = crypto_stat(ch, "current_key_id")) != want; i++)
        sleep_ms(10);
    return id;
}

Test(encryption, sighup_reloads_the_key_file_and_a_bad_one_changes_nothing) {
    start_on_redis("write_through");
    khala_chan_t *ch = khalad_chan();
    put(ch, "old", KHALA_TYPE_AGENT_RESPONSE, "SECRET-old");

    /* A key file others may read: refused at the reload, khalad keeps serving with key 1. */
    write_keys("1 " KEY1 "\n3 " KEY2 "\n", 0644);
    cr_assert_eq(kill(khalad_pid, SIGHUP), 0);
    write_keys("1 " KEY1 "\n2 " KEY2 "\n", 0600);
    /* Fixed and signalled again: key 2 is current, key 1 still opens. Both signals are handled
     * by the tick in order; whichever file the first one read, the second reads this one. */
    cr_assert_eq(kill(khalad_pid, SIGHUP), 0);
    cr_assert_eq(wait_key_id(ch, 2), 2, "SIGHUP did not take key 2");
    cr_assert_eq(crypto_stat(ch, "keys"), 2);
    char val[256];
    cr_assert_eq(get(ch, "old", val, sizeof(val), NULL), 0);
    cr_assert_str_eq(val, "SECRET-old");
    put(ch, "new", KHALA_TYPE_AGENT_RESPONSE, "SECRET-new");
    redisContext *rc = redis();
    char raw[1024];
    size_t n = raw_get(rc, "new", raw, sizeof(raw)), e = envelope_at(raw, n);
    cr_assert_eq(memcmp(raw + e + 4, "\0\0\0\2", 4), 0, "a new value is sealed with key id 2");
    redisFree(rc);

    /* A bad file alone: nothing changes. */
    write_keys("2 " KEY2 "\n", 0644);
    cr_assert_eq(kill(khalad_pid, SIGHUP), 0);
    sleep_ms(200); /* not a timing assertion: the outcome checked is "unchanged" */
    cr_assert_eq(crypto_stat(ch, "keys"), 2);
    cr_assert_eq(get(ch, "old", val, sizeof(val), NULL), 0);
    khala__chan_close(ch);
}

Test(encryption, the_write_journal_holds_ciphertext_and_replays_it_after_a_sigkill) {
    start_on_redis("write_behind");
    tu_redis_kill(&g_redis); /* writes now wait in the journal */
    khala_chan_t *ch = khalad_chan();
    put(ch, "s1", KHALA_TYPE_AGENT_RESPONSE, SECRET);
    put(ch, "p1", KHALA_TYPE_MEMORY_ENTITY, PLAIN);
    khala__chan_close(ch);
    khalad_kill(SIGKILL);

    char journal[200];
    snprintf(journal, sizeof(journal), "%s/l2/journal", khalad_dir());
    cr_assert_not(dir_holds(journal, SECRET, strlen(SECRET)), "the journal holds the plaintext");
    cr_assert(dir_holds(journal, MAGIC, sizeof(MAGIC)), "the journal holds no envelope");
    cr_assert(dir_holds(journal, PLAIN, strlen(PLAIN)), "a type not encrypted stays plaintext");

    /* The next khalad replays the journal into Redis: sealed there, plaintext to a reader. */
    tu_redis_start(&g_redis, NULL);
    khalad_start();
    ch = khalad_chan();
    char val[256] = "";
    int rc = KHALA_ENOTFOUND;
    for (int i = 0; i < 1000 && rc != 0; i++) { /* bounded: until the flusher drained it */
        rc = get(ch, "s1", val, sizeof(val), NULL);
        if (rc != 0)
            sleep_ms(10);
    }
    cr_assert_eq(rc, 0, "s1 never came back: %s", khala_strerror(rc));
    cr_assert_str_eq(val, SECRET);
    redisContext *r = redis();
    char raw[1024];
    size_t n = 0;
    for (int i = 0; i < 1000; i++) { /* the queued write reaches Redis */
        redisReply *x = redisCommand(r, "EXISTS khala:%s:s1", khalad_name);
        int there = x && x->type == REDIS_REPLY_INTEGER && x->integer == 1;
        freeReplyObject(x);
        if (there)
            break;
        sleep_ms(10);
    }
    n = raw_get(r, "s1", raw, sizeof(raw));
    cr_assert_null(memmem(raw, n, "SECRET", 6));
    (void)envelope_at(raw, n);
    redisFree(r);
    khala__chan_close(ch);
}

Test(encryption, a_key_file_others_can_read_stops_khalad_and_check_naming_file_and_mode) {
    char out[2048];
    write_keys("1 " KEY1 "\n", 0644);
    configure(0, "write_through");
    run_failing(1, out, sizeof(out));
    cr_assert(strstr(out, g_keys) && strstr(out, "mode 0644"), "--check said: %s", out);
    run_failing(0, out, sizeof(out));
    cr_assert(strstr(out, g_keys) && strstr(out, "mode 0644") && strstr(out, "chmod 600"),
              "a start said: %s", out);
    /* Fixed, it starts. */
    cr_assert_eq(chmod(g_keys, 0600), 0);
    khalad_start();
}

Test(encryption, a_key_file_owned_by_another_user_stops_khalad_and_check) {
    if (geteuid() != 0)
        cr_skip_test("needs root to give the key file to another user");
    char out[2048];
    write_keys("1 " KEY1 "\n", 0600);
    cr_assert_eq(chown(g_keys, 65534, 65534), 0);
    configure(0, "write_through");
    run_failing(1, out, sizeof(out));
    cr_assert(strstr(out, g_keys) && strstr(out, "owned by uid 65534"), "--check said: %s", out);
    run_failing(0, out, sizeof(out));
    cr_assert(strstr(out, "owned by uid 65534"), "a start said: %s", out);
}

Test(encryption, an_encrypted_type_without_a_key_file_is_a_configuration_error) {
    char out[2048];
    khalad_extra_sets[0] = "type.agent_response.encrypt=true";
    khalad_extra_sets[1] = NULL;
    run_failing(1, out, sizeof(out));
    cr_assert(strstr(out, "[type.agent_response] encrypt: true needs [crypto] key_file"), "%s",
              out);
}

/* Semantic look-ups (issue 12): with embeddings encrypted, every level holds their ciphertext,
 * which no similarity means anything over: similar is refused with -ENOTSUP naming why; with
 * another type encrypted, embeddings are found as usual. */
Test(encryption, similar_is_refused_when_embeddings_are_encrypted) {
    static const float v[4] = {1, 0, 0, 0};
    write_keys("1 " KEY1 "\n", 0600);
    for (int enc = 1; enc >= 0; enc--) {
        khalad_extra_sets[0] = g_sets[0];
        snprintf(g_sets[0], sizeof(g_sets[0]), "crypto.key_file=%s", g_keys);
        snprintf(g_sets[1], sizeof(g_sets[1]), "type.%s.encrypt=true",
                 enc ? "embedding" : "agent_response");
        khalad_extra_sets[1] = g_sets[1];
        khalad_extra_sets[2] = NULL;
        khalad_start();
        khala_chan_t *ch = khalad_chan();
        khala_msg_t m = khalad_req(KHALA_OP_PUT, enc ? "e:sealed" : "e:clear"), r;
        m.value = (khala_bytes_t){(const uint8_t *)v, sizeof(v)};
        m.type = KHALA_TYPE_EMBEDDING;
        m.mode = KHALA_MODE_THROUGH;
        m.has |= KHALA_F_V | KHALA_F_TYPE | KHALA_F_MODE;
        cr_assert_eq(call(ch, &m, &r), 0);
        khala__proto_msg_free(&r);
        m = khalad_req(KHALA_OP_SIMILAR, NULL);
        m.value = (khala_bytes_t){(const uint8_t *)v, sizeof(v)};
        m.has |= KHALA_F_V;
        int rc = call(ch, &m, &r);
        if (enc) {
            cr_assert_eq(rc, -ENOTSUP, "%s", khala_strerror(rc));
            cr_assert(r.err.len && memmem(r.err.ptr, r.err.len, "embedding type is encrypted", 27),
                      "%.*s", (int)r.err.len, (const char *)r.err.ptr);
        } else {
            cr_assert_eq(rc, 0, "%.*s", (int)r.err.len, (const char *)r.err.ptr);
            cr_assert_eq(r.nmatches, 1, "only the embedding stored in the clear is a match");
            cr_assert_eq(r.matches[0].key.len, 7);
            cr_assert_eq(memcmp(r.matches[0].key.ptr, "e:clear", 7), 0);
        }
        khala__proto_msg_free(&r);
        khala__chan_close(ch);
        khalad_kill(SIGTERM);
    }
}
