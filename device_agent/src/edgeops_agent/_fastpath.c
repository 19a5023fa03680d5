/* edgeops_agent._fastpath: the agent's one-row prediction path in C.
 *
 * ``OneRow`` is what Predictor.predict_features runs for the common call, one float32
 * row of an active model that is not corrupted on purpose, with no simulated extra
 * latency: the clock, the model's lock around runner.predict(x), the scores as a list,
 * their finiteness and argmax, the label, the listeners and batch listeners, the result.
 * It is the Python code of Predictor._finish for one row, statement for statement. The
 * model's runner.predict, lock and labels are looked up when the model is set (``model``,
 * at Predictor.load); a model with ``corrupt`` set always takes the Python path. Any
 * other input goes to the Python method (``slow``), and any output that is not a
 * (1, m >= 1) float32 array, or an exception of the model, goes to Predictor._finish
 * (``finish``) with what happened so far.
 *
 * ``RowSink`` is the Telemetry's batch listener: while the telemetry has it armed
 * (an open window of the model, statistics on), a one-row call of that model is counted
 * in the window in C (edgeops_protocol._faststats' add_row), unless it would fill the
 * window; with statistics off, the model's calls need nothing here. With sampling on it
 * is armed with the number of calls before the sampler's next candidate (``gap``) and
 * hands that candidate to the fallback. Everything else goes to Telemetry.on_predictions. The telemetry
 * disarms it whenever its lock is held, so the two never count into one window at once.
 *
 * Both run with the GIL held; their state is only changed from Python (with the GIL), so
 * a call sees one consistent state.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <math.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "_faststats.h"
#include "_npmirror.h"

static EdgeopsStatsCAPI *stats_api = NULL;
static PyObject *perf_counter = NULL; /* time.perf_counter */
static PyObject *s_acquire, *s_release, *s_predict, *s_runner, *s_lock, *s_corrupt, *s_labels,
    *s_label, *s_scores, *s_sample_id;

/* --- RowSink --------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fallback;
    PyObject *model; /* NULL: disarmed */
    PyObject *window;
    Py_ssize_t width;
    long long limit;
    long long gap;    /* sampling: calls to let pass before the next candidate; -1: none */
    long long passed; /* calls handled here since armed (the sampler is told at disarm) */
} RowSink;

static PyObject *
RowSink_vectorcall(RowSink *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (self->model != NULL && PyVectorcall_NARGS(nargsf) == 5 && kwnames == NULL &&
        args[0] == self->model && self->gap != 0 && /* 0: this call is a sampling candidate */
        (self->window == NULL || /* statistics off: nothing to count */
         (PyFloat_CheckExact(args[4]) &&
          stats_api->add_row(self->window, args[2], args[3], PyFloat_AS_DOUBLE(args[4]),
                             self->limit, self->width) == 1))) {
        self->passed++;
        if (self->gap > 0) {
            self->gap--;
        }
        Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

static PyObject *
RowSink_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fallback", NULL};
    PyObject *fallback;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &fallback)) {
        return NULL;
    }
    RowSink *self = (RowSink *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)RowSink_vectorcall;
    self->gap = -1;
    Py_INCREF(fallback);
    self->fallback = fallback;
    return (PyObject *)self;
}

static int
RowSink_traverse(RowSink *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fallback);
    Py_VISIT(self->model);
    Py_VISIT(self->window);
    return 0;
}

static int
RowSink_clear(RowSink *self)
{
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->model);
    Py_CLEAR(self->window);
    return 0;
}

static void
RowSink_dealloc(RowSink *self)
{
    PyObject_GC_UnTrack(self);
    RowSink_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
RowSink_arm(RowSink *self, PyObject *args)
{
    PyObject *model, *window;
    Py_ssize_t width;
    long long limit, gap = -1;
    if (!PyArg_ParseTuple(args, "OOnL|L", &model, &window, &width, &limit, &gap)) {
        return NULL;
    }
    if (gap < -1) {
        PyErr_SetString(PyExc_ValueError, "gap must be -1 (no sampling) or a count >= 0");
        return NULL;
    }
    if (window == Py_None) {
        window = NULL; /* the model's calls need nothing: statistics are off */
    }
    else if (!PyObject_TypeCheck(window, stats_api->window_type)) {
        PyErr_SetString(PyExc_TypeError, "arm() takes a NativeWindowStats or None");
        return NULL;
    }
    Py_INCREF(model);
    Py_XINCREF(window);
    Py_XSETREF(self->model, model);
    Py_XSETREF(self->window, window);
    self->width = width;
    self->limit = limit;
    self->gap = gap;
    self->passed = 0;
    Py_RETURN_NONE;
}

static PyObject *
RowSink_disarm(RowSink *self, PyObject *Py_UNUSED(ignored))
{
    long long passed = self->model != NULL ? self->passed : 0;
    Py_CLEAR(self->model);
    Py_CLEAR(self->window);
    self->gap = -1;
    self->passed = 0;
    return PyLong_FromLongLong(passed);
}

static PyObject *
RowSink_armed(RowSink *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->model != NULL);
}

