/* The C interface of edgeops_protocol._faststats for other extensions (the agent's
 * one-row path), published as the capsule ``edgeops_protocol._faststats._C_API``. */
#ifndef EDGEOPS_FASTSTATS_H
#define EDGEOPS_FASTSTATS_H

#include <Python.h>

#define EDGEOPS_FASTSTATS_API_VERSION 1
#define EDGEOPS_FASTSTATS_CAPSULE "edgeops_protocol._faststats._C_API"

typedef struct {
    int version;
    /* the accumulator type (the base of edgeops_protocol.stats.NativeWindowStats) */
    PyTypeObject *window_type;
    /* Count one prediction of a one-row call in ``window`` (an instance of window_type):
     * ``x`` is the call's (1, ...) float32 or float64 ndarray of ``width`` values (any
     * strides),
     * ``out`` its scores (an ndarray) or None when the model raised, ``latency_ms`` the
     * latency. Returns 1 when counted; 0, with nothing counted, when the row is not one
     * this takes (other types or shapes) or when ``limit`` > 0 and the window would
     * reach ``limit`` predictions with it (the caller closes the window); never fails. */
    int (*add_row)(PyObject *window, PyObject *x, PyObject *out, double latency_ms,
                   long long limit, Py_ssize_t width);
} EdgeopsStatsCAPI;

#endif /* EDGEOPS_FASTSTATS_H */
