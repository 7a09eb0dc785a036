/*
 * Fuzz target: attaching to, and reading from, a data segment whose bytes are anything, and
 * restarting its writer on it.
 *
 * The input is written as the whole data file of a cache whose readers file is valid, then a
 * reader attaches (khala__seg_attach) and, if that succeeds, looks up a few keys and copies
 * their values out, exactly as khala_cache_get does. Then a writer restarts on the same bytes
 * as khalad does (khala__l1_open_ex with KHALA_L1_REATTACH): khala__l1_check must either pass,
 * and then the writer works on the segment (drains, reclaims, puts, evicts, sweeps) and the
 * check still passes after, or fail, and then the segment is made anew with the reason in the
 * writer's message. Whatever the bytes, this must end in 0 or an error code, never in a crash,
 * a hang or a read outside the mapping (ASan watches the heap; the mapping's own bounds are
 * what the library checks).
 *
 * Built two ways: with KHALA_FUZZ (clang, -fsanitize=fuzzer,address) as a libFuzzer binary,
 * and always as a plain program (fuzz_replay.c) that runs the seed segment and thousands of
 * deterministic mutations of it, so that the target cannot rot.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "fuzz_segment.h"
#include "l1_table.h"
#include "readers.h"
#include "segment.h"

static char g_name[KHALA_NAME_MAX + 1];
static khala_seg_config_t g_cfg;
static int g_ready;      /* setup made the cache */
static uint8_t *g_image; /* a copy of the valid data file */
static size_t g_image_len;
static uint8_t *g_readers; /* a copy of the valid readers file (no reader in it) */
static size_t g_readers_len;
static long g_reattached, g_rebuilt;
static int g_replaced; /* the last restart made the files anew: restore the readers file */

static int write_file(const char *kind, const uint8_t *data, size_t size);

