/*
 * Reading the archive of the levels below L1 (khala__store_archive_get, store.h): what a get
 * with "archive": true asks (daemon/handlers.c), for `khalactl get --archive` and
 * khala_cache_get_archive().
 *
 * A level's archive holds the items it evicted for space and keeps them for its retention
 * ([l3] archive_retention_seconds; daemon/tier_disk_archive.c for the disk store). The read asks
 * each healthy level that has one (tier.h archive_get), in order (L2, then L3), and returns the
 * first copy found with the level that holds it. It never writes: an archived copy is not
 * promoted into L1 nor into a faster level, because it is by definition not the current value
 * (the cache dropped it; the source of truth may have changed since), and a reader who wants it
 * back as current puts it. A copy that an invalidation in progress covers is skipped, as a live
 * read skips it.
 *
 * Rejected: a separate op ("archive_get"): the reply is a get's reply (value, version, type,
 * ttl, lvl), so a flag on get keeps one decoder and one client path.
 */
#include <string.h>

#include "errbuf.h"
#include "khala/error.h"
#include "khalad.h"
#include "store.h"

#define set_msg(d, ...) khala__errbuf_set((d)->errmsg, sizeof((d)->errmsg), __VA_ARGS__)

int khala__store_archive_get(khalad_t *d, const void *key, size_t klen, khala_tier_value_t *out,
                             khala_level_t *lvl) {
    int failed = 0, archives = 0;
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < d->ntiers; i++) {
        khalad_tier_t *lt = &d->tiers[i];
        if (!lt->t->ops->archive_get)
            continue;
        archives++;
        if (!lt->t->healthy) {
            failed = KHALA_ETIER;
            set_msg(d, "%s (%s) is down: its archive cannot be read", khala__store_level_name(lt),
                    lt->t->ops->name);
            continue;
        }
        int rc = lt->t->ops->archive_get(lt->t, key, klen, out);
        if (rc == 0 && khala__store_superseded(d, key, klen, (int)out->type, out->version)) {
            khala__tier_value_free(out);
            memset(out, 0, sizeof(*out));
            continue;
        }
        if (rc == 0) {
            *lvl = lt->t->level;
            return 0;
        }
        if (rc == KHALA_ENOTFOUND)
            continue;
        khala__store_level_failed(d, lt, rc);
        set_msg(d, "%s (%s) archive: %s", khala__store_level_name(lt), lt->t->ops->name,
                lt->t->err);
        failed = rc;
    }
    if (failed)
        return failed;
    if (!archives)
        set_msg(d, "no level below L1 keeps an archive");
    else
        set_msg(d, "no archived copy of the key at any level");
    return KHALA_ENOTFOUND;
}
