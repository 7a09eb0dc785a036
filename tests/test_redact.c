/*
 * Tests of lib/redact.c: URL passwords leave every text khala prints (issue 10, bug 5).
 */
#include <criterion/criterion.h>
#include <string.h>

#include "redact.h"

TestSuite(redact, .timeout = 10);

static const char *redact(const char *in) {
    static char out[512];
    return khala__redact(in, out, sizeof(out));
}

Test(redact, the_password_of_a_url_is_replaced) {
    cr_assert_str_eq(redact("redis://app:s3cret@redis.local:6380/2"),
                     "redis://app:***@redis.local:6380/2");
    cr_assert_str_eq(redact("rediss://:only-pw@[::1]:7000/"), "rediss://:***@[::1]:7000/");
    cr_assert(khala__redact_needed("redis://a:b@h"));
}

Test(redact, a_url_inside_text_is_redacted_and_the_rest_kept) {
    cr_assert_str_eq(redact("[l2]\nredis_url = redis://u:p@h:1/0\npath = /x\n"),
                     "[l2]\nredis_url = redis://u:***@h:1/0\npath = /x\n");
    cr_assert_str_eq(redact("coherence: redis_url 'redis://u:p@h': refused, and redis://v:q@k"),
                     "coherence: redis_url 'redis://u:***@h': refused, and redis://v:***@k");
    /* The last '@' of the authority ends the userinfo, as the URL parser has it. */
    cr_assert_str_eq(redact("redis://u:p@ss@h/1"), "redis://u:***@h/1");
}

Test(redact, text_without_a_password_is_copied_as_is) {
    const char *same[] = {"",
                          "no url here",
                          "redis://h:6379/1",
                          "redis://user@h",
                          "unix:///run/r.sock",
                          "http://example.com/a:b@c",
                          "a://"};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
        cr_assert_str_eq(redact(same[i]), same[i]);
        cr_assert_not(khala__redact_needed(same[i]), "%s", same[i]);
    }
}

Test(redact, a_small_buffer_never_gets_part_of_a_password) {
    char out[16];
    /* "redis://u:" is 10 bytes, the mark 3: the password does not fit, so nothing of it comes. */
    khala__redact("redis://u:topsecretpassword@h", out, 12);
    cr_assert_str_eq(out, "redis://u:");
    khala__redact("redis://u:topsecretpassword@h", out, sizeof(out));
    cr_assert_str_eq(out, "redis://u:***@h");
    cr_assert_null(strstr(out, "top"));
}

/* A buffer too small never lets a byte of the password out: the text stops where the password
 * would start, and a zero-sized buffer is left alone. */
Test(redact, a_short_buffer_stops_before_the_password_never_inside_it) {
    char out[16];
    memset(out, 'z', sizeof(out));
    cr_assert_eq(khala__redact("redis://u:p@h", out, 0), out);
    cr_assert_eq(out[0], 'z', "nothing written into a zero-sized buffer");
    /* "redis://u:" fits, the mark "***" does not: the text ends before it. */
    char small[12];
    cr_assert_str_eq(khala__redact("redis://u:secretpw@h", small, sizeof(small)), "redis://u:");
    cr_assert_null(strstr(small, "secret"));
    /* Not even the URL's part before the password fits: the text ends before the URL's "://". */
    char tiny[6];
    cr_assert_str_eq(khala__redact("redis://u:secretpw@h", tiny, sizeof(tiny)), "redis");
}
