/*
 * Cache: one open khala cache (a khala_cache_t) for Python.
 *
 * HOW IT WORKS
 *
 * The L1 hit path is the point of the extension (issue 11: a hit from Python within 3x of a
 * dict lookup). Cache.get is a METH_FASTCALL method with no Python wrapper, and a hit does:
 * take the key's bytes where they are (khpy_key_get: no copy), khala_cache_get_l1() into a
 * buffer on the C stack (no system call, no lock, GIL held), PyBytes_FromStringAndSize. That
 * is two copies of the value; the alternative, a read section with khala_cache_view() and one
 * copy into the bytes, costs two more thread-state lookups in the library, which for the small
 * values most gets read (up to a few KB) costs more than the second copy. Values above the
 * stack buffer, and gets on a thread inside a view (whose section is open), take the section
 * path.
 *
 * Everything else may block, so it runs with the GIL released: an L1 miss asks khalad
 * (khala_cache_fetch), get_or_load waits for another worker's load (khala_cache_fetch_or_load),
 * writes go to khalad. Those calls hand values to a sink and call loaders on this same
 * thread, which re-take the GIL (PyEval_RestoreThread) for as long as they touch Python.
 *
 * Closing: close() while other threads are inside a call without the GIL (in_flight > 0) only
 * marks the Cache closing; the last of those calls closes the handle when it comes back. A
 * Cache with open views refuses to close (BufferError): their memory is the segment's.
 *
 * Threads share one Cache: the library keeps per-thread state (reader slot, connection), and
 * every field here is guarded by the GIL. After fork() the child's calls open their own slots
 * and connections (the library's fork handling; module.c handles the child's views).
 */
#include "khpy.h"

#include <errno.h>
#include <stdlib.h>

/* Run stmt with the GIL released. */
#define WITHOUT_GIL(stmt)                                                                          \
    do {                                                                                           \
        PyThreadState *ts_ = PyEval_SaveThread();                                                  \
        stmt;                                                                                      \
        PyEval_RestoreThread(ts_);                                                                 \
    } while (0)

/* Values up to this many bytes are copied out of L1 through the C stack. */
#define L1_STACK_BYTES 4096

static PyObject *closed_error(void) {
    PyErr_SetString(PyExc_ValueError, "operation on a closed Cache");
    return NULL;
}

khala_cache_t *khpy_cache_handle(khpy_cache_t *self) {
    if (!self->c || self->closing) {
        closed_error();
        return NULL;
    }
    return self->c;
}

/* Calls that run without the GIL count themselves, so that close() never frees the handle
 * under them. */
static void blocking_begin(khpy_cache_t *self) {
    self->in_flight++;
}

static void blocking_end(khpy_cache_t *self) {
    if (--self->in_flight == 0 && self->closing && self->c) {
        khala_cache_close(self->c);
        self->c = NULL;
    }
}

void khpy_cache_blocking(khpy_cache_t *self, int begin) {
    if (begin)
        blocking_begin(self);
    else
        blocking_end(self);
}

int khpy_parse(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               Py_ssize_t npos_min, Py_ssize_t npos_max, const char *const *names, Py_ssize_t n,
               PyObject **out) {
    if (nargs > npos_max) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd positional arguments (%zd given)",
                     fname, npos_max, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = i < nargs ? args[i] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t j = 0; j < nkw; j++) {
        PyObject *kw = PyTuple_GET_ITEM(kwnames, j);
        Py_ssize_t i = 0;
        while (i < n && PyUnicode_CompareWithASCIIString(kw, names[i]) != 0)
            i++;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         kw);
            return -1;
        }
        if (out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + j];
    }
    for (Py_ssize_t i = 0; i < npos_min; i++) {
        if (!out[i]) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname, names[i]);
            return -1;
        }
    }
    return 0;
}

/* A bool argument; absent is 0. */
static int flag(PyObject *o) {
    return o ? PyObject_IsTrue(o) : 0;
}

/* ---- the L1 part ----------------------------------------------------------------------- */

/* The section path: a read section (this thread's views' one when a view is open), a view,
 * one copy into the bytes. */
static int l1_section(khpy_cache_t *self, const khpy_key_t *k, int with_meta, PyObject **out) {
    khala_cache_t *c = self->c;
    int own = 0;
    int rc = khala_read_begin(c);
    if (rc == KHALA_ESECTION) {
        /* This thread's views hold one open; views that lingered may be over by now. */
        khpy_views_reap(self);
        rc = khala_read_begin(c);
    }
    if (rc == 0)
        own = 1;
    else if (rc == KHALA_ELAYOUT)
        return 0; /* the segment is being replaced: a miss, khalad answers */
    else if (rc != KHALA_ESECTION)
        return khpy_raise(c, rc), -1;
    khala_view_t v;
    rc = khala_cache_view(c, k->ptr, (size_t)k->len, &v);
    PyObject *res = NULL;
    if (rc == 0) {
        res = PyBytes_FromStringAndSize(v.data, (Py_ssize_t)v.len);
        if (res && with_meta) {
            PyObject *e = khpy_entry_new(res, KHALA_LEVEL_L1, v.version, v.ttl_left_ms, v.type);
            Py_DECREF(res);
            res = e;
        }
    }
    if (own)
        khala_read_end(c);
    if (rc == KHALA_ENOTFOUND)
        return 0;
    if (rc != 0)
        return khpy_raise(c, rc), -1;
    if (!res)
        return -1;
    *out = res;
    return 1;
}

