/*
 * Thin wrappers over C11 <stdatomic.h> whose names carry the memory order, so that every
 * ordering choice is visible at the call site and can be commented there. Shared-segment fields
 * are declared with the khala_atomic_u64 / u32 / u8 types; never use volatile for
 * synchronization.
 */
#ifndef KHALA_LIB_ATOMIC_H
#define KHALA_LIB_ATOMIC_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint64_t khala_atomic_u64;
typedef _Atomic uint32_t khala_atomic_u32;
typedef _Atomic uint8_t khala_atomic_u8;

#define khala_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define khala_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define khala_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define khala_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)
#define khala_cas_acq_rel(p, expp, v)                                                              \
    atomic_compare_exchange_strong_explicit((p), (expp), (v), memory_order_acq_rel,                \
                                            memory_order_acquire)
#define khala_fetch_add_relaxed(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
/* A full fence: orders earlier stores before later loads (the store-buffer case).
 * ThreadSanitizer does not model standalone fences (gcc refuses them under -Werror=tsan); under
 * TSan the fence is a seq_cst read-modify-write of a private word, which TSan understands and
 * which is a full barrier on x86-64 as well. TSan checks happens-before, not this store-load
 * ordering, so nothing it reports depends on the choice. */
#if defined(__SANITIZE_THREAD__)
#define KHALA_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KHALA_TSAN 1
#endif
#endif
#ifdef KHALA_TSAN
static _Atomic int khala__tsan_fence_word __attribute__((unused));
#define khala_fence_seq_cst()                                                                      \
    ((void)atomic_fetch_add_explicit(&khala__tsan_fence_word, 0, memory_order_seq_cst))
#else
#define khala_fence_seq_cst() atomic_thread_fence(memory_order_seq_cst)
#endif

#endif /* KHALA_LIB_ATOMIC_H */
