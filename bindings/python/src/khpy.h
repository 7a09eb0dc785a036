/*
 * khala_cache._khala, the CPython extension over libkhalacache: what its files share.
 *
 * One module per file: module.c (the module, its constants, fork handling), errors.c (the
 * exception classes), args.c (keys, values, TTLs, types and modes from Python objects),
 * entry.c (the Entry structseq), cache_type.c (Cache), view.c (Cache.view), async_core.c
 * (AsyncCore and ready()). docs/python-extension.md explains the design; start at cache_type.c.
 *
 * The GIL rule: an L1 read runs with the GIL held (releasing it costs more than the read);
 * everything that may block (a request to khalad, a wait for another worker's load) runs with
 * it released, and anything those calls hand back to Python (a loader call, a value to turn
 * into bytes) re-takes it first.
 */
#ifndef KHALA_BINDINGS_PYTHON_KHPY_H
#define KHALA_BINDINGS_PYTHON_KHPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <khala/cache.h>

/* The type of Cache objects. */
typedef struct khpy_cache {
    PyObject_HEAD
        /* All fields are guarded by the GIL. */
        khala_cache_t *c; /* NULL once closed (or while closing with calls in flight) */
    PyObject *name;       /* str, immutable after __init__ */
    PyObject *socket;     /* str, or None for the library's default; immutable after __init__ */
    int timeout_ms;       /* immutable after __init__ */
    int closing;          /* close() was called while calls ran without the GIL */
    Py_ssize_t in_flight; /* calls running without the GIL on c; close() waits for 0 */
    PyObject *views;      /* list of view objects whose read section is still open (view.c) */
    struct khpy_section *sections; /* per thread: open read sections (view.c) */
    PyObject *weakreflist;
} khpy_cache_t;

/* A read section one thread holds open on a Cache, for its views (view.c). Guarded by the GIL. */
typedef struct khpy_section {
    unsigned long tid; /* PyThread_get_thread_ident() of its thread */
    int depth;         /* views of this thread using it; ended at 0 */
    struct khpy_section *next;
} khpy_section_t;

/* A key taken from a Python object without copying. */
typedef struct khpy_key {
    const char *ptr;
    Py_ssize_t len;
    Py_buffer buf; /* held when has_buf: the key came through the buffer protocol */
    int has_buf;
} khpy_key_t;

/* errors.c */
int khpy_errors_init(PyObject *module);
/* Raise the exception of code rc, with c's message for this thread (or khala_strerror).
 * Returns NULL. */
PyObject *khpy_raise(const khala_cache_t *c, int rc);
/* Raise the exception of code rc with message msg. Returns NULL. */
PyObject *khpy_raise_msg(int rc, const char *msg);
PyObject *khpy_error_for(PyObject *self, PyObject *args);

/* args.c */
int khpy_key_get(PyObject *o, khpy_key_t *k);
void khpy_key_release(khpy_key_t *k);
int khpy_ttl_ms(PyObject *o, uint64_t *ttl_ms);
int khpy_type_id(PyObject *o, khala_type_t *type);
int khpy_mode(PyObject *o, khala_mode_t *mode);

/* entry.c */
int khpy_entry_init(PyObject *module);
PyObject *khpy_entry_new(PyObject *value, int level, uint64_t version, int64_t ttl_left_ms,
                         uint32_t type);

/* cache_type.c */
extern PyTypeObject khpy_cache_type;
int khpy_cache_init_type(PyObject *module);
/* The Cache's handle, or NULL with ValueError raised when it is closed. */
khala_cache_t *khpy_cache_handle(khpy_cache_t *self);
/* A call that releases the GIL begins (1) or ends (0): close() waits for the last one. */
void khpy_cache_blocking(khpy_cache_t *self, int begin);

/* similar.c: Cache.similar(vector, *, k=1, min_similarity=None). */
PyObject *khpy_cache_similar(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames);
/* A get's L1 part, with the GIL held: 1 on a hit (*out a new reference: bytes, or an Entry with
 * with_meta), 0 on a miss, -1 with an exception set. */
int khpy_cache_l1(khpy_cache_t *self, const khpy_key_t *k, int with_meta, PyObject **out);
/* Parse vectorcall arguments: names[0..npos_max) may be positional, the rest are keyword-only;
 * out[i] is a borrowed reference or NULL when absent. */
int khpy_parse(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               Py_ssize_t npos_min, Py_ssize_t npos_max, const char *const *names, Py_ssize_t n,
               PyObject **out);

/* view.c */
int khpy_view_init_type(PyObject *module);
PyObject *khpy_view_new(khpy_cache_t *cache, PyObject *key);
/* The section this thread holds on cache, or NULL. */
khpy_section_t *khpy_section_find(khpy_cache_t *cache, unsigned long tid);
/* In a child after fork: the sections of the parent's threads. */
void khpy_sections_after_fork(khpy_cache_t *cache);
/* End the sections of views that lingered (exited with live exports) whose exports are gone;
 * on the calling thread only. */
void khpy_views_reap(khpy_cache_t *cache);

/* async_core.c */
int khpy_async_init(PyObject *module);
PyObject *khpy_ready_new(PyObject *value);

/* module.c */
/* Remember a Cache with an open section, for the fork handler; forget it. */
void khpy_track_sections(khpy_cache_t *cache, int on);

/* PyCFunction casts without -Wcast-function-type. */
#define KHPY_METH(f) ((PyCFunction)(void (*)(void))(f))

#endif /* KHALA_BINDINGS_PYTHON_KHPY_H */
