/*
 * Segment: the shared-memory files of a cache, their layout and their validation, and how a
 * process attaches to them. Creating them, the writer lock and removing them are the writer's
 * (segment_create.c, in the writer library only).
 *
 * HOW IT WORKS
 *
 * The writer computes a layout from its configuration (layout.h draws it): a page of header,
 * then the two indexes of bucket lines, the writer-only regions (descs, ghost table, retire
 * ring, allocator state) and the arena, each aligned to a cache line and the arena to a page.
 * It creates the readers file first and the data file second, each with O_EXCL, sizes them with
 * ftruncate + posix_fallocate (so that a full /dev/shm is an error now rather than a SIGBUS in
 * some reader later), fills the header, and stores the magic number last with release order.
 * A reader that attaches before the magic is visible is told the segment is corrupt and may
 * retry; one that attaches after it sees a complete header.
 *
 * Attaching validates everything it will later trust: magic, layout version, header size, that
 * the file is as large as the header says (a truncated file would otherwise SIGBUS), that every
 * region lies inside the file and in order, and that the readers file has the same generation.
 * The derived values (bucket count, arena bounds, slot geometry) are copied into the private
 * khala_seg_t, so a header corrupted after attach cannot redirect a reader outside its mapping.
 *
 * Invariants:
 *   - Only a process holding the writer lock maps the data file read-write, and only it
 *     creates, retires or unlinks the files under the name (khala__seg_unlink, the explicit
 *     removal, excepted).
 *   - The lock file's name is unlinked only by a process holding WRITER and GATE on it.
 *   - The data file never changes size while it has a name; a new size is a new generation.
 */
#include "segment.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errbuf.h"
#include "khala/error.h"
#include "sys.h"

#define SEG_MIN_ITEMS 16u
#define SEG_MAX_ITEMS (1u << 31)
#define SEG_MIN_BYTES (64u * 1024u)
#define SEG_MAX_BYTES (1ull << 36)
#define SEG_MAX_VALUE (256u * 1024u * 1024u)
#define SEG_MAX_READERS 65536u
#define SEG_MAX_RING 65536u
#define SEG_PAGE 4096u

static uint64_t align_up(uint64_t v, uint64_t a) {
    return (v + a - 1) & ~(a - 1);
}