static PyMethodDef RowSink_methods[] = {
    {"arm", (PyCFunction)RowSink_arm, METH_VARARGS,
     "arm(model, window, width, limit, gap=-1): count one-row calls of model in window "
     "(None: return None for them); with gap >= 0, only that many calls, the next one (a "
     "sampling candidate) goes to the fallback"},
    {"disarm", (PyCFunction)RowSink_disarm, METH_NOARGS,
     "send every call to the fallback; returns how many calls were handled here since arm"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RowSink_getset[] = {
    {"armed", (getter)RowSink_armed, NULL, "whether one-row calls are counted here", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RowSinkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeops_agent._fastpath.RowSink",
    .tp_basicsize = sizeof(RowSink),
    .tp_dealloc = (destructor)RowSink_dealloc,
    .tp_vectorcall_offset = offsetof(RowSink, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "RowSink(fallback): a batch listener that counts armed one-row calls in C",
    .tp_traverse = (traverseproc)RowSink_traverse,
    .tp_clear = (inquiry)RowSink_clear,
    .tp_methods = RowSink_methods,
    .tp_getset = RowSink_getset,
    .tp_new = RowSink_new,
};

/* --- OneRow ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *slow;            /* Predictor._predict_features(matrix) */
    PyObject *finish;          /* Predictor._finish(model, x, rows, out, error, start) */
    PyObject *clock;           /* time.perf_counter, or another clock */
    int monotonic;             /* clock is time.perf_counter: read CLOCK_MONOTONIC here */
    PyObject *model;           /* the active LoadedModel, or None */
    PyObject *loaded;          /* (predict, acquire, release, labels) of it, or NULL */
    PyObject *listeners;       /* tuple */
    PyObject *batch_listeners; /* tuple */
} OneRow;

/* the exception being raised, if it is an Exception (a caught one): 1 and it is cleared;
 * 0 for a BaseException that must go on (still set) */
static int
caught(void)
{
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

static PyObject *
call_finish(OneRow *self, PyObject *model, PyObject *x, PyObject *out, PyObject *error,
            PyObject *start)
{
    PyObject *args[6] = {model, x, Py_None, out, error, start};
    return PyObject_Vectorcall(self->finish, args, 6, NULL);
}

/* The clock: time.perf_counter is CLOCK_MONOTONIC on Linux, read here without making
 * float objects; any other clock (tests) is called. */
static PyObject *
clock_now(OneRow *self, int64_t *ns)
{
#if defined(__linux__) && defined(CLOCK_MONOTONIC)
    if (self->monotonic) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        *ns = (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
        return Py_None; /* borrowed: no object */
    }
#endif
    *ns = -1;
    return PyObject_CallNoArgs(self->clock);
}

/* a clock reading as the float time.perf_counter() gives (new reference) */
static PyObject *
clock_object(PyObject *t, int64_t ns)
{
    if (t != Py_None) {
        Py_INCREF(t);
        return t;
    }
    return PyFloat_FromDouble((double)ns / 1e9);
}

/* (t1 - t0) * 1000.0 / 1, as Python computes it */
static PyObject *
latency_of(PyObject *t0, PyObject *t1)
{
    if (PyFloat_CheckExact(t0) && PyFloat_CheckExact(t1)) {
        return PyFloat_FromDouble((PyFloat_AS_DOUBLE(t1) - PyFloat_AS_DOUBLE(t0)) * 1000.0 / 1.0);
    }
    PyObject *d = PyNumber_Subtract(t1, t0), *ms = NULL, *out = NULL, *k = NULL, *one = NULL;
    if (d != NULL && (k = PyFloat_FromDouble(1000.0)) != NULL &&
        (ms = PyNumber_Multiply(d, k)) != NULL && (one = PyLong_FromLong(1)) != NULL) {
        out = PyNumber_TrueDivide(ms, one);
    }
    Py_XDECREF(d);
    Py_XDECREF(k);
    Py_XDECREF(ms);
    Py_XDECREF(one);
    return out;
}

static PyObject *
one_row(OneRow *self, PyObject *model, PyObject *loaded, PyObject *x)
{
    PyObject *t0 = NULL, *t1 = NULL, *out = NULL, *r, *start;
    int64_t ns0 = -1, ns1 = -1;
    PyObject *scores = NULL, *lat = NULL, *x0 = NULL, *out0 = NULL, *listeners = NULL;
    PyObject *sampled = NULL, *label = NULL, *res = NULL, *results = NULL;
    PyObject *result = NULL;
    PyObject *predict = PyTuple_GET_ITEM(loaded, 0), *acquire = PyTuple_GET_ITEM(loaded, 1);
    PyObject *release = PyTuple_GET_ITEM(loaded, 2), *labels = PyTuple_GET_ITEM(loaded, 3);

    if ((t0 = clock_now(self, &ns0)) == NULL) {
        goto done;
    }
    if (t0 == Py_None) { /* read here: ns0 */
        t0 = NULL;
    }
    if ((r = PyObject_CallNoArgs(acquire)) == NULL) {
        goto done;
    }
    Py_DECREF(r);
    out = PyObject_CallOneArg(predict, x);
    PyObject *et = NULL, *ev = NULL, *etb = NULL;
    if (out == NULL) {
        PyErr_Fetch(&et, &ev, &etb);
    }
    if ((r = PyObject_CallNoArgs(release)) == NULL) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        goto done;
    }
    Py_DECREF(r);
    if (out == NULL) { /* the model raised: Predictor._finish reports it */
        PyErr_Restore(et, ev, etb);
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            goto done;
        }
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        if (etb != NULL && ev != NULL) {
            PyException_SetTraceback(ev, etb);
        }
        Py_XDECREF(et);
        Py_XDECREF(etb);
        if ((start = clock_object(t0 ? t0 : Py_None, ns0)) != NULL) {
            result = call_finish(self, model, x, Py_None, ev ? ev : Py_None, start);
            Py_DECREF(start);
        }
        Py_XDECREF(ev);
        goto done;
    }
    const np_array_head *o = NP_HEAD(out);
    if (np_kind(out) != NPK_F32 || o->nd != 2 || o->dimensions[0] != 1 || o->dimensions[1] < 1) {
        if ((start = clock_object(t0 ? t0 : Py_None, ns0)) != NULL) {
            result = call_finish(self, model, x, out, Py_None, start);
            Py_DECREF(start);
        }
        goto done;
    }
    if (t0 == NULL) {
        if ((t1 = clock_now(self, &ns1)) == NULL ||
            (lat = PyFloat_FromDouble((double)(ns1 - ns0) / 1e6)) == NULL) {
            goto done;
        }
        t1 = NULL;
    }
    else if ((t1 = PyObject_CallNoArgs(self->clock)) == NULL || (lat = latency_of(t0, t1)) == NULL) {
        goto done;
    }
    /* scores = out.tolist()[0]; ok: every score is finite */
    const Py_ssize_t m = o->dimensions[1];
    const float *f = (const float *)o->data;
    int ok = 1;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (!isfinite(f[i])) {
            ok = 0;
        }
    }
    if ((scores = PyList_New(m)) == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *v;
        if (ok || isfinite(f[i])) {
            if ((v = PyFloat_FromDouble((double)f[i])) == NULL) {
                goto done;
            }
        }
        else {
            v = Py_None;
            Py_INCREF(v);
        }
        PyList_SET_ITEM(scores, i, v);
    }
    /* the listeners: (x[0], out[0], latency_ms, error); exceptions are theirs */
    listeners = self->listeners;
    Py_INCREF(listeners);
    if (PyTuple_GET_SIZE(listeners) > 0) {
        if ((x0 = PySequence_GetItem(x, 0)) == NULL || (out0 = PySequence_GetItem(out, 0)) == NULL) {
            goto done;
        }
        PyObject *a[4] = {x0, out0, lat, ok ? Py_False : Py_True};
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(listeners); i++) {
            r = PyObject_Vectorcall(PyTuple_GET_ITEM(listeners, i), a, 4, NULL);
            if (r == NULL && !caught()) {
                goto done;
            }
            Py_XDECREF(r);
        }
    }
    Py_SETREF(listeners, self->batch_listeners);
    Py_INCREF(listeners);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(listeners); i++) {
        PyObject *a[5] = {model, Py_None, x, out, lat};
        PyObject *ids = PyObject_Vectorcall(PyTuple_GET_ITEM(listeners, i), a, 5, NULL);
        if (ids == NULL) {
            if (!caught()) {
                goto done;
            }
            continue;
        }
        int t = PyObject_IsTrue(ids);
        if (t > 0) {
            PyObject *d = PyDict_Check(ids) ? (Py_INCREF(ids), ids)
                                            : PyObject_CallOneArg((PyObject *)&PyDict_Type, ids);
            if (d == NULL || (sampled == NULL && (sampled = PyDict_New()) == NULL) ||
                PyDict_Update(sampled, d) < 0) {
                t = -1;
            }
            Py_XDECREF(d);
        }
        Py_DECREF(ids);
        if (t < 0) {
            goto done;
        }
    }
    /* the label: the first highest score, or score >= 0.5 for one score */
    if (ok) {
        Py_ssize_t k = 0;
        if (m > 1) {
            float best = f[0];
            for (Py_ssize_t i = 1; i < m; i++) {
                if (f[i] > best) {
                    best = f[i];
                    k = i;
                }
            }
        }
        else {
            k = (double)f[0] >= 0.5;
        }
        Py_ssize_t n = PyObject_Length(labels);
        if (n < 0) {
            goto done;
        }
        label = k < n ? PySequence_GetItem(labels, k) : PyLong_FromSsize_t(k);
        if (label == NULL) {
            goto done;
        }
    }
    else {
        label = Py_None;
        Py_INCREF(label);
    }
    if ((res = PyDict_New()) == NULL || PyDict_SetItem(res, s_label, label) < 0 ||
        PyDict_SetItem(res, s_scores, scores) < 0 || (results = PyList_New(1)) == NULL) {
        goto done;
    }
    PyList_SET_ITEM(results, 0, res);
    res = NULL;
    if (sampled != NULL) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(sampled, &pos, &key, &value)) {
            PyObject *item = PyObject_GetItem(results, key);
            if (item == NULL) {
                goto done;
            }
            int e = PyObject_SetItem(item, s_sample_id, value);
            Py_DECREF(item);
            if (e < 0) {
                goto done;
            }
        }
    }
    result = results;
    results = NULL;
