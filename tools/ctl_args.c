/*
 * khalactl's command line: global options, one command, its options and arguments.
 *
 * HOW IT WORKS
 *
 * One pass over argv with getopt_long, as khalad parses its own. Options are long ("--opt=value"
 * and "--opt value" both work; a unique prefix of a name is accepted, as GNU tools do), plus -h
 * (--help) and -V (--version). They may stand anywhere, so `khalactl get k --json` and
 * `khalactl --json get k` mean the same: the optstring starts with "-", which hands every other
 * word to the loop in order (whatever POSIXLY_CORRECT says), and those words are positional:
 * the command, then its arguments. "--" ends the options, for a key or value that starts with
 * "-". Then the command is looked up, and each option given is checked against the command's
 * list (cmd_t.opts): an option the command does not take is an error rather than silently
 * ignored, so that a typo (`flush --prefix x`, which would flush everything) never does
 * something else.
 *
 * --version is two things: put's compare-and-set version (`put k v --version 7`), and, alone
 * (`khalactl --version`, nothing else on the line), the request to print khalactl's version.
 *
 * Values are checked here (numbers, type names, key lengths in khalactl.c), so that a usage
 * error is reported before khalactl connects, and exits 2 even when khalad is not running.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "khala/cache.h"

void ctl_usage(FILE *f, const cmd_t *cmds, size_t ncmds) {
    fputs("usage: khalactl [--name NAME] [--socket PATH] [--json] [--timeout MS] COMMAND\n"
          "       khalactl --help | --version\n\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < ncmds; i++)
        fprintf(f, "  %s\n", cmds[i].usage);
    fputs("\nT is a type name (memory_entity, search_result, embedding, entity_relationship,\n"
          "agent_response, verification, search_index, consolidation) or its number 0-7.\n"
          "Exit codes: 0 ok, 1 not found, 2 usage, 3 khalad not running, 4 error,\n"
          "5 version conflict, 6 health: a level is down. See docs/operating.md.\n",
          f);
}

/* Parse an unsigned decimal number into *out (at most max). */
static int parse_uint(const char *opt, const char *s, uint64_t max, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || errno == ERANGE || v > max) {
        fprintf(stderr, "khalactl: %s: '%s' is not a number from 0 to %" PRIu64 "\n", opt, s, max);
        return CTL_EXIT_USAGE;
    }
    *out = v;
    return CTL_EXIT_OK;
}

static int parse_type(const char *s, khala_type_t *out) {
    uint64_t v;
    if (*s >= '0' && *s <= '9' && strlen(s) == 1 && (v = (uint64_t)(*s - '0')) < KHALA_TYPE_COUNT) {
        *out = (khala_type_t)v;
        return CTL_EXIT_OK;
    }
    if (khala__proto_type_parse(s, strlen(s), out) == 0)
        return CTL_EXIT_OK;
    fprintf(stderr,
            "khalactl: --type: '%s' is not a data type (memory_entity, search_result, embedding, "
            "entity_relationship, agent_response, verification, search_index, consolidation, "
            "or 0-7)\n",
            s);
    return CTL_EXIT_USAGE;
}

/* Options: the global ones (bit 0) and the command ones (their O_* bit). getopt_long returns
 * OPT_BASE + the option's index in this table, above every code it returns on its own (1 for a
 * positional word, a letter, '?', ':'). */
static const struct {
    const char *name;
    unsigned bit; /* O_*, or 0 for a global option */
    bool arg;
} g_opts[] = {
    {"name", 0, true},
    {"socket", 0, true},
    {"json", 0, false},
    {"timeout", 0, true},
    {"help", 0, false},
    {"type", O_TYPE, true},
    {"ttl", O_TTL, true},
    {"version", O_VERSION, true},
    {"prefix", O_PREFIX, true},
    {"count", O_COUNT, true},
    {"cursor", O_CURSOR, true},
    {"limit", O_LIMIT, true},
    {"keys-from", O_KEYS_FROM, true},
    {"value-from", O_VALUE_FROM, true},
    {"link", O_LINK, true},
    {"archive", O_ARCHIVE, false},
    {"min", O_MIN, true},
    {"vector-from", O_VECTOR_FROM, true},
};

