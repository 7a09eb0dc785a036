/*
 * Platform calls: POSIX shared memory, mappings, open-file-description locks, clocks and
 * /proc. This is the only file of the library that includes system headers beyond libc's core;
 * everything here returns 0 or -errno and never prints.
 *
 * Why OFD locks (F_OFD_SETLK) rather than classic fcntl locks: classic POSIX record locks belong
 * to the process and are silently dropped when the process closes *any* descriptor of the file,
 * which a library cannot control. OFD locks belong to the open file description, so they live
 * exactly as long as the descriptor the library opened, and the kernel drops them when the
 * process dies. That makes "is the lock on byte i held?" a proof of life for reader slot i that
 * survives pid reuse (the same idea as LMDB's reader table, without its pitfall).
 */
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sched.h>
#include <string.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

int khala__sys_shm_open(const char *shm_name, int create, int writable, unsigned mode) {
    char path[128];
    int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    if (create)
        flags |= O_CREAT | O_EXCL;
    if ((size_t)snprintf(path, sizeof(path), "/%s", shm_name) >= sizeof(path))
        return -ENAMETOOLONG;
    int fd = shm_open(path, flags, (mode_t)mode);
    if (fd < 0)
        return -errno;
    /* The umask may have narrowed the mode; the caller's mode is what readers rely on (and
     * what keeps them from writing a file they must only read). O_EXCL made this object ours,
     * so removing it again on failure removes nobody else's. */
    if (create && fchmod(fd, (mode_t)mode) != 0) {
        int rc = -errno;
        (void)shm_unlink(path);
        (void)close(fd);
        return rc;
    }
    return fd;
}

int khala__sys_shm_unlink(const char *shm_name) {
    char path[128];
    if ((size_t)snprintf(path, sizeof(path), "/%s", shm_name) >= sizeof(path))
        return -ENAMETOOLONG;
    return shm_unlink(path) == 0 ? 0 : -errno;
}

int khala__sys_fd_size(int fd, uint64_t *size) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    *size = (uint64_t)st.st_size;
    return 0;
}

int khala__sys_fd_own(int fd, int64_t gid, unsigned mode) {
    gid_t g = gid < 0 ? getegid() : (gid_t)gid;
    if (fchown(fd, geteuid(), g) != 0 || fchmod(fd, (mode_t)mode) != 0)
        return -errno;
    return 0;
}

int khala__sys_fd_owned(int fd, int64_t gid, unsigned mode) {
    struct stat st;
    if (fstat(fd, &st) != 0)
        return -errno;
    gid_t g = gid < 0 ? getegid() : (gid_t)gid;
    return st.st_uid == geteuid() && st.st_gid == g && (st.st_mode & 07777) == (mode_t)mode;
}

int khala__sys_fd_resize(int fd, uint64_t size) {
    if (ftruncate(fd, (off_t)size) != 0)
        return -errno;
    int rc = posix_fallocate(fd, 0, (off_t)size);
    /* tmpfs supports fallocate; a filesystem that does not is not an error. */
    if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL)
        return -rc;
    return 0;
}

int khala__sys_map(int fd, uint64_t size, int writable, void **out) {
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = mmap(NULL, (size_t)size, prot, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    /* Large segments benefit from transparent huge pages where shmem allows them. */
    (void)madvise(p, (size_t)size, MADV_HUGEPAGE);
    *out = p;
    return 0;
}

int khala__sys_map_new(int fd, uint64_t size, void **out) {
    void *p = NULL;
    if (ftruncate(fd, (off_t)size) != 0)
        return -errno;
    int rc = khala__sys_map(fd, size, 1, &p);
    if (rc != 0)
        return rc;
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack it */
#endif
    /* Faulting the pages in through a mapping that carries MADV_HUGEPAGE is what makes them
     * huge on a tmpfs mounted huge=advise; posix_fallocate has no mapping to consult, so it
     * would make 4 KiB pages there. When populating fails (an old kernel says EINVAL; a full
     * tmpfs, EFAULT or ENOMEM), posix_fallocate reserves what is left and names the reason. */
    if (madvise(p, (size_t)size, MADV_POPULATE_WRITE) != 0) {
        rc = posix_fallocate(fd, 0, (off_t)size);
        /* tmpfs supports fallocate; a filesystem that does not is not an error. */
        if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
            (void)munmap(p, (size_t)size);
            return -rc;
        }
    }
    *out = p;
    return 0;
}