done:
    Py_XDECREF(t0);
    Py_XDECREF(t1);
    Py_XDECREF(out);
    Py_XDECREF(scores);
    Py_XDECREF(lat);
    Py_XDECREF(x0);
    Py_XDECREF(out0);
    Py_XDECREF(listeners);
    Py_XDECREF(sampled);
    Py_XDECREF(label);
    Py_XDECREF(res);
    Py_XDECREF(results);
    return result;
}

static PyObject *
OneRow_vectorcall(OneRow *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *model = self->model, *loaded = self->loaded;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL || loaded == NULL ||
        np_type(args[0]) != NPK_F32) { /* any layout: x goes to the runner as it is */
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    PyObject *arg = args[0], *x;
    const np_array_head *a = NP_HEAD(arg);
    if (a->nd == 1) {
        if ((x = PyObject_GetItem(arg, Py_None)) == NULL) { /* x[None, :] */
            return NULL;
        }
    }
    else if (a->nd >= 2 && a->dimensions[0] == 1) {
        x = arg;
        Py_INCREF(x);
    }
    else {
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    Py_INCREF(model);
    Py_INCREF(loaded);
    PyObject *result = one_row(self, model, loaded, x);
    Py_DECREF(loaded);
    Py_DECREF(model);
    Py_DECREF(x);
    return result;
}

static PyObject *
OneRow_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"slow", "finish", "clock", NULL};
    PyObject *slow, *finish, *clock;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO", kwlist, &slow, &finish, &clock)) {
        return NULL;
    }
    OneRow *self = (OneRow *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)OneRow_vectorcall;
    Py_INCREF(slow);
    Py_INCREF(finish);
    Py_INCREF(clock);
    Py_INCREF(Py_None);
    self->slow = slow;
    self->finish = finish;
    self->clock = clock;
    self->monotonic = clock == perf_counter;
    self->model = Py_None;
    self->listeners = PyTuple_New(0);
    self->batch_listeners = PyTuple_New(0);
    if (self->listeners == NULL || self->batch_listeners == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
OneRow_traverse(OneRow *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slow);
    Py_VISIT(self->finish);
    Py_VISIT(self->clock);
    Py_VISIT(self->model);
    Py_VISIT(self->loaded);
    Py_VISIT(self->listeners);
    Py_VISIT(self->batch_listeners);
    return 0;
}

