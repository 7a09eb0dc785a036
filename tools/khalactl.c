/*
 * khalactl: the operator's tool for a running khalad.
 *
 * HOW IT WORKS
 *
 *   argv --parse_args--> ctl_t (global options, one command, its options and arguments)
 *        --connect-----> one channel to khalad (lib/channel.h: connect + hello)
 *        --cmd_*-------> one or more blocking requests (lib/proto.h messages)
 *        --render------> stdout: text for a human, or exactly one JSON object (--json)
 *                        stderr: one line naming the problem, and the exit code
 *
 * The command line is parsed by tools/ctl_args.c (options anywhere, "--" ends them, an option
 * the command does not take is an error); the shared definitions are in tools/ctl.h.
 *
 * Exit codes are the contract for scripts (docs/operating.md, "khalactl"):
 *   0 success, 1 not found (KHALA_ENOTFOUND), 2 usage error (or a bad --keys-from file),
 *   3 khalad is not running or went away (KHALA_EDAEMON), 4 any other error,
 *   5 version conflict (KHALA_EVERSION, a compare-and-set put that lost),
 *   6 health: khalad answers but a level (L1, L2, L3) is down.
 * ctl_exit_code() is the one place that maps a khala code to them.
 *
 * khalad down: get and inspect then read L1 straight from the shared segment (l1_alone(), through
 * the worker library's khala_cache_open and a read section, which never needs khalad), and say
 * on stderr that khalad is down and that the answer is L1's alone; a key L1 does not hold exits
 * 3, since the levels below could not be asked. Every other command needs khalad and exits 3.
 *
 * Rendering lives in ctl_output.c. This file never prints a reply's bytes itself except a get's
 * value (raw on a pipe, so that `khalactl get k > file` is byte-exact) and config's INI text.
 *
 * Rejected: talking through the worker library (khala_cache_open) rather than a bare channel.
 * It attaches to the L1 segment, which needs the segment to exist and takes a reader slot, while
 * an operator mostly wants to know what khalad says, including when the segment is in trouble.
 * The library is used only for the L1 fallback above, when khalad cannot say anything.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "ctl.h"
#include "ctl_output.h"
#include "ctl_similar.h"
#include "khala/cache.h"
#include "khala/error.h"
#include "proto.h"
#include "redact.h"

/* Exit codes; see the theory block. */

/* Messages -------------------------------------------------------------------------------- */

static void errorf(const ctl_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One line on stderr: "khalactl: CMD: ...", written whole (one write: a reader of the pipe, or
 * a log that other processes write too, never sees half of it). */
static void errorf(const ctl_t *c, const char *fmt, ...) {
    char msg[2048], clean[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* khalad redacts what it sends; a message made here (a path, a URL given on the command
     * line) is redacted too (lib/redact.h). */
    khala__redact(msg, clean, sizeof(clean));
    char line[2200];
    int n = snprintf(line, sizeof(line), "khalactl: %s%s%s\n", c && c->cmd ? c->cmd->name : "",
                     c && c->cmd ? ": " : "", clean);
    if (n >= (int)sizeof(line)) {
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    if (n > 0)
        fwrite(line, 1, (size_t)n, stderr);
}

static int ctl_exit_code(int rc) {
    switch (rc) {
        case 0:
            return CTL_EXIT_OK;
        case KHALA_ENOTFOUND:
            return CTL_EXIT_NOTFOUND;
        case KHALA_EDAEMON:
            return CTL_EXIT_NODAEMON;
        case KHALA_EVERSION:
            return CTL_EXIT_CONFLICT;
        case KHALA_EDENIED:
            return CTL_EXIT_DENIED;
        default:
            return CTL_EXIT_ERROR;
    }
}

/* Report a failed request (rc from call()) and return the exit code. key, when not NULL, is
 * the key the command was about, named in a not-found message. */
static int fail(ctl_t *c, int rc, const khala_bytes_t *key) {
    if (rc == KHALA_ENOTFOUND) {
        fputs("khalactl: ", stderr);
        if (key) {
            fputs("no such key '", stderr);
            ctl_write_escaped(stderr, key->ptr, key->len, true);
            /* khalad's detail, when it has one (inspect: "L2 (redis) is down ..."). */
            fprintf(stderr, "'%s%s\n", c->err[0] ? ": " : "", c->err);
        } else {
            fprintf(stderr, "%s: not found\n", c->cmd->name);
        }
    } else if (rc == KHALA_EDAEMON) {
        errorf(c, "lost the connection to khalad at %s: %s", c->path, c->err);
    } else if (rc == -ETIMEDOUT) {
        errorf(c, "khalad at %s did not answer within %d ms (--timeout)", c->path, c->timeout_ms);
    } else if (rc == KHALA_EVERSION) {
        errorf(c, "%s", c->err[0] ? c->err : khala_strerror(rc));
    } else if (rc == KHALA_EDENIED) {
        errorf(c, "refused by khalad: %s", c->err[0] ? c->err : khala_strerror(rc));
    } else {
        errorf(c, "%s (%s)%s%s", khala_err_name(rc), khala_strerror(rc), c->err[0] ? ": " : "",
               c->err);
    }
    return ctl_exit_code(rc);
}

/* Talking to khalad ------------------------------------------------------------------------ */

static int connect_khalad(ctl_t *c) {
    int rc;
    if (c->socket) {
        snprintf(c->path, sizeof(c->path), "%s", c->socket);
    } else if ((rc = khala__chan_default_path(c->name, c->path, sizeof(c->path))) != 0) {
        errorf(c, "no socket path for cache '%s': %s", c->name, khala_strerror(rc));
        return CTL_EXIT_ERROR;
    }
    c->err[0] = '\0';
    rc = khala__chan_open(c->path, c->name_given ? c->name : NULL, c->timeout_ms, &c->ch, c->err,
                          sizeof(c->err));
    if (rc == 0)
        return CTL_EXIT_OK;
    if (rc == KHALA_EDAEMON) {
        /* get and inspect still have L1 (main tries it) and say so themselves. */
        if (!c->cmd->l1_alone)
            fprintf(stderr,
                    "khalactl: khalad is not running: nothing listens on %s (start it with: "
                    "systemctl start khalad, or khalad --name %s)\n",
                    c->path, c->name);
        return CTL_EXIT_NODAEMON;
    }
    if (rc == -ETIMEDOUT)
        return fail(c, rc, NULL);
    errorf(c, "cannot talk to khalad at %s: %s (%s)%s%s", c->path, khala_err_name(rc),
           khala_strerror(rc), c->err[0] ? ": " : "", c->err);
    return CTL_EXIT_ERROR;
}

/* Send req and wait for its reply. Returns 0 with *rep holding a reply whose rc is 0 (free it
 * with khala__proto_msg_free); or the failure: the channel's code, or the server's rc, with
 * c->err holding the detail and *rep freed. */
static int call(ctl_t *c, khala_msg_t *req, khala_msg_t *rep) {
    c->err[0] = '\0';
    khala__proto_msg_init(rep);
    int rc = khala__chan_call(c->ch, req, rep, c->timeout_ms, c->err, sizeof(c->err));
    if (rc != 0) {
        khala__proto_msg_free(rep);
        return rc;
    }
    rc = rep->rc;
    if (rc != 0) {
        if (rep->has & KHALA_F_ERR)
            snprintf(c->err, sizeof(c->err), "%.*s", (int)rep->err.len, (const char *)rep->err.ptr);
        khala__proto_msg_free(rep);
    }
    return rc;
}

static khala_msg_t request(khala_op_t op) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.op = op;
    return m;
}

static khala_bytes_t arg_bytes(const char *s) {
    khala_bytes_t b = {(const uint8_t *)s, strlen(s)};
    return b;
}

/* Key arguments are checked here, so that the message names the argument. */
static int key_arg(ctl_t *c, const char *s, khala_bytes_t *out) {
    *out = arg_bytes(s);
    if (out->len == 0 || out->len > KHALA_KEY_MAX) {
        errorf(c, "the key is %zu bytes; a key is 1 to %d bytes", out->len, KHALA_KEY_MAX);
        return CTL_EXIT_USAGE;
    }
    return CTL_EXIT_OK;
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Commands --------------------------------------------------------------------------------- */

static int cmd_ping(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_PING), r;
    int64_t t0 = now_us();
    int rc = call(c, &m, &r);
    int64_t rtt = now_us() - t0;
    if (rc != 0)
        return fail(c, rc, NULL);
    khala__proto_msg_free(&r);
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "ok");
        ctl_json_bool(&j, true);
        ctl_json_key(&j, "rtt_us");
        ctl_json_int(&j, rtt);
        ctl_json_end(&j);
    } else {
        printf("pong from %s in %.3f ms\n", c->path, (double)rtt / 1000.0);
    }
    return CTL_EXIT_OK;
}

