/*
 * Creating and removing the segment of a cache, and the writer lock that makes its writer the
 * only one. The writer's side of segment.c: only the writer library (khala_writer) holds it.
 *
 * THE WRITER LOCK
 *
 * One writer per name, enforced by an OFD lock on a third file, /dev/shm/khala.<name>.lock,
 * which holds nothing but the pid of its last holder:
 *
 *   khala.<name>.lock     mode 0600, never truncated; only writers open it
 *   byte range 0 (WRITER): held by the writer for its whole life, dropped by the kernel when
 *                          the writer's descriptor closes, so also when it dies (even SIGKILL)
 *   byte range 1 (GATE):   held for a few system calls around taking or giving up the name
 *   content bytes 0..11:   the holder's pid in decimal, written while holding WRITER and GATE
 *
 * A process becomes the writer (writer_lock, steps referred to in the code):
 * Step 1. Open the lock file, creating it if absent. O_CREAT without O_EXCL would do, since two
 *         creators get the same inode; O_EXCL first only tells the creator to set the mode.
 * Step 2. Wait for GATE.
 * Step 3. Check that the file it holds is still the one under the name (an unlinker may have
 *         removed it after step 1); if not, close it and start over.
 * Step 4. Try WRITER. If another description holds it, read the pid and fail with
 *         KHALA_EEXIST, naming that pid.
 * Step 5. Write its own pid, release GATE, keep the descriptor (khala_seg_t.lock_fd).
 * Only then does it retire, unlink or create anything under the name, and a creation that fails
 * unlinks only the files it made itself. Both ways to become a writer take it first:
 * khala__seg_create and khala__seg_attach with writable (the REATTACH path of l1_table.c).
 *
 * Why the pid is right. OFD locks report l_pid = -1 to F_GETLK, so the pid lives in the file.
 * A holder writes it while it holds GATE (step 5), and a loser reads it while it holds GATE
 * (step 4); so the loser never reads between a winner's lock and its pid, and always reads the
 * live holder's pid, never a dead one's left in the file.
 *
 * Why removing the lock file is safe. Creation never unlinks it, but khala__seg_unlink (the
 * administrative removal of a cache) and khala__seg_unlink_locked (a writer closing for good) do,
 * so that names do not pile up in /dev/shm. The danger of unlinking a lock file is the classic
 * one: a process that opened the old inode before the unlink locks it afterwards, a second one
 * creates and locks a new inode, and both believe they are the writer. Two rules prevent it:
 * the name is unlinked only by a process holding WRITER and GATE on the inode the name has, and
 * every writer checks under GATE that its inode is still the named one (step 3). While a
 * process holds GATE on the named inode, nobody else can hold it, so the name keeps pointing to
 * that inode until GATE is released: step 3's answer stays true through step 5. A process that
 * locked an unlinked inode sees so in step 3 and starts over on the new one.
 *
 * Historical note. The writer lock used to be an OFD lock on byte 0 of the data file. It did
 * not work: a new writer unlinks the data file and creates a new inode, so two writers racing
 * on one name locked two different inodes and both went on; and the loser's error path
 * unlinked both names, the winner's files among them. A lock must live on a file that
 * creation never replaces. The readers file would not do either, for the same reason.
 *
 * A writer that finds a segment already there (it now holds the writer lock, so that segment
 * has no live writer) marks it KHALA_SEG_REPLACED, so that attached readers notice on their
 * next read section and reattach, and unlinks both files before making new ones. Readers keep
 * their old mappings until they reattach, so nothing is pulled from under them.
 *
 * FILE MODES AND TRUST
 *
 * The data file is made 0640 (owner read-write: the writer; group read: the readers) and the
 * readers file 0660, both set with fchmod after the create so that the umask does not decide.
 * Both are given to the writer's user and to the readers' group (khala_seg_config_t.gid:
 * khalad's [cache] socket_group, else the writer's own group), with fchown at creation: a file
 * left in the writer's primary group would shut out every worker running as another user.
 * A writer that adopts an existing segment gives it the group it was asked for too
 * (khala__seg_own), so that changing socket_group and restarting khalad is enough. Chowning
 * before anything is written opens nothing: the files' group only ever gets what it is meant to.
 * A reader therefore cannot open the data file for writing, and so cannot truncate it under
 * everyone's mappings (which would raise SIGBUS in every reader and in the writer). The readers
 * file must stay writable by readers, and a reader that truncated it would SIGBUS the writer:
 * that is a trust boundary, not a defence. Processes in the group are trusted not to do it, as
 * they are trusted not to hold a read section forever or to scribble over other slots, neither
 * of which the writer could prevent either. A size check in the writer would not help, since
 * the file could be truncated just after it. docs/segment.md says the same to operators.
 *
 * Creation, in the numbered steps of khala__seg_create: 0. the writer lock; then retire the
 * segment that has the name now; 1. the readers file; 2. the data file, its header filled and
 * its magic stored last with release order (segment.c's theory says why).
 */
