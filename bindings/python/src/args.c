/*
 * Python objects to the library's arguments: keys, TTLs, data types and write modes.
 *
 * Keys are taken without a copy: a bytes object's own storage, a str's cached UTF-8 (CPython
 * keeps it in the object: free for ASCII strings), or a buffer export for bytearray and
 * memoryview (held until khpy_key_release, so that the key cannot change under a call that
 * released the GIL). Lengths are checked here, with the library's message, so that every
 * method refuses a bad key the same way before doing anything.
 */
#include "khpy.h"

#include <math.h>

static PyObject *key_error(Py_ssize_t len) {
    char msg[64];
    if (len == 0)
        PyOS_snprintf(msg, sizeof(msg), "key is empty");
    else
        PyOS_snprintf(msg, sizeof(msg), "key is %zd bytes, max %d", len, KHALA_KEY_MAX);
    return khpy_raise_msg(KHALA_EKEY, msg);
}

int khpy_key_get(PyObject *o, khpy_key_t *k) {
    k->has_buf = 0;
    if (PyBytes_CheckExact(o)) {
        k->ptr = PyBytes_AS_STRING(o);
        k->len = PyBytes_GET_SIZE(o);
    } else if (PyUnicode_Check(o)) {
        k->ptr = PyUnicode_AsUTF8AndSize(o, &k->len);
        if (!k->ptr)
            return -1;
    } else if (PyObject_CheckBuffer(o)) {
        if (PyObject_GetBuffer(o, &k->buf, PyBUF_SIMPLE) < 0)
            return -1;
        k->has_buf = 1;
        k->ptr = k->buf.buf;
        k->len = k->buf.len;
    } else {
        PyErr_Format(PyExc_TypeError, "a key is bytes, bytearray, memoryview or str, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    if (k->len == 0 || k->len > KHALA_KEY_MAX) {
        key_error(k->len);
        khpy_key_release(k);
        return -1;
    }
    return 0;
}

void khpy_key_release(khpy_key_t *k) {
    if (k->has_buf) {
        PyBuffer_Release(&k->buf);
        k->has_buf = 0;
    }
}

int khpy_ttl_ms(PyObject *o, uint64_t *ttl_ms) {
    char msg[128];
    if (o == NULL || o == Py_None) {
        *ttl_ms = 0;
        return 0;
    }
    if (PyBool_Check(o) || !(PyLong_Check(o) || PyFloat_Check(o))) {
        PyErr_Format(PyExc_TypeError, "ttl is seconds (int or float) or None, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    double s = PyFloat_AsDouble(o);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    double ms = ceil(s * 1000.0);
    if (!(s > 0) || isnan(s)) {
        PyOS_snprintf(msg, sizeof(msg), "ttl is %g seconds; a ttl is > 0 (None: the type's)", s);
        khpy_raise_msg(KHALA_EINVAL, msg);
        return -1;
    }
    if (ms > (double)KHALA_TTL_MAX_MS) {
        PyOS_snprintf(msg, sizeof(msg), "ttl is %g seconds, max %llu (10 years)", s,
                      KHALA_TTL_MAX_MS / 1000);
        khpy_raise_msg(KHALA_EINVAL, msg);
        return -1;
    }
    *ttl_ms = (uint64_t)ms;
    return 0;
}

static const char *const type_names[] = {
#define TYPE_NAME_(NAME, id, name) [id] = name,
    KHALA_TYPE_LIST(TYPE_NAME_)
#undef TYPE_NAME_
};

/* The type id of a name; -1 when it is not one. */
static int type_of_name(const char *s, Py_ssize_t n) {
    for (int i = 0; i < KHALA_TYPE_COUNT; i++)
        if ((size_t)n == strlen(type_names[i]) && memcmp(s, type_names[i], (size_t)n) == 0)
            return i;
    return -1;
}

int khpy_type_id(PyObject *o, khala_type_t *type) {
    char msg[160];
    if (o == NULL || o == Py_None) {
        *type = KHALA_TYPE_MEMORY_ENTITY;
        return 0;
    }
    PyObject *v = NULL;
    if (!PyUnicode_Check(o) && !PyLong_Check(o)) {
        /* An Enum member (CacheableItem): its value. */
        v = PyObject_GetAttrString(o, "value");
        if (!v) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "type is a CacheableItem, its name (str) or its id (int), not %.100s",
                         Py_TYPE(o)->tp_name);
            return -1;
        }
        o = v;
    }
    int id = -1;
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s) {
            Py_XDECREF(v);
            return -1;
        }
        if ((id = type_of_name(s, n)) < 0)
            PyOS_snprintf(msg, sizeof(msg), "'%.64s' is not a data type (TYPES lists them)", s);
    } else if (PyLong_Check(o) && !PyBool_Check(o)) {
        long l = PyLong_AsLong(o);
        if (l == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            l = -1;
        }
        id = l >= 0 && l < KHALA_TYPE_COUNT ? (int)l : -1;
        if (id < 0)
            PyOS_snprintf(msg, sizeof(msg), "type %ld is not a data type (0..%d)", l,
                          KHALA_TYPE_COUNT - 1);
    } else {
        PyOS_snprintf(msg, sizeof(msg), "type is a CacheableItem, a type name or an id");
    }
    Py_XDECREF(v);
    if (id < 0) {
        khpy_raise_msg(KHALA_EINVAL, msg);
        return -1;
    }
    *type = (khala_type_t)id;
    return 0;
}

int khpy_mode(PyObject *o, khala_mode_t *mode) {
    if (o == NULL || o == Py_None) {
        *mode = KHALA_MODE_DEFAULT;
        return 0;
    }
    if (PyUnicode_Check(o)) {
        if (PyUnicode_CompareWithASCIIString(o, "through") == 0) {
            *mode = KHALA_MODE_THROUGH;
            return 0;
        }
        if (PyUnicode_CompareWithASCIIString(o, "behind") == 0) {
            *mode = KHALA_MODE_BEHIND;
            return 0;
        }
    }
    PyObject *r = PyObject_Repr(o);
    char msg[160];
    PyOS_snprintf(msg, sizeof(msg), "mode is None, \"through\" or \"behind\", not %.80s",
                  r ? PyUnicode_AsUTF8(r) : "?");
    Py_XDECREF(r);
    PyErr_Clear();
    khpy_raise_msg(KHALA_EINVAL, msg);
    return -1;
}