static uint64_t pow2_at_least(uint64_t v) {
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

void khala__seg_config_init(khala_seg_config_t *cfg) {
    cfg->max_items = 65536;
    cfg->max_bytes = 64ull * 1024 * 1024;
    cfg->max_value = KHALA_VALUE_MAX_DEFAULT;
    cfg->max_readers = 256;
    cfg->ring_size = 256;
    cfg->gid = -1;
}

void khala__seg_shm_names(const char *name, char *data, char *readers, size_t len) {
    if (data)
        snprintf(data, len, "khala.%s.data", name);
    if (readers)
        snprintf(readers, len, "khala.%s.readers", name);
}

void khala__seg_lock_name(const char *name, char *lock, size_t len) {
    snprintf(lock, len, "khala.%s.lock", name);
}

int khala__seg_name_check(const char *name, char *err, size_t errlen) {
    if (!name || !*name)
        return khala__errbuf(err, errlen, KHALA_ENAME, "cache name is empty");
    size_t n = strnlen(name, KHALA_NAME_MAX + 1);
    if (n > KHALA_NAME_MAX)
        return khala__errbuf(err, errlen, KHALA_ENAME, "cache name is longer than %d bytes",
                             KHALA_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                 ch == '_' || ch == '-' || ch == '.';
        if (!ok)
            return khala__errbuf(err, errlen, KHALA_ENAME,
                                 "cache name '%s' has character 0x%02x at %zu; use [A-Za-z0-9_.-]",
                                 name, (unsigned char)ch, i);
    }
    return 0;
}

void khala__seg_layout(khala_seg_header_t *h, const khala_seg_config_t *cfg) {
    uint64_t off = KHALA_SEG_HEADER_SIZE;
    h->max_items = cfg->max_items;
    h->max_value = cfg->max_value;
    h->max_readers = cfg->max_readers;
    h->ring_size = cfg->ring_size;
    /* One 12-slot line per 8 items of capacity: at full load about 1.6 % of the items overflow
     * into a chain (l1_table.c). No rounding to a power of two: readers pick the bucket by
     * fastrange, so the index costs 16 bytes per item for any max_items. */
    h->bucket_count = ((uint64_t)cfg->max_items + KHALA_BUCKET_LOAD - 1) / KHALA_BUCKET_LOAD;
    h->bucket_off = off;
    /* Two indexes side by side: the live one and the one a rehash builds (l1_table.c). The
     * second stays untouched, so it costs no memory, until a hash flood makes the writer
     * rehash. */
    off = align_up(off + 2 * h->bucket_count * sizeof(khala_bucket_t), KHALA_CACHE_LINE);
    h->desc_off = off;
    off = align_up(off + (uint64_t)cfg->max_items * sizeof(khala_desc_t), KHALA_CACHE_LINE);
    /* The ghost remembers about as many evicted keys as the cache holds (the study behind this
     * choice is in docs/eviction.md); the table is twice that so probes stay short. */
    h->ghost_window = cfg->max_items;
    h->ghost_cap = pow2_at_least(2ull * cfg->max_items);
    h->ghost_off = off;
    off = align_up(off + h->ghost_cap * sizeof(khala_ghost_t), KHALA_CACHE_LINE);
    h->retire_cap = cfg->max_items < 1024 ? 1024 : cfg->max_items;
    h->retire_off = off;
    off = align_up(off + h->retire_cap * sizeof(khala_retired_t), KHALA_CACHE_LINE);
    h->alloc_off = off;
    off = align_up(off + sizeof(khala_alloc_state_t), KHALA_CACHE_LINE);
    h->arena_size = align_up(cfg->max_bytes, KHALA_ALIGN);
    h->bitmap_off = off;
    off = align_up(off + khala_arena_bitmap_bytes(h->arena_size), SEG_PAGE);
    h->arena_off = off;
    h->segment_size = align_up(off + h->arena_size, SEG_PAGE);
    h->readers_size = KHALA_READERS_HEADER_SIZE +
                      (uint64_t)cfg->max_readers *
                          (sizeof(khala_slot_t) + (uint64_t)cfg->ring_size * sizeof(uint64_t));
}

int khala__seg_config_check(const khala_seg_config_t *cfg, char *err, size_t errlen) {
    if (cfg->max_items < SEG_MIN_ITEMS || cfg->max_items > SEG_MAX_ITEMS)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "max_items is %u, allowed %u to %u",
                             cfg->max_items, SEG_MIN_ITEMS, SEG_MAX_ITEMS);
    if (cfg->max_bytes < SEG_MIN_BYTES || cfg->max_bytes > SEG_MAX_BYTES)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "max_bytes is %llu, allowed %u to %llu",
                             (unsigned long long)cfg->max_bytes, SEG_MIN_BYTES,
                             (unsigned long long)SEG_MAX_BYTES);
    khala_seg_header_t lay;
    memset(&lay, 0, sizeof(lay));
    khala__seg_layout(&lay, cfg);
    if (lay.segment_size > KHALA_SEG_MAX_SIZE)
        return khala__errbuf(
            err, errlen, KHALA_ECONFIG,
            "max_bytes %llu and max_items %u need a %llu-byte segment; the limit is %llu",
            (unsigned long long)cfg->max_bytes, cfg->max_items,
            (unsigned long long)lay.segment_size, (unsigned long long)KHALA_SEG_MAX_SIZE);
    if (cfg->max_value > SEG_MAX_VALUE)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "max_value is %u, allowed up to %u",
                             cfg->max_value, SEG_MAX_VALUE);
    if (cfg->max_readers < 1 || cfg->max_readers > SEG_MAX_READERS)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "max_readers is %u, allowed 1 to %u",
                             cfg->max_readers, SEG_MAX_READERS);
    if (cfg->ring_size < 16 || cfg->ring_size > SEG_MAX_RING ||
        (cfg->ring_size & (cfg->ring_size - 1)))
        return khala__errbuf(err, errlen, KHALA_ECONFIG,
                             "ring_size is %u, want a power of two, 16 to %u", cfg->ring_size,
                             SEG_MAX_RING);
    if (cfg->gid < -1 || cfg->gid >= (int64_t)UINT32_MAX)
        return khala__errbuf(err, errlen, KHALA_ECONFIG, "gid is %lld, allowed -1 to %lld",
                             (long long)cfg->gid, (long long)UINT32_MAX - 1);
    return 0;
}