int khpy_cache_l1(khpy_cache_t *self, const khpy_key_t *k, int with_meta, PyObject **out) {
    char buf[L1_STACK_BYTES];
    size_t len;
    khala_meta_t meta;
    int rc = khala_cache_get_l1(self->c, k->ptr, (size_t)k->len, buf, sizeof(buf), &len,
                                with_meta ? &meta : NULL);
    if (__builtin_expect(rc == 0, 1)) {
        PyObject *v = PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
        if (v && with_meta) {
            PyObject *e =
                khpy_entry_new(v, KHALA_LEVEL_L1, meta.version, meta.ttl_left_ms, meta.type);
            Py_DECREF(v);
            v = e;
        }
        *out = v;
        return v ? 1 : -1;
    }
    if (rc == KHALA_ENOTFOUND)
        return 0;
    if (rc != -ERANGE && rc != KHALA_ESECTION)
        return khpy_raise(self->c, rc), -1;
    return l1_section(self, k, with_meta, out);
}

/* ---- the khalad part ------------------------------------------------------------------- */

/* What a sink fills; ts is the thread state saved when the GIL was released. */
typedef struct fetch_ctx {
    PyThreadState *ts;
    PyObject *value;
    khala_meta_t meta;
} fetch_ctx_t;

/* khala_sink_fn: make the bytes, holding the GIL for just that. */
static int sink_bytes(void *arg, const void *val, size_t len, const khala_meta_t *meta) {
    fetch_ctx_t *x = arg;
    x->meta = *meta;
    PyEval_RestoreThread(x->ts);
    x->value = PyBytes_FromStringAndSize(val, (Py_ssize_t)len);
    x->ts = PyEval_SaveThread();
    return x->value ? 0 : -ENOMEM;
}

static PyObject *result(PyObject *value, const khala_meta_t *meta, int with_meta) {
    if (!with_meta)
        return value;
    PyObject *e =
        khpy_entry_new(value, (int)meta->level, meta->version, meta->ttl_left_ms, meta->type);
    Py_DECREF(value);
    return e;
}

/* The miss half of get: ask khalad without the GIL. A khalad that cannot be reached makes a
 * miss, as in khala_cache_get(): reads keep working from L1 while it is down. */
static PyObject *get_from_daemon(khpy_cache_t *self, const khpy_key_t *k, PyObject *dflt,
                                 int with_meta) {
    fetch_ctx_t x = {0};
    khala_cache_t *c = self->c;
    blocking_begin(self);
    x.ts = PyEval_SaveThread();
    int rc = khala_cache_fetch(c, k->ptr, (size_t)k->len, sink_bytes, &x);
    PyEval_RestoreThread(x.ts);
    PyObject *res = NULL;
    if (rc == 0)
        res = result(x.value, &x.meta, with_meta);
    else if (rc == KHALA_ENOTFOUND || rc == KHALA_EDAEMON || rc == -ETIMEDOUT)
        res = Py_NewRef(dflt);
    else if (!(rc == -ENOMEM && PyErr_Occurred()))
        khpy_raise(c, rc);
    blocking_end(self);
    return res;
}

static const char *const get_names[] = {"key", "default", "with_meta"};

/* The arguments of get and get_l1 (key, default=None, *, with_meta=False): a[] as named, the
 * key in *k (release it), with_meta in *with_meta. 0, or -1 with the exception set. The first
 * test is the hit path's: one positional key. */
static inline __attribute__((always_inline)) int get_args(khpy_cache_t *self, const char *fn,
                                                          PyObject *const *args, Py_ssize_t nargs,
                                                          PyObject *kwnames, PyObject *a[3],
                                                          int *with_meta, khpy_key_t *k) {
    if (__builtin_expect(nargs == 1 && !kwnames, 1))
        a[0] = args[0];
    else if (khpy_parse(fn, args, nargs, kwnames, 1, 2, get_names, 3, a) < 0)
        return -1;
    if ((*with_meta = flag(a[2])) < 0 || !khpy_cache_handle(self))
        return -1;
    return khpy_key_get(a[0], k);
}

/* get(key, default=None, *, with_meta=False) */
static PyObject *cache_get(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    PyObject *a[3] = {NULL, NULL, NULL};
    int with_meta;
    khpy_key_t k;
    if (get_args(self, "get", args, nargs, kwnames, a, &with_meta, &k) < 0)
        return NULL;
    PyObject *out = NULL;
    int hit = khpy_cache_l1(self, &k, with_meta, &out);
    if (hit == 0)
        out = get_from_daemon(self, &k, a[1] ? a[1] : Py_None, with_meta);
    khpy_key_release(&k);
    return out;
}

