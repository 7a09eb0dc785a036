/*
 * The writer's side of the segment: the writer lock, creating a cache's segment anew, adopting
 * an existing one for writing, and removing a cache. Only the writer library links it (khalad,
 * tests, benchmarks, the demo); workers never do. The theory is at the top of
 * segment_create.c. Start at khala__seg_create().
 */
#ifndef KHALA_LIB_SEGMENT_CREATE_H
#define KHALA_LIB_SEGMENT_CREATE_H

#include "segment.h"

/* Take the writer lock of cache `name`, then create its segments anew and map them read-write.
 * An existing segment is marked KHALA_SEG_REPLACED (so attached readers move on) and unlinked,
 * and the new one gets the next generation. The data file is made mode 0640, the readers file
 * 0660, both owned by this process's effective user and by group cfg->gid (-1: its effective
 * group). Fails with KHALA_EEXIST while another live writer holds the lock (the message names its
 * pid: "cache 'x' already has a live writer (pid 1234)"), KHALA_ENAME, KHALA_ECONFIG for sizes
 * out of range, -errno from the system. On failure nothing this call did not make is unlinked,
 * and the lock is released. khala__seg_detach releases it after success. */
int khala__seg_create(khala_seg_t *s, const char *name, const khala_seg_config_t *cfg, char *err,
                      size_t errlen);

/* Take the writer lock of cache `name`, then attach to its existing segment read-write (the
 * REATTACH path of a restarting khalad). KHALA_EEXIST while another writer lives (the message
 * names its pid), else as khala__seg_attach. On success s holds the lock until detached. */
int khala__seg_attach_writer(khala_seg_t *s, const char *name, char *err, size_t errlen);

/* Give the data and readers files of the writer segment s to this process's effective user
 * and to group gid (-1: its effective group), with modes 0640 and 0660, where they differ: an
 * adopted segment gets the group the new writer was configured with. Requires s->lock_fd >= 0
 * (asserted). 0, or -errno (-EPERM: a non-root writer that is not in group gid) with a message
 * naming the file. */
int khala__seg_own(khala_seg_t *s, int64_t gid, char *err, size_t errlen);

/* Remove cache `name`: unlink its data and readers files, and its lock file too unless a live
 * writer holds it (that writer keeps its mapping and its lock, so no second writer can start
 * until it closes; readers no longer find it). 0 also when the files were absent. An
 * administrative removal: a writer removing its own files uses khala__seg_unlink_locked. */
int khala__seg_unlink(const char *name);

/* Unlink the three files of the writer segment s while still holding its writer lock, so that
 * no other writer's files can be among them. s stays mapped; detach it afterwards. Requires
 * s->lock_fd >= 0 (asserted). 0 also when the files were absent, else -errno. */
int khala__seg_unlink_locked(khala_seg_t *s);

#endif /* KHALA_LIB_SEGMENT_CREATE_H */
