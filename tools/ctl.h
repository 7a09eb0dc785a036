/*
 * What khalactl's parts share: the exit codes, the run state (ctl_t), the command table's entry
 * (cmd_t) and the argument parser (tools/ctl_args.c). tools/khalactl.c holds the commands and
 * main; tools/ctl_output.c the rendering. Start at tools/khalactl.c.
 */
#ifndef KHALA_TOOLS_CTL_H
#define KHALA_TOOLS_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "channel.h"
#include "proto.h"

enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_NOTFOUND = 1,
    CTL_EXIT_USAGE = 2,
    CTL_EXIT_NODAEMON = 3,
    CTL_EXIT_ERROR = 4,
    CTL_EXIT_CONFLICT = 5,
    CTL_EXIT_UNHEALTHY = 6, /* health: khalad answers, but a level is down */
    CTL_EXIT_DENIED = 7     /* khalad refused: the caller lacks a right (docs/security.md) */
};

/* Default wait for each reply, in ms (--timeout). khalad answers in microseconds; a get may
 * wait for another worker's loader up to its single_flight_timeout_ms (5 s by default). */
#define CTL_TIMEOUT_MS_DEFAULT 10000

/* Default cache name, as in khalad's [cache] name. */
#define CTL_NAME_DEFAULT "default"

/* Command options, as bits of cmd_t.opts and ctl_t.given. */
enum {
    O_TYPE = 1u << 0,       /* --type T: a type name or number */
    O_TTL = 1u << 1,        /* --ttl S: seconds */
    O_VERSION = 1u << 2,    /* --version V: compare-and-set */
    O_PREFIX = 1u << 3,     /* --prefix P */
    O_COUNT = 1u << 4,      /* --count N: keys page size */
    O_CURSOR = 1u << 5,     /* --cursor C: keys starts there */
    O_LIMIT = 1u << 6,      /* --limit N: keys stops after N keys */
    O_KEYS_FROM = 1u << 7,  /* --keys-from FILE: warm, one key a line */
    O_VALUE_FROM = 1u << 8, /* --value-from FILE: put's value from a file ("-": stdin) */
    O_LINK = 1u << 9,       /* --link KEY (repeatable): put's links (relationship caching) */
    O_ARCHIVE = 1u << 10,   /* --archive: get reads the archive of the levels below L1 */
    /* similar (bits far from the others': other commands add options too): --min S, the
     * least similarity (-1..1); --vector-from FILE, the query as float32 bytes ("-": stdin). */
    O_MIN = 1u << 20,
    O_VECTOR_FROM = 1u << 21,
};

typedef struct ctl ctl_t;
typedef int (*cmd_fn)(ctl_t *c);

typedef struct cmd {
    const char *name;
    cmd_fn fn;
    int min_args, max_args; /* positional arguments after the command */
    unsigned opts;          /* O_* the command takes */
    const char *usage;      /* its synopsis, after "khalactl [OPTIONS] " */
    cmd_fn l1_alone;        /* when khalad is not running: the answer from L1 alone, or NULL */
} cmd_t;

/* Everything one run needs; lives on main's stack. */
struct ctl {
    /* Global options. */
    const char *name;   /* --name, or CTL_NAME_DEFAULT */
    bool name_given;    /* --name was given (else a --socket's khalad may serve any name) */
    const char *socket; /* --socket, or NULL: the default path for name */
    bool json;          /* --json */
    int timeout_ms;     /* --timeout */
    /* The command. */
    const cmd_t *cmd;
    char **args; /* its positional arguments */
    int nargs;
    unsigned given; /* O_* bits given */
    khala_type_t type;
    uint64_t ttl_s, version, count, cursor, limit;
    const char *prefix, *keys_from, *value_from;
    khala_bytes_t links[KHALA_PROTO_ARRAY_MAX]; /* --link, in order */
    uint32_t nlinks;
    /* similar: --min and --vector-from. */
    double min_sim;
    const char *vector_from;
    /* The connection. */
    char path[256]; /* the socket actually used */
    khala_chan_t *ch;
    char err[1100]; /* detail of the last failure: the channel's, or the server's err */
};

/* What ctl_parse_args returns besides an exit code. */
enum {
    CTL_PARSE_HELP = -1,   /* --help, -h or "help": print the usage, exit 0 */
    CTL_PARSE_VERSION = -2 /* --version or -V alone: print the version, exit 0 */
};

/* Fill c from argv with getopt_long, looking the command up in cmds[0 .. ncmds). Returns
 * CTL_EXIT_OK (c->args then points into a calloc'd array whose element before it is also owned:
 * free(c->args - 1)), CTL_EXIT_USAGE after a message on stderr, CTL_EXIT_ERROR when out of
 * memory, CTL_PARSE_HELP or CTL_PARSE_VERSION. */
int ctl_parse_args(ctl_t *c, const cmd_t *cmds, size_t ncmds, int argc, char **argv);

/* The full usage text. */
void ctl_usage(FILE *f, const cmd_t *cmds, size_t ncmds);

#endif /* KHALA_TOOLS_CTL_H */
