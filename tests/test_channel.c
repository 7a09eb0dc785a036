/*
 * lib/channel.c without khalad: the default socket path rule, a socket nobody listens on, and
 * fake servers (forked processes on a private socket) that never answer, answer with the wrong
 * id, or close the connection. The real khalad is in tests/integration/test_client_daemon.c.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"

static char g_sock[108];
static pid_t g_server;

static void setup(void) {
    snprintf(g_sock, sizeof(g_sock), "/tmp/khala-chan-%d.sock", (int)getpid());
    unlink(g_sock);
}

static void teardown(void) {
    if (g_server > 0) {
        kill(g_server, SIGKILL);
        waitpid(g_server, NULL, 0);
    }
    unlink(g_sock);
}

TestSuite(channel, .init = setup, .fini = teardown, .timeout = 30);

typedef enum behaviour {
    SILENT,              /* never answers, not even hello */
    WRONG_ID,            /* answers the first request after hello with another id */
    HANG_UP_AFTER_HELLO, /* closes the connection after hello */
    MUTE_AFTER_HELLO,    /* answers hello, then nothing */
    SMALL_FRAME,         /* announces max_frame = SMALL_FRAME_MAX, then nothing */
    BIG_REPLY            /* answers the first request after hello with a BIG_VALUE-byte value */
} behaviour_t;

#define SMALL_FRAME_MAX 256
#define BIG_VALUE (3 * 65536 + 17) /* several of the channel's read chunks */

/* Read one request frame from fd into in; its id, or -1 at EOF. */
static int64_t read_request(int fd, khala_buf_t *in) {
    uint32_t body = 0;
    while (khala__proto_frame_check(in->data, in->len, 0, &body, NULL, 0) ==
           KHALA_PROTO_NEED_MORE) {
        if (khala__proto_buf_reserve(in, 4096) != 0)
            return -1;
        ssize_t n = read(fd, in->data + in->len, in->cap - in->len);
        if (n <= 0)
            return -1;
        in->len += (size_t)n;
    }
    khala_msg_t m;
    khala__proto_msg_init(&m);
    if (khala__proto_decode_request(in->data + KHALA_FRAME_HEADER, body, &m, NULL, 0) != 0)
        return -1;
    int64_t id = (int64_t)m.id;
    khala__proto_msg_free(&m);
    khala__proto_buf_consume(in, KHALA_FRAME_HEADER + body);
    return id;
}

static void send_reply(int fd, const khala_msg_t *r) {
    khala_buf_t out;
    khala__proto_buf_init(&out);
    if (khala__proto_encode_reply(&out, r, NULL, 0) == 0)
        (void)!write(fd, out.data, out.len);
    khala__proto_buf_free(&out);
}

/* A fake khalad in a child process. */
static void serve(behaviour_t how) {
    int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", g_sock);
    cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    cr_assert_eq(listen(lfd, 4), 0);
    g_server = fork();
    cr_assert_geq(g_server, 0);
    if (g_server > 0) {
        close(lfd);
        return;
    }
    int fd = accept(lfd, NULL, NULL);
    khala_buf_t in;
    khala__proto_buf_init(&in);
    int64_t id = read_request(fd, &in);
    if (how != SILENT && id >= 0) {
        khala_msg_t r;
        khala__proto_msg_init(&r);
        r.id = (uint64_t)id;
        r.op = KHALA_OP_HELLO;
        r.proto = KHALA_PROTO_VERSION;
        r.name.ptr = (const uint8_t *)"fake";
        r.name.len = 4;
        r.gen = 1;
        r.max_frame = how == SMALL_FRAME ? SMALL_FRAME_MAX : KHALA_FRAME_MAX_DEFAULT;
        r.max_value = KHALA_VALUE_MAX_DEFAULT;
        r.has = KHALA_F_PROTO | KHALA_F_NAME | KHALA_F_GEN | KHALA_F_MAX_FRAME | KHALA_F_MAX_VALUE;
        send_reply(fd, &r);
        id = read_request(fd, &in);
        if (how == WRONG_ID && id >= 0) {
            khala__proto_msg_init(&r);
            r.id = (uint64_t)id + 7;
            send_reply(fd, &r);
        }
        if (how == BIG_REPLY && id >= 0) {
            uint8_t *big = malloc(BIG_VALUE);
            for (size_t i = 0; big && i < BIG_VALUE; i++)
                big[i] = (uint8_t)(i * 7);
            khala__proto_msg_init(&r);
            r.id = (uint64_t)id;
            r.op = KHALA_OP_GET;
            r.value.ptr = big;
            r.value.len = big ? BIG_VALUE : 0;
            r.lvl = KHALA_LEVEL_L2;
            r.has = KHALA_F_V | KHALA_F_LVL;
            send_reply(fd, &r);
            free(big);
        }
    }
    if (how != HANG_UP_AFTER_HELLO)
        pause();
    _exit(0);
}

