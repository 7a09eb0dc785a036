/*
 * khala_cache._khala: the module. Makes the types (cache_type.c, view.c, async_core.c,
 * entry.c) and the exceptions (errors.c), sets the constants, and handles fork.
 *
 * Fork: the library makes a child's calls use reader slots and connections of its own. What
 * it cannot know about are this module's views: a child forked inside a with block holds a
 * view whose read section is the parent's. os.register_at_fork(after_in_child=...) runs
 * after_fork_child in the child, which gives the forking thread's views a section of the
 * child's own and forgets those of threads that do not exist in the child (view.c). The
 * Caches that hold sections are the only ones it needs to see; they are tracked here.
 */
#include "khpy.h"

/* Caches with at least one open section (borrowed: a Cache untracks itself before it goes). */
static khpy_cache_t **tracked;
static Py_ssize_t ntracked, captracked;

void khpy_track_sections(khpy_cache_t *cache, int on) {
    for (Py_ssize_t i = 0; i < ntracked; i++) {
        if (tracked[i] == cache) {
            if (!on)
                tracked[i] = tracked[--ntracked];
            return;
        }
    }
    if (!on)
        return;
    if (ntracked == captracked) {
        Py_ssize_t cap = captracked ? 2 * captracked : 8;
        khpy_cache_t **t = PyMem_Realloc(tracked, (size_t)cap * sizeof(*t));
        if (!t)
            return; /* only a child of a fork misses it: its views then use no section */
        tracked = t;
        captracked = cap;
    }
    tracked[ntracked++] = cache;
}

static PyObject *after_fork_child(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    /* khpy_sections_after_fork may untrack the cache it handles: walk from the end. */
    for (Py_ssize_t i = ntracked - 1; i >= 0; i--)
        if (i < ntracked)
            khpy_sections_after_fork(tracked[i]);
    Py_RETURN_NONE;
}

static PyObject *ready(PyObject *self, PyObject *value) {
    (void)self;
    return khpy_ready_new(value);
}

static PyMethodDef module_methods[] = {
    {"error_for", khpy_error_for, METH_VARARGS,
     "error_for(code, message=None) -> KhalaError: the exception (its subclass for the code) "
     "with .code, .name and .message, not raised."},
    {"ready", ready, METH_O, "ready(value) -> an already-finished awaitable of value."},
    {"_after_fork_child", after_fork_child, METH_NOARGS,
     "Registered with os.register_at_fork: the child's views get sections of its own."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "khala_cache._khala",
    .m_doc = "The C extension of khala_cache: Cache (L1 in shared memory, khalad for the rest), "
             "AsyncCore, Entry, the exceptions and constants. docs/python-extension.md.",
    .m_size = -1,
    .m_methods = module_methods,
};

static int add_constants(PyObject *m) {
    static const char *const names[] = {
#define TYPE_NAME_(NAME, id, name) [id] = name,
        KHALA_TYPE_LIST(TYPE_NAME_)
#undef TYPE_NAME_
    };
    PyObject *types = PyTuple_New(KHALA_TYPE_COUNT);
    if (!types)
        return -1;
    for (int i = 0; i < KHALA_TYPE_COUNT; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) {
            Py_DECREF(types);
            return -1;
        }
        PyTuple_SET_ITEM(types, i, s);
    }
    int rc = PyModule_AddObjectRef(m, "TYPES", types);
    Py_DECREF(types);
    if (rc < 0)
        return -1;
#define LEVEL_CONST_(NAME, name, stores)                                                           \
    if (PyModule_AddIntConstant(m, "LEVEL_" #NAME, KHALA_LEVEL_##NAME) < 0)                        \
        return -1;
    KHALA_LEVEL_LIST(LEVEL_CONST_)
#undef LEVEL_CONST_
    if (PyModule_AddIntConstant(m, "KEY_MAX", KHALA_KEY_MAX) < 0 ||
        PyModule_AddIntConstant(m, "TTL_MAX_SECONDS", (long)(KHALA_TTL_MAX_MS / 1000)) < 0 ||
        PyModule_AddStringConstant(m, "__version__", KHALA_VERSION_STRING) < 0)
        return -1;
    return 0;
}

/* Register after_fork_child with os.register_at_fork. */
static int register_at_fork(PyObject *m) {
    PyObject *os = PyImport_ImportModule("os");
    if (!os)
        return -1;
    PyObject *fn = PyObject_GetAttrString(m, "_after_fork_child");
    PyObject *reg = PyObject_GetAttrString(os, "register_at_fork");
    PyObject *kw = fn ? Py_BuildValue("{s:O}", "after_in_child", fn) : NULL;
    PyObject *noargs = PyTuple_New(0);
    PyObject *r = reg && kw && noargs ? PyObject_Call(reg, noargs, kw) : NULL;
    Py_XDECREF(r);
    Py_XDECREF(noargs);
    Py_XDECREF(kw);
    Py_XDECREF(reg);
    Py_XDECREF(fn);
    Py_DECREF(os);
    return r ? 0 : -1;
}

PyMODINIT_FUNC PyInit__khala(void);

PyMODINIT_FUNC PyInit__khala(void) {
    PyObject *m = PyModule_Create(&module_def);
    if (!m)
        return NULL;
    if (khpy_errors_init(m) < 0 || khpy_entry_init(m) < 0 || khpy_cache_init_type(m) < 0 ||
        khpy_view_init_type(m) < 0 || khpy_async_init(m) < 0 || add_constants(m) < 0 ||
        register_at_fork(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