/* get_l1(key, default=None, *, with_meta=False) */
static PyObject *cache_get_l1(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    PyObject *a[3] = {NULL, NULL, NULL};
    int with_meta;
    khpy_key_t k;
    if (get_args(self, "get_l1", args, nargs, kwnames, a, &with_meta, &k) < 0)
        return NULL;
    PyObject *out = NULL;
    int hit = khpy_cache_l1(self, &k, with_meta, &out);
    khpy_key_release(&k);
    if (hit == 0)
        return Py_NewRef(a[1] ? a[1] : Py_None);
    return out;
}

/* ---- get_or_load ----------------------------------------------------------------------- */

typedef struct load_ctx {
    fetch_ctx_t f;    /* f.ts: the saved thread state, shared by loader and sink */
    PyObject *loader; /* the Python callable */
    PyObject *loaded; /* what it returned, kept (and lbuf exported) until the call ends */
    Py_buffer lbuf;   /* valid when loaded != NULL */
    PyObject *exc[3]; /* the loader's exception (type, value, traceback), raised once the C
                          call is back */
    int own;          /* the sink's value is loaded itself (a bytes object): no copy */
    int none;         /* the loader returned None: the source has no such key */
} load_ctx_t;

/* khala_load_ref_fn: call the Python loader with the GIL; its bytes stay alive (and exported)
 * until get_or_load ends, so khalad is sent them without a copy, and whatever their size. */
static int load_cb(void *arg, const void *key, size_t klen, const void **val, size_t *len) {
    load_ctx_t *x = arg;
    int rc = 0;
    PyEval_RestoreThread(x->f.ts);
    PyObject *kb = PyBytes_FromStringAndSize(key, (Py_ssize_t)klen);
    PyObject *r = kb ? PyObject_CallOneArg(x->loader, kb) : NULL;
    Py_XDECREF(kb);
    if (!r) {
        rc = -ECANCELED;
    } else if (r == Py_None) {
        Py_DECREF(r);
        x->none = 1;
        rc = KHALA_ENOTFOUND;
    } else if (PyObject_GetBuffer(r, &x->lbuf, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "a loader returns a bytes-like object or None, not %.100s",
                     Py_TYPE(r)->tp_name);
        Py_DECREF(r);
        rc = -EINVAL;
    } else {
        x->loaded = r;
        *val = x->lbuf.buf;
        *len = (size_t)x->lbuf.len;
    }
    if (PyErr_Occurred())
        PyErr_Fetch(&x->exc[0], &x->exc[1], &x->exc[2]);
    x->f.ts = PyEval_SaveThread();
    return rc;
}

/* khala_sink_fn of get_or_load: our own load's bytes object is returned as is (no copy). */
static int load_sink(void *arg, const void *val, size_t len, const khala_meta_t *meta) {
    load_ctx_t *x = arg;
    if (x->loaded && val == x->lbuf.buf && PyBytes_CheckExact(x->loaded)) {
        x->f.meta = *meta;
        x->own = 1; /* the reference is taken once the GIL is back */
        return 0;
    }
    return sink_bytes(&x->f, val, len, meta);
}

static const char *const gol_names[] = {"key", "loader", "type", "ttl", "with_meta"};

/* get_or_load(key, loader, *, type=..., ttl=None, with_meta=False) */
static PyObject *cache_get_or_load(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                                   PyObject *kwnames) {
    PyObject *a[5];
    if (khpy_parse("get_or_load", args, nargs, kwnames, 2, 2, gol_names, 5, a) < 0)
        return NULL;
    int with_meta = flag(a[4]);
    khala_type_t type;
    uint64_t ttl_ms;
    if (with_meta < 0 || khpy_type_id(a[2], &type) < 0 || khpy_ttl_ms(a[3], &ttl_ms) < 0)
        return NULL;
    if (!PyCallable_Check(a[1])) {
        PyErr_SetString(PyExc_TypeError, "loader must be callable: loader(key: bytes)");
        return NULL;
    }
    if (!khpy_cache_handle(self))
        return NULL;
    khpy_key_t k;
    if (khpy_key_get(a[0], &k) < 0)
        return NULL;
    PyObject *out = NULL;
    int hit = khpy_cache_l1(self, &k, with_meta, &out);
    if (hit != 0) {
        khpy_key_release(&k);
        return out;
    }
    load_ctx_t x = {.loader = a[1]};
    khala_cache_t *c = self->c;
    blocking_begin(self);
    x.f.ts = PyEval_SaveThread();
    int rc = khala_cache_fetch_or_load(c, k.ptr, (size_t)k.len, load_cb, &x, load_sink, &x, type,
                                       ttl_ms);
    PyEval_RestoreThread(x.f.ts);
    if (x.own)
        x.f.value = Py_NewRef(x.loaded);
    if (x.loaded) {
        PyBuffer_Release(&x.lbuf);
        Py_DECREF(x.loaded);
    }
    if (x.exc[0]) {
        Py_XDECREF(x.f.value);
        PyErr_Restore(x.exc[0], x.exc[1], x.exc[2]);
    } else if (rc == 0) {
        out = result(x.f.value, &x.f.meta, with_meta);
    } else if (rc == KHALA_ENOTFOUND) {
        out = Py_NewRef(Py_None);
    } else if (!(rc == -ENOMEM && PyErr_Occurred())) {
        khpy_raise(c, rc);
    }
    blocking_end(self);
    khpy_key_release(&k);
    return out;
}

