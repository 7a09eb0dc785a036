/*
 * Entry: what a get with with_meta=True returns, a structseq (a named tuple made in C):
 * (value, level, version, ttl_left_ms, type). level is a LEVEL_* int (khala_level_t), version
 * the item's version (0 when a loaded value was not cached), ttl_left_ms the milliseconds left
 * (-1 = never expires, or unknown), type the data type's id (an index into TYPES, the wire id
 * of khala_type_t; CacheableItem.from_id turns it into the enum).
 */
#include "khpy.h"

static PyTypeObject *entry_type;

static PyStructSequence_Field entry_fields[] = {
    {"value", "the value (bytes)"},
    {"level", "the level that answered: LEVEL_L1, LEVEL_L2, LEVEL_L3, LEVEL_LOADER, LEVEL_STALE"},
    {"version", "the item's version (0 when unknown)"},
    {"ttl_left_ms", "milliseconds until expiry; -1 = never expires, or unknown"},
    {"type", "the data type's id: TYPES[type] is its name"},
    {NULL, NULL}};

static PyStructSequence_Desc entry_desc = {
    "khala_cache._khala.Entry", "A value with where it came from (get(..., with_meta=True)).",
    entry_fields, 5};

int khpy_entry_init(PyObject *module) {
    entry_type = PyStructSequence_NewType(&entry_desc);
    if (!entry_type)
        return -1;
    return PyModule_AddObjectRef(module, "Entry", (PyObject *)entry_type);
}

PyObject *khpy_entry_new(PyObject *value, int level, uint64_t version, int64_t ttl_left_ms,
                         uint32_t type) {
    PyObject *e = PyStructSequence_New(entry_type);
    if (!e)
        return NULL;
    PyObject *lv = PyLong_FromLong(level), *ver = PyLong_FromUnsignedLongLong(version),
             *ttl = PyLong_FromLongLong(ttl_left_ms), *ty = PyLong_FromUnsignedLong(type);
    if (!lv || !ver || !ttl || !ty) {
        Py_XDECREF(lv);
        Py_XDECREF(ver);
        Py_XDECREF(ttl);
        Py_XDECREF(ty);
        Py_DECREF(e);
        return NULL;
    }
    Py_INCREF(value);
    PyStructSequence_SET_ITEM(e, 0, value);
    PyStructSequence_SET_ITEM(e, 1, lv);
    PyStructSequence_SET_ITEM(e, 2, ver);
    PyStructSequence_SET_ITEM(e, 3, ttl);
    PyStructSequence_SET_ITEM(e, 4, ty);
    return e;
}
