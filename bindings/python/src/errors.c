/*
 * The exception classes of _khala: KhalaError and one subclass per code of include/khala/error.h
 * (plus Timeout for -ETIMEDOUT).
 *
 * Every exception carries .code (the library's int), .name (khala_err_name: "KHALA_EVERSION",
 * "ETIMEDOUT") and .message (khala_cache_errmsg's text, naming the offending thing); str(e) is
 * the message. A class also has .code and .name as class attributes, so that `except
 * VersionConflict` and `e.code == VersionConflict.code` both read naturally.
 *
 * Some subclasses also derive from the builtin a Python user would catch: InvalidKey,
 * InvalidName and InvalidArgument are ValueErrors, DaemonUnavailable a ConnectionError,
 * PermissionDenied a PermissionError (also raised for -EACCES and -EPERM, see aliases), Timeout
 * a TimeoutError (-ETIMEDOUT), CacheNotFound a FileNotFoundError (-ENOENT: opening a cache no
 * khalad has created).
 *
 * The table below is the one list of (code, class name, builtin base); the classes are made
 * from it at import, so a code added to error.h needs one line here (a test walks error.h's
 * codes through error_for).
 */
#include "khpy.h"

#include <errno.h>

typedef struct err_class {
    int code;
    const char *name;
    PyObject **base; /* the builtin base besides KhalaError, or NULL */
    const char *doc;
    PyObject *cls; /* made at import */
} err_class_t;

static err_class_t classes[] = {
    {KHALA_ENOTFOUND, "NotFound", NULL, "No such key (get returns the default instead).", NULL},
    {KHALA_ETOOBIG, "ValueTooBig", NULL, "The value is larger than khalad's largest value.", NULL},
    {KHALA_EVERSION, "VersionConflict", NULL,
     "Compare-and-set failed: the key is not at the expected version.", NULL},
    {KHALA_EDAEMON, "DaemonUnavailable", &PyExc_ConnectionError, "khalad cannot be reached.", NULL},
    {KHALA_ELAYOUT, "LayoutMismatch", NULL, "The segment has another layout or is being replaced.",
     NULL},
    {KHALA_EKEY, "InvalidKey", &PyExc_ValueError, "The key is empty or longer than KEY_MAX bytes.",
     NULL},
    {KHALA_ECORRUPT, "Corrupt", NULL, "The segment is corrupted.", NULL},
    {KHALA_ENOREADER, "NoReaderSlot", NULL, "Every reader slot of the cache is taken.", NULL},
    {KHALA_EFULL, "CacheFull", NULL, "L1 is full of items nothing may evict.", NULL},
    {KHALA_EBLOCKED, "ReclaimBlocked", NULL, "Reclamation is blocked by a reader.", NULL},
    {KHALA_ESECTION, "SectionMisuse", NULL,
     "Read section misuse: a view used across threads or processes.", NULL},
    {KHALA_ECONFIG, "ConfigError", NULL, "Bad configuration.", NULL},
    {KHALA_ENAME, "InvalidName", &PyExc_ValueError, "Bad cache name.", NULL},
    {KHALA_EEXIST, "AlreadyOwned", NULL, "A live writer already owns the segment.", NULL},
    {KHALA_EPROTO, "ProtocolError", NULL, "khalad sent something that does not decode.", NULL},
    {KHALA_ETIER, "TierUnavailable", NULL, "A slower level (L2 or L3) is unreachable.", NULL},
    {KHALA_EQUEUE, "QueueFull", NULL, "A slower level's write queue is full; retry later.", NULL},
    {KHALA_EDENIED, "PermissionDenied", &PyExc_PermissionError,
     "khalad refused: this process lacks the right the call needs.", NULL},
    {KHALA_ELIMIT, "LimitReached", NULL, "A limit of khalad was reached; retry later.", NULL},
    {KHALA_EINVAL, "InvalidArgument", &PyExc_ValueError,
     "An invalid argument, such as a TTL above the maximum.", NULL},
    {KHALA_EAUTH, "AuthenticationFailed", NULL, "A stored value failed authentication.", NULL},
    {KHALA_EREFUSED, "Refused", NULL, "A slower level refused this one request.", NULL},
    {-ETIMEDOUT, "Timeout", &PyExc_TimeoutError, "khalad did not answer in time.", NULL},
    {-ENOENT, "CacheNotFound", &PyExc_FileNotFoundError,
     "No such cache: no khalad has created its segment under this name.", NULL},
};