static khala_msg_t ping(void) {
    khala_msg_t m;
    khala__proto_msg_init(&m);
    m.op = KHALA_OP_PING;
    return m;
}

Test(channel, default_path_follows_the_xdg_rule) {
    char buf[108];
    if (geteuid() == 0) {
        cr_assert_eq(khala__chan_default_path("main", buf, sizeof(buf)), 0);
        cr_assert_str_eq(buf, "/run/khala/main.sock");
        return;
    }
    setenv("XDG_RUNTIME_DIR", "/run/user/1234", 1);
    cr_assert_eq(khala__chan_default_path("main", buf, sizeof(buf)), 0);
    cr_assert_str_eq(buf, "/run/user/1234/khala/main.sock");
    setenv("XDG_RUNTIME_DIR", "relative/dir", 1); /* not absolute: ignored */
    cr_assert_eq(khala__chan_default_path("main", buf, sizeof(buf)), 0);
    char want[108];
    snprintf(want, sizeof(want), "/tmp/khala-%u/main.sock", (unsigned)geteuid());
    cr_assert_str_eq(buf, want);
    cr_assert_eq(khala__chan_default_path("main", buf, 10), -ENAMETOOLONG);
}

Test(channel, nobody_listening_is_edaemon_naming_the_path) {
    khala_chan_t *ch = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(g_sock, "main", 1000, &ch, err, sizeof(err)), KHALA_EDAEMON);
    cr_assert_null(ch);
    cr_assert_neq(strstr(err, g_sock), NULL, "%s", err);
}

Test(channel, a_silent_server_times_out) {
    serve(SILENT);
    khala_chan_t *ch = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(g_sock, "main", 100, &ch, err, sizeof(err)), -ETIMEDOUT);
    cr_assert_null(ch);
}

Test(channel, a_reply_with_another_id_kills_the_channel) {
    serve(WRONG_ID);
    khala_chan_t *ch = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(g_sock, "fake", 2000, &ch, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(khala__chan_info(ch)->gen, 1);
    khala_msg_t m = ping(), r;
    khala__proto_msg_init(&r);
    cr_assert_eq(khala__chan_call(ch, &m, &r, 2000, err, sizeof(err)), KHALA_EPROTO);
    cr_assert_eq(khala__chan_usable(ch), 0);
    cr_assert_eq(khala__chan_call(ch, &m, &r, 2000, err, sizeof(err)), KHALA_EDAEMON);
    khala__chan_close(ch);
}

Test(channel, a_server_that_hangs_up_makes_the_channel_unusable) {
    serve(HANG_UP_AFTER_HELLO);
    khala_chan_t *ch = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(g_sock, "fake", 2000, &ch, err, sizeof(err)), 0, "%s", err);
    khala_msg_t m = ping(), r;
    khala__proto_msg_init(&r);
    cr_assert_eq(khala__chan_call(ch, &m, &r, 2000, err, sizeof(err)), KHALA_EDAEMON);
    cr_assert_neq(strstr(err, "closed"), NULL, "%s", err);
    cr_assert_eq(khala__chan_usable(ch), 0);
    khala__chan_close(ch);
}

