/*
 * Fuzz target: attaching to, and reading from, a data segment whose bytes are anything.
 *
 * The input is written as the whole data file of a cache whose readers file is valid, then a
 * reader attaches (khala__seg_attach) and, if that succeeds, looks up a few keys and copies
 * their values out, exactly as khala_cache_get does. Whatever the bytes, this must end in 0 or
 * an error code, never in a crash, a hang or a read outside the mapping (ASan watches the
 * heap; the mapping's own bounds are what the library checks).
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
static khala_l1_t *g_writer; /* keeps a valid readers file alive */
static uint8_t *g_image;     /* a copy of the valid data file */
static size_t g_image_len;

static int write_data_file(const uint8_t *data, size_t size);

/* Make the cache whose data file the fuzzer overwrites; fill *image with a valid data file. */
int fuzz_segment_setup(uint8_t **image, size_t *len) {
    char err[256];
    khala_seg_config_t cfg;
    khala__seg_config_init(&cfg);
    cfg.max_items = 16;
    cfg.max_bytes = 64 * 1024;
    cfg.max_readers = 4;
    cfg.ring_size = 16;
    snprintf(g_name, sizeof(g_name), "fuzz%d", (int)getpid());
    if (khala__l1_open(g_name, &cfg, &g_writer, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_segment: %s\n", err);
        return -1;
    }
    for (int i = 0; i < 24; i++) {
        char key[16], val[64];
        int klen = snprintf(key, sizeof(key), "k%d", i);
        memset(val, 'a' + i % 26, sizeof(val));
        if (khala__l1_put(g_writer, key, (size_t)klen, val, (size_t)(i * 3) % sizeof(val),
                          i % 3 ? 0 : 60000, 1, NULL) != 0)
            return -1;
    }
    khala_seg_t *s = khala__l1_seg(g_writer);
    g_image_len = s->size;
    g_image = malloc(s->size);
    if (!g_image)
        return -1;
    memcpy(g_image, s->base, s->size);
    *len = g_image_len;
    *image = g_image;
    return 0;
}

void fuzz_segment_teardown(void) {
    /* Give the writer back a file as large as its mapping before it touches the header. */
    if (g_writer)
        (void)write_data_file(g_image, g_image_len);
    khala__l1_close(g_writer, 1);
    g_writer = NULL;
    free(g_image);
    g_image = NULL;
}

/* Write data as the whole data file. The writer's own mapping of the file is never used again
 * until teardown, which first gives the file back its size. */
static int write_data_file(const uint8_t *data, size_t size) {
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm/khala.%s.data", g_name);
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

int fuzz_segment_one(const uint8_t *data, size_t size) {
    char err[256];
    khala_seg_t s;
    if (!g_writer || write_data_file(data, size) != 0)
        return 0;
    if (khala__seg_attach(&s, g_name, 0, err, sizeof(err)) != 0)
        return 0;
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
