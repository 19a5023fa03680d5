/* The head of a numpy array and of its dtype, read without numpy's headers.
 *
 * These are the first fields of numpy's PyArrayObject_fields and PyArray_Descr
 * (numpy/ndarraytypes.h). They are part of numpy's ABI: every compiled extension
 * reads them through PyArray_DATA, PyArray_NDIM, ... as plain field accesses, and
 * they are the same in numpy 1.x and 2.x (the dtype up to type_num). Mirrored here
 * so that building the extensions needs no numpy at build time; np_mirror_init()
 * checks the mirror against real arrays when the module is imported and refuses
 * to load (ImportError: the pure-Python code is used) if anything differs.
 *
 * Only exact numpy.ndarray instances are read this way (not subclasses, not other
 * buffer exporters): for anything else the callers take their Python path.
 */
#ifndef EDGEOPS_NPMIRROR_H
#define EDGEOPS_NPMIRROR_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    char *data;
    int nd;
    Py_intptr_t *dimensions;
    Py_intptr_t *strides;
    PyObject *base;
    PyObject *descr;
    int flags;
} np_array_head;

typedef struct {
    PyObject_HEAD
    PyTypeObject *typeobj;
    char kind;
    char type;
    char byteorder;
    char former_flags;
    int type_num;
} np_descr_head;

enum { NP_BOOL = 0, NP_FLOAT32 = 11, NP_FLOAT64 = 12 };
enum { NP_C_CONTIGUOUS = 0x0001, NP_ALIGNED = 0x0100, NP_WRITEABLE = 0x0400 };
enum { NPK_NONE = 0, NPK_F32 = 1, NPK_F64 = 2, NPK_BOOL = 3 };

static PyTypeObject *np_ndarray_type = NULL;

#define NP_HEAD(o) ((np_array_head *)(o))

/* NPK_F32, NPK_F64 or NPK_BOOL for an exact ndarray of that native type, whatever its
 * layout; NPK_NONE for anything else. */
static inline int
np_type(PyObject *o)
{
    if (Py_TYPE(o) != np_ndarray_type) {
        return NPK_NONE;
    }
    const np_descr_head *d = (const np_descr_head *)NP_HEAD(o)->descr;
    switch (d->type_num) {
    case NP_FLOAT32:
        return d->byteorder == '=' ? NPK_F32 : NPK_NONE;
    case NP_FLOAT64:
        return d->byteorder == '=' ? NPK_F64 : NPK_NONE;
    case NP_BOOL:
        return NPK_BOOL;
    default:
        return NPK_NONE;
    }
}

/* np_type() of an array whose data are C-contiguous and aligned; NPK_NONE otherwise */
static inline int
np_kind(PyObject *o)
{
    int kind = np_type(o);
    if (kind != NPK_NONE && (NP_HEAD(o)->flags & (NP_C_CONTIGUOUS | NP_ALIGNED)) !=
                                (NP_C_CONTIGUOUS | NP_ALIGNED)) {
        return NPK_NONE;
    }
    return kind;
}

static inline Py_ssize_t
np_size(PyObject *o)
{
    const np_array_head *a = NP_HEAD(o);
    Py_ssize_t n = 1;
    for (int i = 0; i < a->nd; i++) {
        n *= (Py_ssize_t)a->dimensions[i];
    }
    return n;
}

/* The n values of a float32/float64 array (np_type; n = its size, at least one
 * dimension), whatever its strides and alignment, in C order into dst (n values of the
 * array's type): a loop along the last dimension for each index of the others. */
static inline void
np_gather(PyObject *o, void *dst, Py_ssize_t n)
{
    const np_array_head *a = NP_HEAD(o);
    const int f32 = np_type(o) == NPK_F32, nd = a->nd;
    if (nd < 1 || nd > 64 || n <= 0) {
        return;
    }
    /* the common shapes, (1, ..., 1, A, B) and (1, ..., 1, B): two plain loops */
    int first = 0;
    while (first < nd - 2 && a->dimensions[first] == 1) {
        first++;
    }
    if (nd - first <= 2) {
        const Py_intptr_t rows = nd - first == 2 ? a->dimensions[first] : 1;
        const Py_intptr_t cols = a->dimensions[nd - 1], s1 = a->strides[nd - 1];
        const Py_intptr_t s0 = nd - first == 2 ? a->strides[first] : 0;
        Py_ssize_t i = 0;
        for (Py_intptr_t r = 0; r < rows; r++) {
            const char *src = a->data + r * s0;
            if (f32) {
                for (Py_intptr_t c = 0; c < cols; c++, i++, src += s1) {
                    float v;
                    memcpy(&v, src, sizeof v);
                    ((float *)dst)[i] = v;
                }
            }
            else {
                for (Py_intptr_t c = 0; c < cols; c++, i++, src += s1) {
                    double v;
                    memcpy(&v, src, sizeof v);
                    ((double *)dst)[i] = v;
                }
            }
        }
        return;
    }
    const Py_intptr_t inner = a->dimensions[nd - 1], step = a->strides[nd - 1];
    Py_intptr_t index[64] = {0};
    Py_ssize_t i = 0;
    while (i < n) {
        const char *src = a->data;
        for (int d = 0; d < nd - 1; d++) {
            src += index[d] * a->strides[d];
        }
        for (Py_intptr_t k = 0; k < inner; k++, i++, src += step) {
            if (f32) {
                float v;
                memcpy(&v, src, sizeof v);
                ((float *)dst)[i] = v;
            }
            else {
                double v;
                memcpy(&v, src, sizeof v);
                ((double *)dst)[i] = v;
            }
        }
        for (int d = nd - 2; d >= 0; d--) { /* the next index of the other dimensions */
            if (++index[d] < a->dimensions[d]) {
                break;
            }
            index[d] = 0;
        }
    }
}

