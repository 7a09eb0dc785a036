/*
 * Cache.view(key): a memoryview straight into L1, valid for one with block.
 *
 * HOW IT WORKS
 *
 *     with cache.view(b"emb:42") as mv:    # __enter__: read section (this thread), lookup,
 *         vec = numpy.frombuffer(mv, ...)  #   mv = memoryview over this view object
 *         total = sum(vec)                 # reads the segment in place: zero copy
 *     # __exit__: mv.release(); the section ends; mv[0] now raises ValueError
 *
 * The view object is the buffer exporter: its getbuffer hands out the segment's bytes (read
 * only: the mapping is PROT_READ, and a writable request is refused) and counts exports. The
 * library's view rule holds because every export is taken from the memoryview the block got,
 * and the section stays open while any export lives.
 *
 * Sections: the library allows one read section per thread, with no nesting, so a thread's
 * views on one Cache share one (khpy_section_t, with a depth): the first view of a thread
 * begins it, the last one out ends it. A get on the same thread while a view is open reads
 * inside that section (cache_type.c). A section is ended on the thread that began it, always:
 * a view exited on another thread raises SectionMisuse and stays open.
 *
 * Exports still alive at the end of the block (a slice of mv, memoryview(mv), a numpy array
 * made from it) would point into memory that khalad may reuse once the section ends. So the
 * exit raises BufferError naming the problem, and the view lingers: its section stays open
 * (the memory stays valid and mapped) until the exports are gone; the section ends then if the
 * last export is released on the view's thread, or else at that thread's next use of the Cache
 * (khpy_views_reap, which also retries releasing the block's memoryview when a consumer of
 * it, such as a numpy array, held it at the exit). close() refuses while views are open or
 * lingering.
 *
 * Fork: a child of a process inside a view cannot use the parent's section. module.c's
 * after-fork hook (khpy_sections_after_fork) gives the forking thread's views a section of the
 * child's own, and forgets the views of the threads that do not exist in the child.
 *
 * Every field is guarded by the GIL.
 */
#include "khpy.h"

#include "pythread.h"

enum view_state {
    VIEW_NEW = 0, /* made by Cache.view, not entered yet */
    VIEW_ACTIVE,  /* inside the with block: the section is open, exports are allowed */
    VIEW_LINGER,  /* exited with exports still alive: the section stays open until they go */
    VIEW_DONE     /* exited (or absent key); no section */
};

typedef struct khpy_view {
    PyObject_HEAD khpy_cache_t *cache; /* strong */
    PyObject *key;                     /* strong; the key object given */
    unsigned long tid;                 /* the thread that entered; valid from ACTIVE on */
    enum view_state state;
    const char *data;   /* into the segment; valid while ACTIVE or LINGER */
    Py_ssize_t len;     /* bytes at data */
    PyObject *mv;       /* the memoryview the block got; NULL after the exit */
    Py_ssize_t exports; /* live buffer exports of this object */
} khpy_view_t;

static PyTypeObject view_type;

/* ---- sections --------------------------------------------------------------------------- */

khpy_section_t *khpy_section_find(khpy_cache_t *cache, unsigned long tid) {
    for (khpy_section_t *s = cache->sections; s; s = s->next)
        if (s->tid == tid)
            return s;
    return NULL;
}

static int section_acquire(khpy_cache_t *cache, unsigned long tid) {
    khpy_section_t *s = khpy_section_find(cache, tid);
    if (s) {
        s->depth++;
        return 0;
    }
    int rc = khala_read_begin(cache->c);
    if (rc != 0) {
        khpy_raise(cache->c, rc);
        return -1;
    }
    s = PyMem_Calloc(1, sizeof(*s));
    if (!s) {
        khala_read_end(cache->c);
        PyErr_NoMemory();
        return -1;
    }
    s->tid = tid;
    s->depth = 1;
    s->next = cache->sections;
    if (!cache->sections)
        khpy_track_sections(cache, 1);
    cache->sections = s;
    return 0;
}

/* Called on the section's thread only. */
static void section_release(khpy_cache_t *cache, unsigned long tid) {
    for (khpy_section_t **pp = &cache->sections; *pp; pp = &(*pp)->next) {
        khpy_section_t *s = *pp;
        if (s->tid != tid)
            continue;
        if (--s->depth > 0)
            return;
        if (cache->c)
            khala_read_end(cache->c);
        *pp = s->next;
        PyMem_Free(s);
        if (!cache->sections)
            khpy_track_sections(cache, 0);
        return;
    }
}