#include "segment_create.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errbuf.h"
#include "khala/error.h"
#include "sys.h"

/* ThreadSanitizer does not model membarrier(2): under TSan every reader keeps its fence. */
#ifdef KHALA_TSAN
#define KHALA_ASYM_FENCE_ENABLED 0
#else
#define KHALA_ASYM_FENCE_ENABLED 1
#endif

/* File modes (see FILE MODES AND TRUST): readers may read the data file and write the readers
 * file; only the writer's user opens the lock file. */
#define SEG_DATA_MODE 0640u
#define SEG_READERS_MODE 0660u
#define SEG_LOCK_MODE 0600u

/* Byte ranges of the lock file (see THE WRITER LOCK). */
#define LOCK_WRITER 0u
#define LOCK_GATE 1u
/* The pid record: 11 digits and a newline at content offset 0, fixed width so that a shorter
 * pid never leaves the tail of a longer one behind. */
#define LOCK_PID_LEN 12u
/* Times writer_lock starts over because the lock file it opened was unlinked meanwhile. Each
 * start over means another process removed the cache in that instant; this many in a row means
 * something removes it in a loop. */
#define LOCK_RETRIES 64

/* The pid recorded in an open lock file, 0 if none can be read. Call holding GATE. */
static int lock_holder_pid(int fd) {
    char buf[LOCK_PID_LEN + 1];
    if (khala__sys_read_at(fd, buf, LOCK_PID_LEN, 0) != 0)
        return 0;
    buf[LOCK_PID_LEN] = '\0';
    long pid = strtol(buf, NULL, 10);
    return pid > 0 && pid <= 0x7fffffff ? (int)pid : 0;
}

/* 1 if fd is the file under shm name lname now, 0 if that name is gone or another file's,
 * -errno when it cannot be told. */
static int lock_file_is_named(int fd, const char *lname) {
    int cur = khala__sys_shm_open(lname, 0, 0, 0);
    if (cur == -ENOENT)
        return 0;
    if (cur < 0)
        return cur;
    int rc = khala__sys_same_file(fd, cur);
    khala__sys_close(cur); /* OFD locks belong to fd's description: closing cur keeps them */
    return rc;
}

/* Open the lock file of shm name lname, creating it (mode SEG_LOCK_MODE) if absent, and wait
 * for its GATE, making sure the file is still the named one. On success *out is the fd, holding
 * GATE. With create == 0, an absent lock file is -ENOENT. */
static int lock_open_gated(const char *lname, int create, int *out) {
    for (int tries = 0; tries < LOCK_RETRIES; tries++) {
        /* Step 1. */
        int fd = create ? khala__sys_shm_open(lname, 1, 1, SEG_LOCK_MODE) : -EEXIST;
        if (fd == -EEXIST)
            fd = khala__sys_shm_open(lname, 0, 1, 0);
        if (fd == -ENOENT && create)
            continue; /* unlinked between the two opens */
        if (fd < 0)
            return fd;
        /* Step 2. */
        int rc = khala__sys_lock_wait(fd, LOCK_GATE);
        /* Step 3. */
        if (rc == 0)
            rc = lock_file_is_named(fd, lname);
        if (rc == 1) {
            *out = fd;
            return 0;
        }
        khala__sys_close(fd);
        if (rc < 0)
            return rc;
        if (!create)
            return -ENOENT;
    }
    return -EBUSY;
}

