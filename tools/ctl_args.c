/*
 * khalactl's command line: global options, one command, its options and arguments.
 *
 * HOW IT WORKS
 *
 * One pass over argv. A word starting with "--" is an option (long only; "--opt=value" and
 * "--opt value" both work) wherever it stands, so `khalactl get k --json` and
 * `khalactl --json get k` mean the same; "--" ends the options, for a key or value that starts
 * with "--"; every other word is positional: the command, then its arguments. Then the command
 * is looked up, and each option given is checked against the command's list (cmd_t.opts): an
 * option the command does not take is an error rather than silently ignored, so that a typo
 * (`flush --prefix x`, which would flush everything) never does something else.
 *
 * Values are checked here (numbers, type names, key lengths in khalactl.c), so that a usage
 * error is reported before khalactl connects, and exits 2 even when khalad is not running.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "khala/cache.h"

void ctl_usage(FILE *f, const cmd_t *cmds, size_t ncmds) {
    fputs("usage: khalactl [--name NAME] [--socket PATH] [--json] [--timeout MS] COMMAND\n\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < ncmds; i++)
        fprintf(f, "  %s\n", cmds[i].usage);
    fputs("\nT is a type name (memory_entity, search_result, embedding, entity_relationship,\n"
          "agent_response, verification, search_index, consolidation) or its number 0-7.\n"
          "Exit codes: 0 ok, 1 not found, 2 usage, 3 khalad not running, 4 error,\n"
          "5 version conflict. See docs/operating.md.\n",
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

/* Options: the global ones (bit 0) and the command ones (their O_* bit). */
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
};

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
        rc = parse_uint("--ttl", val, UINT64_MAX / 1000, &c->ttl_s);
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
    }
    return rc;
}

int ctl_parse_args(ctl_t *c, const cmd_t *cmds, size_t ncmds, int argc, char **argv) {
    char **pos = calloc((size_t)argc + 1, sizeof(*pos));
    int npos = 0;
    bool opts_done = false;
    if (!pos)
        return CTL_EXIT_ERROR;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (opts_done || a[0] != '-' || a[1] == '\0') {
            pos[npos++] = argv[i];
            continue;
        }
        if (strcmp(a, "--") == 0) {
            opts_done = true;
            continue;
        }
        if (strcmp(a, "-h") == 0)
            a = "--help";
        if (a[1] != '-') {
            fprintf(stderr, "khalactl: unknown option '%s' (options are long: --json)\n", a);
            goto usage;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        size_t k;
        for (k = 0; k < sizeof(g_opts) / sizeof(g_opts[0]); k++)
            if (strlen(g_opts[k].name) == nlen && strncmp(g_opts[k].name, name, nlen) == 0)
                break;
        if (k == sizeof(g_opts) / sizeof(g_opts[0])) {
            fprintf(stderr, "khalactl: unknown option '%.*s'\n", (int)(nlen + 2), a);
            goto usage;
        }
        if (strcmp(g_opts[k].name, "help") == 0) {
            free(pos);
            return -1;
        }
        const char *val = NULL;
        if (g_opts[k].arg) {
            if (eq)
                val = eq + 1;
            else if (i + 1 < argc)
                val = argv[++i];
            else {
                fprintf(stderr, "khalactl: option '--%s' needs a value\n", g_opts[k].name);
                goto usage;
            }
        } else if (eq) {
            fprintf(stderr, "khalactl: option '--%s' takes no value\n", g_opts[k].name);
            goto usage;
        }
        c->given |= g_opts[k].bit;
        if (set_option(c, g_opts[k].name, val) != 0)
            goto usage;
    }
    if (npos == 0) {
        fputs("khalactl: no command given\n", stderr);
        goto usage;
    }
    if (strcmp(pos[0], "help") == 0) {
        free(pos);
        return -1;
    }
    for (size_t i = 0; i < ncmds; i++)
        if (strcmp(cmds[i].name, pos[0]) == 0)
            c->cmd = &cmds[i];
    if (!c->cmd) {
        fprintf(stderr, "khalactl: unknown command '%s'\n", pos[0]);
        goto usage;
    }
    unsigned extra = c->given & ~c->cmd->opts;
    for (size_t k = 0; extra && k < sizeof(g_opts) / sizeof(g_opts[0]); k++) {
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