#define NOPTS (sizeof(g_opts) / sizeof(g_opts[0]))
#define OPT_BASE 256

/* Set one option; name is without the dashes. */
static int set_option(ctl_t *c, const char *name, const char *val) {
    uint64_t v = 0;
    int rc = CTL_EXIT_OK;
    if (strcmp(name, "name") == 0) {
        size_t n = strlen(val);
        if (n == 0 || n > KHALA_NAME_MAX) {
            fprintf(stderr, "khalactl: --name: a cache name is 1 to %d bytes\n", KHALA_NAME_MAX);
            return CTL_EXIT_USAGE;
        }
        c->name = val;
        c->name_given = true;
    } else if (strcmp(name, "socket") == 0) {
        c->socket = val;
    } else if (strcmp(name, "json") == 0) {
        c->json = true;
    } else if (strcmp(name, "timeout") == 0) {
        if ((rc = parse_uint("--timeout", val, INT_MAX, &v)) == 0 && v == 0) {
            fputs("khalactl: --timeout: give at least 1 ms\n", stderr);
            rc = CTL_EXIT_USAGE;
        }
        c->timeout_ms = (int)v;
    } else if (strcmp(name, "type") == 0) {
        rc = parse_type(val, &c->type);
    } else if (strcmp(name, "ttl") == 0) {
        rc = parse_uint("--ttl", val, KHALA_TTL_MAX_MS / 1000, &c->ttl_s); /* 10 years */
    } else if (strcmp(name, "version") == 0) {
        rc = parse_uint("--version", val, UINT64_MAX, &c->version);
    } else if (strcmp(name, "prefix") == 0) {
        c->prefix = val;
    } else if (strcmp(name, "count") == 0) {
        rc = parse_uint("--count", val, KHALA_PROTO_ARRAY_MAX, &c->count);
        if (rc == 0 && c->count == 0) {
            fputs("khalactl: --count: a page holds 1 to 1024 keys\n", stderr);
            rc = CTL_EXIT_USAGE;
        }
    } else if (strcmp(name, "cursor") == 0) {
        rc = parse_uint("--cursor", val, UINT64_MAX, &c->cursor);
    } else if (strcmp(name, "limit") == 0) {
        rc = parse_uint("--limit", val, UINT64_MAX, &c->limit);
    } else if (strcmp(name, "keys-from") == 0) {
        c->keys_from = val;
    } else if (strcmp(name, "value-from") == 0) {
        c->value_from = val;
    } else if (strcmp(name, "link") == 0) {
        size_t n = strlen(val);
        if (n == 0 || n > KHALA_KEY_MAX) {
            fprintf(stderr, "khalactl: --link: a key is 1 to %d bytes, not %zu\n", KHALA_KEY_MAX,
                    n);
            return CTL_EXIT_USAGE;
        }
        if (c->nlinks == KHALA_PROTO_ARRAY_MAX) {
            fprintf(stderr, "khalactl: --link: at most %u links\n", KHALA_PROTO_ARRAY_MAX);
            return CTL_EXIT_USAGE;
        }
        c->links[c->nlinks++] = (khala_bytes_t){(const uint8_t *)val, n};
    } else if (strcmp(name, "min") == 0) {
        char *end = NULL;
        c->min_sim = strtod(val, &end);
        if (end == val || *end || !(c->min_sim >= -1.0 && c->min_sim <= 1.0)) {
            fprintf(stderr, "khalactl: --min: '%s' is not a similarity from -1 to 1\n", val);
            rc = CTL_EXIT_USAGE;
        }
    } else if (strcmp(name, "vector-from") == 0) {
        c->vector_from = val;
    }
    return rc;
}