static int
OneRow_clear(OneRow *self)
{
    Py_CLEAR(self->slow);
    Py_CLEAR(self->finish);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->model);
    Py_CLEAR(self->loaded);
    Py_CLEAR(self->listeners);
    Py_CLEAR(self->batch_listeners);
    return 0;
}

static void
OneRow_dealloc(OneRow *self)
{
    PyObject_GC_UnTrack(self);
    OneRow_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
OneRow_get(OneRow *self, void *closure)
{
    PyObject *v = *(PyObject **)((char *)self + (Py_ssize_t)closure);
    if (v == NULL) {
        v = Py_None;
    }
    Py_INCREF(v);
    return v;
}

/* (runner.predict, lock.acquire, lock.release, labels) of a model that is not corrupt;
 * NULL, without an error, for a model the Python path serves */
static PyObject *
loaded_of(PyObject *model)
{
    PyObject *corrupt, *runner = NULL, *lock = NULL, *out = NULL;
    if (model == Py_None || (corrupt = PyObject_GetAttr(model, s_corrupt)) == NULL) {
        PyErr_Clear();
        return NULL;
    }
    int c = PyObject_IsTrue(corrupt);
    Py_DECREF(corrupt);
    if (c == 0 && (runner = PyObject_GetAttr(model, s_runner)) != NULL &&
        (lock = PyObject_GetAttr(model, s_lock)) != NULL) {
        out = Py_BuildValue("(NNNN)", PyObject_GetAttr(runner, s_predict),
                            PyObject_GetAttr(lock, s_acquire), PyObject_GetAttr(lock, s_release),
                            PyObject_GetAttr(model, s_labels));
    }
    Py_XDECREF(runner);
    Py_XDECREF(lock);
    PyErr_Clear();
    return out;
}

static int
OneRow_set(OneRow *self, PyObject *value, void *closure)
{
    Py_ssize_t offset = (Py_ssize_t)closure;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    if (offset != (Py_ssize_t)offsetof(OneRow, model) && !PyTuple_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "listeners must be a tuple");
        return -1;
    }
    PyObject **slot = (PyObject **)((char *)self + offset);
    if (offset == (Py_ssize_t)offsetof(OneRow, model)) {
        Py_XSETREF(self->loaded, loaded_of(value));
    }
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
    return 0;
}

static PyGetSetDef OneRow_getset[] = {
    {"model", (getter)OneRow_get, (setter)OneRow_set, "the active model (or None)",
     (void *)offsetof(OneRow, model)},
    {"listeners", (getter)OneRow_get, (setter)OneRow_set, "the row listeners (a tuple)",
     (void *)offsetof(OneRow, listeners)},
    {"batch_listeners", (getter)OneRow_get, (setter)OneRow_set, "the batch listeners (a tuple)",
     (void *)offsetof(OneRow, batch_listeners)},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject OneRowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeops_agent._fastpath.OneRow",
    .tp_basicsize = sizeof(OneRow),
    .tp_dealloc = (destructor)OneRow_dealloc,
    .tp_vectorcall_offset = offsetof(OneRow, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "OneRow(slow, finish, clock): the Predictor's one-row call in C",
    .tp_traverse = (traverseproc)OneRow_traverse,
    .tp_clear = (inquiry)OneRow_clear,
    .tp_getset = OneRow_getset,
    .tp_new = OneRow_new,
};

/* --- RowKernel --------------------------------------------------------------------------- */

/* TFLiteRunner.predict for one float32 row, in C: the row (any layout) quantized or
 * copied into the input tensor, Invoke, the output tensor dequantized or copied into a new
 * float32 array of shape (1, ...) -- the Python path's numbers exactly (quantize: round
 * half to even of x / scale in float32, plus the zero point, clipped; dequantize:
 * (q - zero point) * scale in float32). Anything else goes to the Python method
 * (``slow``): other types or shapes, a runner not allocated for one row (``active``
 * false), and for integer inputs a row with a value that is not finite.
 *
 * The tensors are reached one of two ways, chosen by the runner (``configure``):
 * through the interpreter's own SetTensor / GetTensor (copies; always valid), or, for
 * graphs whose tensors the runtime never moves after allocation (the runner checks the
 * graph: every operator of a kind with static output shapes), through the tensors' data
 * pointers, read once after each allocation. In that mode the pointers are read again
 * every RECHECK calls (``pointers``, a runner method) and the kernel goes back to the
 * copies for good if they ever moved. */

#define ROW_RECHECK 1024
#define ROW_MAX_ND 8

enum { RT_F32 = 0, RT_I8 = 1, RT_U8 = 2 };
enum { NP_INT8 = 1, NP_UINT8 = 2 };

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *slow;      /* the runner's Python predict */
    PyObject *interp;    /* the runner's Interpreter (the Python wrapper object) */
    PyObject *empty;     /* numpy.empty */
    PyObject *f32;       /* numpy.dtype("float32") */
    PyObject *out_shape; /* (1, ...) */
    PyObject *in_buf;    /* an array of the input tensor's type and shape, ours */
    PyObject *in_index, *out_index;
    PyObject *pointers; /* () -> (input address, output address); None: copies only */
    PyObject *last_out; /* the last result (see rk_output_array) */
    int active;
    int in_type, out_type;
    float in_scale, in_zp, out_scale, out_zp;
    Py_ssize_t in_count, out_count;
    int row_nd, out_nd;
    Py_intptr_t row_shape[ROW_MAX_ND];
    Py_intptr_t out_dims[ROW_MAX_ND + 1]; /* out_shape's values */
    char *raw_in, *raw_out; /* NULL: SetTensor / GetTensor */
    unsigned long calls;
    float *scratch; /* in_count floats: a strided row gathered */
} RowKernel;