static int
np_mirror_check(PyObject *np, const char *shape_expr, int want_kind, int want_nd,
                const Py_intptr_t *want_dims)
{
    PyObject *globals = PyDict_New();
    if (globals == NULL) {
        return -1;
    }
    int ok = 0;
    PyObject *arr = NULL, *iface = NULL;
    if (PyDict_SetItemString(globals, "np", np) < 0) {
        goto done;
    }
    arr = PyRun_String(shape_expr, Py_eval_input, globals, globals);
    if (arr == NULL) {
        goto done;
    }
    iface = PyObject_GetAttrString(arr, "__array_interface__");
    if (iface == NULL) {
        goto done;
    }
    PyObject *data = PyDict_GetItemString(iface, "data");
    if (data == NULL || !PyTuple_Check(data) || PyTuple_GET_SIZE(data) < 1) {
        goto done;
    }
    void *ptr = PyLong_AsVoidPtr(PyTuple_GET_ITEM(data, 0));
    if (ptr == NULL && PyErr_Occurred()) {
        goto done;
    }
    const np_array_head *a = NP_HEAD(arr);
    ok = Py_TYPE(arr) == np_ndarray_type && (void *)a->data == ptr && a->nd == want_nd &&
         np_kind(arr) == want_kind;
    for (int i = 0; ok && i < want_nd; i++) {
        ok = a->dimensions[i] == want_dims[i];
    }
done:
    Py_XDECREF(iface);
    Py_XDECREF(arr);
    Py_DECREF(globals);
    if (PyErr_Occurred()) {
        return -1;
    }
    return ok;
}

/* Import numpy and check the mirror on real arrays: 0, or -1 with ImportError set. */
static int
np_mirror_init(void)
{
    PyObject *np = PyImport_ImportModule("numpy");
    if (np == NULL) {
        return -1;
    }
    PyObject *nd = PyObject_GetAttrString(np, "ndarray");
    if (nd == NULL || !PyType_Check(nd)) {
        Py_XDECREF(nd);
        Py_DECREF(np);
        return -1;
    }
    np_ndarray_type = (PyTypeObject *)nd; /* kept for the life of the process */
    const Py_intptr_t d23[2] = {2, 3}, d5[1] = {5}, d32[2] = {3, 2}, d4[1] = {4};
    int ok = 1, r;
    if ((r = np_mirror_check(np, "np.arange(6, dtype=np.float32).reshape(2, 3)", NPK_F32, 2,
                             d23)) != 1) {
        ok = r;
    }
    if (ok == 1 && (r = np_mirror_check(np, "np.arange(5, dtype=np.float64)[::-1].copy()",
                                        NPK_F64, 1, d5)) != 1) {
        ok = r;
    }
    if (ok == 1 && (r = np_mirror_check(np, "np.zeros(4, dtype=bool)", NPK_BOOL, 1, d4)) != 1) {
        ok = r;
    }
    /* not C-contiguous, and another byte order: neither is read directly */
    if (ok == 1 &&
        (r = np_mirror_check(np, "np.zeros((3, 4), dtype=np.float32)[:, ::2]", NPK_NONE, 2,
                             d32)) != 1) {
        ok = r;
    }
    if (ok == 1 && (r = np_mirror_check(np, "np.zeros(5, dtype=np.float64).newbyteorder()"
                                            " if hasattr(np.ndarray, 'newbyteorder')"
                                            " else np.zeros(5, dtype=np.float64).view("
                                            "np.dtype(np.float64).newbyteorder())",
                                        NPK_NONE, 1, d5)) != 1) {
        ok = r;
    }
    Py_DECREF(np);
    if (ok == 1) {
        return 0;
    }
    if (ok < 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        PyErr_Format(PyExc_ImportError, "cannot check numpy's array layout: %S",
                     value ? value : Py_None);
        Py_XDECREF(value);
        return -1;
    }
    PyErr_SetString(PyExc_ImportError, "numpy's array layout is not the one this module reads");
    return -1;
}

#endif /* EDGEOPS_NPMIRROR_H */
