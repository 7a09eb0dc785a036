/*
 * khalactl's rendering (tools/ctl_output.c), on its own: what a human and a script see of byte
 * strings and of a reply's "data" map. Each test renders into a memory stream and compares the
 * exact text. The end-to-end behaviour (the real khalactl against a real khalad) is in
 * tests/integration/test_khalactl.c.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl_output.h"

TestSuite(ctl_output, .timeout = 30);

/* A memory stream and what was written to it. */
typedef struct out {
    FILE *f;
    char *text;
    size_t len;
} out_t;

static void out_open(out_t *o) {
    o->text = NULL;
    o->len = 0;
    o->f = open_memstream(&o->text, &o->len);
    cr_assert_not_null(o->f);
}

/* Close the stream and compare what it holds with want; frees it. */
static void out_expect(out_t *o, const char *want) {
    cr_assert_eq(fclose(o->f), 0);
    cr_assert_str_eq(o->text, want);
    free(o->text);
}

#define B(s) ((const uint8_t *)(s)), (sizeof(s) - 1)

Test(ctl_output, printable_accepts_text_and_valid_utf8) {
    cr_assert(ctl_printable(B("")));
    cr_assert(ctl_printable(B("plain ascii ~")));
    cr_assert(ctl_printable(B("tab\tnewline\ncr\r")));
    cr_assert(ctl_printable(B("caf\xc3\xa9")));      /* U+00E9, 2 bytes */
    cr_assert(ctl_printable(B("\xe2\x82\xac")));     /* U+20AC, 3 bytes */
    cr_assert(ctl_printable(B("\xf0\x9f\x98\x80"))); /* U+1F600, 4 bytes */
    cr_assert(ctl_printable(B("\xf4\x8f\xbf\xbf"))); /* U+10FFFF, the last code point */
    cr_assert(ctl_printable(B("\xed\x9f\xbf")));     /* U+D7FF, just below surrogates */
}

Test(ctl_output, printable_refuses_controls_and_invalid_utf8) {
    cr_assert_not(ctl_printable(B("nul\0")));
    cr_assert_not(ctl_printable(B("esc\x1b")));
    cr_assert_not(ctl_printable(B("del\x7f")));
    cr_assert_not(ctl_printable(B("\x80")));             /* a lone continuation byte */
    cr_assert_not(ctl_printable(B("\xc0\x80")));         /* overlong NUL */
    cr_assert_not(ctl_printable(B("\xc1\xbf")));         /* overlong */
    cr_assert_not(ctl_printable(B("\xe0\x80\x80")));     /* overlong, 3 bytes */
    cr_assert_not(ctl_printable(B("\xf0\x80\x80\x80"))); /* overlong, 4 bytes */
    cr_assert_not(ctl_printable(B("\xed\xa0\x80")));     /* U+D800, a surrogate */
    cr_assert_not(ctl_printable(B("\xf4\x90\x80\x80"))); /* above U+10FFFF */
    cr_assert_not(ctl_printable(B("\xf5\x80\x80\x80"))); /* no such lead byte */
    cr_assert_not(ctl_printable(B("\xe2\x82")));         /* cut short */
    cr_assert_not(ctl_printable(B("\xe2\x28\xa1")));     /* not a continuation byte */
}

Test(ctl_output, escaped_writes_c_escapes_and_keeps_utf8_when_asked) {
    out_t o;
    out_open(&o);
    ctl_write_escaped(o.f, B("a\\b\t\n\r\x01\x7f\xff caf\xc3\xa9"), true);
    out_expect(&o, "a\\\\b\\t\\n\\r\\x01\\x7f\\xff caf\xc3\xa9");
    out_open(&o);
    ctl_write_escaped(o.f, B("caf\xc3\xa9"), false);
    out_expect(&o, "caf\\xc3\\xa9");
    /* Invalid UTF-8 is escaped byte by byte even when UTF-8 is kept. */
    out_open(&o);
    ctl_write_escaped(o.f, B("\xe2\x82"), true);
    out_expect(&o, "\\xe2\\x82");
}

Test(ctl_output, human_writes_printable_bytes_as_they_are) {
    out_t o;
    out_open(&o);
    ctl_write_human(o.f, B("line one\nline two"));
    out_expect(&o, "line one\nline two");
    out_open(&o);
    ctl_write_human(o.f, B("bin\0\x01"));
    out_expect(&o, "bin\\x00\\x01");
}

/* RFC 4648, section 10. */
Test(ctl_output, base64_matches_the_rfc_vectors) {
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const want[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                       "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        out_t o;
        out_open(&o);
        ctl_write_base64(o.f, (const uint8_t *)in[i], strlen(in[i]));
        out_expect(&o, want[i]);
    }
    out_t o;
    out_open(&o);
    ctl_write_base64(o.f, B("\xff\xfe\xfd\x00"));
    out_expect(&o, "//79AA==");
}

