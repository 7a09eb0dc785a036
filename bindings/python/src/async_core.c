/*
 * AsyncCore, the C base of khala_cache.AsyncCache, and ready(value).
 *
 * An L1 hit from asyncio must not cost an event-loop round or a thread hop: AsyncCore.get reads
 * L1 exactly as Cache.get does (GIL held, no blocking) and returns an already-finished
 * awaitable (ready), so `await acache.get(k)` on a hit runs no scheduling at all. On a miss it
 * hands over to the Python subclass: self._get_miss(key, default, with_meta) and
 * self._get_or_load_miss(key, loader, type, ttl, with_meta), coroutines that pylib defines
 * (they run the blocking part off the event loop).
 *
 * ready: an awaitable whose __await__ is itself, an iterator that finishes at once with the
 * value. It implements am_send, so that `await` gets the value back as a return (PYGEN_RETURN)
 * without making a StopIteration; tp_iternext (raising StopIteration(value)) serves the
 * generic iterator protocol.
 */
#include "khpy.h"

typedef struct khpy_ready {
    PyObject_HEAD PyObject *value; /* strong; NULL once delivered through tp_iternext */
} khpy_ready_t;

static PyTypeObject ready_type;

PyObject *khpy_ready_new(PyObject *value) {
    khpy_ready_t *r = PyObject_New(khpy_ready_t, &ready_type);
    if (!r)
        return NULL;
    r->value = Py_NewRef(value);
    return (PyObject *)r;
}

static void ready_dealloc(khpy_ready_t *r) {
    Py_XDECREF(r->value);
    PyObject_Free(r);
}

static PyObject *ready_await(khpy_ready_t *r) {
    return Py_NewRef(r);
}

static PySendResult ready_send(khpy_ready_t *r, PyObject *arg, PyObject **result) {
    (void)arg;
    *result = Py_NewRef(r->value ? r->value : Py_None);
    return PYGEN_RETURN;
}

static PyObject *ready_next(khpy_ready_t *r) {
    PyObject *v = r->value ? r->value : Py_None;
    /* StopIteration(value): built explicitly, so that a tuple value stays one argument. */
    PyObject *e = PyObject_CallOneArg(PyExc_StopIteration, v);
    if (e) {
        PyErr_SetObject(PyExc_StopIteration, e);
        Py_DECREF(e);
    }
    return NULL;
}

static PyObject *ready_result(khpy_ready_t *r, PyObject *unused) {
    (void)unused;
    return Py_NewRef(r->value ? r->value : Py_None);
}

static PyObject *ready_done(khpy_ready_t *r, PyObject *unused) {
    (void)r;
    (void)unused;
    Py_RETURN_TRUE;
}

static PyAsyncMethods ready_async = {
    .am_await = (unaryfunc)ready_await,
    .am_send = (sendfunc)ready_send,
};

static PyMethodDef ready_methods[] = {
    {"result", (PyCFunction)ready_result, METH_NOARGS, "The value."},
    {"done", (PyCFunction)ready_done, METH_NOARGS, "Always True."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ready_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "khala_cache._khala.Ready",
    .tp_basicsize = sizeof(khpy_ready_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An already-finished awaitable holding a value (ready(value)).",
    .tp_dealloc = (destructor)ready_dealloc,
    .tp_as_async = &ready_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)ready_next,
    .tp_methods = ready_methods,
};

/* ---- AsyncCore ------------------------------------------------------------------------- */

typedef struct khpy_async_core {
    PyObject_HEAD khpy_cache_t *cache; /* strong; immutable after __init__ */
    PyObject *dict;                    /* instance attributes of subclasses */
    PyObject *weakreflist;
} khpy_async_core_t;

static int core_init(khpy_async_core_t *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"cache", NULL};
    PyObject *cache;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!:AsyncCore", kwlist, &khpy_cache_type, &cache))
        return -1;
    Py_XSETREF(self->cache, (khpy_cache_t *)Py_NewRef(cache));
    return 0;
}

static int core_traverse(khpy_async_core_t *self, visitproc visit, void *arg) {
    Py_VISIT(self->cache);
    Py_VISIT(self->dict);
    return 0;
}

static int core_clear(khpy_async_core_t *self) {
    Py_CLEAR(self->cache);
    Py_CLEAR(self->dict);
    return 0;
}

