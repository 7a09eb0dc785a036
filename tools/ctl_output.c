/*
 * khalactl's rendering of replies, for humans and for scripts.
 *
 * HOW IT WORKS
 *
 * Everything is written straight to a FILE as it is produced; nothing is buffered beyond
 * stdio, so a large value or a long key listing costs no extra memory. The JSON writer keeps
 * only a comma flag per nesting level (8 levels: a reply's data map nests at most
 * KHALA_PROTO_DATA_DEPTH_MAX deep, and khalactl adds at most two around it).
 *
 * Why not a JSON library: khalactl writes JSON and never reads it, and what it writes is a few
 * flat objects; the one subtle part, strings, is the UTF-8 check and escaping below. Debian's
 * libjson-c would be a dependency for fifty lines. The same goes for base64: msgpack-c has
 * none, and the encoder is a dozen lines.
 *
 * Invariant: ctl_json_str() and ctl_json_bytes() emit valid JSON whatever the bytes, because a
 * string is only ever written after ctl_printable() accepted it (or it is a name we chose).
 */
#include "ctl_output.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

/* Length of the valid UTF-8 sequence starting at p (at most n bytes), or 0 when invalid:
 * overlong forms, surrogates and code points above U+10FFFF are invalid (RFC 3629). */
static size_t utf8_seq(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool ascii_control(uint8_t c) {
    return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7f;
}

bool ctl_printable(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t l = utf8_seq(p + i, n - i);
        if (l == 0 || (l == 1 && ascii_control(p[i])))
            return false;
        i += l;
    }
    return true;
}

void ctl_write_escaped(FILE *f, const uint8_t *p, size_t n, bool keep_utf8) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t l = keep_utf8 && c >= 0x80 ? utf8_seq(p + i, n - i) : 0;
        if (l > 1) {
            fwrite(p + i, 1, l, f);
            i += l;
            continue;
        }
        if (c == '\\')
            fputs("\\\\", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20 || c >= 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
        i++;
    }
}

void ctl_write_human(FILE *f, const uint8_t *p, size_t n) {
    if (ctl_printable(p, n))
        fwrite(p, 1, n, f);
    else
        ctl_write_escaped(f, p, n, true);
}

void ctl_write_base64(FILE *f, const uint8_t *p, size_t n) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        char out[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], tbl[(v >> 6) & 63], tbl[v & 63]};
        fwrite(out, 1, 4, f);
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        char out[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], '=', '='};
        fwrite(out, 1, 4, f);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        char out[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], tbl[(v >> 6) & 63], '='};
        fwrite(out, 1, 4, f);
    }
}

/* JSON --------------------------------------------------------------------------------------- */

#define JSON_DEPTH_MAX ((int)(sizeof(((ctl_json_t *)0)->need_comma)))

/* The deepest khalactl writes: its own object, "data" maps of KHALA_PROTO_DATA_DEPTH_MAX levels
 * (the outermost of which is khalactl's object itself) and one array. */
_Static_assert(KHALA_PROTO_DATA_DEPTH_MAX + 2 <= JSON_DEPTH_MAX,
               "ctl_json_t.need_comma is too short");

void ctl_json_init(ctl_json_t *j, FILE *f) {
    memset(j, 0, sizeof(*j));
    j->f = f;
}

/* Before a value: a comma when it is not the first element of an array. Object members get
 * theirs in ctl_json_key(), so a value after a key is never preceded by one. */
static void before_value(ctl_json_t *j, bool after_key) {
    if (after_key || j->depth == 0)
        return;
    if (j->need_comma[j->depth - 1])
        fputc(',', j->f);
    j->need_comma[j->depth - 1] = true;
}

static void open_container(ctl_json_t *j, char c) {
    before_value(j, j->after_key);
    j->after_key = false;
    fputc(c, j->f);
    j->need_comma[j->depth] = false;
    j->depth++;
}

static void close_container(ctl_json_t *j, char c) {
    j->depth--;
    fputc(c, j->f);
    if (j->depth == 0)
        fputc('\n', j->f);
}

void ctl_json_begin(ctl_json_t *j) {
    open_container(j, '{');
}

void ctl_json_end(ctl_json_t *j) {
    close_container(j, '}');
}

void ctl_json_begin_array(ctl_json_t *j) {
    open_container(j, '[');
}

void ctl_json_end_array(ctl_json_t *j) {
    close_container(j, ']');
}

