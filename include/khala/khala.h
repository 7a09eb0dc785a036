/*
 * khala-cache: the umbrella header. Include this one; start reading at include/khala/cache.h.
 */
#ifndef KHALA_KHALA_H
#define KHALA_KHALA_H

#include "khala/version.h"
#include "khala/error.h"
#include "khala/cache.h"
#include "khala/stats.h"

#endif /* KHALA_KHALA_H */