static int cmd_stats(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_STATS), r;
    int rc = call(c, &m, &r);
    if (rc != 0)
        return fail(c, rc, NULL);
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_kv_members(&j, r.data, r.ndata);
        ctl_json_end(&j);
    } else {
        ctl_human_kv(stdout, r.data, r.ndata, 0);
    }
    khala__proto_msg_free(&r);
    return CTL_EXIT_OK;
}

static int cmd_get(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_GET), r;
    int rc = key_arg(c, c->args[0], &m.key);
    if (rc != 0)
        return rc;
    m.has |= KHALA_F_K;
    if (c->given & O_TYPE) {
        m.type = c->type;
        m.has |= KHALA_F_TYPE;
    }
    if (c->given & O_ARCHIVE) { /* the copy a level below L1 evicted for space */
        m.archive = true;
        m.has |= KHALA_F_ARCHIVE;
    }
    rc = call(c, &m, &r);
    if (rc != 0)
        return fail(c, rc, &m.key);
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "key");
        ctl_json_bytes(&j, m.key.ptr, m.key.len);
        ctl_json_key(&j, "value");
        ctl_json_bytes(&j, r.value.ptr, r.value.len);
        if (r.has & KHALA_F_VER) {
            ctl_json_key(&j, "version");
            ctl_json_uint(&j, r.ver);
        }
        if (r.has & KHALA_F_TTL) {
            ctl_json_key(&j, "ttl_ms");
            ctl_json_uint(&j, r.ttl_ms);
        }
        const char *tname = (r.has & KHALA_F_TYPE) ? khala__proto_type_name(r.type) : NULL;
        if (tname) {
            ctl_json_key(&j, "type");
            ctl_json_str(&j, tname);
        }
        const char *lvl = (r.has & KHALA_F_LVL) ? khala__proto_level_name(r.lvl) : NULL;
        if (lvl) {
            ctl_json_key(&j, "level");
            ctl_json_str(&j, lvl);
        }
        if (c->given & O_ARCHIVE) {
            ctl_json_key(&j, "archive");
            ctl_json_bool(&j, true);
        }
        ctl_json_end(&j);
    } else if (isatty(STDOUT_FILENO)) {
        /* A terminal gets text it can show, and a final newline. */
        ctl_write_human(stdout, r.value.ptr, r.value.len);
        if (r.value.len == 0 || r.value.ptr[r.value.len - 1] != '\n')
            fputc('\n', stdout);
    } else if (r.value.len) {
        fwrite(r.value.ptr, 1, r.value.len, stdout);
    }
    khala__proto_msg_free(&r);
    return CTL_EXIT_OK;
}

