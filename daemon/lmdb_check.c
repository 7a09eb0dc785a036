/*
 * The start-up check of an LMDB file (daemon/lmdb_check.h).
 *
 * HOW IT WORKS
 *
 * LMDB maps its file and follows page numbers and node offsets it finds in it, without checksums.
 * A file cut short (a copy that did not finish, a full disk) maps pages past its end, and the
 * first read of one raises SIGBUS; flipped bytes in a branch or leaf page make LMDB read through
 * a wild offset, which raises SIGSEGV. Either would kill khalad at its first read of the damage,
 * in the middle of serving, and again at every restart (the disk store and the journal are read
 * whole at start). chaos_check (tests/chaos) found both.
 *
 * So before khalad opens such a file, a child process reads it whole:
 *   1. fork; the child resets SIGBUS and SIGSEGV to their defaults (a sanitizer's handler would
 *      turn the signal into an exit code), disables core files, and opens the environment
 *      MDB_RDONLY | MDB_NOLOCK (no reader slot left behind if it dies);
 *   2. it compares the file's size with the last page the newest meta page names: a file
 *      shorter than that is truncated (the check that needs no walk);
 *   3. it walks the main database and every named database in it, touching each key and
 *      value byte (a sum, so the reads are not optimized away);
 *   4. it exits 0, or 3 with LMDB's message written to a pipe.
 * A file that is no LMDB file at all passes: LMDB reads its header with read(2), safely, and
 * the caller's own open refuses it with its own message.
 * The parent reads the pipe and the exit status: a signal or a failure is KHALA_ECORRUPT with a
 * message naming the file, what was found and what to do.
 *
 * Cost: one more read of the file at start (the disk store's index rebuild already reads every
 * record once). Rejected: catching SIGBUS/SIGSEGV in khalad itself (siglongjmp out of LMDB leaves
 * its state undefined), and checksums of LMDB's pages (LMDB has none; the records could carry
 * their own, which would find flipped value bytes too, but not make a wild page offset safe).
 */
#include "lmdb_check.h"

#include <errno.h>
#include <lmdb.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "errbuf.h"
#include "khala/error.h"
#include "log.h"

/* The child's exit status when LMDB reported an error (its message is in the pipe). */
#define CHILD_MDB_ERROR 3
/* Named databases a khala file may hold (the disk store has three). */
#define CHECK_MAXDBS 16

/* Where the child stores the sum of what it read, so that no read is optimized away. */
static volatile uint64_t g_sink;