/* Make the cache whose data file the fuzzer overwrites; fill *image with a valid data file. */
int fuzz_segment_setup(uint8_t **image, size_t *len) {
    char err[256];
    khala_l1_t *w;
    khala__seg_config_init(&g_cfg);
    g_cfg.max_items = 16;
    g_cfg.max_bytes = 64 * 1024;
    g_cfg.max_readers = 4;
    g_cfg.ring_size = 16;
    snprintf(g_name, sizeof(g_name), "fuzz%d", (int)getpid());
    if (khala__l1_open(g_name, &g_cfg, &w, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_segment: %s\n", err);
        return -1;
    }
    /* Overwrites and evictions, so that the image holds retired items and free blocks. */
    for (int i = 0; i < 24; i++) {
        char key[16], val[64];
        int klen = snprintf(key, sizeof(key), "k%d", i % 20);
        memset(val, 'a' + i % 26, sizeof(val));
        if (khala__l1_put(w, key, (size_t)klen, val, (size_t)(i * 3) % sizeof(val),
                          i % 3 ? 0 : 60000, 1, NULL) != 0)
            return -1;
    }
    (void)khala__l1_delete(w, "k5", 2);
    khala_seg_t *s = khala__l1_seg(w);
    g_image_len = s->size;
    g_readers_len = s->rsize;
    g_image = malloc(g_image_len);
    g_readers = malloc(g_readers_len);
    if (!g_image || !g_readers) {
        khala__l1_close(w, 1);
        return -1;
    }
    memcpy(g_image, s->base, g_image_len);
    memcpy(g_readers, s->rbase, g_readers_len);
    /* The writer goes (the files stay), so that each input can restart one on its bytes. */
    khala__l1_close(w, 0);
    g_ready = 1;
    *len = g_image_len;
    *image = g_image;
    return 0;
}

void fuzz_segment_teardown(void) {
    if (g_ready)
        (void)khala__seg_unlink(g_name);
    g_ready = 0;
    free(g_image);
    g_image = NULL;
    free(g_readers);
    g_readers = NULL;
}

void fuzz_segment_counts(long *reattached, long *rebuilt) {
    *reattached = g_reattached;
    *rebuilt = g_rebuilt;
}

/* Write data as the whole of the cache's data or readers file (kind). */
static int write_file(const char *kind, const uint8_t *data, size_t size) {
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm/khala.%s.%s", g_name, kind);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc =
        ftruncate(fd, (off_t)size) == 0 && (size == 0 || pwrite(fd, data, size, 0) == (ssize_t)size)
            ? 0
            : -1;
    close(fd);
    return rc;
}

/* Restart a writer on the data file as it is, as khalad does; see the top of the file. */
static void writer_restart(void) {
    char err[256] = "";
    khala_l1_t *t = NULL;
    int rc = khala__l1_open_ex(g_name, &g_cfg, KHALA_L1_REATTACH, &t, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "fuzz_segment: restart failed: %d %s\n", rc, err);
        abort();
    }
    if (!khala__l1_reattached(t)) {
        /* Made anew: it must say why. */
        if (strstr(khala__l1_errmsg(t), "made anew") == NULL) {
            fprintf(stderr, "fuzz_segment: rebuilt without a reason: %s\n", khala__l1_errmsg(t));
            abort();
        }
        g_rebuilt++;
        g_replaced = 1;
        khala__l1_close(t, 0);
        return;
    }
    /* Adopted: everything the writer then does trusts what the check passed. */
    g_reattached++;
    /* A version sequence this close to its end wraps during the puts below, and the put path
     * then hands out versions below older ones, which the check rightly reports; that is the
     * put path's overflow, not something the check let through. */
    int wraps = khala__l1_seg(t)->hdr->w.version_seq > UINT64_MAX - 1000;
    (void)khala__l1_maintain(t);
    for (int i = 0; i < 40; i++) {
        char key[16], val[200];
        int klen = snprintf(key, sizeof(key), "k%d", (i * 7) % 30);
        memset(val, 'x', sizeof(val));
        (void)khala__l1_put(t, key, (size_t)klen, val, (size_t)(i * 37) % sizeof(val),
                            i % 4 ? 0 : 1, 1, NULL);
        if (i % 8 == 0)
            (void)khala__l1_delete(t, key, (size_t)klen);
        if (i % 16 == 0)
            (void)khala__l1_maintain(t);
    }
    (void)khala__l1_sweep(t, 64);
    (void)khala__l1_maintain(t);
    if (!wraps && khala__l1_check(t) != 0) {
        fprintf(stderr, "fuzz_segment: a segment that passed the check broke: %s\n",
                khala__l1_errmsg(t));
        abort();
    }
    khala__l1_close(t, 0);
}

int fuzz_segment_one(const uint8_t *data, size_t size) {
    char err[256];
    khala_seg_t s;
    /* A restart that made the segment anew replaced both files: give back the readers file of
     * the seed's generation too. */
    if (!g_ready || (g_replaced && write_file("readers", g_readers, g_readers_len) != 0) ||
        write_file("data", data, size) != 0)
        return 0;
    g_replaced = 0;
    int attached = khala__seg_attach(&s, g_name, 0, err, sizeof(err)) == 0;
    if (!attached) {
        writer_restart();
        return 0;
    }
    int hits = 0;
    uint8_t out[256];
    for (int i = 0; i < 24; i++) {
        char key[KHALA_KEY_MAX];
        int klen = snprintf(key, sizeof(key), "k%d", i);
        const khala_item_t *it;
        khala_l1_index_t ix = khala__l1_index(&s);
        uint64_t hash = khala__l1_hash_with(ix.seed, key, (size_t)klen);
        if (khala__l1_lookup(&s, &ix, key, (size_t)klen, hash, &it) == 0) {
            size_t n = it->value_len < sizeof(out) ? it->value_len : sizeof(out);
            memcpy(out, khala__item_value(it), n);
            hits++;
        }
    }
    khala__seg_detach(&s);
    writer_restart();
    return 1 + (hits < 0); /* hits is read so that the copies are not optimized away */
}

#ifdef KHALA_LIBFUZZER
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    uint8_t *image;
    size_t len;
    (void)argc;
    (void)argv;
    if (fuzz_segment_setup(&image, &len) != 0)
        abort();
    atexit(fuzz_segment_teardown);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)fuzz_segment_one(data, size);
    return 0;
}
#endif