static PyObject *s_interpreter_attr, *s_SetTensor, *s_GetTensor, *s_Invoke;

static int
rk_type_of(const char *name)
{
    if (strcmp(name, "float32") == 0) {
        return RT_F32;
    }
    if (strcmp(name, "int8") == 0) {
        return RT_I8;
    }
    if (strcmp(name, "uint8") == 0) {
        return RT_U8;
    }
    return -1;
}

/* clip(round(src / scale) + zp, lo, hi) into dst (int8 or uint8), with numpy's float32
 * arithmetic; separate loops per type, with no stores that could alias the inputs, so
 * that the compiler vectorizes them */
#define RK_QUANTIZE(NAME, T)                                                                  \
    static void NAME(const float *restrict src, T *restrict dst, Py_ssize_t n, float scale,  \
                     float zp, float lo, float hi)                                           \
    {                                                                                        \
        const float magic = 12582912.0f; /* 1.5 * 2^23: v + magic - magic rounds half to even \
                                          */                                                 \
        for (Py_ssize_t i = 0; i < n; i++) {                                                 \
            float v = src[i] / scale; /* float32, as numpy computes it */                    \
            /* beyond +-1024 the result is clipped whatever the zero point (-128..255); within \
             * it the addition rounds as rint does (no -ffast-math: it is not simplified) */ \
            v = v < -1024.0f ? -1024.0f : v;                                                 \
            v = v > 1024.0f ? 1024.0f : v;                                                   \
            float r = ((v + magic) - magic) + zp;                                            \
            r = r < lo ? lo : r;                                                             \
            r = r > hi ? hi : r;                                                             \
            dst[i] = (T)(int)r;                                                              \
        }                                                                                    \
    }
RK_QUANTIZE(rk_quantize_i8, int8_t)
RK_QUANTIZE(rk_quantize_u8, uint8_t)

/* the row's values into the input tensor's buffer dst; 0, or 1 when an integer input
 * meets a value that is not finite (the Python path handles it) */
static int
rk_write_input(RowKernel *self, const float *src, char *dst)
{
    const Py_ssize_t n = self->in_count;
    if (self->in_type == RT_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return 0;
    }
    int bad = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        bad |= !(src[i] - src[i] == 0.0f); /* NaN or an infinity */
    }
    if (bad) {
        return 1;
    }
    const int i8 = self->in_type == RT_I8;
    const float lo = i8 ? -128.0f : 0.0f, hi = i8 ? 127.0f : 255.0f;
    Py_ssize_t done = 0;
#if defined(__SSE2__)
    /* four at a time: the same steps; cvtps2dq rounds half to even (the default MXCSR
     * mode, which the scalar loop's rounding relies on too) */
    const __m128 vs = _mm_set1_ps(self->in_scale), vzp = _mm_set1_ps(self->in_zp);
    const __m128 vlo = _mm_set1_ps(lo), vhi = _mm_set1_ps(hi);
    const __m128 vmin = _mm_set1_ps(-1024.0f), vmax = _mm_set1_ps(1024.0f);
    for (; done + 4 <= n; done += 4) {
        __m128 v = _mm_div_ps(_mm_loadu_ps(src + done), vs);
        v = _mm_min_ps(_mm_max_ps(v, vmin), vmax);
        __m128 r = _mm_add_ps(_mm_cvtepi32_ps(_mm_cvtps_epi32(v)), vzp);
        r = _mm_min_ps(_mm_max_ps(r, vlo), vhi);
        __m128i q = _mm_cvttps_epi32(r);
        q = _mm_packs_epi32(q, q); /* exact: the values are within int16 */
        q = i8 ? _mm_packs_epi16(q, q) : _mm_packus_epi16(q, q);
        const int32_t four = _mm_cvtsi128_si32(q);
        memcpy(dst + done, &four, 4);
    }
#endif
    if (i8) {
        rk_quantize_i8(src + done, (int8_t *)dst + done, n - done, self->in_scale, self->in_zp,
                       lo, hi);
    }
    else {
        rk_quantize_u8(src + done, (uint8_t *)dst + done, n - done, self->in_scale,
                       self->in_zp, lo, hi);
    }
    return 0;
}