/* Release the block's memoryview: 0 when it is released (or was), 1 when something still holds
 * a buffer of it (it is kept, to try again later), -1 with an exception set. */
static int release_mv(khpy_view_t *v) {
    if (!v->mv)
        return 0;
    PyObject *r = PyObject_CallMethod(v->mv, "release", NULL);
    if (r) {
        Py_DECREF(r);
        Py_CLEAR(v->mv);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_BufferError))
        return -1;
    PyErr_Clear(); /* a consumer holds a buffer of mv itself (numpy.frombuffer(mv)) */
    return 1;
}

/* The view is over: end its share of the section and drop it from the cache's list. */
static void view_finish(khpy_view_t *v) {
    v->state = VIEW_DONE;
    v->data = NULL;
    section_release(v->cache, v->tid);
    PyObject *list = v->cache->views;
    for (Py_ssize_t i = PyList_GET_SIZE(list) - 1; i >= 0; i--) {
        if (PyList_GET_ITEM(list, i) == (PyObject *)v) {
            (void)PyList_SetSlice(list, i, i + 1, NULL); /* may drop the last reference to v */
            break;
        }
    }
}

void khpy_views_reap(khpy_cache_t *cache) {
    PyObject *list = cache->views;
    if (!list || PyList_GET_SIZE(list) == 0)
        return;
    unsigned long tid = PyThread_get_thread_ident();
    for (Py_ssize_t i = PyList_GET_SIZE(list) - 1; i >= 0; i--) {
        if (i >= PyList_GET_SIZE(list))
            continue;
        khpy_view_t *v = (khpy_view_t *)PyList_GET_ITEM(list, i);
        if (v->state != VIEW_LINGER || v->tid != tid)
            continue;
        Py_INCREF(v);
        if (release_mv(v) < 0)
            PyErr_Clear();
        if (v->exports == 0)
            view_finish(v);
        Py_DECREF(v);
    }
}

void khpy_sections_after_fork(khpy_cache_t *cache) {
    unsigned long tid = PyThread_get_thread_ident();
    khpy_section_t *mine = NULL;
    while (cache->sections) {
        khpy_section_t *s = cache->sections;
        cache->sections = s->next;
        if (s->tid == tid)
            mine = s;
        else
            PyMem_Free(s); /* a thread of the parent's, absent here */
    }
    int ok = 0;
    if (mine && cache->c) {
        khala_read_end(cache->c); /* forgets the parent's section, leaves it open there */
        ok = khala_read_begin(cache->c) == 0;
    }
    if (ok) {
        mine->next = NULL;
        cache->sections = mine;
    } else {
        PyMem_Free(mine);
        mine = NULL;
    }
    /* Views of the other threads (and this one's, if no section could be had) are over. */
    PyObject *list = cache->views;
    for (Py_ssize_t i = PyList_GET_SIZE(list) - 1; i >= 0; i--) {
        if (i >= PyList_GET_SIZE(list))
            continue;
        khpy_view_t *v = (khpy_view_t *)PyList_GET_ITEM(list, i);
        if (!mine || v->tid != tid) {
            v->state = VIEW_DONE;
            v->data = NULL;
            (void)PyList_SetSlice(list, i, i + 1, NULL);
        }
    }
    if (!cache->sections)
        khpy_track_sections(cache, 0);
}

/* ---- the buffer ------------------------------------------------------------------------- */

static int view_getbuffer(khpy_view_t *v, Py_buffer *buf, int flags) {
    if (v->state != VIEW_ACTIVE) {
        PyErr_Format(PyExc_BufferError,
                     "the view of key %R has ended: it is valid only inside its with block",
                     v->key);
        return -1;
    }
    if (PyBuffer_FillInfo(buf, (PyObject *)v, (void *)v->data, v->len, 1, flags) < 0)
        return -1;
    v->exports++;
    return 0;
}

static void view_releasebuffer(khpy_view_t *v, Py_buffer *buf) {
    (void)buf;
    if (--v->exports == 0 && v->state == VIEW_LINGER && v->tid == PyThread_get_thread_ident())
        view_finish(v);
}

static PyBufferProcs view_as_buffer = {
    .bf_getbuffer = (getbufferproc)view_getbuffer,
    .bf_releasebuffer = (releasebufferproc)view_releasebuffer,
};

/* ---- the context manager ---------------------------------------------------------------- */