/* Read all of path ("-": stdin) into a malloc'd buffer. */
static int read_file(ctl_t *c, const char *path, uint8_t **out, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        errorf(c, "%s: cannot open: %s", path, strerror(errno));
        return CTL_EXIT_USAGE;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = CTL_EXIT_OK;
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            if (ncap > (size_t)KHALA_FRAME_MAX_CEILING + 1)
                ncap = (size_t)KHALA_FRAME_MAX_CEILING + 1;
            if (ncap == cap) {
                errorf(c, "%s: larger than any value khalad accepts", path);
                rc = CTL_EXIT_USAGE;
                break;
            }
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                errorf(c, "%s: out of memory", path);
                rc = CTL_EXIT_ERROR;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                errorf(c, "%s: cannot read: %s", path, strerror(errno));
                rc = CTL_EXIT_USAGE;
            }
            break;
        }
    }
    if (f != stdin)
        fclose(f);
    if (rc != CTL_EXIT_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return CTL_EXIT_OK;
}

static int cmd_put(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_PUT), r;
    uint8_t *file = NULL;
    int rc = key_arg(c, c->args[0], &m.key);
    if (rc != 0)
        return rc;
    if ((c->nargs == 2) == !!(c->given & O_VALUE_FROM)) {
        errorf(c, "give the value either as an argument or with --value-from, not %s",
               c->nargs == 2 ? "both" : "neither");
        return CTL_EXIT_USAGE;
    }
    if (c->nargs == 2) {
        m.value = arg_bytes(c->args[1]);
    } else {
        size_t len = 0;
        if ((rc = read_file(c, c->value_from, &file, &len)) != 0)
            return rc;
        m.value.ptr = file;
        m.value.len = len;
    }
    m.has |= KHALA_F_K | KHALA_F_V;
    if (c->given & O_TYPE) {
        m.type = c->type;
        m.has |= KHALA_F_TYPE;
    }
    if (c->given & O_TTL) {
        m.ttl_ms = c->ttl_s * 1000;
        m.has |= KHALA_F_TTL;
    }
    if (c->given & O_VERSION) {
        m.ver = c->version;
        m.has |= KHALA_F_VER;
    }
    if (c->nlinks) {
        m.links = c->links;
        m.nlinks = c->nlinks;
        m.has |= KHALA_F_LINKS;
    }
    const khala_chan_info_t *info = khala__chan_info(c->ch);
    if (info && info->max_value && m.value.len > info->max_value) {
        errorf(c, "the value is %zu bytes, khalad takes at most %u", m.value.len, info->max_value);
        free(file);
        return CTL_EXIT_ERROR;
    }
    rc = call(c, &m, &r);
    free(file);
    if (rc != 0)
        return fail(c, rc, &m.key);
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "key");
        ctl_json_bytes(&j, (const uint8_t *)c->args[0], strlen(c->args[0]));
        ctl_json_key(&j, "version");
        ctl_json_uint(&j, r.ver);
        ctl_json_end(&j);
    } else {
        printf("stored at version %" PRIu64 "\n", r.ver);
    }
    khala__proto_msg_free(&r);
    return CTL_EXIT_OK;
}

/* Print a reply's count ("invalidated 3 keys"), or {"count": 3}. */
static void print_count(const ctl_t *c, const char *verb, uint64_t n) {
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "count");
        ctl_json_uint(&j, n);
        ctl_json_end(&j);
    } else {
        printf("%s %" PRIu64 " key%s\n", verb, n, n == 1 ? "" : "s");
    }
}

static int cmd_del(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_DEL), r;
    int rc = key_arg(c, c->args[0], &m.key);
    if (rc != 0)
        return rc;
    m.has |= KHALA_F_K;
    if ((rc = call(c, &m, &r)) != 0)
        return fail(c, rc, &m.key);
    khala__proto_msg_free(&r);
    print_count(c, "deleted", 1);
    return CTL_EXIT_OK;
}

static int cmd_invalidate(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_INVALIDATE), r;
    int n = (c->nargs == 1) + !!(c->given & O_PREFIX) + !!(c->given & O_TYPE);
    if (n != 1) {
        errorf(c, "give exactly one of KEY, --prefix P or --type T");
        return CTL_EXIT_USAGE;
    }
    int rc = 0;
    if (c->nargs == 1) {
        if ((rc = key_arg(c, c->args[0], &m.key)) != 0)
            return rc;
        m.by = KHALA_BY_KEY;
        m.has |= KHALA_F_K;
    } else if (c->given & O_PREFIX) {
        if ((rc = key_arg(c, c->prefix, &m.prefix)) != 0)
            return rc;
        m.by = KHALA_BY_PREFIX;
        m.has |= KHALA_F_PREFIX;
    } else {
        m.by = KHALA_BY_TYPE;
        m.type = c->type;
        m.has |= KHALA_F_TYPE;
    }
    m.has |= KHALA_F_BY;
    if ((rc = call(c, &m, &r)) != 0)
        return fail(c, rc, NULL);
    print_count(c, "invalidated", (r.has & KHALA_F_COUNT) ? r.count : 0);
    khala__proto_msg_free(&r);
    return CTL_EXIT_OK;
}

static int cmd_flush(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_FLUSH), r;
    if (c->given & O_TYPE) {
        m.type = c->type;
        m.has |= KHALA_F_TYPE;
    }
    int rc = call(c, &m, &r);
    if (rc != 0)
        return fail(c, rc, NULL);
    print_count(c, "flushed", (r.has & KHALA_F_COUNT) ? r.count : 0);
    khala__proto_msg_free(&r);
    return CTL_EXIT_OK;
}