static void
rk_read_output(RowKernel *self, const char *src, float *dst)
{
    const Py_ssize_t n = self->out_count;
    if (self->out_type == RT_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const float scale = self->out_scale, zp = self->out_zp;
    for (Py_ssize_t i = 0; i < n; i++) {
        float q = self->out_type == RT_I8 ? (float)((const int8_t *)src)[i]
                                          : (float)((const uint8_t *)src)[i];
        volatile float d = q - zp; /* not fused with the product, whatever the flags */
        dst[i] = d * scale;
    }
}

/* the pointers again (every ROW_RECHECK calls): 0 if unchanged; 1 if they moved (the
 * kernel now uses the copies); -1 on an error */
static int
rk_recheck(RowKernel *self)
{
    PyObject *p = PyObject_CallNoArgs(self->pointers);
    if (p == NULL) {
        return -1;
    }
    int moved = 1;
    if (PyTuple_Check(p) && PyTuple_GET_SIZE(p) == 2) {
        void *a = PyLong_AsVoidPtr(PyTuple_GET_ITEM(p, 0));
        void *b = PyLong_AsVoidPtr(PyTuple_GET_ITEM(p, 1));
        if (PyErr_Occurred()) {
            Py_DECREF(p);
            return -1;
        }
        moved = (char *)a != self->raw_in || (char *)b != self->raw_out;
    }
    Py_DECREF(p);
    if (moved) {
        self->raw_in = self->raw_out = NULL;
        Py_CLEAR(self->pointers);
    }
    return moved;
}

static PyObject *
rk_call_method(PyObject *w, PyObject *name, PyObject *a, PyObject *b)
{
    PyObject *args[3] = {w, a, b};
    return PyObject_VectorcallMethod(name, args, (a == NULL ? 1 : (b == NULL ? 2 : 3)) |
                                                     PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* the array for the next result (new reference): the last one again when nobody else
 * holds it any more (its only reference is ours, so no caller, view or buffer can see
 * it change; CPython's zip() reuses its result tuple the same way) and it is still the
 * C-contiguous float32 array of the output's shape it was made as; else a new one */
/* whether the array has the output's shape (out_shape) */
static int
rk_has_out_shape(RowKernel *self, PyObject *arr)
{
    const np_array_head *a = NP_HEAD(arr);
    if (a->nd != self->out_nd) {
        return 0;
    }
    for (int d = 0; d < a->nd; d++) {
        if (a->dimensions[d] != self->out_dims[d]) {
            return 0;
        }
    }
    return 1;
}

static PyObject *
rk_output_array(RowKernel *self)
{
    PyObject *last = self->last_out;
    if (last != NULL && Py_REFCNT(last) == 1 && np_kind(last) == NPK_F32 &&
        NP_HEAD(last)->base == NULL && (NP_HEAD(last)->flags & NP_WRITEABLE) &&
        rk_has_out_shape(self, last)) {
        Py_INCREF(last);
        return last;
    }
    PyObject *eargs[2] = {self->out_shape, self->f32};
    PyObject *res = PyObject_Vectorcall(self->empty, eargs, 2, NULL);
    if (res != NULL) {
        Py_INCREF(res);
        Py_XSETREF(self->last_out, res);
    }
    return res;
}

static PyObject *
RowKernel_vectorcall(RowKernel *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL || !self->active ||
        np_type(args[0]) != NPK_F32) {
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    PyObject *x = args[0];
    const np_array_head *a = NP_HEAD(x);
    int fits = a->nd == self->row_nd + 1 && a->dimensions[0] == 1;
    for (int d = 0; fits && d < self->row_nd; d++) {
        fits = a->dimensions[d + 1] == self->row_shape[d];
    }
    if (!fits) {
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    const float *src;
    if (np_kind(x) == NPK_F32) {
        src = (const float *)a->data;
    }
    else {
        np_gather(x, self->scratch, self->in_count);
        src = self->scratch;
    }
    if (self->raw_in != NULL && ++self->calls % ROW_RECHECK == 0) {
        if (rk_recheck(self) < 0) {
            return NULL;
        }
    }
    char *dst = self->raw_in != NULL ? self->raw_in : NP_HEAD(self->in_buf)->data;
    if (rk_write_input(self, src, dst)) {
        return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
    }
    PyObject *w = PyObject_GetAttr(self->interp, s_interpreter_attr), *r, *got = NULL;
    if (w == NULL) {
        return NULL;
    }
    if (self->raw_in == NULL) {
        if ((r = rk_call_method(w, s_SetTensor, self->in_index, self->in_buf)) == NULL) {
            Py_DECREF(w);
            return NULL;
        }
        Py_DECREF(r);
    }
    if ((r = rk_call_method(w, s_Invoke, NULL, NULL)) == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    Py_DECREF(r);
    const char *out_data = self->raw_out;
    if (out_data == NULL) {
        got = rk_call_method(w, s_GetTensor, self->out_index, NULL);
        Py_DECREF(w);
        if (got == NULL) {
            return NULL;
        }
        int want = self->out_type == RT_F32 ? NP_FLOAT32
                                            : (self->out_type == RT_I8 ? NP_INT8 : NP_UINT8);
        int same = Py_TYPE(got) == np_ndarray_type &&
                   ((const np_descr_head *)NP_HEAD(got)->descr)->type_num == want &&
                   (NP_HEAD(got)->flags & (NP_C_CONTIGUOUS | NP_ALIGNED)) ==
                       (NP_C_CONTIGUOUS | NP_ALIGNED) &&
                   rk_has_out_shape(self, got);
        if (!same) { /* not the output the model declared: the Python code, from the start */
            Py_DECREF(got);
            return PyObject_Vectorcall(self->slow, args, nargsf, kwnames);
        }
        if (self->out_type == RT_F32) {
            return got; /* a new array already: the interpreter's copy */
        }
        out_data = NP_HEAD(got)->data;
    }
    else {
        Py_DECREF(w);
    }
    PyObject *res = rk_output_array(self);
    if (res != NULL) {
        rk_read_output(self, out_data, (float *)NP_HEAD(res)->data);
    }
    Py_XDECREF(got);
    return res;
}

static PyObject *
RowKernel_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"slow", "interpreter", "empty", "f32", NULL};
    PyObject *slow, *interp, *empty, *f32;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO", kwlist, &slow, &interp, &empty, &f32)) {
        return NULL;
    }
    RowKernel *self = (RowKernel *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)RowKernel_vectorcall;
    Py_INCREF(slow);
    self->slow = slow;
    Py_INCREF(interp);
    self->interp = interp;
    Py_INCREF(empty);
    self->empty = empty;
    Py_INCREF(f32);
    self->f32 = f32;
    return (PyObject *)self;
}

/* configure(in_index, out_index, in_type, in_scale, in_zp, out_type, out_scale, out_zp,
 *           row_shape, out_shape, in_buf, pointers): the tensors after an allocation for
 * one row; pointers is None (copies) or a callable giving the data addresses */
static PyObject *
RowKernel_configure(RowKernel *self, PyObject *args)
{
    PyObject *in_index, *out_index, *row_shape, *out_shape, *in_buf, *pointers;
    const char *in_name, *out_name;
    double in_scale, out_scale;
    long in_zp, out_zp;
    if (!PyArg_ParseTuple(args, "OOsdlsdlO!O!OO", &in_index, &out_index, &in_name, &in_scale,
                          &in_zp, &out_name, &out_scale, &out_zp, &PyTuple_Type, &row_shape,
                          &PyTuple_Type, &out_shape, &in_buf, &pointers)) {
        return NULL;
    }
    self->active = 0;
    int in_type = rk_type_of(in_name), out_type = rk_type_of(out_name);
    Py_ssize_t nd = PyTuple_GET_SIZE(row_shape), in_count = 1, out_count = 1;
    if (in_type < 0 || out_type < 0 || nd < 1 || nd > ROW_MAX_ND ||
        PyTuple_GET_SIZE(out_shape) < 1 || PyTuple_GET_SIZE(out_shape) > ROW_MAX_ND + 1) {
        PyErr_SetString(PyExc_ValueError, "the kernel takes float32, int8 or uint8 tensors");
        return NULL;
    }
    for (Py_ssize_t d = 0; d < nd; d++) {
        self->row_shape[d] = PyLong_AsSsize_t(PyTuple_GET_ITEM(row_shape, d));
        in_count *= self->row_shape[d];
    }
    Py_intptr_t out_dims[ROW_MAX_ND + 1];
    const int out_nd = (int)PyTuple_GET_SIZE(out_shape);
    for (int d = 0; d < out_nd; d++) {
        out_dims[d] = PyLong_AsSsize_t(PyTuple_GET_ITEM(out_shape, d));
        out_count *= out_dims[d];
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    int buf_type = in_type == RT_F32 ? NP_FLOAT32 : (in_type == RT_I8 ? NP_INT8 : NP_UINT8);
    if (in_count < 1 || out_count < 1 || Py_TYPE(in_buf) != np_ndarray_type ||
        ((const np_descr_head *)NP_HEAD(in_buf)->descr)->type_num != buf_type ||
        (NP_HEAD(in_buf)->flags & (NP_C_CONTIGUOUS | NP_ALIGNED)) !=
            (NP_C_CONTIGUOUS | NP_ALIGNED) ||
        np_size(in_buf) != in_count) {
        PyErr_SetString(PyExc_ValueError, "in_buf must be a C-contiguous array of the input");
        return NULL;
    }
    char *raw_in = NULL, *raw_out = NULL;
    if (pointers != Py_None) {
        PyObject *p = PyObject_CallNoArgs(pointers);
        if (p == NULL) {
            return NULL;
        }
        if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 2) {
            Py_DECREF(p);
            PyErr_SetString(PyExc_TypeError, "pointers() must give two addresses");
            return NULL;
        }
        raw_in = PyLong_AsVoidPtr(PyTuple_GET_ITEM(p, 0));
        raw_out = PyLong_AsVoidPtr(PyTuple_GET_ITEM(p, 1));
        Py_DECREF(p);
        if (PyErr_Occurred()) {
            return NULL;
        }
        if (raw_in == NULL || raw_out == NULL) {
            pointers = Py_None;
            raw_in = raw_out = NULL;
        }
    }
    float *scratch = PyMem_Realloc(self->scratch, (size_t)in_count * sizeof(float));
    if (scratch == NULL) {
        return PyErr_NoMemory();
    }
    self->scratch = scratch;
    self->in_count = in_count;
    self->out_count = out_count;
    self->row_nd = (int)nd;
    self->out_nd = out_nd;
    memcpy(self->out_dims, out_dims, sizeof out_dims);
    self->in_type = in_type;
    self->out_type = out_type;
    self->in_scale = (float)in_scale;
    self->in_zp = (float)in_zp;
    self->out_scale = (float)out_scale;
    self->out_zp = (float)out_zp;
    self->raw_in = raw_in;
    self->raw_out = raw_out;
    self->calls = 0;
    Py_INCREF(in_index);
    Py_XSETREF(self->in_index, in_index);
    Py_INCREF(out_index);
    Py_XSETREF(self->out_index, out_index);
    Py_INCREF(out_shape);
    Py_XSETREF(self->out_shape, out_shape);
    Py_CLEAR(self->last_out);
    Py_INCREF(in_buf);
    Py_XSETREF(self->in_buf, in_buf);
    if (pointers == Py_None) {
        Py_CLEAR(self->pointers);
    }
    else {
        Py_INCREF(pointers);
        Py_XSETREF(self->pointers, pointers);
    }
    self->active = 1;
    Py_RETURN_NONE;
}

static PyObject *
RowKernel_deactivate(RowKernel *self, PyObject *Py_UNUSED(ignored))
{
    self->active = 0;
    self->raw_in = self->raw_out = NULL;
    Py_CLEAR(self->pointers);
    Py_RETURN_NONE;
}

static PyObject *
RowKernel_mode(RowKernel *self, void *Py_UNUSED(closure))
{
    return PyUnicode_FromString(!self->active ? "off" : (self->raw_in ? "pointers" : "copies"));
}

static int
RowKernel_traverse(RowKernel *self, visitproc visit, void *arg)
{
    Py_VISIT(self->slow);
    Py_VISIT(self->interp);
    Py_VISIT(self->empty);
    Py_VISIT(self->f32);
    Py_VISIT(self->out_shape);
    Py_VISIT(self->in_buf);
    Py_VISIT(self->in_index);
    Py_VISIT(self->out_index);
    Py_VISIT(self->pointers);
    Py_VISIT(self->last_out);
    return 0;
}

static int
RowKernel_clear(RowKernel *self)
{
    self->active = 0;
    self->raw_in = self->raw_out = NULL;
    Py_CLEAR(self->slow);
    Py_CLEAR(self->interp);
    Py_CLEAR(self->empty);
    Py_CLEAR(self->f32);
    Py_CLEAR(self->out_shape);
    Py_CLEAR(self->in_buf);
    Py_CLEAR(self->in_index);
    Py_CLEAR(self->out_index);
    Py_CLEAR(self->pointers);
    Py_CLEAR(self->last_out);
    return 0;
}

static void
RowKernel_dealloc(RowKernel *self)
{
    PyObject_GC_UnTrack(self);
    RowKernel_clear(self);
    PyMem_Free(self->scratch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef RowKernel_methods[] = {
    {"configure", (PyCFunction)RowKernel_configure, METH_VARARGS,
     "configure(in_index, out_index, in_dtype, in_scale, in_zero_point, out_dtype, "
     "out_scale, out_zero_point, row_shape, out_shape, in_buf, pointers): serve one-row "
     "calls on the interpreter as it is allocated now"},
    {"deactivate", (PyCFunction)RowKernel_deactivate, METH_NOARGS,
     "send every call to the Python method (the interpreter is being reallocated)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RowKernel_getset[] = {
    {"mode", (getter)RowKernel_mode, NULL,
     "'pointers', 'copies' (SetTensor/GetTensor), or 'off' (the Python method)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RowKernelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeops_agent._fastpath.RowKernel",
    .tp_basicsize = sizeof(RowKernel),
    .tp_dealloc = (destructor)RowKernel_dealloc,
    .tp_vectorcall_offset = offsetof(RowKernel, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "RowKernel(slow, interpreter, empty, f32): TFLiteRunner.predict of one row in C",
    .tp_traverse = (traverseproc)RowKernel_traverse,
    .tp_clear = (inquiry)RowKernel_clear,
    .tp_methods = RowKernel_methods,
    .tp_getset = RowKernel_getset,
    .tp_new = RowKernel_new,
};

/* --- the module ------------------------------------------------------------------------ */

static struct PyModuleDef fastpath_module = {
    PyModuleDef_HEAD_INIT, "edgeops_agent._fastpath",
    "The agent's one-row prediction path in C (see edgeops_agent.serve and .telemetry).", -1,
    NULL, NULL, NULL, NULL, NULL,
};

static int
intern(PyObject **slot, const char *s)
{
    *slot = PyUnicode_InternFromString(s);
    return *slot == NULL ? -1 : 0;
}

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    if (np_mirror_init() < 0) {
        return NULL;
    }
    PyObject *faststats = PyImport_ImportModule("edgeops_protocol._faststats");
    if (faststats == NULL) {
        return NULL;
    }
    Py_DECREF(faststats); /* imported: PyCapsule_Import finds its attribute */
    stats_api = (EdgeopsStatsCAPI *)PyCapsule_Import(EDGEOPS_FASTSTATS_CAPSULE, 0);
    if (stats_api == NULL) {
        return NULL;
    }
    if (stats_api->version != EDGEOPS_FASTSTATS_API_VERSION) {
        PyErr_SetString(PyExc_ImportError, "edgeops_protocol._faststats is of another version");
        return NULL;
    }
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL) {
        return NULL;
    }
    perf_counter = PyObject_GetAttrString(time, "perf_counter"); /* kept for good */
    Py_DECREF(time);
    if (perf_counter == NULL) {
        return NULL;
    }
    if (intern(&s_acquire, "acquire") < 0 || intern(&s_release, "release") < 0 ||
        intern(&s_predict, "predict") < 0 || intern(&s_runner, "runner") < 0 ||
        intern(&s_lock, "lock") < 0 || intern(&s_corrupt, "corrupt") < 0 ||
        intern(&s_labels, "labels") < 0 || intern(&s_label, "label") < 0 ||
        intern(&s_scores, "scores") < 0 || intern(&s_sample_id, "sample_id") < 0 ||
        intern(&s_interpreter_attr, "_interpreter") < 0 || intern(&s_SetTensor, "SetTensor") < 0 ||
        intern(&s_GetTensor, "GetTensor") < 0 || intern(&s_Invoke, "Invoke") < 0) {
        return NULL;
    }
    if (PyType_Ready(&RowSinkType) < 0 || PyType_Ready(&OneRowType) < 0 ||
        PyType_Ready(&RowKernelType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&fastpath_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&RowSinkType);
    if (PyModule_AddObject(m, "RowSink", (PyObject *)&RowSinkType) < 0) {
        Py_DECREF(&RowSinkType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&OneRowType);
    if (PyModule_AddObject(m, "OneRow", (PyObject *)&OneRowType) < 0) {
        Py_DECREF(&OneRowType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RowKernelType);
    if (PyModule_AddObject(m, "RowKernel", (PyObject *)&RowKernelType) < 0) {
        Py_DECREF(&RowKernelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
