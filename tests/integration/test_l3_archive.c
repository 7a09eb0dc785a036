/*
 * L3's archive through a real khalad, on the embedded L3 (the local-disk store): items L3
 * evicts for space (a tiny [l3] max_entries) are read back with a get carrying "archive": true,
 * over the protocol and through khala_cache_get_archive(), answered by L3 and never promoted; a
 * key never evicted, or deleted, has no archived copy; khalad's stats count the evictions.
 *
 * "Only L3's archive holds it" is made for real: khalad is stopped, L2's store removed and the
 * L1 segment unlinked, and a new khalad started on the same L3 store.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "channel.h"
#include "harness.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "khalad_util.h"
#include "proto.h"
#include "segment.h"
#include "segment_create.h"

#define NKEYS 5

static void setup(void) {
    khalad_env_init("l3ar");
    memset(khalad_extra_sets, 0, sizeof(khalad_extra_sets));
    /* L3 holds 3 items (its archive 3 more): of NKEYS keys, NKEYS - 3 are evicted. */
    khalad_extra_sets[0] = "l3.max_entries=3";
    khalad_extra_sets[1] = "l3.archive_retention_seconds=3600";
}

TestSuite(l3_archive, .init = setup, .fini = khalad_env_fini, .timeout = 120);

static void put_str(khala_chan_t *ch, const char *key, const char *val) {
    khala_msg_t m = khalad_req(KHALA_OP_PUT, key), r;
    m.value.ptr = (const uint8_t *)val;
    m.value.len = strlen(val);
    m.type = KHALA_TYPE_MEMORY_ENTITY; /* kept on L3 by default */
    m.has |= KHALA_F_V | KHALA_F_TYPE;
    int rc = khalad_call(ch, &m, &r, 10000);
    cr_assert_eq(rc, 0, "put %s: %s", key, khala_strerror(rc));
    khala__proto_msg_free(&r);
}

/* A get with "archive": rc; the value into val and the answering level into *lvl. */
static int get_archive(khala_chan_t *ch, const char *key, char *val, size_t cap,
                       khala_level_t *lvl) {
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    m.archive = true;
    m.has |= KHALA_F_ARCHIVE;
    int rc = khalad_call(ch, &m, &r, 10000);
    if (rc == 0) {
        cr_assert_lt(r.value.len, cap);
        memcpy(val, r.value.ptr, r.value.len);
        val[r.value.len] = '\0';
        *lvl = r.lvl;
    }
    khala__proto_msg_free(&r);
    return rc;
}

/* Put k0..k<NKEYS-1>, then wait (bounded) until L3 evicted NKEYS - 3 of them (a write-behind
 * L3 drains from the tick); which ones go to archived[] (1 = archived). */
static void fill(khala_chan_t *ch, int archived[NKEYS]) {
    char key[16], val[32], got[64];
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        snprintf(val, sizeof(val), "value %d", i);
        put_str(ch, key, val);
    }
    int n = 0;
    for (int tries = 0; tries < 100 && n < NKEYS - 3; tries++) {
        n = 0;
        for (int i = 0; i < NKEYS; i++) {
            snprintf(key, sizeof(key), "k%d", i);
            khala_level_t lvl;
            archived[i] = get_archive(ch, key, got, sizeof(got), &lvl) == 0;
            n += archived[i];
        }
        if (n < NKEYS - 3)
            sleep_ms(50);
    }
    cr_assert_eq(n, NKEYS - 3, "archived %d keys", n);
}

