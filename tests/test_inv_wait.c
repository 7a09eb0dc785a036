/*
 * Replies waiting for invalidations below L1 (daemon/inv_wait.c): a caller is answered once
 * every level it waits on has finished its invalidation or a later one (queues drain in order),
 * with the first error a level reported; a forgotten connection is never answered.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "inv_wait.h"
#include "khala/error.h"

TestSuite(inv_wait, .timeout = 10);

static struct {
    int n;
    uint64_t ids[16];
    int rcs[16];
    uint64_t counts[16];
} got;

static void answer(void *arg, khala_conn_t *c, uint64_t req_id, int op, uint64_t count, int rc) {
    (void)c, (void)op;
    cr_assert_eq(arg, &got);
    got.ids[got.n] = req_id;
    got.rcs[got.n] = rc;
    got.counts[got.n++] = count;
}

static khala_conn_t *conn(int i) {
    static char conns[8];
    return (khala_conn_t *)&conns[i]; /* distinct addresses, never dereferenced */
}

Test(inv_wait, a_caller_is_answered_when_every_level_has_finished_its_invalidation) {
    memset(&got, 0, sizeof(got));
    khala_invwait_t *w;
    cr_assert_eq(khala__invwait_new(answer, &got, &w), 0);
    cr_assert_eq(khala__invwait_add(w, conn(0), 1, 0, 10, 100, 1u), 0);      /* L2 */
    cr_assert_eq(khala__invwait_add(w, conn(1), 2, 0, 20, 200, 1u | 2u), 0); /* L2 and L3 */
    cr_assert_eq(khala__invwait_add(w, conn(2), 3, 0, 30, 300, 1u), 0);
    cr_assert_eq(khala__invwait_count(w), 3);
    khala__invwait_done(w, 0, 99, 0);
    cr_assert_eq(got.n, 0, "an older invalidation finishing answers nobody");
    khala__invwait_done(w, 0, 200, 0); /* L2 finished 200, so 100 too */
    cr_assert_eq(got.n, 1);
    cr_assert_eq(got.ids[0], 1);
    cr_assert_eq(got.counts[0], 10);
    khala__invwait_done(w, 1, 200, KHALA_ETIER); /* L3 finished 200 with an error */
    cr_assert_eq(got.n, 2);
    cr_assert_eq(got.ids[1], 2);
    cr_assert_eq(got.rcs[1], KHALA_ETIER, "the level's error is the answer");
    khala__invwait_forget_conn(w, conn(2));
    cr_assert_eq(khala__invwait_count(w), 0);
    khala__invwait_done(w, 0, UINT64_MAX, 0);
    cr_assert_eq(got.n, 2, "a forgotten connection is never answered");
    khala__invwait_free(w);
    khala__invwait_done(NULL, 0, 1, 0); /* no table: nothing */
    khala__invwait_forget_conn(NULL, conn(0));
    khala__invwait_free(NULL);
}