Test(channel, open_needs_a_path_or_a_name_that_fits) {
    khala_chan_t *ch = NULL;
    char err[256], path[200];
    cr_assert_eq(khala__chan_open(NULL, NULL, 1000, &ch, err, sizeof(err)), -EINVAL);
    cr_assert_null(ch);
    memset(path, 'p', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    cr_assert_eq(khala__chan_open(path, "main", 1000, &ch, err, sizeof(err)), -ENAMETOOLONG);
    cr_assert_null(ch);
    cr_assert_neq(strstr(err, "longer than"), NULL, "%s", err);
    /* No path: the name's default path, named when nobody listens there. */
    char name[64], want[108];
    snprintf(name, sizeof(name), "chan-nobody-%d", (int)getpid());
    cr_assert_eq(khala__chan_default_path(name, want, sizeof(want)), 0);
    cr_assert_eq(khala__chan_open(NULL, name, 1000, &ch, err, sizeof(err)), KHALA_EDAEMON);
    cr_assert_neq(strstr(err, want), NULL, "%s", err);
}

/* The rule for a user other than root: $XDG_RUNTIME_DIR when it is absolute, else /tmp/khala-UID.
 * Checked in a child that gives up root (the tests usually run as root). */
Test(channel, default_path_for_a_user_follows_xdg_runtime_dir) {
    if (geteuid() != 0)
        return; /* default_path_follows_the_xdg_rule checks it as this user */
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char buf[108];
        int bad = setresuid(65534, 65534, 65534) != 0;
        setenv("XDG_RUNTIME_DIR", "/run/user/65534", 1);
        bad |= khala__chan_default_path("main", buf, sizeof(buf)) != 0 ||
               strcmp(buf, "/run/user/65534/khala/main.sock") != 0;
        setenv("XDG_RUNTIME_DIR", "relative", 1);
        bad |= khala__chan_default_path("main", buf, sizeof(buf)) != 0 ||
               strcmp(buf, "/tmp/khala-65534/main.sock") != 0;
        unsetenv("XDG_RUNTIME_DIR");
        bad |= khala__chan_default_path("main", buf, sizeof(buf)) != 0 ||
               strcmp(buf, "/tmp/khala-65534/main.sock") != 0;
        bad |= khala__chan_default_path("main", buf, 12) != -ENAMETOOLONG;
        exit(bad);
    }
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the non-root rule did not hold");
}

Test(channel, a_server_that_stops_answering_times_out_and_kills_the_channel) {
    serve(MUTE_AFTER_HELLO);
    khala_chan_t *ch = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(g_sock, "fake", 2000, &ch, err, sizeof(err)), 0, "%s", err);
    khala_msg_t m = ping(), r;
    khala__proto_msg_init(&r);
    cr_assert_eq(khala__chan_call(ch, &m, &r, 100, err, sizeof(err)), -ETIMEDOUT);
    cr_assert_neq(strstr(err, "did not answer in time"), NULL, "%s", err);
    /* A late reply would be taken for the next request's: the channel is dead. */
    cr_assert_eq(khala__chan_usable(ch), 0);
    khala__chan_close(ch);
}

Test(channel, a_request_over_max_frame_is_refused_and_the_channel_lives) {
    serve(SMALL_FRAME);
    khala_chan_t *ch = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(g_sock, "fake", 2000, &ch, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(khala__chan_info(ch)->max_frame, SMALL_FRAME_MAX);
    static uint8_t val[1000];
    khala_msg_t m, r;
    khala__proto_msg_init(&m);
    khala__proto_msg_init(&r);
    m.op = KHALA_OP_PUT;
    m.key.ptr = (const uint8_t *)"k";
    m.key.len = 1;
    m.value.ptr = val;
    m.value.len = sizeof(val);
    m.has = KHALA_F_K | KHALA_F_V;
    cr_assert_eq(khala__chan_call(ch, &m, &r, 2000, err, sizeof(err)), KHALA_ETOOBIG);
    cr_assert_neq(strstr(err, "max_frame 256"), NULL, "%s", err);
    cr_assert_eq(khala__chan_usable(ch), 1, "nothing was sent");
    khala__chan_close(ch);
}

Test(channel, a_reply_larger_than_a_read_chunk_arrives_whole) {
    serve(BIG_REPLY);
    khala_chan_t *ch = NULL;
    char err[256];
    cr_assert_eq(khala__chan_open(g_sock, "fake", 2000, &ch, err, sizeof(err)), 0, "%s", err);
    khala_msg_t m, r;
    khala__proto_msg_init(&m);
    khala__proto_msg_init(&r);
    m.op = KHALA_OP_GET;
    m.key.ptr = (const uint8_t *)"big";
    m.key.len = 3;
    m.has = KHALA_F_K;
    cr_assert_eq(khala__chan_call(ch, &m, &r, 5000, err, sizeof(err)), 0, "%s", err);
    cr_assert_eq(r.rc, 0);
    cr_assert_eq(r.value.len, BIG_VALUE);
    for (size_t i = 0; i < BIG_VALUE; i++)
        if (r.value.ptr[i] != (uint8_t)(i * 7))
            cr_assert_fail("byte %zu differs", i);
    cr_assert_eq(r.lvl, KHALA_LEVEL_L2);
    khala__proto_msg_free(&r);
    khala__chan_close(ch);
}