/* A JSON string of bytes known to be printable UTF-8 (or a name of ours). */
static void json_quoted(FILE *f, const uint8_t *p, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void ctl_json_key(ctl_json_t *j, const char *key) {
    before_value(j, false);
    json_quoted(j->f, (const uint8_t *)key, strlen(key));
    fputc(':', j->f);
    j->after_key = true;
}

static void scalar_prefix(ctl_json_t *j) {
    before_value(j, j->after_key);
    j->after_key = false;
}

void ctl_json_str(ctl_json_t *j, const char *s) {
    scalar_prefix(j);
    json_quoted(j->f, (const uint8_t *)s, strlen(s));
}

void ctl_json_bytes(ctl_json_t *j, const uint8_t *p, size_t n) {
    scalar_prefix(j);
    if (ctl_printable(p, n)) {
        json_quoted(j->f, p, n);
        return;
    }
    fputs("{\"base64\":\"", j->f);
    ctl_write_base64(j->f, p, n);
    fputs("\"}", j->f);
}

void ctl_json_uint(ctl_json_t *j, uint64_t u) {
    scalar_prefix(j);
    fprintf(j->f, "%" PRIu64, u);
}

void ctl_json_int(ctl_json_t *j, int64_t i) {
    scalar_prefix(j);
    fprintf(j->f, "%" PRId64, i);
}

void ctl_json_bool(ctl_json_t *j, bool b) {
    scalar_prefix(j);
    fputs(b ? "true" : "false", j->f);
}

void ctl_json_double(ctl_json_t *j, double d) {
    scalar_prefix(j);
    if (isfinite(d))
        fprintf(j->f, "%.17g", d);
    else
        fputs("null", j->f);
}

void ctl_json_kv_value(ctl_json_t *j, const khala_kv_t *kv) {
    switch (kv->kind) {
        case KHALA_KV_NIL:
            scalar_prefix(j);
            fputs("null", j->f);
            break;
        case KHALA_KV_BOOL:
            ctl_json_bool(j, kv->as.b);
            break;
        case KHALA_KV_UINT:
            ctl_json_uint(j, kv->as.u);
            break;
        case KHALA_KV_INT:
            ctl_json_int(j, kv->as.i);
            break;
        case KHALA_KV_DOUBLE:
            ctl_json_double(j, kv->as.d);
            break;
        case KHALA_KV_STR:
        case KHALA_KV_BIN:
            ctl_json_bytes(j, kv->as.s.ptr, kv->as.s.len);
            break;
        case KHALA_KV_MAP:
            ctl_json_begin(j);
            ctl_json_kv_members(j, kv->as.map.items, kv->as.map.n);
            ctl_json_end(j);
            break;
    }
}

void ctl_json_kv_members(ctl_json_t *j, const khala_kv_t *items, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        const khala_kv_t *kv = &items[i];
        /* Names are ours (khalad's), but a name is bytes on the wire: keep the JSON valid. */
        before_value(j, false);
        if (ctl_printable(kv->key.ptr, kv->key.len))
            json_quoted(j->f, kv->key.ptr, kv->key.len);
        else
            fputs("\"?\"", j->f);
        fputc(':', j->f);
        j->after_key = true;
        ctl_json_kv_value(j, kv);
    }
}

/* Human -------------------------------------------------------------------------------------- */

void ctl_human_kv_value(FILE *f, const khala_kv_t *kv) {
    switch (kv->kind) {
        case KHALA_KV_NIL:
            fputs("-", f);
            break;
        case KHALA_KV_BOOL:
            fputs(kv->as.b ? "true" : "false", f);
            break;
        case KHALA_KV_UINT:
            fprintf(f, "%" PRIu64, kv->as.u);
            break;
        case KHALA_KV_INT:
            fprintf(f, "%" PRId64, kv->as.i);
            break;
        case KHALA_KV_DOUBLE:
            fprintf(f, "%.4g", kv->as.d);
            break;
        case KHALA_KV_STR:
        case KHALA_KV_BIN:
            ctl_write_escaped(f, kv->as.s.ptr, kv->as.s.len, true);
            break;
        case KHALA_KV_MAP:
            fputs("{...}", f);
            break;
    }
}

void ctl_human_kv(FILE *f, const khala_kv_t *items, uint32_t n, int indent) {
    int width = 0;
    for (uint32_t i = 0; i < n; i++)
        if (items[i].kind != KHALA_KV_MAP && (int)items[i].key.len > width)
            width = (int)items[i].key.len;
    for (uint32_t i = 0; i < n; i++) {
        const khala_kv_t *kv = &items[i];
        fprintf(f, "%*s", indent, "");
        ctl_write_escaped(f, kv->key.ptr, kv->key.len, true);
        if (kv->kind == KHALA_KV_MAP) {
            fputc('\n', f);
            ctl_human_kv(f, kv->as.map.items, kv->as.map.n, indent + 2);
            continue;
        }
        fprintf(f, "%*s  ", width - (int)kv->key.len, "");
        ctl_human_kv_value(f, kv);
        fputc('\n', f);
    }
}