/* keys: one page after another until the scan ends, or --limit keys were printed. */
static int cmd_keys(ctl_t *c) {
    khala_bytes_t pattern = {NULL, 0};
    if (c->nargs == 1) {
        pattern = arg_bytes(c->args[0]);
        if (pattern.len > KHALA_PROTO_PATTERN_MAX) {
            errorf(c, "the pattern is %zu bytes, max %u", pattern.len, KHALA_PROTO_PATTERN_MAX);
            return CTL_EXIT_USAGE;
        }
    }
    /* The largest page by default: fewer round trips for a whole scan. */
    uint64_t page = (c->given & O_COUNT) ? c->count : KHALA_PROTO_ARRAY_MAX;
    uint64_t cursor = (c->given & O_CURSOR) ? c->cursor : 0, got = 0;
    ctl_json_t j;
    if (c->json) {
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "keys");
        ctl_json_begin_array(&j);
    }
    int rc = 0;
    while (!((c->given & O_LIMIT) && got >= c->limit)) {
        khala_msg_t m = request(KHALA_OP_KEYS), r;
        uint64_t want = page;
        if ((c->given & O_LIMIT) && c->limit - got < want)
            want = c->limit - got; /* never overshoot, so that the cursor is exact */
        m.count = (uint32_t)want;
        m.cursor = cursor;
        m.has |= KHALA_F_COUNT | KHALA_F_CURSOR;
        if (c->nargs == 1) {
            m.pattern = pattern;
            m.has |= KHALA_F_PATTERN;
        }
        if ((rc = call(c, &m, &r)) != 0)
            break;
        for (uint32_t i = 0; i < r.nkeys; i++) {
            if (c->json) {
                ctl_json_bytes(&j, r.keys[i].ptr, r.keys[i].len);
            } else {
                ctl_write_human(stdout, r.keys[i].ptr, r.keys[i].len);
                fputc('\n', stdout);
            }
        }
        got += r.nkeys;
        cursor = r.cursor;
        khala__proto_msg_free(&r);
        if (cursor == 0)
            break;
    }
    if (c->json) {
        ctl_json_end_array(&j);
        if (rc == 0) {
            ctl_json_key(&j, "count");
            ctl_json_uint(&j, got);
            ctl_json_key(&j, "cursor");
            ctl_json_uint(&j, cursor);
        }
        ctl_json_end(&j);
    } else if (rc == 0 && cursor != 0) {
        /* Paging: where the next page starts, on stderr so that stdout stays one key a line. */
        fprintf(stderr, "khalactl: keys: more keys follow: --cursor %" PRIu64 "\n", cursor);
    }
    return rc ? fail(c, rc, NULL) : CTL_EXIT_OK;
}

static int cmd_inspect(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_INSPECT), r;
    int rc = key_arg(c, c->args[0], &m.key);
    if (rc != 0)
        return rc;
    m.has |= KHALA_F_K;
    if ((rc = call(c, &m, &r)) != 0)
        return fail(c, rc, &m.key);
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "key");
        ctl_json_bytes(&j, m.key.ptr, m.key.len);
        ctl_json_kv_members(&j, r.data, r.ndata);
        ctl_json_end(&j);
    } else {
        /* The key heads the table, aligned with khalad's fields. */
        khala_kv_t *rows = calloc((size_t)r.ndata + 1, sizeof(*rows));
        if (!rows) {
            khala__proto_msg_free(&r);
            errorf(c, "out of memory");
            return CTL_EXIT_ERROR;
        }
        rows[0].key = arg_bytes("key");
        rows[0].kind = KHALA_KV_BIN;
        rows[0].as.s = m.key;
        memcpy(rows + 1, r.data, (size_t)r.ndata * sizeof(*rows));
        ctl_human_kv(stdout, rows, r.ndata + 1, 0);
        free(rows);
    }
    khala__proto_msg_free(&r);
    return CTL_EXIT_OK;
}

static int cmd_config(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_CONFIG), r;
    int rc = call(c, &m, &r);
    if (rc != 0)
        return fail(c, rc, NULL);
    const khala_kv_t *ini = khala__proto_kv_find(r.data, r.ndata, "ini");
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_kv_members(&j, r.data, r.ndata);
        ctl_json_end(&j);
    } else if (ini && (ini->kind == KHALA_KV_STR || ini->kind == KHALA_KV_BIN)) {
        /* khalad sends it redacted; an older khalad did not, so redact here too. */
        size_t cap = 2 * ini->as.s.len + 16; /* "***" may be longer than what it replaces */
        char *text = malloc(ini->as.s.len + 1), *clean = malloc(cap);
        if (!text || !clean) {
            free(text);
            free(clean);
            khala__proto_msg_free(&r);
            return fail(c, -ENOMEM, NULL);
        }
        memcpy(text, ini->as.s.ptr, ini->as.s.len);
        text[ini->as.s.len] = '\0';
        fputs(khala__redact(text, clean, cap), stdout);
        free(text);
        free(clean);
    } else {
        ctl_human_kv(stdout, r.data, r.ndata, 0);
    }
    khala__proto_msg_free(&r);
    return CTL_EXIT_OK;
}

/* The state of one level below L1 from a stats reply ("l2", "l3"): NULL when khalad has no such
 * level, else "ok" or "down", with backend[0 .. 32) naming its driver. */
static const char *level_state(const khala_msg_t *r, const char *level, char backend[32]) {
    const khala_kv_t *map = khala__proto_kv_find(r->data, r->ndata, level);
    if (!map || map->kind != KHALA_KV_MAP)
        return NULL;
    const khala_kv_t *h = khala__proto_kv_find(map->as.map.items, map->as.map.n, "healthy");
    const khala_kv_t *b = khala__proto_kv_find(map->as.map.items, map->as.map.n, "backend");
    bool named = b && b->kind == KHALA_KV_STR;
    snprintf(backend, 32, "%.*s", named ? (int)b->as.s.len : 1,
             named ? (const char *)b->as.s.ptr : "?");
    /* A level whose reply has no health flag is taken as down: khalad cannot vouch for it. */
    return h && h->kind == KHALA_KV_UINT && h->as.u ? "ok" : "down";
}

