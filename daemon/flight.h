/*
 * Single-flight: when many workers miss the same key, exactly one of them (the leader) runs
 * its loader; the others wait for the leader's result instead of stampeding the source of
 * truth. khalad's handlers drive it; it knows nothing of sockets or frames, only opaque
 * waiters. Start at khala__flight_join().
 *
 * Not thread-safe: khalad's loop thread owns it.
 */
#ifndef KHALA_DAEMON_FLIGHT_H
#define KHALA_DAEMON_FLIGHT_H

#include <stddef.h>
#include <stdint.h>

typedef struct khala_flight khala_flight_t;

/* Someone waiting for a key: an opaque owner (a connection), its request id, and the caller's
 * KHALA_WAITER_* flags. */
typedef struct khala_waiter {
    void *owner;
    uint64_t req_id;
    uint32_t flags;
} khala_waiter_t;

/* khala_waiter_t flags. */
enum {
    KHALA_WAITER_LOADER = 1u << 0, /* the caller can load on a miss (its get said "loader") */
};

/* What khala__flight_join made of the caller. */
enum {
    KHALA_FLIGHT_LEADER = 1, /* no load was in flight: the caller must load and fill */
    KHALA_FLIGHT_WAITER = 2, /* a load is in flight: the caller waits for its result */
};

/* Called for each waiter that must be answered: with rc 0 and the value, or with an error
 * (KHALA_ENOTFOUND when the leader found nothing, -ETIMEDOUT when it took too long), or with
 * KHALA_FLIGHT_LEADER when the waiter is promoted because the leader went away. */
typedef void (*khala_flight_cb)(void *arg, const khala_waiter_t *w, int rc, const void *val,
                                size_t vlen);

/* A table whose loads time out after timeout_ms; bounded to max_keys keys in flight. */
int khala__flight_open(khala_flight_t **out, uint64_t timeout_ms, size_t max_keys);
void khala__flight_close(khala_flight_t *f);

/* Join the flight of key at now_ms. Returns KHALA_FLIGHT_LEADER or KHALA_FLIGHT_WAITER, or
 * -ENOMEM / -EBUSY (max_keys keys in flight: the caller should load without single-flight).
 * A leader that joins again for the same key (a retry) stays the leader. */
int khala__flight_join(khala_flight_t *f, const void *key, size_t klen, const khala_waiter_t *w,
                       uint64_t now_ms);

/* The leader's result: answer every waiter through cb with (rc, val) and forget the key.
 * Returns how many were answered; 0 when nothing was in flight. Ask
 * khala__flight_invalidated first: a value loaded across an invalidation must not be cached
 * (the placeholder rule), though the waiters still get it. */
size_t khala__flight_finish(khala_flight_t *f, const void *key, size_t klen, int rc,
                            const void *val, size_t vlen, khala_flight_cb cb, void *arg);

/* The owner of the leader of key's flight, or NULL when key is not in flight. */
void *khala__flight_leader(const khala_flight_t *f, const void *key, size_t klen);

/* An invalidation of key (or of every key with prefix, when prefix != 0) while loads run. */
void khala__flight_invalidate(khala_flight_t *f, const void *key, size_t klen, int prefix);

/* 1 if key is in flight and was invalidated since its load began, else 0. */
int khala__flight_invalidated(const khala_flight_t *f, const void *key, size_t klen);

/* Time out loads older than the timeout: their waiters get -ETIMEDOUT. Returns how many keys
 * expired. */
size_t khala__flight_expire(khala_flight_t *f, uint64_t now_ms, khala_flight_cb cb, void *arg);

/* owner went away (at now_ms): drop its waits; where it led a load, the first other waiter
 * becomes the leader (told through cb with KHALA_FLIGHT_LEADER) with a fresh timeout, or the
 * key is forgotten. */
void khala__flight_forget_owner(khala_flight_t *f, void *owner, uint64_t now_ms, khala_flight_cb cb,
                                void *arg);

/* Keys in flight now. */
size_t khala__flight_count(const khala_flight_t *f);

#endif /* KHALA_DAEMON_FLIGHT_H */