/* Become the writer of cache `name`: steps 1 to 5 of THE WRITER LOCK. On success *out is the
 * lock file's fd, holding WRITER for as long as it stays open. */
static int writer_lock(const char *name, int *out, char *err, size_t errlen) {
    char lname[128], pidrec[LOCK_PID_LEN + 1];
    int fd = -1;
    khala__seg_lock_name(name, lname, sizeof(lname));
    int rc = lock_open_gated(lname, 1, &fd);
    if (rc != 0)
        return khala__errbuf(err, errlen, rc, "cannot take the writer lock /dev/shm/%s: %s%s",
                             lname, strerror(-rc),
                             rc == -EBUSY ? " (the lock file keeps being removed)" : "");
    /* Step 4. */
    rc = khala__sys_lock_try(fd, LOCK_WRITER);
    if (rc == -EAGAIN) {
        int pid = lock_holder_pid(fd);
        khala__sys_close(fd); /* releases GATE */
        if (pid > 0)
            return khala__errbuf(err, errlen, KHALA_EEXIST,
                                 "cache '%s' already has a live writer (pid %d)", name, pid);
        return khala__errbuf(err, errlen, KHALA_EEXIST,
                             "cache '%s' already has a live writer (pid unknown)", name);
    }
    /* Step 5. */
    if (rc == 0) {
        snprintf(pidrec, sizeof(pidrec), "%11d\n", (int)getpid());
        rc = khala__sys_write_at(fd, pidrec, LOCK_PID_LEN, 0);
    }
    if (rc == 0)
        rc = khala__sys_lock_release(fd, LOCK_GATE);
    if (rc != 0) {
        khala__sys_close(fd);
        return khala__errbuf(err, errlen, rc, "cannot take the writer lock /dev/shm/%s: %s", lname,
                             strerror(-rc));
    }
    *out = fd;
    return 0;
}

int khala__seg_attach_writer(khala_seg_t *s, const char *name, char *err, size_t errlen) {
    int fd = -1;
    int rc = khala__seg_name_check(name, err, errlen);
    if (rc == 0)
        rc = writer_lock(name, &fd, err, errlen);
    if (rc != 0) {
        khala__seg_reset(s, name, 1); /* detachable, holding nothing */
        return rc;
    }
    /* The writer lock is held before anything is mapped read-write. */
    if ((rc = khala__seg_attach(s, name, 1, err, errlen)) != 0) {
        khala__sys_close(fd);
        return rc;
    }
    s->lock_fd = fd;
    return 0;
}

/* Unlink the data and readers files of `name`; -ENOENT counts as done. */
static int unlink_data_files(const char *name) {
    char dname[128], rname[128];
    khala__seg_shm_names(name, dname, rname, sizeof(dname));
    int a = khala__sys_shm_unlink(dname);
    int b = khala__sys_shm_unlink(rname);
    if (a != 0 && a != -ENOENT)
        return a;
    if (b != 0 && b != -ENOENT)
        return b;
    return 0;
}

int khala__seg_unlink(const char *name) {
    char lname[128];
    int fd = -1;
    khala__seg_lock_name(name, lname, sizeof(lname));
    /* With GATE and WRITER held, no writer can start while the files go, and the lock file may
     * go too. Without WRITER, a live writer keeps its lock file (and so its exclusion); only
     * its data and readers names are removed, as asked. */
    int locked = lock_open_gated(lname, 0, &fd) == 0 && khala__sys_lock_try(fd, LOCK_WRITER) == 0;
    int rc = unlink_data_files(name);
    if (locked) {
        int l = khala__sys_shm_unlink(lname);
        if (rc == 0 && l != 0 && l != -ENOENT)
            rc = l;
    }
    khala__sys_close(fd); /* releases GATE and WRITER, if held */
    return rc;
}

int khala__seg_unlink_locked(khala_seg_t *s) {
    char lname[128];
    assert(s->lock_fd >= 0 && "only the writer, holding the writer lock, unlinks its own files");
    khala__seg_lock_name(s->name, lname, sizeof(lname));
    /* GATE too: a contender between its steps 2 and 5 must not see the name half gone. */
    int rc = khala__sys_lock_wait(s->lock_fd, LOCK_GATE);
    if (rc != 0)
        return rc;
    rc = unlink_data_files(s->name);
    int l = khala__sys_shm_unlink(lname);
    if (rc == 0 && l != 0 && l != -ENOENT)
        rc = l;
    (void)khala__sys_lock_release(s->lock_fd, LOCK_GATE);
    return rc;
}