Test(l3_archive, an_item_l3_evicted_is_read_from_its_archive_and_not_promoted) {
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    int archived[NKEYS];
    fill(ch, archived);
    cr_assert_geq(khalad_stat(ch, "l3", "evictions", 10000), NKEYS - 3);
    khala__chan_close(ch);

    /* Leave only L3: its live items and its archive. */
    khalad_kill(SIGTERM);
    char l2[512];
    snprintf(l2, sizeof(l2), "%s/l2", khalad_dir());
    harness_rmtree(l2);
    khala__seg_unlink(khalad_name);
    khalad_start();
    ch = khalad_chan();
    char key[16], want[32], got[64];
    for (int i = 0; i < NKEYS; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        snprintf(want, sizeof(want), "value %d", i);
        khala_level_t lvl = KHALA_LEVEL_NONE;
        int rc = get_archive(ch, key, got, sizeof(got), &lvl);
        if (!archived[i]) {
            cr_assert_eq(rc, KHALA_ENOTFOUND, "%s is live on L3, not archived", key);
            continue;
        }
        cr_assert_eq(rc, 0, "%s: %s", key, khala_strerror(rc));
        cr_assert_str_eq(got, want);
        cr_assert_eq(lvl, KHALA_LEVEL_L3);
        /* Not promoted: a plain get still misses (the archived copy is not current). */
        khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
        cr_assert_eq(khalad_call(ch, &m, &r, 10000), KHALA_ENOTFOUND, "%s", key);
        khala__proto_msg_free(&r);
    }
    khala__chan_close(ch);
}

static int sink_copy(void *arg, const void *val, size_t len, const khala_meta_t *meta) {
    char *out = arg;
    memcpy(out, val, len);
    out[len] = '\0';
    cr_assert_eq(meta->level, KHALA_LEVEL_L3);
    cr_assert_gt(meta->ttl_left_ms, 0); /* the retention left */
    cr_assert_eq(meta->type, (uint32_t)KHALA_TYPE_MEMORY_ENTITY);
    return 0;
}

Test(l3_archive, the_client_api_reads_the_archive_and_a_delete_removes_the_copy) {
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    int archived[NKEYS];
    fill(ch, archived);
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &c), 0, "%s", khala_cache_errmsg(NULL));
    int first = -1;
    for (int i = 0; i < NKEYS && first < 0; i++)
        if (archived[i])
            first = i;
    char key[16], want[32], got[64];
    snprintf(key, sizeof(key), "k%d", first);
    snprintf(want, sizeof(want), "value %d", first);
    cr_assert_eq(khala_cache_get_archive(c, key, strlen(key), sink_copy, got), 0, "%s",
                 khala_cache_errmsg(c));
    cr_assert_str_eq(got, want);
    /* Bad input is named. */
    cr_assert_eq(khala_cache_get_archive(c, "", 0, sink_copy, got), KHALA_EKEY);
    cr_assert_eq(khala_cache_get_archive(c, key, strlen(key), NULL, NULL), -EINVAL);
    cr_assert_eq(khala_cache_get_archive(c, "never", 5, sink_copy, got), KHALA_ENOTFOUND);
    /* A delete reaches L3 and its archive: the copy is gone. */
    cr_assert_eq(khala_cache_delete(c, key, strlen(key)), 0, "%s", khala_cache_errmsg(c));
    int rc = 0;
    for (int tries = 0; tries < 100; tries++) {
        rc = khala_cache_get_archive(c, key, strlen(key), sink_copy, got);
        if (rc == KHALA_ENOTFOUND)
            break;
        sleep_ms(50);
    }
    cr_assert_eq(rc, KHALA_ENOTFOUND, "the archived copy of a deleted key is gone");
    khala_cache_close(c);
    khala__chan_close(ch);
}

/* Does the file hold the n bytes at p? */
static int file_holds(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    static char buf[1 << 24];
    size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    return memmem(buf, len, p, n) != NULL;
}