/* ---- writes ---------------------------------------------------------------------------- */

static const char *const put_names[] = {"key",  "value", "type", "ttl", "expected_version",
                                        "mode", "links"};

/* The links of a put (relationship caching): a sequence of keys (str or bytes-like, as a key),
 * taken into l->links[0 .. l->n) without copying; l->seq keeps the objects alive until
 * links_release(). */
typedef struct put_links {
    PyObject *seq;
    khpy_key_t *keys;
    khala_link_t *links;
    size_t n;
} put_links_t;

static void links_release(put_links_t *l) {
    for (size_t i = 0; i < l->n; i++)
        khpy_key_release(&l->keys[i]);
    PyMem_Free(l->keys);
    PyMem_Free(l->links);
    Py_XDECREF(l->seq);
    memset(l, 0, sizeof(*l));
}

static int links_get(PyObject *o, put_links_t *l) {
    memset(l, 0, sizeof(*l));
    if (!o || o == Py_None)
        return 0;
    if (PyBytes_Check(o) || PyUnicode_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "links is a list or tuple of keys, not one key");
        return -1;
    }
    if (!(l->seq = PySequence_Fast(o, "links is a list or tuple of keys")))
        return -1;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(l->seq);
    if (m > (Py_ssize_t)KHALA_LINKS_MAX) {
        PyErr_Format(PyExc_ValueError, "links has %zd keys, max %u", m, KHALA_LINKS_MAX);
        links_release(l);
        return -1;
    }
    l->keys = PyMem_Calloc((size_t)(m ? m : 1), sizeof(*l->keys));
    l->links = PyMem_Calloc((size_t)(m ? m : 1), sizeof(*l->links));
    if (!l->keys || !l->links) {
        links_release(l);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        if (khpy_key_get(PySequence_Fast_GET_ITEM(l->seq, i), &l->keys[i]) < 0) {
            links_release(l);
            return -1;
        }
        l->links[i] = (khala_link_t){l->keys[i].ptr, (size_t)l->keys[i].len};
        l->n++;
    }
    return 0;
}

/* put(key, value, *, type=..., ttl=None, expected_version=None, mode=None, links=None)
 * -> version */
static PyObject *cache_put(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames) {
    PyObject *a[7];
    if (khpy_parse("put", args, nargs, kwnames, 2, 2, put_names, 7, a) < 0)
        return NULL;
    khala_put_options_t po;
    khala_put_options_init(&po);
    if (khpy_type_id(a[2], &po.type) < 0 || khpy_ttl_ms(a[3], &po.ttl_ms) < 0 ||
        khpy_mode(a[5], &po.mode) < 0)
        return NULL;
    if (a[4] && a[4] != Py_None) {
        if (!PyLong_Check(a[4]) || PyBool_Check(a[4])) {
            PyErr_SetString(PyExc_TypeError, "expected_version is an int or None");
            return NULL;
        }
        po.expected_version = PyLong_AsUnsignedLongLong(a[4]);
        if (PyErr_Occurred())
            return NULL;
        po.flags |= KHALA_PUT_CAS;
    }
    if (!khpy_cache_handle(self))
        return NULL;
    khpy_key_t k;
    if (khpy_key_get(a[0], &k) < 0)
        return NULL;
    Py_buffer v;
    if (PyObject_GetBuffer(a[1], &v, PyBUF_SIMPLE) < 0) {
        khpy_key_release(&k);
        return NULL;
    }
    put_links_t pl;
    if (links_get(a[6], &pl) < 0) {
        PyBuffer_Release(&v);
        khpy_key_release(&k);
        return NULL;
    }
    po.links = pl.links;
    po.nlinks = pl.n;
    uint64_t version = 0;
    khala_cache_t *c = self->c;
    blocking_begin(self);
    int rc;
    WITHOUT_GIL(rc = khala_cache_put(c, k.ptr, (size_t)k.len, v.buf, (size_t)v.len, &po, &version));
    PyObject *out = rc == 0 ? PyLong_FromUnsignedLongLong(version) : khpy_raise(c, rc);
    blocking_end(self);
    links_release(&pl);
    PyBuffer_Release(&v);
    khpy_key_release(&k);
    return out;
}

/* delete(key) -> bool */
static PyObject *cache_delete(khpy_cache_t *self, PyObject *key) {
    if (!khpy_cache_handle(self))
        return NULL;
    khpy_key_t k;
    if (khpy_key_get(key, &k) < 0)
        return NULL;
    khala_cache_t *c = self->c;
    int rc;
    blocking_begin(self);
    WITHOUT_GIL(rc = khala_cache_delete(c, k.ptr, (size_t)k.len));
    PyObject *out = rc == 0                 ? Py_NewRef(Py_True)
                    : rc == KHALA_ENOTFOUND ? Py_NewRef(Py_False)
                                            : khpy_raise(c, rc);
    blocking_end(self);
    khpy_key_release(&k);
    return out;
}