/* Retire whatever segment has the name now: mark it replaced and unlink it. The caller holds
 * the writer lock, so that segment has no live writer and nobody else is creating one. Sets
 * *next_gen to the generation the new segment takes. */
static int retire_existing(const char *name, uint64_t *next_gen, char *err, size_t errlen) {
    char dname[128];
    uint64_t size = 0;
    void *map = NULL;
    khala__seg_shm_names(name, dname, NULL, sizeof(dname));
    *next_gen = 1;
    int fd = khala__sys_shm_open(dname, 0, 1, 0);
    if (fd == -ENOENT)
        return unlink_data_files(name); /* a readers file left by a creator that died */
    if (fd < 0)
        return khala__errbuf(err, errlen, fd, "cannot open existing /dev/shm/%s: %s", dname,
                             strerror(-fd));
    if (khala__sys_fd_size(fd, &size) == 0 && size >= KHALA_SEG_HEADER_SIZE &&
        khala__sys_map(fd, KHALA_SEG_HEADER_SIZE, 1, &map) == 0) {
        khala_seg_header_t *h = map;
        if (h->magic == KHALA_SEG_MAGIC) {
            *next_gen = h->generation + 1;
            /* release: readers load-acquire state at every section start and reattach. */
            khala_store_release(&h->state, KHALA_SEG_REPLACED);
        }
        khala__sys_unmap(map, KHALA_SEG_HEADER_SIZE);
    }
    khala__sys_close(fd);
    int rc = unlink_data_files(name);
    if (rc != 0)
        khala__errbuf(err, errlen, rc, "cannot unlink the old files of '%s': %s", name,
                      strerror(-rc));
    return rc;
}

/* The message for a file that cannot be given to group gid. */
static int own_error(const char *shm, int64_t gid, int rc, char *err, size_t errlen) {
    if (gid < 0)
        return khala__errbuf(err, errlen, rc, "cannot give /dev/shm/%s to this process's group: %s",
                             shm, strerror(-rc));
    return khala__errbuf(
        err, errlen, rc, "cannot give /dev/shm/%s to group %lld: %s%s", shm, (long long)gid,
        strerror(-rc), rc == -EPERM ? " (the writer must be root or a member of that group)" : "");
}

/* Create shm object `shm` exclusively with `mode` and group `gid` (-1: the writer's), reserve
 * `size` bytes and map it read-write. *fd is set as soon as the object is open, so that a
 * caller can unlink and close what it made after any failure; *map only on success. 0, or
 * -errno with a message naming the file. */
static int create_mapped(const char *shm, unsigned mode, int64_t gid, uint64_t size, int *fd,
                         void **map, char *err, size_t errlen) {
    int rc = khala__sys_shm_open(shm, 1, 1, mode);
    if (rc < 0)
        return khala__errbuf(err, errlen, rc, "cannot create /dev/shm/%s: %s", shm, strerror(-rc));
    *fd = rc;
    if ((rc = khala__sys_fd_own(*fd, gid, mode)) != 0)
        return own_error(shm, gid, rc, err, errlen);
    if ((rc = khala__sys_map_new(*fd, size, map)) != 0)
        return khala__errbuf(err, errlen, rc, "cannot size or map /dev/shm/%s (%llu bytes): %s%s",
                             shm, (unsigned long long)size, strerror(-rc),
                             rc == -ENOSPC ? " (is /dev/shm large enough?)" : "");
    return 0;
}

int khala__seg_own(khala_seg_t *s, int64_t gid, char *err, size_t errlen) {
    char dname[128], rname[128];
    assert(s->lock_fd >= 0 && "only the writer, holding the writer lock, changes the owner");
    khala__seg_shm_names(s->name, dname, rname, sizeof(dname));
    const struct {
        int fd;
        unsigned mode;
        const char *shm;
    } files[] = {{s->readers_fd, SEG_READERS_MODE, rname}, {s->data_fd, SEG_DATA_MODE, dname}};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        int rc = khala__sys_fd_owned(files[i].fd, gid, files[i].mode);
        if (rc == 0)
            rc = khala__sys_fd_own(files[i].fd, gid, files[i].mode);
        if (rc < 0)
            return own_error(files[i].shm, gid, rc, err, errlen);
    }
    return 0;
}