Test(l3_archive, an_encrypted_type_is_archived_sealed_and_read_back_in_plaintext) {
    char keys[200], set_keys[260];
    snprintf(keys, sizeof(keys), "%s/keys", khalad_dir());
    int fd = open(keys, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert_geq(fd, 0);
    const char *line = "1 1111111111111111111111111111111111111111111111111111111111111111\n";
    cr_assert_eq(write(fd, line, strlen(line)), (ssize_t)strlen(line));
    close(fd);
    snprintf(set_keys, sizeof(set_keys), "crypto.key_file=%s", keys);
    khalad_extra_sets[2] = set_keys;
    khalad_extra_sets[3] = "type.memory_entity.encrypt=true";
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    int archived[NKEYS];
    fill(ch, archived);
    char key[16], want[32], got[64];
    for (int i = 0; i < NKEYS; i++) {
        if (!archived[i])
            continue;
        snprintf(key, sizeof(key), "k%d", i);
        snprintf(want, sizeof(want), "value %d", i);
        khala_level_t lvl;
        cr_assert_eq(get_archive(ch, key, got, sizeof(got), &lvl), 0);
        cr_assert_str_eq(got, want); /* opened by khalad */
    }
    khala__chan_close(ch);
    khalad_kill(SIGTERM);
    /* L3's store (archive included) holds no plaintext value. */
    char data[600];
    snprintf(data, sizeof(data), "%s/l3/data.mdb", khalad_dir());
    cr_assert_not(file_holds(data, "value ", 6), "L3's store holds a plaintext value");
}

/* Write a record that is not one (3 bytes) as the archived copy of key in L3's store. */
static void damage_archived_copy(const char *key) {
    char store[512];
    snprintf(store, sizeof(store), "%s/l3", khalad_dir());
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    cr_assert_eq(mdb_env_create(&env), 0);
    cr_assert_eq(mdb_env_set_maxdbs(env, 16), 0);
    cr_assert_eq(mdb_env_open(env, store, 0, 0600), 0, "%s", store);
    cr_assert_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    cr_assert_eq(mdb_dbi_open(txn, "archive", 0, &dbi), 0);
    MDB_val k = {strlen(key), (void *)key}, v = {3, "xyz"};
    cr_assert_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* A damaged archived copy is reported as such, naming the level and the key; L3 stays up: its
 * other copies and its live items are still read. */
Test(l3_archive, a_damaged_archived_copy_is_named_and_l3_keeps_serving) {
    khalad_start();
    khala_chan_t *ch = khalad_chan();
    int archived[NKEYS];
    fill(ch, archived);
    khala__chan_close(ch);
    khalad_kill(SIGTERM);
    int bad = -1, good = -1, live = -1;
    for (int i = 0; i < NKEYS; i++) {
        if (archived[i] && bad < 0)
            bad = i;
        else if (archived[i])
            good = i;
        else
            live = i;
    }
    cr_assert(bad >= 0 && good >= 0 && live >= 0);
    char key[16], want[32], got[64];
    snprintf(key, sizeof(key), "k%d", bad);
    damage_archived_copy(key);
    khalad_start();
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = khalad_sock;
    khala_cache_t *c = NULL;
    cr_assert_eq(khala_cache_open(khalad_name, &o, &c), 0, "%s", khala_cache_errmsg(NULL));
    cr_assert_eq(khala_cache_get_archive(c, key, strlen(key), sink_copy, got), KHALA_ECORRUPT, "%s",
                 khala_cache_errmsg(c));
    const char *msg = khala_cache_errmsg(c);
    cr_assert(strstr(msg, "L3") && strstr(msg, "malformed") && strstr(msg, key), "%s", msg);
    /* L3 is still up: another archived copy and a live item are read. */
    snprintf(key, sizeof(key), "k%d", good);
    snprintf(want, sizeof(want), "value %d", good);
    cr_assert_eq(khala_cache_get_archive(c, key, strlen(key), sink_copy, got), 0, "%s",
                 khala_cache_errmsg(c));
    cr_assert_str_eq(got, want);
    ch = khalad_chan();
    snprintf(key, sizeof(key), "k%d", live);
    khala_msg_t m = khalad_req(KHALA_OP_GET, key), r;
    cr_assert_eq(khalad_call(ch, &m, &r, 10000), 0, "%s", key);
    khala__proto_msg_free(&r);
    khala__chan_close(ch);
    khala_cache_close(c);
}