/* health: hello (done by connect), ping, and stats, which say how each level is. Healthy = khalad
 * answered and no level is down; a level that is down exits CTL_EXIT_UNHEALTHY. L1 is up while
 * khalad answers (khalad is its writer); a reader stuck in a read section is named but is not
 * an outage (writes that need memory wait for it, reads go on). */
static int cmd_health(ctl_t *c) {
    const khala_chan_info_t *info = khala__chan_info(c->ch);
    khala_msg_t m = request(KHALA_OP_PING), r;
    int64_t t0 = now_us();
    int rc = call(c, &m, &r);
    int64_t rtt = now_us() - t0;
    if (rc != 0)
        return fail(c, rc, NULL);
    khala__proto_msg_free(&r);
    m = request(KHALA_OP_STATS);
    if ((rc = call(c, &m, &r)) != 0)
        return fail(c, rc, NULL);
    static const char *const below[] = {"l2", "l3"};
    const char *state[2];
    char backend[2][32];
    bool healthy = true;
    for (int i = 0; i < 2; i++) {
        state[i] = level_state(&r, below[i], backend[i]);
        if (state[i] && strcmp(state[i], "ok") != 0)
            healthy = false;
    }
    const khala_kv_t *l1 = khala__proto_kv_find(r.data, r.ndata, "l1");
    const khala_kv_t *stuck =
        l1 && l1->kind == KHALA_KV_MAP
            ? khala__proto_kv_find(l1->as.map.items, l1->as.map.n, "stuck_reader_pid")
            : NULL;
    uint64_t stuck_pid = stuck && stuck->kind == KHALA_KV_UINT ? stuck->as.u : 0;
    /* The few stats worth a glance, found wherever khalad puts them. */
    static const struct {
        const char *map, *key;
    } picks[] = {{"l1", "items"},
                 {"l1", "readers"},
                 {"khalad", "connections"},
                 {"khalad", "uptime_ms"},
                 {"khalad", "error_replies"}};
    ctl_json_t j;
    if (c->json) {
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "healthy");
        ctl_json_bool(&j, healthy);
        ctl_json_key(&j, "socket");
        ctl_json_str(&j, c->path);
        ctl_json_key(&j, "protocol");
        ctl_json_uint(&j, info ? info->proto : 0);
        ctl_json_key(&j, "generation");
        ctl_json_uint(&j, info ? info->gen : 0);
        ctl_json_key(&j, "ping_us");
        ctl_json_int(&j, rtt);
        ctl_json_key(&j, "levels");
        ctl_json_begin(&j);
        ctl_json_key(&j, "l1");
        ctl_json_str(&j, "ok");
        for (int i = 0; i < 2; i++) {
            if (!state[i])
                continue;
            ctl_json_key(&j, below[i]);
            ctl_json_str(&j, state[i]);
        }
        ctl_json_end(&j);
        if (stuck_pid) {
            ctl_json_key(&j, "stuck_reader_pid");
            ctl_json_uint(&j, stuck_pid);
        }
    } else {
        printf("%-14s ok\n%-14s %s\n%-14s %u\n%-14s %" PRIu64 "\n%-14s %.3f ms\n", "khalad",
               "socket", c->path, "protocol", info ? info->proto : 0, "generation",
               info ? info->gen : 0, "ping", (double)rtt / 1000.0);
        if (stuck_pid)
            printf("%-14s ok (reader pid %" PRIu64 " is stuck in a read section)\n", "l1",
                   stuck_pid);
        else
            printf("%-14s ok\n", "l1");
        for (int i = 0; i < 2; i++)
            if (state[i])
                printf("%-14s %s (%s)\n", below[i], state[i], backend[i]);
    }
    for (size_t i = 0; i < sizeof(picks) / sizeof(picks[0]); i++) {
        const khala_kv_t *map = khala__proto_kv_find(r.data, r.ndata, picks[i].map);
        const khala_kv_t *kv =
            map && map->kind == KHALA_KV_MAP
                ? khala__proto_kv_find(map->as.map.items, map->as.map.n, picks[i].key)
                : NULL;
        if (!kv)
            continue;
        if (c->json) {
            ctl_json_key(&j, picks[i].key);
            ctl_json_kv_value(&j, kv);
        } else {
            printf("%-14s ", picks[i].key);
            ctl_human_kv_value(stdout, kv);
            fputc('\n', stdout);
        }
    }
    if (c->json)
        ctl_json_end(&j);
    for (int i = 0; i < 2; i++)
        if (state[i] && strcmp(state[i], "ok") != 0)
            errorf(c, "%s (%s) is %s: reads skip it and its writes queue (khalactl stats)",
                   below[i], backend[i], state[i]);
    khala__proto_msg_free(&r);
    return healthy ? CTL_EXIT_OK : CTL_EXIT_UNHEALTHY;
}

/* warm --keys-from: send the file's keys in batches that fit both the protocol's array limit
 * and khalad's frame limit. */