static const char *const touch_names[] = {"key", "ttl"};

/* touch(key, ttl=None) -> bool */
static PyObject *cache_touch(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    PyObject *a[2];
    uint64_t ttl_ms;
    if (khpy_parse("touch", args, nargs, kwnames, 1, 2, touch_names, 2, a) < 0 ||
        khpy_ttl_ms(a[1], &ttl_ms) < 0 || !khpy_cache_handle(self))
        return NULL;
    khpy_key_t k;
    if (khpy_key_get(a[0], &k) < 0)
        return NULL;
    khala_cache_t *c = self->c;
    int rc;
    blocking_begin(self);
    WITHOUT_GIL(rc = khala_cache_touch(c, k.ptr, (size_t)k.len, ttl_ms));
    PyObject *out = rc == 0                 ? Py_NewRef(Py_True)
                    : rc == KHALA_ENOTFOUND ? Py_NewRef(Py_False)
                                            : khpy_raise(c, rc);
    blocking_end(self);
    khpy_key_release(&k);
    return out;
}

/* The one selector of invalidate / warm, a[] = (key or keys, prefix, type): 0 by key, 1 by
 * prefix, 2 by type (then *type is set), with the handle checked; -1 with an exception (a
 * TypeError unless exactly one is given). */
static int selector(khpy_cache_t *self, const char *fname, PyObject *a[3], khala_type_t *type) {
    int n = (a[0] && a[0] != Py_None) + (a[1] && a[1] != Py_None) + (a[2] && a[2] != Py_None);
    if (n != 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly one of %s, prefix=, type=", fname,
                     strcmp(fname, "warm") == 0 ? "keys" : "key");
        return -1;
    }
    int by = a[0] && a[0] != Py_None ? 0 : a[1] && a[1] != Py_None ? 1 : 2;
    *type = KHALA_TYPE_MEMORY_ENTITY;
    if ((by == 2 && khpy_type_id(a[2], type) < 0) || !khpy_cache_handle(self))
        return -1;
    return by;
}

static const char *const inv_names[] = {"key", "prefix", "type"};

/* invalidate(key=None, *, prefix=None, type=None) -> count */
static PyObject *cache_invalidate(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    PyObject *a[3];
    if (khpy_parse("invalidate", args, nargs, kwnames, 0, 1, inv_names, 3, a) < 0)
        return NULL;
    khala_type_t type;
    int by = selector(self, "invalidate", a, &type);
    if (by < 0)
        return NULL;
    khpy_key_t k = {0};
    if (by < 2 && khpy_key_get(a[by], &k) < 0) {
        if (by == 1 && PyErr_ExceptionMatches(PyExc_ValueError)) {
            /* The library's own words for a prefix. */
            PyErr_Clear();
            char msg[64];
            PyOS_snprintf(msg, sizeof(msg), "prefix is %zd bytes, 1..%d allowed",
                          PyObject_Length(a[1]), KHALA_KEY_MAX);
            khpy_raise_msg(KHALA_EKEY, msg);
        }
        return NULL;
    }
    khala_cache_t *c = self->c;
    uint64_t count = 0;
    int rc;
    blocking_begin(self);
    PyThreadState *ts = PyEval_SaveThread();
    if (by == 0) {
        rc = khala_cache_delete(c, k.ptr, (size_t)k.len);
        count = rc == 0;
        if (rc == KHALA_ENOTFOUND)
            rc = 0;
    } else if (by == 1) {
        rc = khala_cache_invalidate_prefix(c, k.ptr, (size_t)k.len, &count);
    } else {
        rc = khala_cache_invalidate_type(c, type, &count);
    }
    PyEval_RestoreThread(ts);
    PyObject *out = rc == 0 ? PyLong_FromUnsignedLongLong(count) : khpy_raise(c, rc);
    blocking_end(self);
    khpy_key_release(&k);
    return out;
}

/* ---- the rest -------------------------------------------------------------------------- */