PyObject *khpy_view_new(khpy_cache_t *cache, PyObject *key) {
    khpy_view_t *v = PyObject_New(khpy_view_t, &view_type);
    if (!v)
        return NULL;
    v->cache = (khpy_cache_t *)Py_NewRef(cache);
    v->key = Py_NewRef(key);
    v->tid = 0;
    v->state = VIEW_NEW;
    v->data = NULL;
    v->len = 0;
    v->mv = NULL;
    v->exports = 0;
    return (PyObject *)v;
}

static PyObject *view_enter(khpy_view_t *v, PyObject *unused) {
    (void)unused;
    if (v->state != VIEW_NEW) {
        PyErr_SetString(PyExc_RuntimeError, "a view is entered once: call Cache.view() again");
        return NULL;
    }
    khala_cache_t *c = khpy_cache_handle(v->cache);
    if (!c)
        return NULL;
    khpy_key_t k;
    if (khpy_key_get(v->key, &k) < 0)
        return NULL;
    unsigned long tid = PyThread_get_thread_ident();
    khpy_views_reap(v->cache);
    if (section_acquire(v->cache, tid) < 0) {
        khpy_key_release(&k);
        return NULL;
    }
    khala_view_t kv;
    int rc = khala_cache_view(c, k.ptr, (size_t)k.len, &kv);
    khpy_key_release(&k);
    if (rc != 0) {
        section_release(v->cache, tid);
        v->state = VIEW_DONE;
        if (rc == KHALA_ENOTFOUND)
            Py_RETURN_NONE;
        return khpy_raise(c, rc);
    }
    v->tid = tid;
    v->data = kv.data;
    v->len = (Py_ssize_t)kv.len;
    v->state = VIEW_ACTIVE;
    if (PyList_Append(v->cache->views, (PyObject *)v) < 0) {
        section_release(v->cache, tid);
        v->state = VIEW_DONE;
        return NULL;
    }
    v->mv = PyMemoryView_FromObject((PyObject *)v);
    if (!v->mv) {
        view_finish(v);
        return NULL;
    }
    return Py_NewRef(v->mv);
}

static PyObject *view_exit(khpy_view_t *v, PyObject *const *args, Py_ssize_t nargs) {
    (void)args;
    (void)nargs;
    if (v->state != VIEW_ACTIVE)
        Py_RETURN_FALSE;
    unsigned long tid = PyThread_get_thread_ident();
    if (tid != v->tid) {
        char msg[200];
        PyOS_snprintf(msg, sizeof(msg),
                      "a view opened on thread %lu cannot end on thread %lu: a read section "
                      "belongs to its thread; exit the with block there",
                      v->tid, tid);
        return khpy_raise_msg(KHALA_ESECTION, msg);
    }
    if (release_mv(v) < 0)
        return NULL;
    if (v->exports == 0) {
        Py_INCREF(v); /* view_finish may drop the list's reference */
        view_finish(v);
        Py_DECREF(v);
        Py_RETURN_FALSE;
    }
    v->state = VIEW_LINGER;
    PyErr_Format(PyExc_BufferError,
                 "the view of key %R ended with %zd buffer(s) exported from it still alive (a "
                 "slice of the memoryview, memoryview(mv), a numpy array...): release them "
                 "inside the with block, or copy (bytes(mv)). Its read section stays open, "
                 "holding back memory reclamation in every process, until they are gone",
                 v->key, v->exports);
    return NULL;
}

static void view_dealloc(khpy_view_t *v) {
    Py_XDECREF(v->mv);
    Py_XDECREF(v->key);
    Py_XDECREF(v->cache);
    PyObject_Free(v);
}

static PyObject *view_repr(khpy_view_t *v) {
    static const char *const names[] = {"new", "open", "lingering", "ended"};
    return PyUnicode_FromFormat("<khala_cache view of %R, %s>", v->key, names[v->state]);
}

static PyMethodDef view_methods[] = {
    {"__enter__", (PyCFunction)view_enter, METH_NOARGS,
     "Open the view: a read-only memoryview into L1, or None when the key is absent."},
    {"__exit__", KHPY_METH(view_exit), METH_FASTCALL,
     "Release the memoryview and end the read section."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject view_type = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "khala_cache._khala.View",
    .tp_basicsize = sizeof(khpy_view_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A zero-copy view of one value in L1, for one with block (Cache.view).",
    .tp_dealloc = (destructor)view_dealloc,
    .tp_repr = (reprfunc)view_repr,
    .tp_methods = view_methods,
    .tp_as_buffer = &view_as_buffer,
};

int khpy_view_init_type(PyObject *module) {
    if (PyType_Ready(&view_type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "View", (PyObject *)&view_type);
}
