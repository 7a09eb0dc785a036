/* The config fuzz target's pieces, shared by its libFuzzer entry and its replay program. */
#ifndef KHALA_TESTS_FUZZ_CONFIG_H
#define KHALA_TESTS_FUZZ_CONFIG_H

#include <stddef.h>
#include <stdint.h>

/* Load these bytes (cut at the first NUL) as a config over the defaults: 1 if accepted (and
 * its dump reloaded equal), 0 if refused with a message. Aborts on a broken property. */
int fuzz_config_one(const uint8_t *data, size_t size);

#endif /* KHALA_TESTS_FUZZ_CONFIG_H */
