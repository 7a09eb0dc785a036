/*
 * khalad's state, shared by its modules: the configuration, the L1 writer, the socket server,
 * single-flight, and counters. One instance per process, owned by the loop thread. Start at
 * daemon/khalad.c (main), daemon/handlers.c (what each request does) and daemon/store.c
 * (every write at every level).
 */
#ifndef KHALA_DAEMON_KHALAD_H
#define KHALA_DAEMON_KHALAD_H

#include <stdint.h>
#include <sys/types.h>

#include "acl.h"
#include "audit.h"
#include "config.h"
#include "flight.h"
#include "inv_wait.h"
#include "l1_table.h"
#include "log.h"
#include "proto.h"
#include "relationships.h"
#include "server.h"
#include "coherence.h"
#include "crypt.h"
#include "store.h"
#include "tier.h"
#include "tiers.h"
#include "writeq.h"

/* Descs the TTL sweep examines per tick (a full sweep of 1 M items takes 250 ticks). */
#define KHALAD_SWEEP_BUDGET 4096u
/* Levels below L1 a khalad can have (L2, L3). */
#define KHALAD_TIERS_MAX 2
/* Keys in flight at once; beyond, a miss loads without single-flight. */
#define KHALAD_FLIGHT_MAX 65536u

/* One level below L1 as khalad runs it: its driver, its write queue, and counters. */
typedef struct khalad_tier {
    khala_tier_t *t;           /* the driver */
    khala_wq_t *wq;            /* writes owed to it (outage, write-behind) */
    int64_t next_health_ms;    /* when an unhealthy level is asked again */
    int64_t health_backoff_ms; /* wait after the last failed check, 0 = none yet */
    int journaled;             /* its queue survives khalad (write-behind is possible) */
    uint64_t writes, queued, drained, refused, stale_drops, write_errors, outages;
    uint64_t invalidate_steps; /* steps of invalidations run from the tick (issue 10, bug 9) */
    int poll_fd;               /* the driver's poll_fd() the loop watches, or -1 (none yet) */
    size_t flush_batch;        /* writes per mput now (adapts to the level's speed), 0 = full */
} khalad_tier_t;

typedef struct khalad {
    khala_config_t cfg;                    /* immutable after start */
    khala_l1_t *l1;                        /* the L1 writer */
    khala_server_t *srv;                   /* the socket server */
    khala_flight_t *flight;                /* single-flight table */
    khalad_tier_t tiers[KHALAD_TIERS_MAX]; /* L2 then L3 (daemon/tiers.c) */
    int ntiers;                            /* tiers in use */
    khala_coherence_t *coh;                /* cross-host invalidation, or NULL */
    khala_invwait_t *invwait; /* replies waiting for invalidations below L1 (inv_wait.h), or NULL */
    khala_crypt_t *crypt;     /* [crypto] key ring, or NULL; immutable after start */
    struct khala_rel *rel;    /* relationship caching (daemon/relationships.h), or NULL */
    int coh_fd;               /* its descriptor the loop watches, or -1 */
    uint64_t last_version;    /* last version handed out */
    uint64_t rng;             /* TTL jitter (daemon/store.c) */
    char crash_at[32];        /* tests: KHALAD_TEST_CRASH_AT, "" = off */
    int publish_lost;         /* a change was not published: flush others */
    int64_t next_flush_publish_ms; /* when to try telling them again */
    char errmsg[512];              /* the last tiers error, for replies */
    char socket_path[4096];        /* where srv listens */
    uid_t uid;                     /* khalad's own uid */
    long socket_gid;               /* the socket's group, -1 when not configured */
    khala_buf_t out;               /* scratch buffer replies are encoded into */
    uint64_t sweep_cursor;         /* unused by the L1's own sweep; kept for stats */
    uint64_t watchdog_usec;        /* systemd watchdog period, 0 when off */
    uint64_t last_watchdog_ms;
    uint64_t started_ms;
    int stuck_reader_pid; /* the stuck reader last logged (handlers.c), 0 = none */
    khala_acl_t acl;      /* who may do what (daemon/acl.h); rules immutable after start */
    khala_audit_t audit;  /* the audit trail (daemon/audit.h) */
    uint64_t denied;      /* requests refused for a missing right */
    int last_reply_rc;    /* rc of the last reply sent (handlers.c: the audit's result) */
    /* Counters, for stats. */
    uint64_t requests, replies_err, proto_errors, loads_led, loads_waited, loads_timed_out;
    uint64_t fills_dropped; /* fills not cached: the key was invalidated during the load */
    uint64_t promotions, warmed, inval_received, coherence_flushes, publish_errors;
    uint64_t promotions_below; /* values a hit at L3 copied into L2 (khala__store_promote_below) */
    uint64_t async_reads, async_hits, async_reads_pending; /* gets sent to a level's get_start */
} khalad_t;

/* The socket server's callbacks (daemon/handlers.c); arg is the khalad_t. */
int khala__handlers_frame(void *arg, khala_conn_t *c, const uint8_t *body, size_t len);
void khala__handlers_bad_frame(void *arg, khala_conn_t *c, size_t len);
void khala__handlers_close(void *arg, khala_conn_t *c);
void khala__handlers_refuse(void *arg, khala_conn_t *c, int rc, const char *msg);
void khala__handlers_tick(void *arg);

#endif /* KHALA_DAEMON_KHALAD_H */
