/*
 * Cache.similar(): semantic look-ups from Python (include/khala/cache.h: khala_cache_similar).
 *
 * The query is an object with the buffer protocol holding float32 in the host's order
 * (array('f'), a numpy float32 array, or bytes of 4 x dim: an embedding's value as it is
 * stored), or a sequence of numbers. It is copied into a float array while the GIL is held;
 * the request then runs without it, as every call through khalad does. Each match comes back
 * as a tuple (key: bytes, similarity: float, entry: Entry), the Entry carrying the value (the
 * item's float32 bytes) and where it came from, as get(..., with_meta=True) gives.
 */
#include "khpy.h"

#include <string.h>

static const char *const sim_names[] = {"vector", "k", "min_similarity"};

/* The query's floats, in a PyMem block the caller frees; NULL with an exception set. */
static float *query_of(PyObject *o, uint32_t *dim) {
    float *q = NULL;
    if (PyObject_CheckBuffer(o)) {
        Py_buffer view;
        if (PyObject_GetBuffer(o, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            return NULL;
        const char *f = view.format ? view.format : "B";
        int is_f32 = strcmp(f, "f") == 0 || strcmp(f, "<f") == 0 || strcmp(f, "=f") == 0;
        int is_bytes = strcmp(f, "B") == 0 || strcmp(f, "b") == 0 || strcmp(f, "c") == 0;
        if (!is_f32 && !is_bytes)
            PyErr_Format(PyExc_TypeError,
                         "similar(): the vector holds '%s' items; give float32 (array('f'), "
                         "numpy float32), bytes of float32, or a sequence of numbers",
                         f);
        else if (view.len % 4 != 0)
            PyErr_Format(PyExc_ValueError,
                         "similar(): the vector is %zd bytes, not a whole number of float32",
                         view.len);
        else if (!(q = PyMem_Malloc(view.len ? (size_t)view.len : 1)))
            PyErr_NoMemory();
        else {
            memcpy(q, view.buf, (size_t)view.len);
            *dim = (uint32_t)(view.len / 4 > UINT32_MAX ? UINT32_MAX : view.len / 4);
        }
        PyBuffer_Release(&view);
        return q;
    }
    PyObject *seq = PySequence_Fast(o, "similar(): the vector is a buffer of float32 or a "
                                       "sequence of numbers");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    q = PyMem_Malloc(n ? (size_t)n * sizeof(float) : 1);
    if (!q) {
        Py_DECREF(seq);
        return (float *)PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double d = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (d == -1.0 && PyErr_Occurred()) {
            PyMem_Free(q);
            Py_DECREF(seq);
            return NULL;
        }
        q[i] = (float)d;
    }
    Py_DECREF(seq);
    *dim = (uint32_t)(n > UINT32_MAX ? UINT32_MAX : n);
    return q;
}

/* similar(vector, *, k=1, min_similarity=None) -> [(key, similarity, Entry)] */
PyObject *khpy_cache_similar(khpy_cache_t *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames) {
    PyObject *a[3];
    if (khpy_parse("similar", args, nargs, kwnames, 1, 1, sim_names, 3, a) < 0)
        return NULL;
    if (!a[0]) {
        PyErr_SetString(PyExc_TypeError, "similar() needs the vector");
        return NULL;
    }
    if (!khpy_cache_handle(self))
        return NULL;
    khala_similar_options_t o;
    khala_similar_options_init(&o);
    if (a[1] && a[1] != Py_None) {
        long k = PyLong_AsLong(a[1]);
        if (k == -1 && PyErr_Occurred())
            return NULL;
        o.k = k < 0 ? 0 : (k > (long)UINT32_MAX ? UINT32_MAX : (uint32_t)k);
    }
    if (a[2] && a[2] != Py_None) {
        double m = PyFloat_AsDouble(a[2]);
        if (m == -1.0 && PyErr_Occurred())
            return NULL;
        o.min_similarity = (float)m;
    }
    uint32_t dim = 0;
    float *q = query_of(a[0], &dim);
    if (!q)
        return NULL;
    khala_cache_t *c = self->c;
    khala_match_t *m = NULL;
    size_t n = 0;
    int rc;
    khpy_cache_blocking(self, 1);
    PyThreadState *ts = PyEval_SaveThread();
    rc = khala_cache_similar(c, q, dim, &o, &m, &n);
    PyEval_RestoreThread(ts);
    PyObject *out = rc == 0 ? PyList_New((Py_ssize_t)n) : khpy_raise(c, rc);
    khpy_cache_blocking(self, 0);
    PyMem_Free(q);
    for (size_t i = 0; out && i < n; i++) {
        PyObject *val = PyBytes_FromStringAndSize(m[i].value, (Py_ssize_t)m[i].len);
        PyObject *entry = val ? khpy_entry_new(val, (int)m[i].meta.level, m[i].meta.version,
                                               m[i].meta.ttl_left_ms, m[i].meta.type)
                              : NULL;
        Py_XDECREF(val);
        PyObject *t = entry ? Py_BuildValue("(y#dN)", (const char *)m[i].key, (Py_ssize_t)m[i].klen,
                                            (double)m[i].similarity, entry)
                            : NULL;
        if (!t)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, (Py_ssize_t)i, t);
    }
    khala_matches_free(m);
    return out;
}