int khala__seg_create(khala_seg_t *s, const char *name, const khala_seg_config_t *cfg, char *err,
                      size_t errlen) {
    char dname[128], rname[128];
    uint64_t gen = 1;
    khala_seg_header_t lay;
    int made_readers = 0, made_data = 0;
    khala__seg_reset(s, name, 1);
    int rc = khala__seg_name_check(name, err, errlen);
    if (rc != 0)
        return rc;
    if ((rc = khala__seg_config_check(cfg, err, errlen)) != 0)
        return rc;
    khala__seg_shm_names(name, dname, rname, sizeof(dname));
    memset(&lay, 0, sizeof(lay));
    khala__seg_layout(&lay, cfg);

    /* 0. The writer lock, before anything under the name is touched. */
    if ((rc = writer_lock(name, &s->lock_fd, err, errlen)) != 0)
        return rc;
    if ((rc = retire_existing(name, &gen, err, errlen)) != 0)
        goto out;

    /* 1. The readers file. */
    rc = create_mapped(rname, SEG_READERS_MODE, cfg->gid, lay.readers_size, &s->readers_fd,
                       (void **)&s->rbase, err, errlen);
    made_readers = s->readers_fd >= 0;
    if (rc != 0)
        goto out;
    s->rsize = lay.readers_size;
    khala_readers_header_t *r = (khala_readers_header_t *)s->rbase;
    r->layout_version = KHALA_LAYOUT_VERSION;
    r->nslots = cfg->max_readers;
    r->generation = gen;
    r->size = lay.readers_size;
    r->ring_size = cfg->ring_size;
    r->slot_size = (uint32_t)(sizeof(khala_slot_t) + (uint64_t)cfg->ring_size * sizeof(uint64_t));
    khala_store_release((khala_atomic_u64 *)(void *)&r->magic, KHALA_READERS_MAGIC);

    /* 2. The data file. */
    rc = create_mapped(dname, SEG_DATA_MODE, cfg->gid, lay.segment_size, &s->data_fd,
                       (void **)&s->base, err, errlen);
    made_data = s->data_fd >= 0;
    if (rc != 0)
        goto out;
    s->size = lay.segment_size;
    khala_seg_header_t *h = (khala_seg_header_t *)s->base;
    memcpy(h, &lay, offsetof(khala_seg_header_t, epoch));
    h->layout_version = KHALA_LAYOUT_VERSION;
    h->header_size = KHALA_SEG_HEADER_SIZE;
    h->generation = gen;
    h->hash_seed = khala__sys_random_u64();
    h->created_ms = khala__sys_now_ms();
    /* Index 0 is live first (index_count 0), hashed with the generation's seed: set before the
     * magic, so that no reader ever sees a published segment without its seed. */
    khala_store_relaxed(&h->index_seed[0], h->hash_seed);
    khala_store_relaxed(&h->epoch, 1);
    khala_store_relaxed(&h->state, KHALA_SEG_LIVE);
    khala_store_relaxed(&h->asym_fence, KHALA_ASYM_FENCE_ENABLED && khala__sys_membarrier() == 0);
    /* release: publishes the whole header before the magic; pairs with the acquire load of the
     * magic in khala__seg_attach. */
    khala_store_release((khala_atomic_u64 *)(void *)&h->magic, KHALA_SEG_MAGIC);
    if ((rc = khala__seg_validate(s, err, errlen)) != 0)
        goto out;
    return 0;
out:
    /* Only what this call made, and while it still holds the writer lock: a name it did not
     * make belongs to someone else (or to nobody, after retire_existing). */
    if (made_data)
        (void)khala__sys_shm_unlink(dname);
    if (made_readers)
        (void)khala__sys_shm_unlink(rname);
    khala__seg_detach(s);
    return rc;
}