/* Validate a header that may be anything; on success fill the derived fields of s. */
static int header_check(khala_seg_t *s, const khala_seg_header_t *h, uint64_t file_size, char *err,
                        size_t errlen) {
    const char *n = s->name;
    if (h->magic != KHALA_SEG_MAGIC)
        return khala__errbuf(
            err, errlen, KHALA_ECORRUPT,
            "segment '%s': bad magic 0x%016llx (not a khala segment, or still being made)", n,
            (unsigned long long)h->magic);
    if (h->layout_version != KHALA_LAYOUT_VERSION)
        return khala__errbuf(err, errlen, KHALA_ELAYOUT,
                             "segment '%s' has layout version %u; this library reads version %u", n,
                             h->layout_version, KHALA_LAYOUT_VERSION);
    if (h->header_size != KHALA_SEG_HEADER_SIZE)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "segment '%s': header size %u, expected %u", n, h->header_size,
                             KHALA_SEG_HEADER_SIZE);
    if (h->segment_size != file_size)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "segment '%s' is %llu bytes but its header says %llu (truncated?)", n,
                             (unsigned long long)file_size, (unsigned long long)h->segment_size);
    /* Recompute the layout from the sizes and demand the same offsets: this checks every
     * region's bounds and order at once. */
    khala_seg_config_t cfg = {h->max_items,   h->arena_size, h->max_value,
                              h->max_readers, h->ring_size,  -1};
    char sub[160];
    if (khala__seg_config_check(&cfg, sub, sizeof(sub)) != 0)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT, "segment '%s': header sizes invalid: %s",
                             n, sub);
    khala_seg_header_t want;
    memset(&want, 0, sizeof(want));
    khala__seg_layout(&want, &cfg);
    if (want.bucket_off != h->bucket_off || want.bucket_count != h->bucket_count ||
        want.desc_off != h->desc_off || want.ghost_off != h->ghost_off ||
        want.ghost_cap != h->ghost_cap || want.ghost_window != h->ghost_window ||
        want.retire_off != h->retire_off || want.retire_cap != h->retire_cap ||
        want.alloc_off != h->alloc_off || want.bitmap_off != h->bitmap_off ||
        want.arena_off != h->arena_off || want.segment_size != h->segment_size ||
        want.readers_size != h->readers_size)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "segment '%s': region offsets in the header are inconsistent", n);
    s->hdr = (khala_seg_header_t *)s->base;
    s->buckets = (khala_bucket_t *)(void *)(s->base + h->bucket_off);
    s->bucket_count = h->bucket_count;
    s->arena_lo = h->arena_off;
    s->arena_hi = h->arena_off + h->arena_size;
    s->hash_seed = h->hash_seed;
    s->generation = h->generation;
    s->max_value = h->max_value;
    s->nslots = h->max_readers;
    s->slot_size = (uint32_t)(sizeof(khala_slot_t) + (uint64_t)h->ring_size * sizeof(uint64_t));
    s->ring_mask = h->ring_size - 1;
    return 0;
}

static int readers_check(khala_seg_t *s, uint64_t file_size, uint64_t want_size, char *err,
                         size_t errlen) {
    const khala_readers_header_t *r = (const khala_readers_header_t *)s->rbase;
    if (file_size < KHALA_READERS_HEADER_SIZE || r->magic != KHALA_READERS_MAGIC)
        return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                             "readers file of '%s': bad magic or truncated", s->name);
    if (r->layout_version != KHALA_LAYOUT_VERSION)
        return khala__errbuf(err, errlen, KHALA_ELAYOUT,
                             "readers file of '%s' has layout version %u; this library reads %u",
                             s->name, r->layout_version, KHALA_LAYOUT_VERSION);
    if (r->generation != s->generation)
        return khala__errbuf(
            err, errlen, KHALA_ELAYOUT,
            "readers file of '%s' has generation %llu, the data file %llu (being replaced?)",
            s->name, (unsigned long long)r->generation, (unsigned long long)s->generation);
    if (r->nslots != s->nslots || r->slot_size != s->slot_size || r->size != want_size ||
        file_size != want_size || r->ring_size != s->ring_mask + 1)
        return khala__errbuf(
            err, errlen, KHALA_ECORRUPT,
            "readers file of '%s' does not match its data file (size %llu, want %llu)", s->name,
            (unsigned long long)file_size, (unsigned long long)want_size);
    s->rhdr = (khala_readers_header_t *)s->rbase;
    return 0;
}

void khala__seg_reset(khala_seg_t *s, const char *name, int writable) {
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", name ? name : "");
    s->writable = writable;
    s->data_fd = -1;
    s->readers_fd = -1;
    s->lock_fd = -1;
}

void khala__seg_detach(khala_seg_t *s) {
    khala__sys_unmap(s->base, s->size);
    khala__sys_unmap(s->rbase, s->rsize);
    khala__sys_close(s->data_fd);
    khala__sys_close(s->readers_fd);
    khala__sys_close(s->lock_fd); /* releases the writer lock */
    s->base = s->rbase = NULL;
    s->hdr = NULL;
    s->rhdr = NULL;
    s->data_fd = s->readers_fd = s->lock_fd = -1;
}

int khala__seg_validate(khala_seg_t *s, char *err, size_t errlen) {
    const khala_seg_header_t *h = (const khala_seg_header_t *)s->base;
    int rc = header_check(s, h, s->size, err, errlen);
    if (rc == 0)
        rc = readers_check(s, s->rsize, h->readers_size, err, errlen);
    return rc;
}