Test(ctl_output, json_nests_objects_and_arrays_with_commas_in_place) {
    out_t o;
    out_open(&o);
    ctl_json_t j;
    ctl_json_init(&j, o.f);
    ctl_json_begin(&j);
    ctl_json_key(&j, "a");
    ctl_json_uint(&j, 18446744073709551615ull);
    ctl_json_key(&j, "b");
    ctl_json_int(&j, -5);
    ctl_json_key(&j, "list");
    ctl_json_begin_array(&j);
    ctl_json_bool(&j, true);
    ctl_json_bool(&j, false);
    ctl_json_begin(&j);
    ctl_json_end(&j);
    ctl_json_begin_array(&j);
    ctl_json_end_array(&j);
    ctl_json_str(&j, "s");
    ctl_json_end_array(&j);
    ctl_json_key(&j, "d");
    ctl_json_double(&j, 0.5);
    ctl_json_key(&j, "nan");
    ctl_json_double(&j, NAN);
    ctl_json_key(&j, "inf");
    ctl_json_double(&j, INFINITY);
    ctl_json_end(&j);
    out_expect(&o, "{\"a\":18446744073709551615,\"b\":-5,\"list\":[true,false,{},[],\"s\"],"
                   "\"d\":0.5,\"nan\":null,\"inf\":null}\n");
}

Test(ctl_output, json_strings_are_escaped_and_binary_becomes_base64) {
    out_t o;
    out_open(&o);
    ctl_json_t j;
    ctl_json_init(&j, o.f);
    ctl_json_begin(&j);
    ctl_json_key(&j, "q\"uote");
    ctl_json_str(&j, "back\\slash \"quoted\"\ttab\nnl\rcr\x01");
    ctl_json_key(&j, "text");
    ctl_json_bytes(&j, B("caf\xc3\xa9\n"));
    ctl_json_key(&j, "bin");
    ctl_json_bytes(&j, B("a\x01"
                         "b\xff"));
    ctl_json_end(&j);
    out_expect(&o, "{\"q\\\"uote\":\"back\\\\slash \\\"quoted\\\"\\ttab\\nnl\\rcr\\u0001\","
                   "\"text\":\"caf\xc3\xa9\\n\",\"bin\":{\"base64\":\"YQFi/w==\"}}\n");
}

/* A "data" map of every kind, as khalad's stats or inspect reply carries it. */
static void sample(khala_kv_t *kv, khala_kv_t *inner) {
    memset(kv, 0, 7 * sizeof(*kv));
    memset(inner, 0, 2 * sizeof(*inner));
    inner[0] = (khala_kv_t){.key = {B("state")}, .kind = KHALA_KV_STR, .as.s = {B("held")}};
    inner[1] = (khala_kv_t){.key = {B("version")}, .kind = KHALA_KV_UINT, .as.u = 7};
    kv[0] = (khala_kv_t){.key = {B("nil")}, .kind = KHALA_KV_NIL};
    kv[1] = (khala_kv_t){.key = {B("ok")}, .kind = KHALA_KV_BOOL, .as.b = true};
    kv[2] = (khala_kv_t){.key = {B("items")}, .kind = KHALA_KV_UINT, .as.u = 12};
    kv[3] = (khala_kv_t){.key = {B("delta")}, .kind = KHALA_KV_INT, .as.i = -3};
    kv[4] = (khala_kv_t){.key = {B("ratio")}, .kind = KHALA_KV_DOUBLE, .as.d = 0.93};
    kv[5] = (khala_kv_t){.key = {B("key")}, .kind = KHALA_KV_BIN, .as.s = {B("k\x01")}};
    kv[6] = (khala_kv_t){.key = {B("l2")}, .kind = KHALA_KV_MAP};
    kv[6].as.map.items = inner;
    kv[6].as.map.n = 2;
}

Test(ctl_output, json_kv_members_render_every_kind) {
    khala_kv_t kv[7], inner[2];
    sample(kv, inner);
    out_t o;
    out_open(&o);
    ctl_json_t j;
    ctl_json_init(&j, o.f);
    ctl_json_begin(&j);
    ctl_json_kv_members(&j, kv, 7);
    ctl_json_end(&j);
    out_expect(&o,
               "{\"nil\":null,\"ok\":true,\"items\":12,\"delta\":-3,\"ratio\":0.93000000000000005,"
               "\"key\":{\"base64\":\"awE=\"},\"l2\":{\"state\":\"held\",\"version\":7}}\n");
}

/* A name that is not printable still makes valid JSON. */
Test(ctl_output, json_kv_member_with_a_binary_name_stays_valid) {
    khala_kv_t kv = {.key = {B("\xff")}, .kind = KHALA_KV_UINT, .as.u = 1};
    out_t o;
    out_open(&o);
    ctl_json_t j;
    ctl_json_init(&j, o.f);
    ctl_json_begin(&j);
    ctl_json_kv_members(&j, &kv, 1);
    ctl_json_end(&j);
    out_expect(&o, "{\"?\":1}\n");
}

Test(ctl_output, human_kv_aligns_names_and_indents_nested_maps) {
    khala_kv_t kv[7], inner[2];
    sample(kv, inner);
    out_t o;
    out_open(&o);
    ctl_human_kv(o.f, kv, 7, 0);
    out_expect(&o, "nil    -\n"
                   "ok     true\n"
                   "items  12\n"
                   "delta  -3\n"
                   "ratio  0.93\n"
                   "key    k\\x01\n"
                   "l2\n"
                   "  state    held\n"
                   "  version  7\n");
    /* A map given as one value (health's picks) shows as {...}. */
    out_open(&o);
    ctl_human_kv_value(o.f, &kv[6]);
    out_expect(&o, "{...}");
}