uint64_t khala__sys_huge_bytes(const void *addr) {
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f)
        return 0;
    char line[256];
    int in = 0;
    unsigned long long kb, total = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        /* A VMA's first line: "lo-hi perms offset dev inode path". */
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
            if (in)
                break;
            in = lo == (unsigned long)(uintptr_t)addr;
        } else if (in && (sscanf(line, "ShmemPmdMapped: %llu kB", &kb) == 1 ||
                          sscanf(line, "FilePmdMapped: %llu kB", &kb) == 1)) {
            total += kb;
        }
    }
    (void)fclose(f);
    return (uint64_t)total * 1024;
}

int khala__sys_remap(int fd, void *at, uint64_t size, int writable) {
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    void *p = mmap(at, (size_t)size, prot, MAP_SHARED | MAP_FIXED, fd, 0);
    return p == MAP_FAILED ? -errno : 0;
}

void khala__sys_unmap(void *p, uint64_t size) {
    if (p)
        (void)munmap(p, (size_t)size);
}

void khala__sys_close(int fd) {
    if (fd >= 0)
        (void)close(fd);
}

static int ofd_lock(int fd, int cmd, short type, uint64_t byte, struct flock *out) {
    struct flock fl;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)byte;
    fl.l_len = 1;
    if (fcntl(fd, cmd, &fl) != 0)
        return -errno;
    if (out)
        *out = fl;
    return 0;
}

int khala__sys_lock_try(int fd, uint64_t byte) {
    int rc = ofd_lock(fd, F_OFD_SETLK, F_WRLCK, byte, NULL);
    return rc == -EACCES ? -EAGAIN : rc;
}

int khala__sys_lock_wait(int fd, uint64_t byte) {
    int rc;
    do
        rc = ofd_lock(fd, F_OFD_SETLKW, F_WRLCK, byte, NULL);
    while (rc == -EINTR);
    return rc;
}

int khala__sys_lock_release(int fd, uint64_t byte) {
    return ofd_lock(fd, F_OFD_SETLK, F_UNLCK, byte, NULL);
}

int khala__sys_lock_held_elsewhere(int fd, uint64_t byte) {
    struct flock fl = {0};
    int rc = ofd_lock(fd, F_OFD_GETLK, F_WRLCK, byte, &fl);
    if (rc != 0)
        return rc;
    return fl.l_type != F_UNLCK;
}

int khala__sys_same_file(int a, int b) {
    struct stat sa, sb;
    if (fstat(a, &sa) != 0 || fstat(b, &sb) != 0)
        return -errno;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

int khala__sys_read_at(int fd, void *buf, size_t len, uint64_t off) {
    ssize_t n = pread(fd, buf, len, (off_t)off);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EIO;
}

int khala__sys_write_at(int fd, const void *buf, size_t len, uint64_t off) {
    ssize_t n = pwrite(fd, buf, len, (off_t)off);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EIO;
}

int khala__sys_membarrier_register(void) {
    static _Atomic int registered; /* 0 unknown, 1 yes, -errno no; per process */
    int r = atomic_load_explicit(&registered, memory_order_relaxed);
    if (r == 0) {
        r = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0 ? 1
                                                                                         : -errno;
        atomic_store_explicit(&registered, r, memory_order_relaxed);
    }
    return r == 1 ? 0 : r;
}

int khala__sys_membarrier(void) {
    return syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0 ? 0 : -errno;
}

int64_t khala__sys_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t khala__sys_now_coarse_upper_ms(void) {
    static _Atomic int64_t res_ms = -1;
    int64_t res = atomic_load_explicit(&res_ms, memory_order_relaxed);
    if (res < 0) {
        struct timespec r;
        res = 1;
        if (clock_getres(CLOCK_MONOTONIC_COARSE, &r) == 0)
            res = (int64_t)r.tv_sec * 1000 + (r.tv_nsec + 999999) / 1000000;
        atomic_store_explicit(&res_ms, res, memory_order_relaxed);
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + res + 1;
}

uint64_t khala__sys_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t khala__sys_proc_start(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: count from the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    unsigned long long start = 0;
    int field = 2;
    for (p++; *p && field < 22; p++) {
        if (*p == ' ')
            field++;
    }
    if (field == 22 && sscanf(p, "%llu", &start) == 1)
        return (uint64_t)start;
    return 0;
}

void khala__sys_pause_us(unsigned us) {
    if (us == 0) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

uint64_t khala__sys_random_u64(void) {
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
        v = khala__sys_now_ns() ^ ((uint64_t)getpid() << 32);
    return v;
}
