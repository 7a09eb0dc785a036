/*
 * The segment module: creating, attaching and validating the two shared-memory files of a
 * cache (see layout.h for what is in them), and the writer lock, a third file that lets one
 * writer at a time own the name. It knows sizes and offsets; it knows nothing of the hash
 * table, the allocator or the policy, which format their own regions.
 *
 * Start at khala__seg_create() (the writer) and khala__seg_attach() (a reader); segment.c's
 * theory block explains the writer lock and the file modes.
 */
#ifndef KHALA_LIB_SEGMENT_H
#define KHALA_LIB_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "khala/cache.h"
#include "layout.h"

/* Sizes a writer asks for. khala__seg_config_init() gives the defaults. */
typedef struct khala_seg_config {
    uint32_t max_items;   /* item capacity; default 65,536; 16 to 2^31 */
    uint64_t max_bytes;   /* arena bytes for items; default 64 MiB; at least 64 KiB */
    uint32_t max_value;   /* largest value; default KHALA_VALUE_MAX_DEFAULT; at most 256 MiB */
    uint32_t max_readers; /* reader slots; default 256; 1 to 65,536 */
    uint32_t ring_size;   /* hit-ring entries per reader, power of two; default 256 */
    int64_t gid;          /* group the data and readers files are given (the readers' group:
                             khalad's [cache] socket_group); -1 (the default) = the writer's own
                             effective group; 0 to 2^32 - 2 */
} khala_seg_config_t;

/* An attached segment. Immutable after attach, except the mappings' contents. Every derived
 * field is computed from the header once and validated, so that a later corruption of the
 * shared header cannot steer a reader outside its mapping. */
typedef struct khala_seg {
    char name[KHALA_NAME_MAX + 1];
    int writable;            /* 1 for the writer's read-write mapping */
    int data_fd;             /* the data file, -1 when closed */
    int readers_fd;          /* the readers file, -1 when closed */
    int lock_fd;             /* the writer's lock file, holding the writer lock while open;
                                -1 for a reader and when closed */
    uint8_t *base;           /* data mapping */
    uint64_t size;           /* bytes mapped at base */
    khala_seg_header_t *hdr; /* == base */
    uint8_t *rbase;          /* readers mapping */
    uint64_t rsize;          /* bytes mapped at rbase */
    khala_readers_header_t *rhdr;
    khala_bucket_t *buckets; /* base + bucket_off: index 0, then index 1 (layout.h) */
    uint64_t bucket_count;   /* buckets of each index */
    uint64_t arena_lo;       /* arena_off */
    uint64_t arena_hi;       /* arena_off + arena_size */
    uint64_t hash_seed;
    uint64_t generation;
    uint32_t max_value;
    uint32_t nslots;
    uint32_t slot_size;
    uint32_t ring_mask;
    int light_fence; /* 1: this reader registered for membarrier and the writer issues it, so
                        entering a section needs only a compiler barrier (readers.h) */
    /* Writer-private, mutable: the epoch at the last membarrier() (0 = none yet) and how many
     * were issued (khala__readers_min_epoch). */
    uint64_t fenced_epoch;
    uint64_t membarriers;
} khala_seg_t;

void khala__seg_config_init(khala_seg_config_t *cfg);

/* 0 if name is 1..KHALA_NAME_MAX bytes of [A-Za-z0-9_.-], else KHALA_ENAME with a message. */
int khala__seg_name_check(const char *name, char *err, size_t errlen);

/* Attach to the segments of cache `name`: the data file read-only (or read-write when
 * writable: only khala__seg_attach_writer asks for that, holding the writer lock), the readers
 * file read-write. Validates magic, layout version, sizes, offsets and generation; fails with
 * KHALA_ENAME, -ENOENT, KHALA_ELAYOUT, KHALA_ECORRUPT or -errno, never by crashing. s is reset
 * first, so it may be detached after any failure. */
int khala__seg_attach(khala_seg_t *s, const char *name, int writable, char *err, size_t errlen);

/* Unmap and close, releasing the writer lock if s holds it; s may be half attached.
 * Idempotent. */
void khala__seg_detach(khala_seg_t *s);

/* Reopen the readers file so that this process has its own open file description (and so its
 * own slot locks), and remap the readers mapping through it, since a mapping keeps the
 * description it was made through (and its locks) alive; used by a child after fork. The
 * mapping's address and contents stay the same. */
int khala__seg_reopen_readers(khala_seg_t *s);

/* The layout (the immutable part of a header: sizes and region offsets) a validated
 * configuration gives. */
void khala__seg_layout(khala_seg_header_t *h, const khala_seg_config_t *cfg);

/* 0 if every size in cfg is in range, else KHALA_ECONFIG with a message naming the size. */
int khala__seg_config_check(const khala_seg_config_t *cfg, char *err, size_t errlen);

/* Validate the mapped header and readers header of s (s->base, s->size, s->rbase, s->rsize)
 * and fill the derived fields. 0, KHALA_ECORRUPT or KHALA_ELAYOUT with a message. */
int khala__seg_validate(khala_seg_t *s, char *err, size_t errlen);

/* Reset s to a detached state for cache `name` (no mapping, no descriptor). */
void khala__seg_reset(khala_seg_t *s, const char *name, int writable);

/* The shm object names of cache `name`. */
void khala__seg_shm_names(const char *name, char *data, char *readers, size_t len);
/* The shm object name of the writer lock file of cache `name`. */
void khala__seg_lock_name(const char *name, char *lock, size_t len);

static inline khala_slot_t *khala__seg_slot(const khala_seg_t *s, uint32_t i) {
    return (khala_slot_t *)(s->rbase + KHALA_READERS_HEADER_SIZE + (uint64_t)i * s->slot_size);
}

#endif /* KHALA_LIB_SEGMENT_H */