/* A khala_stat_t tree as dicts; NULL with an exception set. */
static PyObject *stats_dict(const khala_stat_t *st, size_t n) {
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < n; i++) {
        const khala_stat_t *e = &st[i];
        PyObject *v;
        switch (e->kind) {
            case KHALA_STAT_BOOL:
                v = PyBool_FromLong(e->v.b);
                break;
            case KHALA_STAT_UINT:
                v = PyLong_FromUnsignedLongLong(e->v.u);
                break;
            case KHALA_STAT_INT:
                v = PyLong_FromLongLong(e->v.i);
                break;
            case KHALA_STAT_DOUBLE:
                v = PyFloat_FromDouble(e->v.d);
                break;
            case KHALA_STAT_STR:
                v = PyUnicode_DecodeUTF8(e->v.str.s, (Py_ssize_t)e->v.str.len, "replace");
                break;
            case KHALA_STAT_MAP:
                v = stats_dict(e->v.map.items, e->v.map.n);
                break;
            default:
                v = Py_NewRef(Py_None);
                break;
        }
        if (!v || PyDict_SetItemString(d, e->name, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

/* stats() -> {"hits": int, "misses": int, "daemon": {section: {name: value}} | None} */
static PyObject *cache_stats(khpy_cache_t *self, PyObject *unused) {
    (void)unused;
    khala_cache_t *c = khpy_cache_handle(self);
    if (!c)
        return NULL;
    khala_cache_stats_t st;
    (void)khala_cache_stats(c, &st);
    khala_stat_t *ds = NULL;
    size_t n = 0;
    int rc;
    blocking_begin(self);
    WITHOUT_GIL(rc = khala_cache_daemon_stats(c, &ds, &n));
    PyObject *daemon = NULL;
    if (rc == 0)
        daemon = stats_dict(ds, n);
    else if (rc == KHALA_EDAEMON || rc == -ETIMEDOUT)
        daemon = Py_NewRef(Py_None); /* unreachable: the handle's own counts still make sense */
    else
        khpy_raise(c, rc);
    khala_stats_free(ds);
    blocking_end(self);
    if (!daemon)
        return NULL;
    PyObject *out = Py_BuildValue("{s:K,s:K,s:N}", "hits", (unsigned long long)st.hits, "misses",
                                  (unsigned long long)st.misses, "daemon", daemon);
    return out;
}

static const char *const warm_names[] = {"keys", "prefix", "type"};

/* warm(keys=None, *, prefix=None, type=None) -> count */
static PyObject *cache_warm(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames) {
    PyObject *a[3];
    if (khpy_parse("warm", args, nargs, kwnames, 0, 1, warm_names, 3, a) < 0)
        return NULL;
    khala_type_t type;
    int by = selector(self, "warm", a, &type);
    if (by < 0)
        return NULL;
    khala_cache_t *c = self->c;
    uint64_t count = 0;
    int rc = 0;
    if (by == 0) {
        /* Keep every key object alive and take its bytes; the keys stay referenced by seq. */
        PyObject *seq = PySequence_Fast(a[0], "warm(keys): keys is an iterable of keys");
        if (!seq)
            return NULL;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        khpy_key_t *ks = PyMem_Calloc((size_t)n + 1, sizeof(*ks));
        const void **ptrs = PyMem_Calloc((size_t)n + 1, sizeof(*ptrs));
        size_t *lens = PyMem_Calloc((size_t)n + 1, sizeof(*lens));
        Py_ssize_t got = 0;
        if (!ks || !ptrs || !lens) {
            PyErr_NoMemory();
            rc = 1;
        }
        for (; rc == 0 && got < n; got++) {
            if (khpy_key_get(PySequence_Fast_GET_ITEM(seq, got), &ks[got]) < 0) {
                rc = 1;
                break;
            }
            ptrs[got] = ks[got].ptr;
            lens[got] = (size_t)ks[got].len;
        }
        if (rc == 0) {
            blocking_begin(self);
            WITHOUT_GIL(rc = khala_cache_warm(c, ptrs, lens, (size_t)n, &count));
            if (rc != 0)
                khpy_raise(c, rc);
            blocking_end(self);
        }
        for (Py_ssize_t i = 0; i < got; i++)
            khpy_key_release(&ks[i]);
        PyMem_Free(ks);
        PyMem_Free(ptrs);
        PyMem_Free(lens);
        Py_DECREF(seq);
    } else if (by == 1) {
        khpy_key_t k;
        if (khpy_key_get(a[1], &k) < 0)
            return NULL;
        blocking_begin(self);
        WITHOUT_GIL(rc = khala_cache_warm_prefix(c, k.ptr, (size_t)k.len, &count));
        if (rc != 0)
            khpy_raise(c, rc);
        blocking_end(self);
        khpy_key_release(&k);
    } else {
        blocking_begin(self);
        WITHOUT_GIL(rc = khala_cache_warm_type(c, type, &count));
        if (rc != 0)
            khpy_raise(c, rc);
        blocking_end(self);
    }
    return rc == 0 ? PyLong_FromUnsignedLongLong(count) : NULL;
}

/* view(key) -> a context manager whose __enter__ gives a memoryview into L1, or None */
static PyObject *cache_view(khpy_cache_t *self, PyObject *key) {
    if (!khpy_cache_handle(self))
        return NULL;
    khpy_key_t k;
    if (khpy_key_get(key, &k) < 0) /* checked now, used at __enter__ */
        return NULL;
    khpy_key_release(&k);
    return khpy_view_new(self, key);
}

static PyObject *cache_close(khpy_cache_t *self, PyObject *unused) {
    (void)unused;
    if (!self->c)
        Py_RETURN_NONE;
    if (self->views && PyList_GET_SIZE(self->views) > 0) {
        khpy_views_reap(self);
        if (PyList_GET_SIZE(self->views) > 0) {
            PyErr_Format(PyExc_BufferError,
                         "Cache '%U' has %zd view(s) still open (a with block not yet exited, or "
                         "buffers exported from a view still alive): release them first",
                         self->name, PyList_GET_SIZE(self->views));
            return NULL;
        }
    }
    if (self->in_flight > 0) {
        self->closing = 1; /* the last call in flight closes the handle */
        Py_RETURN_NONE;
    }
    khala_cache_close(self->c);
    self->c = NULL;
    Py_RETURN_NONE;
}

static PyObject *cache_enter(khpy_cache_t *self, PyObject *unused) {
    (void)unused;
    if (!khpy_cache_handle(self))
        return NULL;
    return Py_NewRef(self);
}

static PyObject *cache_exit(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)args;
    (void)nargs;
    return cache_close(self, NULL);
}

static PyObject *cache_reduce(khpy_cache_t *self, PyObject *unused) {
    (void)unused;
    return Py_BuildValue("(O(OOi))", Py_TYPE(self), self->name, self->socket, self->timeout_ms);
}

static PyObject *cache_repr(khpy_cache_t *self) {
    return PyUnicode_FromFormat("<khala_cache.Cache name=%R socket=%R%s>", self->name, self->socket,
                                self->c && !self->closing ? "" : " closed");
}

/* Cache(name=None, socket=None, timeout_ms=5000) */
static int cache_init(khpy_cache_t *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"name", "socket", "timeout_ms", NULL};
    PyObject *name = Py_None, *sock = Py_None;
    int timeout_ms = KHALA_TIMEOUT_DEFAULT_MS;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OOi:Cache", kwlist, &name, &sock, &timeout_ms))
        return -1;
    if (self->c) {
        PyErr_SetString(PyExc_RuntimeError, "Cache.__init__ called twice");
        return -1;
    }
    if (name == Py_None) {
        const char *env = getenv("KHALA_CACHE_NAME");
        name = PyUnicode_FromString(env && *env ? env : "khala");
    } else if (PyUnicode_Check(name)) {
        Py_INCREF(name);
    } else {
        PyErr_SetString(PyExc_TypeError, "name is a str or None");
        return -1;
    }
    if (!name)
        return -1;
    if (sock == Py_None) {
        const char *env = getenv("KHALA_SOCKET");
        sock = env && *env ? PyUnicode_FromString(env) : Py_NewRef(Py_None);
    } else if (PyUnicode_Check(sock)) {
        Py_INCREF(sock);
    } else if (PyObject_CheckBuffer(sock) || PyObject_HasAttrString(sock, "__fspath__")) {
        PyObject *b = NULL;
        sock = PyUnicode_FSConverter(sock, &b)
                   ? PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
                   : NULL;
        Py_XDECREF(b);
    } else {
        PyErr_SetString(PyExc_TypeError, "socket is a path (str) or None");
        Py_DECREF(name);
        return -1;
    }
    if (!sock) {
        Py_DECREF(name);
        return -1;
    }
    Py_XSETREF(self->name, name);
    Py_XSETREF(self->socket, sock);
    self->timeout_ms = timeout_ms;
    khala_cache_options_t o;
    khala_cache_options_init(&o);
    o.timeout_ms = timeout_ms;
    const char *cname = PyUnicode_AsUTF8(name);
    if (!cname || (sock != Py_None && !(o.socket_path = PyUnicode_AsUTF8(sock))))
        return -1;
    khala_cache_t *c = NULL;
    int rc = khala_cache_open(cname, &o, &c);
    if (rc != 0) {
        khpy_raise(NULL, rc);
        return -1;
    }
    self->c = c;
    return 0;
}

static PyObject *cache_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    khpy_cache_t *self = (khpy_cache_t *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->name = Py_NewRef(Py_None);
    self->socket = Py_NewRef(Py_None);
    self->views = PyList_New(0);
    if (!self->views) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void cache_dealloc(khpy_cache_t *self) {
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    khpy_track_sections(self, 0);
    while (self->sections) {
        khpy_section_t *s = self->sections;
        self->sections = s->next;
        PyMem_Free(s);
    }
    if (self->c)
        khala_cache_close(self->c);
    Py_XDECREF(self->views);
    Py_XDECREF(self->name);
    Py_XDECREF(self->socket);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *get_closed(khpy_cache_t *self, void *unused) {
    (void)unused;
    return PyBool_FromLong(!self->c || self->closing);
}

static PyObject *get_name(khpy_cache_t *self, void *unused) {
    (void)unused;
    return Py_NewRef(self->name);
}

static PyObject *get_socket(khpy_cache_t *self, void *unused) {
    (void)unused;
    return Py_NewRef(self->socket);
}

static PyObject *get_timeout(khpy_cache_t *self, void *unused) {
    (void)unused;
    return PyLong_FromLong(self->timeout_ms);
}

static PyObject *get_in_flight(khpy_cache_t *self, void *unused) {
    (void)unused;
    return PyLong_FromSsize_t(self->in_flight);
}

static PyGetSetDef cache_getset[] = {
    {"_in_flight", (getter)get_in_flight, NULL,
     "Calls running on this Cache without the GIL now (for tests of close()).", NULL},
    {"closed", (getter)get_closed, NULL, "True after close().", NULL},
    {"name", (getter)get_name, NULL, "The cache's name.", NULL},
    {"socket", (getter)get_socket, NULL, "khalad's socket path given, or None (the default).",
     NULL},
    {"timeout_ms", (getter)get_timeout, NULL, "The longest wait for khalad per request, in ms.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMethodDef cache_methods[] = {
    {"get", KHPY_METH(cache_get), METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None, *, with_meta=False) -> bytes | Entry | default\n\n"
     "L1 with the GIL held; a miss asks khalad with the GIL released (a khalad that cannot be "
     "reached is a miss)."},
    {"get_l1", KHPY_METH(cache_get_l1), METH_FASTCALL | METH_KEYWORDS,
     "get_l1(key, default=None, *, with_meta=False) -> bytes | Entry | default\n\n"
     "L1 only: never blocks, never releases the GIL."},
    {"get_or_load", KHPY_METH(cache_get_or_load), METH_FASTCALL | METH_KEYWORDS,
     "get_or_load(key, loader, *, type=..., ttl=None, with_meta=False) -> bytes | Entry | "
     "None\n\nOn a miss, loader(key: bytes) runs at most once across every worker missing the "
     "key (single-flight); it returns a bytes-like value, or None when the source has no such "
     "key (then None is returned and nothing is cached). Its exception propagates."},
    {"put", KHPY_METH(cache_put), METH_FASTCALL | METH_KEYWORDS,
     "put(key, value, *, type=..., ttl=None, expected_version=None, mode=None, links=None) "
     "-> int\n\n"
     "Write through khalad; returns the new version. expected_version: compare-and-set (0 = "
     "the key must not exist). mode: None, \"through\" or \"behind\". links: keys of the end "
     "entities the item is linked to (a put, delete or invalidation of one deletes it at every "
     "level)."},
    {"delete", (PyCFunction)cache_delete, METH_O,
     "delete(key) -> bool: False when no level held the key."},
    {"touch", KHPY_METH(cache_touch), METH_FASTCALL | METH_KEYWORDS,
     "touch(key, ttl=None) -> bool: restart the key's TTL; False when absent."},
    {"invalidate", KHPY_METH(cache_invalidate), METH_FASTCALL | METH_KEYWORDS,
     "invalidate(key=None, *, prefix=None, type=None) -> int: drop from every level; exactly "
     "one selector; returns the count dropped."},
    {"stats", (PyCFunction)cache_stats, METH_NOARGS,
     "stats() -> {\"hits\": int, \"misses\": int, \"daemon\": dict | None}"},
    {"warm", KHPY_METH(cache_warm), METH_FASTCALL | METH_KEYWORDS,
     "warm(keys=None, *, prefix=None, type=None) -> int: promote from the levels below L1 "
     "into L1; exactly one selector; returns the count warmed."},
    {"similar", KHPY_METH(khpy_cache_similar), METH_FASTCALL | METH_KEYWORDS,
     "similar(vector, *, k=1, min_similarity=None) -> [(key, similarity, Entry)]\n\n"
     "The cached embeddings nearest to vector (float32: array('f'), numpy, bytes; or numbers), "
     "most similar first, at least min_similarity (None: khalad's similarity_threshold)."},
    {"view", (PyCFunction)cache_view, METH_O,
     "view(key) -> context manager: `with c.view(k) as mv:` mv is a read-only memoryview into "
     "L1 (zero copy), or None when absent; released when the block ends."},
    {"close", (PyCFunction)cache_close, METH_NOARGS,
     "close(): detach from the cache. Raises BufferError while views are open."},
    {"__enter__", (PyCFunction)cache_enter, METH_NOARGS, NULL},
    {"__exit__", KHPY_METH(cache_exit), METH_FASTCALL, NULL},
    {"__reduce__", (PyCFunction)cache_reduce, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL}};

PyTypeObject khpy_cache_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "khala_cache._khala.Cache",
    .tp_basicsize = sizeof(khpy_cache_t),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Cache(name=None, socket=None, timeout_ms=5000)\n\n"
              "An open khala cache: L1 read in this process, everything else through khalad. "
              "name None: $KHALA_CACHE_NAME or \"khala\"; socket None: $KHALA_SOCKET or the "
              "library's default path.",
    .tp_new = cache_new,
    .tp_init = (initproc)cache_init,
    .tp_dealloc = (destructor)cache_dealloc,
    .tp_repr = (reprfunc)cache_repr,
    .tp_methods = cache_methods,
    .tp_getset = cache_getset,
    .tp_weaklistoffset = offsetof(khpy_cache_t, weakreflist),
};

int khpy_cache_init_type(PyObject *module) {
    if (PyType_Ready(&khpy_cache_type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "Cache", (PyObject *)&khpy_cache_type);
}
