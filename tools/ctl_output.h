/*
 * khalactl's rendering: what a human sees (escaped bytes, aligned tables of a reply's "data"
 * map) and what a script reads (one JSON object, binary-safe). No I/O besides writing to the
 * FILE given; tools/khalactl.c decides what to print. Start at ctl_json_t.
 *
 * Binary safety: keys and values are byte strings. A byte string that is valid UTF-8 without
 * control characters (tab, LF and CR excepted) is "printable": JSON carries it as a string,
 * a human sees it as is. Anything else becomes {"base64": "..."} in JSON and C-style escapes
 * (\xNN) for a human.
 */
#ifndef KHALA_TOOLS_CTL_OUTPUT_H
#define KHALA_TOOLS_CTL_OUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto.h"

/* Is [p, p + n) valid UTF-8 holding no control character but tab, LF and CR? */
bool ctl_printable(const uint8_t *p, size_t n);

/* Write [p, p + n) with C escapes (\\, \t, \n, \r, \xNN) for every byte that is not printable
 * ASCII; bytes of valid multi-byte UTF-8 sequences are kept when keep_utf8 is true. */
void ctl_write_escaped(FILE *f, const uint8_t *p, size_t n, bool keep_utf8);

/* Write a byte string for a human: as is when printable, else escaped. */
void ctl_write_human(FILE *f, const uint8_t *p, size_t n);

/* Standard base64 (RFC 4648, with padding) of [p, p + n). */
void ctl_write_base64(FILE *f, const uint8_t *p, size_t n);

/* A JSON object being written: ctl_json_begin, then ctl_json_key + one value per member, then
 * ctl_json_end. Nesting is kept by the caller (an object value is begin/.../end again). */
typedef struct ctl_json {
    FILE *f;
    int depth;          /* open objects and arrays */
    bool need_comma[8]; /* per depth: a member was written at this level */
    bool after_key;     /* the next value follows a key, so it takes no comma */
} ctl_json_t;

void ctl_json_init(ctl_json_t *j, FILE *f);
void ctl_json_begin(ctl_json_t *j);       /* "{" */
void ctl_json_end(ctl_json_t *j);         /* "}", and a newline at depth 0 */
void ctl_json_begin_array(ctl_json_t *j); /* "[" */
void ctl_json_end_array(ctl_json_t *j);   /* "]" */
void ctl_json_key(ctl_json_t *j, const char *key);
void ctl_json_str(ctl_json_t *j, const char *s);
/* A byte string: a JSON string when printable, else {"base64": "..."}. */
void ctl_json_bytes(ctl_json_t *j, const uint8_t *p, size_t n);
void ctl_json_uint(ctl_json_t *j, uint64_t u);
void ctl_json_int(ctl_json_t *j, int64_t i);
void ctl_json_bool(ctl_json_t *j, bool b);
void ctl_json_double(ctl_json_t *j, double d); /* null for NaN and infinities */
/* One value of a "data" map (a scalar, or an object for a nested map). */
void ctl_json_kv_value(ctl_json_t *j, const khala_kv_t *kv);
/* The members of a "data" map (stats, config, inspect), written into the current object. */
void ctl_json_kv_members(ctl_json_t *j, const khala_kv_t *items, uint32_t n);

/* A "data" map for a human: one "name  value" line per scalar, names aligned, nested maps
 * as a heading followed by their members indented by two more spaces. */
void ctl_human_kv(FILE *f, const khala_kv_t *items, uint32_t n, int indent);

/* One scalar of a "data" map for a human (a map prints as "{...}"). */
void ctl_human_kv_value(FILE *f, const khala_kv_t *kv);

#endif /* KHALA_TOOLS_CTL_OUTPUT_H */
