/*
 * mkdir -p (daemon/dirs.h). Each component is made in turn and then checked to be a directory:
 * mkdir() answers EEXIST for a file as well, and a file where a directory should be must fail
 * here with its name rather than later with a puzzling ENOTDIR from open().
 */
#include "dirs.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "errbuf.h"

int khala__dirs_make(const char *path, mode_t mode, char *err, size_t errlen) {
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof(buf))
        return khala__errbuf(err, errlen, -ENAMETOOLONG,
                             "path is too long (%zu bytes, at most %zu): %s", len, sizeof(buf) - 1,
                             path);
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        struct stat st;
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return khala__errbuf(err, errlen, -errno, "%s: cannot create directory %s: %s", path,
                                 buf, strerror(errno));
        if (stat(buf, &st) != 0)
            return khala__errbuf(err, errlen, -errno, "%s: %s: %s", path, buf, strerror(errno));
        if (!S_ISDIR(st.st_mode))
            return khala__errbuf(err, errlen, -ENOTDIR, "%s: %s is not a directory", path, buf);
        buf[i] = c;
        while (i < len && buf[i + 1] == '/')
            i++;
    }
    return 0;
}

int khala__dirs_make_parent(const char *path, mode_t mode, char *err, size_t errlen) {
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof(buf))
        return khala__errbuf(err, errlen, -ENAMETOOLONG,
                             "path is too long (%zu bytes, at most %zu): %s", len, sizeof(buf) - 1,
                             path);
    memcpy(buf, path, len + 1);
    char *slash = strrchr(buf, '/');
    if (!slash || slash == buf)
        return 0;
    *slash = '\0';
    return khala__dirs_make(buf, mode, err, errlen);
}
