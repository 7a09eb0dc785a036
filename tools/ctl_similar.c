/*
 * khalactl similar: the query vector from text, and the reply's rendering (tools/ctl_similar.h).
 *
 * A comma list is parsed with strtof, each component in full (no trailing junk), and written as
 * little-endian float32, so that the bytes khalad gets are those a worker would send. Checks of
 * the vector's meaning (NaN, infinities, a zero vector) are left to khalad, whose message names
 * the component: one place says what a valid query is.
 */
#include "ctl_similar.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "ctl_output.h"
#include "khala/cache.h"

int ctl_vector_parse(const char *list, uint8_t **out, size_t *len, char *err, size_t errlen) {
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    if (!*list) {
        snprintf(err, errlen, "the vector is empty; give components as 0.1,0.2,...");
        return -EINVAL;
    }
    if (n > KHALA_SIMILAR_DIM_MAX) {
        snprintf(err, errlen, "the vector has %zu components, max %u", n, KHALA_SIMILAR_DIM_MAX);
        return -EINVAL;
    }
    uint8_t *buf = malloc(n * 4);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    const char *p = list;
    for (size_t i = 0; i < n; i++) {
        const char *comma = strchr(p, ',');
        size_t l = comma ? (size_t)(comma - p) : strlen(p);
        char tok[64];
        char *end = NULL;
        float f = 0;
        if (l > 0 && l < sizeof(tok)) {
            memcpy(tok, p, l);
            tok[l] = '\0';
            errno = 0;
            f = strtof(tok, &end);
        }
        if (l == 0 || l >= sizeof(tok) || end == tok || *end != '\0') {
            snprintf(err, errlen, "component %zu ('%.*s') is not a number", i,
                     (int)(l < 40 ? l : 40), p);
            free(buf);
            return -EINVAL;
        }
        uint32_t u;
        memcpy(&u, &f, 4);
        u = htole32(u);
        memcpy(buf + 4 * i, &u, 4);
        p += l + 1;
    }
    *out = buf;
    *len = n * 4;
    return 0;
}

void ctl_similar_render(FILE *f, const khala_msg_t *r, bool json) {
    const char *lvl = (r->has & KHALA_F_LVL) ? khala__proto_level_name(r->lvl) : NULL;
    if (!json) {
        for (uint32_t i = 0; i < r->nmatches; i++) {
            const khala_proto_match_t *m = &r->matches[i];
            ctl_write_human(f, m->key.ptr, m->key.len);
            fprintf(f, "\t%.6f\t%zu\n", m->sim, m->value.len);
        }
        return;
    }
    ctl_json_t j;
    ctl_json_init(&j, f);
    ctl_json_begin(&j);
    ctl_json_key(&j, "matches");
    ctl_json_begin_array(&j);
    for (uint32_t i = 0; i < r->nmatches; i++) {
        const khala_proto_match_t *m = &r->matches[i];
        ctl_json_begin(&j);
        ctl_json_key(&j, "key");
        ctl_json_bytes(&j, m->key.ptr, m->key.len);
        ctl_json_key(&j, "similarity");
        ctl_json_double(&j, m->sim);
        ctl_json_key(&j, "size");
        ctl_json_uint(&j, m->value.len);
        ctl_json_key(&j, "version");
        ctl_json_uint(&j, m->ver);
        ctl_json_key(&j, "ttl_ms");
        ctl_json_uint(&j, m->ttl_ms);
        ctl_json_end(&j);
    }
    ctl_json_end_array(&j);
    ctl_json_key(&j, "count");
    ctl_json_uint(&j, r->nmatches);
    if (lvl) {
        ctl_json_key(&j, "level");
        ctl_json_str(&j, lvl);
    }
    ctl_json_end(&j);
}