/* A static type: a Python subclass's type reference is subtype_dealloc's business. */
static void core_dealloc(khpy_async_core_t *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static khpy_cache_t *core_cache(khpy_async_core_t *self) {
    if (!self->cache) {
        PyErr_SetString(PyExc_ValueError, "AsyncCore.__init__ was not called");
        return NULL;
    }
    return khpy_cache_handle(self->cache) ? self->cache : NULL;
}

static const char *const get_names[] = {"key", "default", "with_meta"};

/* get(key, default=None, *, with_meta=False) -> awaitable */
/* The L1 half of the async gets: on a hit, an already-finished awaitable of the value (*hit 1);
 * on a miss NULL with *hit 0, the caller goes on to the subclass's miss coroutine; on an error
 * NULL with *hit -1 and the exception set. */
static PyObject *l1_ready(khpy_cache_t *cache, PyObject *key, int with_meta, int *hit) {
    khpy_key_t k;
    *hit = -1;
    if (khpy_key_get(key, &k) < 0)
        return NULL;
    PyObject *out = NULL;
    *hit = khpy_cache_l1(cache, &k, with_meta, &out);
    khpy_key_release(&k);
    if (*hit <= 0)
        return NULL;
    PyObject *r = khpy_ready_new(out);
    Py_DECREF(out);
    if (!r)
        *hit = -1;
    return r;
}

static PyObject *core_get(khpy_async_core_t *self, PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames) {
    PyObject *a[3] = {NULL, NULL, NULL};
    if (nargs == 1 && !kwnames)
        a[0] = args[0];
    else if (khpy_parse("get", args, nargs, kwnames, 1, 2, get_names, 3, a) < 0)
        return NULL;
    int with_meta = a[2] ? PyObject_IsTrue(a[2]) : 0;
    khpy_cache_t *cache = core_cache(self);
    if (with_meta < 0 || !cache)
        return NULL;
    int hit;
    PyObject *r = l1_ready(cache, a[0], with_meta, &hit);
    if (r || hit)
        return r; /* finished at once, or an error (hit < 0) */
    return PyObject_CallMethod((PyObject *)self, "_get_miss", "OOO", a[0], a[1] ? a[1] : Py_None,
                               with_meta ? Py_True : Py_False);
}

static const char *const gol_names[] = {"key", "loader", "type", "ttl", "with_meta"};

/* get_or_load(key, loader, *, type=..., ttl=None, with_meta=False) -> awaitable */
static PyObject *core_get_or_load(khpy_async_core_t *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames) {
    PyObject *a[5];
    if (khpy_parse("get_or_load", args, nargs, kwnames, 2, 2, gol_names, 5, a) < 0)
        return NULL;
    int with_meta = a[4] ? PyObject_IsTrue(a[4]) : 0;
    khpy_cache_t *cache = core_cache(self);
    if (with_meta < 0 || !cache)
        return NULL;
    khala_type_t type;
    uint64_t ttl_ms;
    if (khpy_type_id(a[2], &type) < 0 || khpy_ttl_ms(a[3], &ttl_ms) < 0)
        return NULL; /* refused at once, as the sync call does */
    int hit;
    PyObject *r = l1_ready(cache, a[0], with_meta, &hit);
    if (r || hit)
        return r; /* finished at once, or an error (hit < 0) */
    return PyObject_CallMethod((PyObject *)self, "_get_or_load_miss", "OOOOO", a[0], a[1],
                               a[2] ? a[2] : Py_None, a[3] ? a[3] : Py_None,
                               with_meta ? Py_True : Py_False);
}

static PyObject *core_get_cache(khpy_async_core_t *self, void *unused) {
    (void)unused;
    if (!self->cache)
        Py_RETURN_NONE;
    return Py_NewRef(self->cache);
}

static PyGetSetDef core_getset[] = {
    {"cache", (getter)core_get_cache, NULL, "The Cache this wraps.", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyMethodDef core_methods[] = {
    {"get", KHPY_METH(core_get), METH_FASTCALL | METH_KEYWORDS,
     "get(key, default=None, *, with_meta=False) -> awaitable\n\nAn L1 hit is an "
     "already-finished awaitable; a miss is self._get_miss(key, default, with_meta)."},
    {"get_or_load", KHPY_METH(core_get_or_load), METH_FASTCALL | METH_KEYWORDS,
     "get_or_load(key, loader, *, type=..., ttl=None, with_meta=False) -> awaitable\n\nAn L1 "
     "hit is finished at once; else self._get_or_load_miss(key, loader, type, ttl, "
     "with_meta)."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject core_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "khala_cache._khala.AsyncCore",
    .tp_basicsize = sizeof(khpy_async_core_t),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "AsyncCore(cache): the C base of khala_cache.AsyncCache (L1 hits without an "
              "event-loop round).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)core_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
    .tp_dictoffset = offsetof(khpy_async_core_t, dict),
    .tp_weaklistoffset = offsetof(khpy_async_core_t, weakreflist),
};

int khpy_async_init(PyObject *module) {
    if (PyType_Ready(&ready_type) < 0 || PyType_Ready(&core_type) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Ready", (PyObject *)&ready_type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "AsyncCore", (PyObject *)&core_type);
}
