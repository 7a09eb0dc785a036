/*
 * Platform calls, wrapped in one place so that the rest of the library stays portable and so
 * that tests can reason about which calls make system calls. Every function returns 0 or a
 * negative errno, as the rest of the library does.
 */
#ifndef KHALA_LIB_SYS_H
#define KHALA_LIB_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Open the POSIX shared-memory object /<shm_name>, or with create != 0 create it exclusively
 * (-EEXIST if it exists) with exactly `mode`: the mode is set again with fchmod after the
 * create, so the umask cannot narrow it (nor widen it). Returns the fd (>= 0, close-on-exec) or
 * -errno; a create that fails after making the object unlinks it again. */
int khala__sys_shm_open(const char *shm_name, int create, int writable, unsigned mode);
/* Unlink /<shm_name>; -ENOENT when absent. */
int khala__sys_shm_unlink(const char *shm_name);
/* Size of an open file in bytes into *size. */
int khala__sys_fd_size(int fd, uint64_t *size);
/* Give an open file to this process's effective user and to group gid (-1: this process's
 * effective group), then set its permission bits to exactly mode: a chown may clear mode bits,
 * and the caller's mode is what the file's readers rely on. A non-root process may give a file
 * only to a group it is a member of (-EPERM otherwise). */
int khala__sys_fd_own(int fd, int64_t gid, unsigned mode);
/* 1 when an open file already belongs to this process's effective user and to group gid (-1:
 * this process's effective group) and has exactly permission bits mode, 0 when not. */
int khala__sys_fd_owned(int fd, int64_t gid, unsigned mode);
/* Set the size of an open file (ftruncate), reserving its memory (posix_fallocate) so that a
 * full /dev/shm shows as -ENOSPC now, never as SIGBUS later. */
int khala__sys_fd_resize(int fd, uint64_t size);
/* Map size bytes of fd, shared; writable selects PROT_READ|PROT_WRITE over PROT_READ. Asks for
 * transparent huge pages (MADV_HUGEPAGE), which a tmpfs mounted with huge=advise grants. */
int khala__sys_map(int fd, uint64_t size, int writable, void **out);
/* Size a new, empty file to size bytes, map it read-write as khala__sys_map does, and reserve
 * its memory through the mapping (MADV_POPULATE_WRITE), so that the huge-page advice applies to
 * the pages as they are made; a kernel without MADV_POPULATE_WRITE gets posix_fallocate. A full
 * /dev/shm is -ENOSPC now, never SIGBUS later. *out only on success (nothing stays mapped on
 * failure). */
int khala__sys_map_new(int fd, uint64_t size, void **out);
/* Bytes of the mapping that starts at addr which the kernel maps with huge (PMD) pages, from
 * /proc/self/smaps; 0 when none, or when smaps cannot be read. */
uint64_t khala__sys_huge_bytes(const void *addr);
/* Map size bytes of fd at `at`, replacing the mapping there (MAP_FIXED): the same memory seen
 * through another open file description. A mapping holds a reference to the description it
 * was made through, and with it that description's OFD locks, so replacing it is how a process
 * lets go of a description it inherited. */
int khala__sys_remap(int fd, void *at, uint64_t size, int writable);
void khala__sys_unmap(void *p, uint64_t size);
void khala__sys_close(int fd);

/* Byte-range locks that belong to an open file description (F_OFD_SETLK): the kernel drops them
 * when the last descriptor of that description closes, which includes the death of the process.
 * try_lock returns 0 when acquired, -EAGAIN when another description holds it. */
int khala__sys_lock_try(int fd, uint64_t byte);
/* The same lock, waiting while another description holds it (F_OFD_SETLKW, resumed after a
 * signal). Only for locks that every holder keeps for a few system calls. */
int khala__sys_lock_wait(int fd, uint64_t byte);
int khala__sys_lock_release(int fd, uint64_t byte);
/* 1 when some open file description other than fd's holds a lock on byte, 0 when none does. */
int khala__sys_lock_held_elsewhere(int fd, uint64_t byte);
/* 1 when fds a and b are the same file (device and inode), 0 when not. */
int khala__sys_same_file(int a, int b);
/* pread/pwrite of exactly len bytes at off: 0, -EIO on a short transfer, or -errno. */
int khala__sys_read_at(int fd, void *buf, size_t len, uint64_t off);
int khala__sys_write_at(int fd, const void *buf, size_t len, uint64_t off);

/* Asymmetric fences (membarrier(2)). A reader process registers once; the writer then issues
 * khala__sys_membarrier(), which runs a full memory barrier on every CPU running a registered
 * process, so registered readers need only a compiler barrier on their side. Both return 0 or
 * -errno (-ENOSYS / -EINVAL where the kernel lacks MEMBARRIER_CMD_GLOBAL_EXPEDITED). */
int khala__sys_membarrier_register(void);
int khala__sys_membarrier(void);

/* Monotonic clock in milliseconds, through the vDSO (no system call on Linux x86-64). */
int64_t khala__sys_now_ms(void);
/* The monotonic coarse clock in milliseconds plus its resolution, through the vDSO: a cheap
 * upper bound of the precise clock. Readers compare deadlines against it, so an item is
 * reported expired up to one tick early and never late. */
int64_t khala__sys_now_coarse_upper_ms(void);
/* Monotonic clock in nanoseconds. */
uint64_t khala__sys_now_ns(void);
/* The start time of process pid since boot, in clock ticks (field 22 of /proc/pid/stat); 0 if
 * unknown. With the pid it names one process, even after its pid is reused. */
uint64_t khala__sys_proc_start(int pid);
/* Yield the CPU (us == 0) or sleep for us microseconds. */
void khala__sys_pause_us(unsigned us);
/* 64 random bits from the kernel, for hash seeds. */
uint64_t khala__sys_random_u64(void);

#endif /* KHALA_LIB_SYS_H */