static int warm_keys_from(ctl_t *c, uint64_t *warmed, uint64_t *sent) {
    FILE *f = strcmp(c->keys_from, "-") == 0 ? stdin : fopen(c->keys_from, "r");
    if (!f) {
        errorf(c, "%s: cannot open: %s", c->keys_from, strerror(errno));
        return CTL_EXIT_USAGE;
    }
    const khala_chan_info_t *info = khala__chan_info(c->ch);
    /* Room for the keys in one body: the announced limit less a margin for the other fields
     * and the per-key msgpack headers (counted below). */
    size_t budget = (info && info->max_frame ? info->max_frame : KHALA_FRAME_MAX_DEFAULT) - 256;
    bool progress = !c->json && isatty(STDERR_FILENO);
    khala_bytes_t *batch = calloc(KHALA_PROTO_ARRAY_MAX, sizeof(*batch));
    char **owned = calloc(KHALA_PROTO_ARRAY_MAX, sizeof(*owned));
    char *line = NULL;
    size_t cap = 0, bytes = 0, lineno = 0;
    uint32_t n = 0;
    int rc = CTL_EXIT_OK;
    bool eof = false;
    if (!batch || !owned) {
        errorf(c, "out of memory");
        rc = CTL_EXIT_ERROR;
        eof = true;
    }
    while (!eof) {
        ssize_t len = getline(&line, &cap, f);
        if (len < 0) {
            if (ferror(f)) {
                errorf(c, "%s: cannot read: %s", c->keys_from, strerror(errno));
                rc = CTL_EXIT_USAGE;
                break;
            }
            eof = true;
        } else {
            lineno++;
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = '\0';
            if (len == 0)
                continue; /* blank lines separate nothing */
            if (len > KHALA_KEY_MAX) {
                errorf(c, "%s:%zu: the key is %zd bytes, max %d", c->keys_from, lineno, len,
                       KHALA_KEY_MAX);
                rc = CTL_EXIT_USAGE;
                break;
            }
        }
        /* Send the batch when it is full, when this key would not fit, or at the end. */
        size_t need = eof ? 0 : (size_t)len + 5;
        if (n > 0 && (eof || n == KHALA_PROTO_ARRAY_MAX || bytes + need > budget)) {
            khala_msg_t m = request(KHALA_OP_WARM), r;
            m.keys = batch;
            m.nkeys = n;
            m.has |= KHALA_F_KEYS;
            int crc = call(c, &m, &r);
            if (crc != 0) {
                if (progress)
                    fputc('\n', stderr);
                rc = fail(c, crc, NULL);
                break;
            }
            *warmed += (r.has & KHALA_F_COUNT) ? r.count : 0;
            *sent += n;
            khala__proto_msg_free(&r);
            for (uint32_t i = 0; i < n; i++)
                free(owned[i]);
            n = 0;
            bytes = 0;
            if (progress)
                fprintf(stderr, "\rwarm: %" PRIu64 " keys sent, %" PRIu64 " warmed", *sent,
                        *warmed);
        }
        if (eof)
            break;
        owned[n] = strndup(line, (size_t)len);
        if (!owned[n]) {
            errorf(c, "out of memory");
            rc = CTL_EXIT_ERROR;
            break;
        }
        batch[n].ptr = (const uint8_t *)owned[n];
        batch[n].len = (size_t)len;
        bytes += need;
        n++;
    }
    if (progress && rc == CTL_EXIT_OK && *sent)
        fputc('\n', stderr);
    for (uint32_t i = 0; owned && i < n; i++)
        free(owned[i]);
    free(owned);
    free(batch);
    free(line);
    if (f != stdin)
        fclose(f);
    return rc;
}

static int cmd_warm(ctl_t *c) {
    int n = !!(c->given & O_TYPE) + !!(c->given & O_PREFIX) + !!(c->given & O_KEYS_FROM);
    if (n != 1) {
        errorf(c, "give exactly one of --type T, --prefix P or --keys-from FILE");
        return CTL_EXIT_USAGE;
    }
    uint64_t warmed = 0, sent = 0;
    int rc;
    if (c->given & O_KEYS_FROM) {
        if ((rc = warm_keys_from(c, &warmed, &sent)) != 0)
            return rc;
    } else {
        /* By type or prefix khalad warms one page of its L2 scan per request and says where
         * the next page starts: loop until the cursor comes back 0, showing progress. */
        bool progress = !c->json && isatty(STDERR_FILENO);
        uint64_t cursor = 0, pages = 0;
        do {
            khala_msg_t m = request(KHALA_OP_WARM), r;
            if (c->given & O_TYPE) {
                m.type = c->type;
                m.has |= KHALA_F_TYPE;
            } else {
                if ((rc = key_arg(c, c->prefix, &m.prefix)) != 0)
                    return rc;
                m.has |= KHALA_F_PREFIX;
            }
            m.cursor = cursor;
            m.has |= KHALA_F_CURSOR;
            if ((rc = call(c, &m, &r)) != 0) {
                if (progress && pages)
                    fputc('\n', stderr);
                return fail(c, rc, NULL);
            }
            warmed += (r.has & KHALA_F_COUNT) ? r.count : 0;
            cursor = (r.has & KHALA_F_CURSOR) ? r.cursor : 0;
            khala__proto_msg_free(&r);
            pages++;
            if (progress)
                fprintf(stderr, "\rwarm: %" PRIu64 " pages scanned, %" PRIu64 " keys warmed", pages,
                        warmed);
        } while (cursor != 0);
        if (progress)
            fputc('\n', stderr);
    }
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "count");
        ctl_json_uint(&j, warmed);
        if (c->given & O_KEYS_FROM) {
            ctl_json_key(&j, "sent");
            ctl_json_uint(&j, sent);
        }
        ctl_json_end(&j);
    } else {
        print_count(c, "warmed", warmed);
    }
    return CTL_EXIT_OK;
}

/* khalad down: L1 alone ------------------------------------------------------------------ */

/* What L1 holds of one key, copied out of a read section. */
typedef struct l1_copy {
    uint8_t *value; /* malloc'd; NULL when len == 0 */
    size_t len;
    uint64_t version;
    int64_t ttl_left_ms; /* -1: never expires */
    uint32_t type;
} l1_copy_t;