int khala__seg_attach(khala_seg_t *s, const char *name, int writable, char *err, size_t errlen) {
    char dname[128], rname[128];
    uint64_t size = 0;
    /* Reset first: a caller may detach s after any failure, even a bad name. */
    khala__seg_reset(s, name, writable);
    int rc = khala__seg_name_check(name, err, errlen);
    if (rc != 0)
        return rc;
    khala__seg_shm_names(name, dname, rname, sizeof(dname));

    rc = khala__sys_shm_open(dname, 0, writable, 0);
    if (rc < 0) {
        khala__errbuf(err, errlen, rc, "cannot open /dev/shm/%s: %s%s", dname, strerror(-rc),
                      rc == -ENOENT ? " (is the writer running?)"
                      : rc == -EACCES
                          ? " (is this user in the cache's group, khalad's socket_group?)"
                          : "");
        goto out;
    }
    s->data_fd = rc;
    if ((rc = khala__sys_fd_size(s->data_fd, &size)) != 0) {
        khala__errbuf(err, errlen, rc, "cannot stat /dev/shm/%s: %s", dname, strerror(-rc));
        goto out;
    }
    if (size < KHALA_SEG_HEADER_SIZE) {
        rc = khala__errbuf(
            err, errlen, KHALA_ECORRUPT,
            "segment '%s' is %llu bytes, smaller than its %u-byte header (truncated, or "
            "still being made)",
            name, (unsigned long long)size, KHALA_SEG_HEADER_SIZE);
        goto out;
    }
    if ((rc = khala__sys_map(s->data_fd, size, writable, (void **)&s->base)) != 0) {
        khala__errbuf(err, errlen, rc, "cannot map segment '%s' (%llu bytes): %s", name,
                      (unsigned long long)size, strerror(-rc));
        goto out;
    }
    s->size = size;
    /* acquire: pairs with the release store of the magic in khala__seg_create, so that every
     * header field is visible once the magic is. */
    const khala_seg_header_t *h = (const khala_seg_header_t *)s->base;
    if (khala_load_acquire((const khala_atomic_u64 *)(const void *)&h->magic) != KHALA_SEG_MAGIC) {
        rc = khala__errbuf(
            err, errlen, KHALA_ECORRUPT,
            "segment '%s': bad magic 0x%016llx (not a khala segment, or still being made)", name,
            (unsigned long long)h->magic);
        goto out;
    }
    if ((rc = header_check(s, h, size, err, errlen)) != 0)
        goto out;

    rc = khala__sys_shm_open(rname, 0, 1, 0);
    if (rc < 0) {
        khala__errbuf(err, errlen, rc, "cannot open /dev/shm/%s: %s", rname, strerror(-rc));
        goto out;
    }
    s->readers_fd = rc;
    if ((rc = khala__sys_fd_size(s->readers_fd, &size)) != 0) {
        khala__errbuf(err, errlen, rc, "cannot stat /dev/shm/%s: %s", rname, strerror(-rc));
        goto out;
    }
    if (size < KHALA_READERS_HEADER_SIZE) {
        rc = khala__errbuf(err, errlen, KHALA_ECORRUPT,
                           "readers file of '%s' is truncated (%llu bytes)", name,
                           (unsigned long long)size);
        goto out;
    }
    if ((rc = khala__sys_map(s->readers_fd, size, 1, (void **)&s->rbase)) != 0) {
        khala__errbuf(err, errlen, rc, "cannot map readers file of '%s': %s", name, strerror(-rc));
        goto out;
    }
    s->rsize = size;
    if ((rc = readers_check(s, size, h->readers_size, err, errlen)) != 0)
        goto out;
    if (khala_load_acquire(&s->hdr->state) != KHALA_SEG_LIVE) {
        rc = khala__errbuf(err, errlen, KHALA_ELAYOUT,
                           "segment '%s' has been replaced by a new one", name);
        goto out;
    }
    /* A reader may drop its fence only if the writer promised membarrier and this process is
     * registered to receive it. The writer's own mapping never drops it. */
    s->light_fence = !writable && khala_load_relaxed(&s->hdr->asym_fence) &&
                     khala__sys_membarrier_register() == 0;
    return 0;
out:
    khala__seg_detach(s);
    return rc;
}

int khala__seg_reopen_readers(khala_seg_t *s) {
    char rname[128];
    khala__seg_shm_names(s->name, NULL, rname, sizeof(rname));
    int fd = khala__sys_shm_open(rname, 0, 1, 0);
    if (fd < 0)
        return fd;
    /* The mapping holds a reference to the description it was made through (and so to its
     * slot locks) for as long as it exists: remap the same file through the new one. */
    int rc = s->rbase ? khala__sys_remap(fd, s->rbase, s->rsize, 1) : 0;
    if (rc != 0) {
        khala__sys_close(fd);
        return rc;
    }
    khala__sys_close(s->readers_fd);
    s->readers_fd = fd;
    return 0;
}