/* Step 3 for one database: every key and value byte, folded into *sum. */
static int walk_db(MDB_txn *txn, MDB_dbi dbi, uint64_t *sum) {
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return rc;
    MDB_val k, v;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        const unsigned char *p = k.mv_data;
        for (size_t i = 0; i < k.mv_size; i++)
            *sum += p[i];
        p = v.mv_data;
        for (size_t i = 0; i < v.mv_size; i++)
            *sum += p[i];
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Steps 1-4 in the child: 0, or an LMDB error with its message in msg. */
static int child_check(const char *dir, off_t file_size, char *msg, size_t msglen) {
    MDB_env *env;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    uint64_t sum = 0;
    int rc = mdb_env_create(&env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(env, CHECK_MAXDBS);
    if (rc == 0)
        rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOLOCK | MDB_NOTLS, 0600);
    /* Not an LMDB file (or another LMDB version's): the open reads only the header, with
     * read(2), and the caller's own open says so in its words. */
    if (rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH)
        return 0;
    if (rc == 0) {
        /* 2. The newest meta page's last page must lie inside the file. */
        MDB_envinfo info;
        MDB_stat st;
        if (mdb_env_info(env, &info) == 0 && mdb_env_stat(env, &st) == 0 &&
            (uint64_t)(info.me_last_pgno + 1) * st.ms_psize > (uint64_t)file_size) {
            snprintf(msg, msglen, "truncated: %lld bytes, but its pages run to %llu bytes",
                     (long long)file_size,
                     (unsigned long long)(info.me_last_pgno + 1) * st.ms_psize);
            return MDB_CORRUPTED;
        }
    }
    if (rc == 0)
        rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn);
    MDB_dbi main_dbi;
    if (rc == 0)
        rc = mdb_dbi_open(txn, NULL, 0, &main_dbi);
    if (rc == 0)
        rc = walk_db(txn, main_dbi, &sum);
    /* 3. Every key of the main database that names a database is walked too. */
    if (rc == 0)
        rc = mdb_cursor_open(txn, main_dbi, &cur);
    MDB_val k, v;
    while (rc == 0 && (rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        char name[256];
        if (k.mv_size == 0 || k.mv_size >= sizeof(name) || memchr(k.mv_data, '\0', k.mv_size))
            continue;
        memcpy(name, k.mv_data, k.mv_size);
        name[k.mv_size] = '\0';
        MDB_dbi dbi;
        int orc = mdb_dbi_open(txn, name, 0, &dbi);
        if (orc == MDB_INCOMPATIBLE || orc == MDB_NOTFOUND)
            continue; /* a plain record, not a database */
        rc = orc == 0 ? walk_db(txn, dbi, &sum) : orc;
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (rc != 0)
        snprintf(msg, msglen, "%s", mdb_strerror(rc));
    /* Nothing is closed: the child exits at once, and closing a damaged environment could
     * read it again. The sum, stored, keeps the reads. */
    g_sink = sum;
    return rc;
}

int khala__lmdb_check(const char *dir, const char *what, char *err, size_t errlen) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    if (stat(path, &st) != 0)
        return errno == ENOENT
                   ? 0
                   : khala__errbuf(err, errlen, -errno, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return 0; /* not a file: the open that follows names the error */
    if (st.st_size == 0) {
        /* LMDB takes it for a new file. khalad never leaves one empty once opened (the meta
         * pages are written at creation), so it was emptied behind khalad's back (or a crash
         * cut the creation short, before anything was kept): say so, since what it held is
         * gone. */
        khala__log("warn",
                   "an LMDB file is empty (0 bytes): starting it afresh; whatever it held is gone "
                   "(for a write journal: the writes it queued)",
                   "what", what, "file", path, NULL);
        return 0;
    }
    int fds[2];
    if (pipe(fds) != 0)
        return khala__errbuf(err, errlen, -errno, "checking %s: pipe: %s", path, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return khala__errbuf(err, errlen, -e, "checking %s: fork: %s", path, strerror(e));
    }
    if (pid == 0) {
        /* 1. */
        close(fds[0]);
        signal(SIGBUS, SIG_DFL);
        signal(SIGSEGV, SIG_DFL);
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core);
        char msg[256] = "";
        int rc = child_check(dir, st.st_size, msg, sizeof(msg));
        if (rc != 0 && write(fds[1], msg, strlen(msg)) < 0)
            _exit(CHILD_MDB_ERROR);
        _exit(rc != 0 ? CHILD_MDB_ERROR : 0);
    }
    close(fds[1]);
    char msg[256] = "";
    size_t got = 0;
    ssize_t n;
    while (got < sizeof(msg) - 1 && (n = read(fds[0], msg + got, sizeof(msg) - 1 - got)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        got += (size_t)n;
    }
    msg[got] = '\0';
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return khala__errbuf(err, errlen, -errno, "checking %s: waitpid: %s", path,
                                 strerror(errno));
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    char why[300];
    if (WIFSIGNALED(status))
        snprintf(why, sizeof(why),
                 "reading it whole raised %s (a page past its end or a wild "
                 "offset)",
                 strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status) && WEXITSTATUS(status) == CHILD_MDB_ERROR)
        snprintf(why, sizeof(why), "%s", msg[0] ? msg : "LMDB reported an error");
    else
        snprintf(why, sizeof(why), "the check ended with status %d", status);
    return khala__errbuf(err, errlen, KHALA_ECORRUPT,
                         "%s %s is damaged: %s; khalad does not start on it: restore it, or move "
                         "it away to start with an empty one",
                         what, path, why);
}