/* Look c->args[0] up in the L1 segment, attached through the worker library (which needs no
 * khalad). Returns CTL_EXIT_OK with *out filled (free out->value), or the exit code after a
 * message: CTL_EXIT_NODAEMON when there is no segment or L1 does not hold the key (the levels
 * below could not be asked), CTL_EXIT_USAGE for a bad key, CTL_EXIT_ERROR otherwise. */
static int l1_lookup(ctl_t *c, l1_copy_t *out) {
    khala_bytes_t key;
    int rc = key_arg(c, c->args[0], &key);
    if (rc != 0)
        return rc;
    if (c->socket && !c->name_given) {
        /* The segment is found by the cache's name, which a socket alone does not tell. */
        fprintf(stderr,
                "khalactl: khalad is not running: nothing listens on %s; give --name to read "
                "L1 from the cache's segment\n",
                c->path);
        return CTL_EXIT_NODAEMON;
    }
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.socket_path = c->path;
    khala_cache_t *cache = NULL;
    if ((rc = khala_cache_open(c->name, &o, &cache)) != 0) {
        fprintf(stderr,
                "khalactl: khalad is not running: nothing listens on %s, and L1 cannot be read "
                "either: %s (start khalad with: systemctl start khalad, or khalad --name %s)\n",
                c->path, rc == -ENOENT ? "no segment for this cache" : khala_cache_errmsg(NULL),
                c->name);
        return CTL_EXIT_NODAEMON;
    }
    khala_view_t v;
    if ((rc = khala_read_begin(cache)) == 0) {
        rc = khala_cache_view(cache, key.ptr, key.len, &v);
        if (rc == 0) {
            out->len = v.len;
            out->version = v.version;
            out->ttl_left_ms = v.ttl_left_ms;
            out->type = v.type;
            out->value = v.len ? malloc(v.len) : NULL;
            if (v.len && !out->value)
                rc = -ENOMEM;
            else if (v.len)
                memcpy(out->value, v.data, v.len);
        }
        khala_read_end(cache);
    }
    const char *detail = rc != 0 && rc != KHALA_ENOTFOUND ? khala_cache_errmsg(cache) : "";
    if (rc == KHALA_ENOTFOUND) {
        fputs("khalactl: khalad is not running, and L1 does not hold '", stderr);
        ctl_write_escaped(stderr, key.ptr, key.len, true);
        fprintf(stderr, "' (the levels below cannot be asked without khalad at %s)\n", c->path);
    } else if (rc != 0) {
        errorf(c, "khalad is not running, and reading L1 failed: %s (%s)%s%s", khala_err_name(rc),
               khala_strerror(rc), detail[0] ? ": " : "", detail);
    }
    khala_cache_close(cache);
    if (rc == KHALA_ENOTFOUND)
        return CTL_EXIT_NODAEMON;
    if (rc != 0)
        return CTL_EXIT_ERROR;
    errorf(c,
           "khalad is not running (nothing listens on %s): this answer is L1's alone, read "
           "from the shared segment",
           c->path);
    return CTL_EXIT_OK;
}

static int get_l1_alone(ctl_t *c) {
    if (c->given & O_ARCHIVE) { /* only khalad reads the archives of the levels below L1 */
        errorf(c, "khalad is not running (nothing listens on %s): the archive is read through it",
               c->path);
        return CTL_EXIT_NODAEMON;
    }
    l1_copy_t v = {0};
    int rc = l1_lookup(c, &v);
    if (rc != CTL_EXIT_OK)
        return rc;
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "key");
        ctl_json_bytes(&j, (const uint8_t *)c->args[0], strlen(c->args[0]));
        ctl_json_key(&j, "value");
        ctl_json_bytes(&j, v.value, v.len);
        ctl_json_key(&j, "version");
        ctl_json_uint(&j, v.version);
        ctl_json_key(&j, "ttl_ms");
        ctl_json_uint(&j, v.ttl_left_ms > 0 ? (uint64_t)v.ttl_left_ms : 0);
        const char *tname = khala__proto_type_name((khala_type_t)v.type);
        if (tname) {
            ctl_json_key(&j, "type");
            ctl_json_str(&j, tname);
        }
        ctl_json_key(&j, "level");
        ctl_json_str(&j, "l1");
        ctl_json_key(&j, "khalad");
        ctl_json_str(&j, "down");
        ctl_json_end(&j);
    } else if (isatty(STDOUT_FILENO)) {
        ctl_write_human(stdout, v.value, v.len);
        if (v.len == 0 || v.value[v.len - 1] != '\n')
            fputc('\n', stdout);
    } else if (v.len) {
        fwrite(v.value, 1, v.len, stdout);
    }
    free(v.value);
    return CTL_EXIT_OK;
}

static int inspect_l1_alone(ctl_t *c) {
    l1_copy_t v = {0};
    int rc = l1_lookup(c, &v);
    if (rc != CTL_EXIT_OK)
        return rc;
    free(v.value);
    const char *tname = khala__proto_type_name((khala_type_t)v.type);
    /* The fields khalad's inspect gives for L1, less "hits" (khalad's own count), plus
     * "khalad": "down". */
    khala_kv_t rows[] = {
        {.key = arg_bytes("key"), .kind = KHALA_KV_BIN, .as.s = arg_bytes(c->args[0])},
        {.key = arg_bytes("levels"), .kind = KHALA_KV_STR, .as.s = arg_bytes("l1")},
        {.key = arg_bytes("version"), .kind = KHALA_KV_UINT, .as.u = v.version},
        {.key = arg_bytes("size"), .kind = KHALA_KV_UINT, .as.u = v.len},
        {.key = arg_bytes("ttl_ms"),
         .kind = KHALA_KV_UINT,
         .as.u = v.ttl_left_ms > 0 ? (uint64_t)v.ttl_left_ms : 0},
        {.key = arg_bytes("type"), .kind = KHALA_KV_STR, .as.s = arg_bytes(tname ? tname : "?")},
        {.key = arg_bytes("khalad"), .kind = KHALA_KV_STR, .as.s = arg_bytes("down")},
    };
    uint32_t n = sizeof(rows) / sizeof(rows[0]);
    if (c->json) {
        ctl_json_t j;
        ctl_json_init(&j, stdout);
        ctl_json_begin(&j);
        ctl_json_key(&j, "key");
        ctl_json_bytes(&j, rows[0].as.s.ptr, rows[0].as.s.len);
        ctl_json_kv_members(&j, rows + 1, n - 1);
        ctl_json_end(&j);
    } else {
        ctl_human_kv(stdout, rows, n, 0);
    }
    return CTL_EXIT_OK;
}

