/*
 * khalactl similar's own parts: the query vector from a comma list or from a file of float32
 * bytes, and the rendering of a similar reply (text: one match a line; --json: one object).
 * No socket here: tools/khalactl.c sends the request (cmd_similar). Start at ctl_vector_parse().
 */
#ifndef KHALA_TOOLS_CTL_SIMILAR_H
#define KHALA_TOOLS_CTL_SIMILAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proto.h"

/**
 * @brief Parse a comma list of decimal numbers ("0.12,-3e-2,1") into little-endian float32
 *        bytes, the wire form of a query.
 * @param[in] list the text.
 * @param[out] out malloc'd bytes (4 per component), for the caller to free; set on success.
 * @param[out] len their number.
 * @param[out] err what is wrong ("component 3 ('x') is not a number"). @param[in] errlen size.
 * @return 0; -EINVAL for an empty list, an empty or malformed component, or more than
 *         KHALA_SIMILAR_DIM_MAX components; -ENOMEM.
 */
int ctl_vector_parse(const char *list, uint8_t **out, size_t *len, char *err, size_t errlen);

/**
 * @brief Print a similar reply: text, one match a line ("KEY<TAB>SIMILARITY<TAB>BYTES", the key
 *        escaped as ctl_write_human does), or one JSON object
 *        {"matches": [{"key", "similarity", "size", "version", "ttl_ms"}...], "count", "level"}.
 * @param[in] f where. @param[in] r the reply (rc 0). @param[in] json which form.
 */
void ctl_similar_render(FILE *f, const khala_msg_t *r, bool json);

#endif /* KHALA_TOOLS_CTL_SIMILAR_H */
