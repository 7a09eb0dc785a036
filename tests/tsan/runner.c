/*
 * The runner behind tests/tsan/criterion/criterion.h (see there for why it exists). Runs every
 * registered test in a forked child with the suite's and the test's init/fini and a timeout,
 * prints one line per test and a closing "N passed, N failed" line, and exits non-zero if any
 * test failed.
 */
#include <criterion/criterion.h>

#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TESTS 256
#define DEFAULT_TIMEOUT_S 300

struct test {
    const char *suite, *name;
    void (*fn)(void);
    const struct khala_ct_cfg *cfg, *suite_cfg;
};

static struct test g_tests[MAX_TESTS];
static int g_ntests;

void khala_ct_register(const char *suite, const char *name, void (*fn)(void),
                       const struct khala_ct_cfg *cfg, const struct khala_ct_cfg *suite_cfg) {
    if (g_ntests == MAX_TESTS) {
        fprintf(stderr, "tsan runner: more than %d tests\n", MAX_TESTS);
        exit(2);
    }
    g_tests[g_ntests++] = (struct test){suite, name, fn, cfg, suite_cfg};
}

void khala_ct_fail(const char *file, int line, const char *expr, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "[----] %s:%d: Assertion Failed: %s\n[----]   ", file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    _exit(1);
}

void khala_ct_log(const char *level, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "[%s] ", level);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}

static void run_child(const struct test *t) {
    const struct khala_ct_cfg *s = t->suite_cfg, *c = t->cfg;
    double timeout = c->timeout ? c->timeout : s->timeout ? s->timeout : DEFAULT_TIMEOUT_S;
    alarm((unsigned)(timeout + 0.999));
    if (s->init)
        s->init();
    if (c->init)
        c->init();
    t->fn();
    if (c->fini)
        c->fini();
    if (s->fini)
        s->fini();
    _exit(0);
}

int main(int argc, char **argv) {
    const char *filter = NULL;
    int passed = 0, failed = 0;
    for (int i = 1; i < argc; i++)
        if (strncmp(argv[i], "--filter=", 9) == 0)
            filter = argv[i] + 9;
    for (int i = 0; i < g_ntests; i++) {
        const struct test *t = &g_tests[i];
        char full[256];
        snprintf(full, sizeof(full), "%s::%s", t->suite, t->name);
        if (t->cfg->disabled || t->suite_cfg->disabled || (filter && !strstr(full, filter)))
            continue;
        if (t->cfg->signal || t->cfg->exit_code) {
            fprintf(stderr, "[FAIL] %s: .signal/.exit_code are not supported here\n", full);
            failed++;
            continue;
        }
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0)
            run_child(t);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0)
            ;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            fprintf(stderr, "[PASS] %s\n", full);
            passed++;
        } else if (WIFSIGNALED(status)) {
            fprintf(stderr, "[FAIL] %s: killed by signal %d%s\n", full, WTERMSIG(status),
                    WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
            failed++;
        } else {
            fprintf(stderr, "[FAIL] %s: exit status %d\n", full, WEXITSTATUS(status));
            failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