/* System codes that share a class with a khala code: the instance keeps its own .code. A worker
 * outside the socket's group opening the cache gets -EACCES from the segment's file modes, and
 * an unsafe socket directory -EPERM; both are the same refusal to a Python caller as khalad's
 * KHALA_EDENIED, and `except PermissionError` must catch them. */
static const struct {
    int code, as;
} aliases[] = {{-EACCES, KHALA_EDENIED}, {-EPERM, KHALA_EDENIED}};

#define NCLASSES (sizeof(classes) / sizeof(classes[0]))

static PyObject *khala_error; /* KhalaError */

/* Set the class attributes code and name. */
static int set_class_attrs(PyObject *cls, int code) {
    PyObject *v = PyLong_FromLong(code);
    if (!v || PyObject_SetAttrString(cls, "code", v) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    v = PyUnicode_FromString(code ? khala_err_name(code) : "");
    if (!v || PyObject_SetAttrString(cls, "name", v) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    return 0;
}

int khpy_errors_init(PyObject *module) {
    khala_error = PyErr_NewExceptionWithDoc(
        "khala_cache._khala.KhalaError",
        "Base of khala-cache's errors: .code (the library's int), .name (\"KHALA_EVERSION\"), "
        ".message (the library's detail).",
        NULL, NULL);
    if (!khala_error || set_class_attrs(khala_error, 0) < 0 ||
        PyModule_AddObjectRef(module, "KhalaError", khala_error) < 0)
        return -1;
    PyObject *none_msg = PyUnicode_FromString("");
    if (!none_msg || PyObject_SetAttrString(khala_error, "message", none_msg) < 0) {
        Py_XDECREF(none_msg);
        return -1;
    }
    Py_DECREF(none_msg);
    for (size_t i = 0; i < NCLASSES; i++) {
        err_class_t *e = &classes[i];
        char qual[96];
        PyOS_snprintf(qual, sizeof(qual), "khala_cache._khala.%s", e->name);
        PyObject *bases =
            e->base ? PyTuple_Pack(2, khala_error, *e->base) : PyTuple_Pack(1, khala_error);
        if (!bases)
            return -1;
        e->cls = PyErr_NewExceptionWithDoc(qual, e->doc, bases, NULL);
        Py_DECREF(bases);
        if (!e->cls || set_class_attrs(e->cls, e->code) < 0 ||
            PyModule_AddObjectRef(module, e->name, e->cls) < 0)
            return -1;
    }
    return 0;
}

/* The class of a code: its own, its alias's, or KhalaError. */
static PyObject *class_of(int code) {
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (aliases[i].code == code)
            code = aliases[i].as;
    for (size_t i = 0; i < NCLASSES; i++)
        if (classes[i].code == code)
            return classes[i].cls;
    return khala_error;
}

/* A new exception instance of code with message. */
static PyObject *make_error(int code, PyObject *message) {
    PyObject *exc = PyObject_CallOneArg(class_of(code), message);
    if (!exc)
        return NULL;
    PyObject *c = PyLong_FromLong(code), *n = PyUnicode_FromString(khala_err_name(code));
    int bad = !c || !n || PyObject_SetAttrString(exc, "code", c) < 0 ||
              PyObject_SetAttrString(exc, "name", n) < 0 ||
              PyObject_SetAttrString(exc, "message", message) < 0;
    Py_XDECREF(c);
    Py_XDECREF(n);
    if (bad) {
        Py_DECREF(exc);
        return NULL;
    }
    return exc;
}

PyObject *khpy_raise_msg(int rc, const char *msg) {
    PyObject *m = PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace");
    if (!m)
        return NULL;
    PyObject *exc = make_error(rc, m);
    Py_DECREF(m);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

PyObject *khpy_raise(const khala_cache_t *c, int rc) {
    const char *msg = khala_cache_errmsg(c);
    return khpy_raise_msg(rc, msg && *msg ? msg : khala_strerror(rc));
}

/* error_for(code, message) -> the exception instance (not raised). */
PyObject *khpy_error_for(PyObject *self, PyObject *args) {
    (void)self;
    int code;
    PyObject *message = NULL;
    if (!PyArg_ParseTuple(args, "i|U:error_for", &code, &message))
        return NULL;
    if (message)
        return make_error(code, message);
    PyObject *m = PyUnicode_FromString(khala_strerror(code));
    if (!m)
        return NULL;
    PyObject *exc = make_error(code, m);
    Py_DECREF(m);
    return exc;
}