int ctl_parse_args(ctl_t *c, const cmd_t *cmds, size_t ncmds, int argc, char **argv) {
    /* Alone, --version (or -V) asks for khalactl's version rather than a put's. */
    if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0))
        return CTL_PARSE_VERSION;
    struct option longs[NOPTS + 1];
    for (size_t k = 0; k < NOPTS; k++)
        longs[k] = (struct option){g_opts[k].name, g_opts[k].arg ? required_argument : no_argument,
                                   NULL, OPT_BASE + (int)k};
    longs[NOPTS] = (struct option){NULL, 0, NULL, 0};
    char **pos = calloc((size_t)argc + 1, sizeof(*pos));
    int npos = 0;
    if (!pos)
        return CTL_EXIT_ERROR;
    /* "-": every non-option comes back in order as 1; ":": a missing value comes back as ':'. */
    opterr = 0;
    optind = 1;
    for (int o; (o = getopt_long(argc, argv, "-:hV", longs, NULL)) != -1;) {
        if (o == 1) {
            pos[npos++] = optarg;
            continue;
        }
        size_t k = o >= OPT_BASE ? (size_t)(o - OPT_BASE) : NOPTS;
        if (o == 'h' || (k < NOPTS && strcmp(g_opts[k].name, "help") == 0)) {
            free(pos);
            return CTL_PARSE_HELP;
        }
        if (o == 'V') {
            fputs("khalactl: -V stands alone (khalactl -V); a put's version is --version V\n",
                  stderr);
            goto usage;
        }
        if (o == ':') {
            fprintf(stderr, "khalactl: option '%s' needs a value\n", argv[optind - 1]);
            goto usage;
        }
        if (o == '?' || k >= NOPTS) {
            const char *word = argv[optind - 1];
            if (optopt && word[0] == '-' && word[1] != '-')
                fprintf(stderr, "khalactl: unknown option '-%c' (options are long: --json)\n",
                        optopt);
            else
                fprintf(stderr, "khalactl: unknown or ambiguous option '%s'\n", word);
            goto usage;
        }
        c->given |= g_opts[k].bit;
        if (set_option(c, g_opts[k].name, optarg) != 0)
            goto usage;
    }
    /* After "--": the rest is positional. */
    while (optind < argc)
        pos[npos++] = argv[optind++];
    if (npos == 0) {
        fputs("khalactl: no command given\n", stderr);
        goto usage;
    }
    if (strcmp(pos[0], "help") == 0) {
        free(pos);
        return CTL_PARSE_HELP;
    }
    for (size_t i = 0; i < ncmds; i++)
        if (strcmp(cmds[i].name, pos[0]) == 0)
            c->cmd = &cmds[i];
    if (!c->cmd) {
        fprintf(stderr, "khalactl: unknown command '%s'\n", pos[0]);
        goto usage;
    }
    unsigned extra = c->given & ~c->cmd->opts;
    for (size_t k = 0; extra && k < NOPTS; k++) {
        if (g_opts[k].bit & extra) {
            fprintf(stderr, "khalactl: %s does not take --%s\nusage: khalactl %s\n", c->cmd->name,
                    g_opts[k].name, c->cmd->usage);
            free(pos);
            return CTL_EXIT_USAGE;
        }
    }
    c->nargs = npos - 1;
    if (c->nargs < c->cmd->min_args || c->nargs > c->cmd->max_args) {
        fprintf(stderr, "khalactl: %s: %s\nusage: khalactl %s\n", c->cmd->name,
                c->nargs < c->cmd->min_args ? "missing argument" : "too many arguments",
                c->cmd->usage);
        free(pos);
        return CTL_EXIT_USAGE;
    }
    /* pos[] outlives this call only through c->args; main frees it. */
    c->args = pos + 1;
    return CTL_EXIT_OK;
usage:
    fputs("Try 'khalactl --help'.\n", stderr);
    free(pos);
    return CTL_EXIT_USAGE;
}