/* similar: the embeddings nearest to a vector (tools/ctl_similar.c renders). No match exits 1,
 * as a get of an absent key does. */
static int cmd_similar(ctl_t *c) {
    khala_msg_t m = request(KHALA_OP_SIMILAR), r;
    uint8_t *vec = NULL;
    size_t len = 0;
    char why[160];
    int rc;
    if ((c->nargs == 1) == !!(c->given & O_VECTOR_FROM)) {
        errorf(c, "give the vector either as a comma list or with --vector-from, not %s",
               c->nargs == 1 ? "both" : "neither");
        return CTL_EXIT_USAGE;
    }
    if (c->nargs == 1 && ctl_vector_parse(c->args[0], &vec, &len, why, sizeof(why)) != 0) {
        errorf(c, "similar: %s", why);
        return CTL_EXIT_USAGE;
    }
    if (c->nargs == 0 && (rc = read_file(c, c->vector_from, &vec, &len)) != 0)
        return rc;
    if ((c->given & O_COUNT) && c->count > KHALA_SIMILAR_K_MAX) {
        errorf(c, "--count: similar returns 1 to %u matches", KHALA_SIMILAR_K_MAX);
        free(vec);
        return CTL_EXIT_USAGE;
    }
    m.value.ptr = vec;
    m.value.len = len;
    m.count = (c->given & O_COUNT) ? (uint32_t)c->count : 1;
    m.has |= KHALA_F_V | KHALA_F_COUNT;
    if (c->given & O_MIN) {
        m.sim = c->min_sim;
        m.has |= KHALA_F_SIM;
    }
    rc = call(c, &m, &r);
    free(vec);
    if (rc != 0)
        return fail(c, rc, NULL);
    ctl_similar_render(stdout, &r, c->json);
    rc = r.nmatches ? CTL_EXIT_OK : CTL_EXIT_NOTFOUND;
    khala__proto_msg_free(&r);
    return rc;
}

/* The command table ------------------------------------------------------------------------ */

static const cmd_t g_cmds[] = {
    {"stats", cmd_stats, 0, 0, 0, "stats", NULL},
    {"get", cmd_get, 1, 1, O_TYPE | O_ARCHIVE, "get [--archive] KEY", get_l1_alone},
    {"put", cmd_put, 1, 2, O_TYPE | O_TTL | O_VERSION | O_VALUE_FROM | O_LINK,
     "put KEY VALUE|--value-from FILE [--type T] [--ttl S] [--version V] [--link KEY]...", NULL},
    {"del", cmd_del, 1, 1, 0, "del KEY", NULL},
    {"invalidate", cmd_invalidate, 0, 1, O_PREFIX | O_TYPE,
     "invalidate KEY | --prefix P | --type T", NULL},
    {"keys", cmd_keys, 0, 1, O_COUNT | O_CURSOR | O_LIMIT,
     "keys [PATTERN] [--count N] [--cursor C] [--limit N]", NULL},
    {"inspect", cmd_inspect, 1, 1, 0, "inspect KEY", inspect_l1_alone},
    {"flush", cmd_flush, 0, 0, O_TYPE, "flush [--type T]", NULL},
    {"warm", cmd_warm, 0, 0, O_TYPE | O_PREFIX | O_KEYS_FROM,
     "warm --type T | --prefix P | --keys-from FILE", NULL},
    {"health", cmd_health, 0, 0, 0, "health", NULL},
    {"config", cmd_config, 0, 0, 0, "config", NULL},
    {"ping", cmd_ping, 0, 0, 0, "ping", NULL},
    {"similar", cmd_similar, 0, 1, O_COUNT | O_MIN | O_VECTOR_FROM,
     "similar X1,X2,...|--vector-from FILE [--count K] [--min S]", NULL},
};

#define NCMDS (sizeof(g_cmds) / sizeof(g_cmds[0]))

int main(int argc, char **argv) {
    ctl_t c = {.name = CTL_NAME_DEFAULT, .timeout_ms = CTL_TIMEOUT_MS_DEFAULT};
    int rc = ctl_parse_args(&c, g_cmds, NCMDS, argc, argv);
    if (rc == CTL_PARSE_HELP) {
        ctl_usage(stdout, g_cmds, NCMDS);
        return CTL_EXIT_OK;
    }
    if (rc == CTL_PARSE_VERSION) {
        printf("khalactl %s\n", KHALA_VERSION_STRING);
        return CTL_EXIT_OK;
    }
    if (rc != CTL_EXIT_OK)
        return rc;
    rc = connect_khalad(&c);
    if (rc == CTL_EXIT_OK)
        rc = c.cmd->fn(&c);
    else if (rc == CTL_EXIT_NODAEMON && c.cmd->l1_alone)
        rc = c.cmd->l1_alone(&c);
    khala__chan_close(c.ch);
    free(c.args - 1);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "khalactl: cannot write to stdout: %s\n", strerror(errno));
        if (rc == CTL_EXIT_OK)
            rc = CTL_EXIT_ERROR;
    }
    return rc;
}
