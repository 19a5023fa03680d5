/* edgeops_protocol._faststats: the statistics window's accumulator in C.
 *
 * ``Window`` counts predictions the way edgeops_protocol.stats.PyWindowStats does,
 * one row at a time and straight into the count arrays: the same windows, byte for
 * byte (tests/test_stats_fast.py checks both against the accumulator they replaced).
 *
 * Bins (docs/protocol.md, edgeops_protocol.histogram): for edges e[0] < ... < e[k-1]
 * a finite value's bin is how many of the thresholds e[0], ..., e[k-2], next(e[k-1])
 * it reaches (>=), where next(e) is the smallest double above e, because the last
 * interior bin is closed. Float32 rows are compared with the thresholds rounded up to
 * float32, which is exact for float32 values. Non-finite feature values are counted
 * apart; non-finite scores make a row a non-finite output. Up to 24 thresholds a
 * feature are counted by comparing the row with each row of a (thresholds, features)
 * matrix (vectorized by the compiler, in blocks of 16 features); more, by a binary
 * search per feature. Float32 rows are binned 64 at a time (fewer with more than 256
 * features), from a buffer, so that a block's thresholds and counts stay in the cache.
 *
 * Latencies are summed in chunks of 64 rows from the last window()/release(), each
 * chunk with numpy's pairwise summation (numpy's float64 sum of a contiguous array:
 * 0.0 + pairwise sum), as the Python class does with numpy; a chunk's maximum counts
 * unless the chunk holds a NaN (numpy's max is then NaN, and max(x, nan) is x).
 *
 * Everything runs with the GIL held and never calls back into Python while counting,
 * so one call is atomic with respect to other Python threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_faststats.h"
#include "_npmirror.h"

#define CHUNK 64
#define LINEAR_MAX 24

/* --- layout: the thresholds, shared by the windows of one baseline ------------------ */

typedef struct {
    Py_ssize_t refs; /* windows using it (changed with the GIL held) */
    Py_ssize_t nf, total, maxe, ncls, nconf, nlat;
    int linear;
    Py_ssize_t *sizes;   /* thresholds (= edges) of each feature */
    Py_ssize_t *offsets; /* where each feature's counts start */
    Py_ssize_t *starts;  /* binary search: where each feature's thresholds start */
    double *t64;         /* linear: (maxe, nf), padded with +inf; else per feature */
    float *t32;          /* the same rounded up to float32 */
    double *conf_t;
    double *lat_t;
} Layout;

static void
layout_free(Layout *L)
{
    if (L == NULL) {
        return;
    }
    PyMem_Free(L->sizes);
    PyMem_Free(L->offsets);
    PyMem_Free(L->starts);
    PyMem_Free(L->t64);
    PyMem_Free(L->t32);
    PyMem_Free(L->conf_t);
    PyMem_Free(L->lat_t);
    PyMem_Free(L);
}

static float
ceil32(double v)
{
    if (v > (double)FLT_MAX) {
        return INFINITY;
    }
    if (v < -(double)FLT_MAX) {
        return -FLT_MAX;
    }
    float f = (float)v;
    if ((double)f < v) {
        f = nextafterf(f, INFINITY);
    }
    return f;
}

/* The edges of a sequence as doubles; -1 with ValueError unless they are at least one,
 * finite and strictly increasing (then the caller uses the Python class). */
static Py_ssize_t
read_edges(PyObject *seq, double **out)
{
    PyObject *fast = PySequence_Fast(seq, "edges must be a sequence");
    if (fast == NULL) {
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    double *e = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    if (e == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        e[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
        if (e[i] == -1.0 && PyErr_Occurred()) {
            goto bad;
        }
        if (!isfinite(e[i]) || (i > 0 && !(e[i] > e[i - 1]))) {
            PyErr_SetString(PyExc_ValueError, "edges must be finite and strictly increasing");
            goto bad;
        }
    }
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "edges must not be empty");
        goto bad;
    }
    Py_DECREF(fast);
    *out = e;
    return n;
bad:
    Py_DECREF(fast);
    PyMem_Free(e);
    return -1;
}

/* edges to thresholds, in place: the last edge becomes the smallest double above it */
static void
to_thresholds(double *e, Py_ssize_t n)
{
    e[n - 1] = nextafter(e[n - 1], INFINITY);
}

static Layout *
layout_new(PyObject *features, PyObject *conf_edges, Py_ssize_t ncls, PyObject *lat_edges)
{
    Layout *L = PyMem_Calloc(1, sizeof(Layout));
    double **edges = NULL;
    PyObject *fast = NULL;
    if (L == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (ncls < 1) {
        PyErr_SetString(PyExc_ValueError, "n_classes must be at least 1");
        goto bad;
    }
    L->ncls = ncls;
    if ((L->nconf = read_edges(conf_edges, &L->conf_t)) < 0 ||
        (L->nlat = read_edges(lat_edges, &L->lat_t)) < 0) {
        goto bad;
    }
    to_thresholds(L->conf_t, L->nconf);
    to_thresholds(L->lat_t, L->nlat);
    fast = PySequence_Fast(features, "features must be a sequence of edge lists");
    if (fast == NULL) {
        goto bad;
    }
    Py_ssize_t nf = L->nf = PySequence_Fast_GET_SIZE(fast);
    size_t nalloc = (size_t)(nf > 0 ? nf : 1);
    L->sizes = PyMem_Calloc(nalloc, sizeof(Py_ssize_t));
    L->offsets = PyMem_Calloc(nalloc, sizeof(Py_ssize_t));
    L->starts = PyMem_Calloc(nalloc, sizeof(Py_ssize_t));
    edges = PyMem_Calloc(nalloc, sizeof(double *));
    if (L->sizes == NULL || L->offsets == NULL || L->starts == NULL || edges == NULL) {
        PyErr_NoMemory();
        goto bad;
    }
    Py_ssize_t at = 0, nthr = 0;
    for (Py_ssize_t j = 0; j < nf; j++) {
        Py_ssize_t k = read_edges(PySequence_Fast_GET_ITEM(fast, j), &edges[j]);
        if (k < 0) {
            goto bad;
        }
        to_thresholds(edges[j], k);
        L->sizes[j] = k;
        L->offsets[j] = at;
        L->starts[j] = nthr;
        at += k + 1;
        nthr += k;
        if (k > L->maxe) {
            L->maxe = k;
        }
    }
    L->total = at;
    L->linear = L->maxe <= LINEAR_MAX;
    size_t cells = L->linear ? (size_t)L->maxe * (size_t)nf : (size_t)nthr;
    L->t64 = PyMem_Malloc((cells > 0 ? cells : 1) * sizeof(double));
    L->t32 = PyMem_Malloc((cells > 0 ? cells : 1) * sizeof(float));
    if (L->t64 == NULL || L->t32 == NULL) {
        PyErr_NoMemory();
        goto bad;
    }
    for (Py_ssize_t j = 0; j < nf; j++) {
        for (Py_ssize_t i = 0; i < L->maxe; i++) {
            if (!L->linear && i >= L->sizes[j]) {
                break;
            }
            double t = i < L->sizes[j] ? edges[j][i] : INFINITY;
            Py_ssize_t cell = L->linear ? i * nf + j : L->starts[j] + i;
            L->t64[cell] = t;
            L->t32[cell] = ceil32(t);
        }
    }
    for (Py_ssize_t j = 0; j < nf; j++) {
        PyMem_Free(edges[j]);
    }
    PyMem_Free(edges);
    Py_DECREF(fast);
    L->refs = 1;
    return L;
bad:
    if (edges != NULL) {
        for (Py_ssize_t j = 0; j < L->nf; j++) {
            PyMem_Free(edges[j]);
        }
        PyMem_Free(edges);
    }
    Py_XDECREF(fast);
    layout_free(L);
    return NULL;
}

static void
layout_decref(Layout *L)
{
    if (L != NULL && --L->refs == 0) {
        layout_free(L);
    }
}

/* --- binning --------------------------------------------------------------------------- */

/* how many of the sorted thresholds t[0..n) are <= v (double and float thresholds) */
#define REACHED(NAME, T)                                                                 \
    static inline Py_ssize_t NAME(const T *t, Py_ssize_t n, T v)                         \
    {                                                                                    \
        Py_ssize_t lo = 0;                                                               \
        while (n > 0) {                                                                  \
            Py_ssize_t half = n / 2;                                                     \
            if (t[lo + half] <= v) {                                                     \
                lo += half + 1;                                                          \
                n -= half + 1;                                                           \
            }                                                                            \
            else {                                                                       \
                n = half;                                                                \
            }                                                                            \
        }                                                                                \
        return lo;                                                                       \
    }
REACHED(reached_d, double)
REACHED(reached_f, float)

static inline Py_ssize_t
bin_small(const double *t, Py_ssize_t n, double v)
{
    if (n > LINEAR_MAX) {
        return reached_d(t, n, v);
    }
    Py_ssize_t c = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        c += v >= t[i];
    }
    return c;
}

typedef struct {
    PyObject_HEAD
    Layout *L;
    long long count, errors, non_finite;
    int64_t *fc;   /* features' counts, one feature after another */
    int64_t *fnf;  /* non-finite values per feature */
    int64_t *cls;  /* class counts */
    int64_t *conf; /* confidence counts */
    int64_t *lat;  /* latency counts */
    double lat_sum, lat_max;
    double chunk[CHUNK];
    int chunk_n;
    float *rows; /* float32 rows not binned yet (see flush_rows) */
    Py_ssize_t nrows, cap_rows;
} Window;

/* Rows' features into the counts (n rows, one after another). Linear layout: blocks of
 * BLOCK features, each row compared with every row of thresholds into accumulators the
 * compiler keeps in vector registers, then counted (a block with a non-finite value
 * checks each); the rest one feature at a time. A block's thresholds and counts stay in
 * the cache while the rows go by. */
#define BLOCK 16
/* x86-64 with GCC or Clang on glibc: an AVX2 copy of the binning too, picked at load
 * time on CPUs that have it (comparisons and counts: the same results either way) */
#if defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__) &&                   \
    ((defined(__GNUC__) && __GNUC__ >= 6 && !defined(__clang__)) ||                      \
     (defined(__clang__) && __clang_major__ >= 14))
#define BIN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BIN_CLONES
#endif
#define BIN_ROWS(NAME, T, THR, REACHED)                                                  \
    BIN_CLONES static void NAME(Window *w, const T *restrict xs, Py_ssize_t n)           \
    {                                                                                    \
        const Layout *L = w->L;                                                          \
        const Py_ssize_t nf = L->nf, maxe = L->maxe;                                     \
        const T *restrict thr = L->THR;                                                  \
        const Py_ssize_t *restrict off = L->offsets;                                     \
        int64_t *restrict fc = w->fc;                                                    \
        int64_t *restrict fnf = w->fnf;                                                  \
        Py_ssize_t j0 = 0;                                                               \
        if (L->linear) {                                                                 \
            for (; j0 + BLOCK <= nf; j0 += BLOCK) {                                      \
                for (Py_ssize_t r = 0; r < n; r++) {                                     \
                    const T *restrict x = xs + r * nf + j0;                              \
                    int32_t acc[BLOCK];                                                  \
                    int bad = 0;                                                         \
                    for (int j = 0; j < BLOCK; j++) {                                    \
                        acc[j] = 0;                                                      \
                        bad |= (x[j] - x[j]) != (T)0;                                    \
                    }                                                                    \
                    for (Py_ssize_t k = 0; k < maxe; k++) {                              \
                        const T *restrict t = thr + k * nf + j0;                         \
                        for (int j = 0; j < BLOCK; j++) {                                \
                            acc[j] += x[j] >= t[j];                                      \
                        }                                                                \
                    }                                                                    \
                    if (!bad) {                                                          \
                        for (int j = 0; j < BLOCK; j++) {                                \
                            fc[off[j0 + j] + acc[j]]++;                                  \
                        }                                                                \
                        continue;                                                        \
                    }                                                                    \
                    for (int j = 0; j < BLOCK; j++) {                                    \
                        if (isfinite(x[j])) {                                            \
                            fc[off[j0 + j] + acc[j]]++;                                  \
                        }                                                                \
                        else {                                                           \
                            fnf[j0 + j]++;                                               \
                        }                                                                \
                    }                                                                    \
                }                                                                        \
            }                                                                            \
        }                                                                                \
        for (; j0 < nf; j0++) {                                                          \
            for (Py_ssize_t r = 0; r < n; r++) {                                         \
                const T v = xs[r * nf + j0];                                             \
                if (!isfinite(v)) {                                                      \
                    fnf[j0]++;                                                           \
                    continue;                                                            \
                }                                                                        \
                Py_ssize_t b = 0;                                                        \
                if (L->linear) {                                                         \
                    for (Py_ssize_t k = 0; k < maxe; k++) {                              \
                        b += v >= thr[k * nf + j0];                                      \
                    }                                                                    \
                }                                                                        \
                else {                                                                   \
                    b = REACHED(thr + L->starts[j0], L->sizes[j0], v);                   \
                }                                                                        \
                fc[off[j0] + b]++;                                                       \
            }                                                                            \
        }                                                                                \
    }

BIN_ROWS(bin_f32, float, t32, reached_f)
BIN_ROWS(bin_f64, double, t64, reached_d)

/* Float32 rows wait in a buffer of up to ROW_BUFFER rows (fewer for many features) and
 * are binned a buffer at a time; the counts are the same, in another order. */
#define ROW_BUFFER 64
#define ROW_BUFFER_VALUES 16384

static void
flush_rows(Window *w)
{
    if (w->nrows) {
        bin_f32(w, w->rows, w->nrows);
        w->nrows = 0;
    }
}

/* the row buffer's next row (made on first use), or NULL without memory for it */
static float *
next_row(Window *w)
{
    const Py_ssize_t nf = w->L->nf;
    if (w->rows == NULL) {
        Py_ssize_t cap = ROW_BUFFER_VALUES / nf;
        cap = cap < 1 ? 1 : cap > ROW_BUFFER ? ROW_BUFFER : cap;
        if ((w->rows = PyMem_Malloc((size_t)(cap * nf) * sizeof(float))) == NULL) {
            return NULL;
        }
        w->cap_rows = cap;
    }
    return w->rows + w->nrows * nf;
}

/* the row written at next_row() is complete */
static void
row_added(Window *w)
{
    if (++w->nrows == w->cap_rows) {
        flush_rows(w);
    }
}

static void
add_features_f32(Window *w, const float *x)
{
    float *row = next_row(w);
    if (row == NULL) {
        bin_f32(w, x, 1); /* no memory for a buffer: one row at a time */
        return;
    }
    memcpy(row, x, (size_t)w->L->nf * sizeof(float));
    row_added(w);
}

/* numpy's pairwise summation of a contiguous float64 array (loops_utils.h) */
static double
pairwise_sum(const double *a, Py_ssize_t n)
{
    if (n < 8) {
        double res = 0.;
        for (Py_ssize_t i = 0; i < n; i++) {
            res += a[i];
        }
        return res;
    }
    if (n <= 128) {
        double r[8];
        Py_ssize_t i;
        for (int j = 0; j < 8; j++) {
            r[j] = a[j];
        }
        for (i = 8; i < n - (n % 8); i += 8) {
            for (int j = 0; j < 8; j++) {
                r[j] += a[i + j];
            }
        }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) {
            res += a[i];
        }
        return res;
    }
    Py_ssize_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* the buffered latencies into the sum and the maximum */
static void
fold_chunk(Window *w)
{
    int n = w->chunk_n;
    if (n == 0) {
        return;
    }
    double s = 0.0;
    s += pairwise_sum(w->chunk, n);
    w->lat_sum += s;
    int nan = 0;
    double mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        double v = w->chunk[i];
        if (isnan(v)) {
            nan = 1;
        }
        else if (v > mx) {
            mx = v;
        }
    }
    if (!nan && mx > w->lat_max) {
        w->lat_max = mx;
    }
    w->chunk_n = 0;
}

static inline double
score_at(const char *data, int kind, Py_ssize_t i)
{
    return kind == NPK_F32 ? (double)((const float *)data)[i] : ((const double *)data)[i];
}

/* one row of scores: class, confidence, or a non-finite output */
static void
count_outputs(Window *w, const char *data, int kind, Py_ssize_t m)
{
    for (Py_ssize_t i = 0; i < m; i++) {
        if (!isfinite(score_at(data, kind, i))) {
            w->non_finite++;
            return;
        }
    }
    Py_ssize_t k = 0;
    double conf;
    if (m > 1) {
        conf = score_at(data, kind, 0);
        for (Py_ssize_t i = 1; i < m; i++) {
            double v = score_at(data, kind, i);
            if (v > conf) {
                conf = v;
                k = i;
            }
        }
    }
    else {
        double p = m ? score_at(data, kind, 0) : 0.0;
        k = p >= 0.5;
        conf = p >= 1.0 - p ? p : 1.0 - p;
    }
    if (k < w->L->ncls) {
        w->cls[k]++;
    }
    if (isfinite(conf)) {
        w->conf[bin_small(w->L->conf_t, w->L->nconf, conf)]++;
    }
}

/* count a prediction whose count (and error) is already added */
static void
count_row(Window *w, const char *x, int xkind, const char *out, int okind, Py_ssize_t m,
          double lat, int error)
{
    if (w->L->nf && x != NULL) { /* (NULL: the features are in the row buffer already) */
        if (xkind == NPK_F32) {
            add_features_f32(w, (const float *)x);
        }
        else {
            bin_f64(w, (const double *)x, 1);
        }
    }
    if (isfinite(lat)) {
        w->lat[bin_small(w->L->lat_t, w->L->nlat, lat)]++;
    }
    w->chunk[w->chunk_n++] = lat;
    if (w->chunk_n == CHUNK) {
        fold_chunk(w);
    }
    if (!error) {
        count_outputs(w, out, okind, m);
    }
}

/* --- the Window type ----------------------------------------------------------------- */

static PyObject *row64_helper = NULL; /* stats._row64(features, n): a float64 row */
static PyObject *out64_helper = NULL; /* stats._out64(outputs): float64 scores, raveled */

static int
window_setup(Window *w, Layout *L)
{
    size_t cells = (size_t)(L->total + L->nf + L->ncls + L->nconf + 1 + L->nlat + 1);
    w->fc = PyMem_Calloc(cells, sizeof(int64_t));
    if (w->fc == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->fnf = w->fc + L->total;
    w->cls = w->fnf + L->nf;
    w->conf = w->cls + L->ncls;
    w->lat = w->conf + L->nconf + 1;
    L->refs++;
    w->L = L;
    return 0;
}

static void
window_clear(Window *w)
{
    const Layout *L = w->L;
    memset(w->fc, 0,
           (size_t)(L->total + L->nf + L->ncls + L->nconf + 1 + L->nlat + 1) * sizeof(int64_t));
    w->count = w->errors = w->non_finite = 0;
    w->lat_sum = w->lat_max = 0.0;
    w->chunk_n = 0;
    w->nrows = 0;
}

static PyObject *
Window_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"features", "confidence_edges", "n_classes", "latency_edges", NULL};
    PyObject *features, *conf, *lat;
    Py_ssize_t ncls;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOnO", kwlist, &features, &conf, &ncls, &lat)) {
        return NULL;
    }
    Layout *L = layout_new(features, conf, ncls, lat);
    if (L == NULL) {
        return NULL;
    }
    Window *w = (Window *)type->tp_alloc(type, 0);
    if (w == NULL) {
        layout_decref(L);
        return NULL;
    }
    int r = window_setup(w, L);
    layout_decref(L); /* the window holds it now (or nothing does) */
    if (r < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

static void
Window_dealloc(Window *w)
{
    PyMem_Free(w->fc);
    PyMem_Free(w->rows);
    layout_decref(w->L);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

/* the features of a row as a float32 or float64 array of nf values: the row itself when
 * it is (..., 1, nf) C-contiguous float32/float64, else stats._row64(features, nf) */
static PyObject *
row_values(PyObject *features, Py_ssize_t nf, int *kind)
{
    int k = np_kind(features);
    if (k == NPK_F32 || k == NPK_F64) {
        const np_array_head *a = NP_HEAD(features);
        int ok = a->nd >= 1 && a->dimensions[a->nd - 1] == nf;
        for (int i = 0; ok && i < a->nd - 1; i++) {
            ok = a->dimensions[i] == 1;
        }
        if (ok) {
            *kind = k;
            Py_INCREF(features);
            return features;
        }
    }
    if (row64_helper == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "edgeops_protocol._faststats is not set up");
        return NULL;
    }
    PyObject *row = PyObject_CallFunction(row64_helper, "On", features, nf);
    if (row == NULL) {
        return NULL;
    }
    if (np_kind(row) != NPK_F64 || np_size(row) != nf) {
        Py_DECREF(row);
        PyErr_SetString(PyExc_TypeError, "_row64 must return a float64 row");
        return NULL;
    }
    *kind = NPK_F64;
    return row;
}

static PyObject *
score_values(PyObject *outputs, int *kind)
{
    int k = np_kind(outputs);
    if (k == NPK_F32 || k == NPK_F64) {
        *kind = k;
        Py_INCREF(outputs);
        return outputs;
    }
    if (out64_helper == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "edgeops_protocol._faststats is not set up");
        return NULL;
    }
    PyObject *out = PyObject_CallOneArg(out64_helper, outputs);
    if (out == NULL) {
        return NULL;
    }
    if (np_kind(out) != NPK_F64) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "_out64 must return float64 scores");
        return NULL;
    }
    *kind = NPK_F64;
    return out;
}

static PyObject *
Window_update(Window *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *names[] = {"features", "outputs", "latency_ms", "error"};
    PyObject *a[4] = {NULL, NULL, NULL, Py_False};
    if (nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "update() takes at most 4 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        a[i] = args[i];
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, i);
        int found = 0;
        for (int j = 0; j < 4 && !found; j++) {
            if (PyUnicode_CompareWithASCIIString(key, names[j]) == 0) {
                if (j < nargs) {
                    PyErr_Format(PyExc_TypeError, "update() got multiple values for '%s'",
                                 names[j]);
                    return NULL;
                }
                a[j] = args[nargs + i];
                found = 1;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError, "update() got an unexpected keyword argument '%U'",
                         key);
            return NULL;
        }
    }
    for (int j = 0; j < 3; j++) {
        if (a[j] == NULL) {
            PyErr_Format(PyExc_TypeError, "update() missing argument '%s'", names[j]);
            return NULL;
        }
    }
    PyObject *features = a[0], *outputs = a[1];
    /* as the Python class: the count first, whatever follows */
    self->count++;
    int error = 0;
    if (a[3] != Py_False) {
        if ((error = PyObject_IsTrue(a[3])) < 0) {
            return NULL;
        }
    }
    if (error || outputs == Py_None) {
        self->errors++;
        error = 1;
    }
    PyObject *row = NULL, *out = NULL;
    int xkind = NPK_NONE, okind = NPK_NONE;
    if (self->L->nf && (row = row_values(features, self->L->nf, &xkind)) == NULL) {
        return NULL;
    }
    double lat = PyFloat_AsDouble(a[2]);
    if (lat == -1.0 && PyErr_Occurred()) {
        Py_XDECREF(row);
        return NULL;
    }
    if (!error && (out = score_values(outputs, &okind)) == NULL) {
        Py_XDECREF(row);
        return NULL;
    }
    count_row(self, row ? NP_HEAD(row)->data : NULL, xkind, out ? NP_HEAD(out)->data : NULL,
              okind, out ? np_size(out) : 0, lat, error);
    Py_XDECREF(row);
    Py_XDECREF(out);
    Py_RETURN_NONE;
}

/* _rows(n, x, out, latency, errors): n rows of normalized arrays (update_many) */
static PyObject *
Window_rows(Window *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_rows() takes 5 arguments");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *x = args[1], *out = args[2], *lat = args[3], *err = args[4];
    const Layout *L = self->L;
    int xkind = NPK_NONE, okind = NPK_NONE;
    Py_ssize_t m = 0;
    if (L->nf) {
        xkind = np_kind(x);
        if ((xkind != NPK_F32 && xkind != NPK_F64) || NP_HEAD(x)->nd != 2 ||
            NP_HEAD(x)->dimensions[0] != n || NP_HEAD(x)->dimensions[1] != L->nf) {
            PyErr_SetString(PyExc_TypeError, "_rows: x must be (n, features) float32/64");
            return NULL;
        }
    }
    if (out != Py_None) {
        okind = np_kind(out);
        if ((okind != NPK_F32 && okind != NPK_F64) || NP_HEAD(out)->nd != 2 ||
            NP_HEAD(out)->dimensions[0] != n) {
            PyErr_SetString(PyExc_TypeError, "_rows: out must be (n, m) float32/64 or None");
            return NULL;
        }
        m = NP_HEAD(out)->dimensions[1];
    }
    const double *lats = NULL;
    double lat1 = 0.0;
    if (PyFloat_Check(lat)) {
        lat1 = PyFloat_AS_DOUBLE(lat);
    }
    else if (np_kind(lat) == NPK_F64 && np_size(lat) == n) {
        lats = (const double *)NP_HEAD(lat)->data;
    }
    else {
        PyErr_SetString(PyExc_TypeError, "_rows: latency must be a float or n float64");
        return NULL;
    }
    const char *errs = NULL;
    int err1 = 0;
    if (PyBool_Check(err)) {
        err1 = err == Py_True;
    }
    else if (np_kind(err) == NPK_BOOL && np_size(err) == n) {
        errs = NP_HEAD(err)->data;
    }
    else {
        PyErr_SetString(PyExc_TypeError, "_rows: errors must be a bool or n bools");
        return NULL;
    }
    const size_t xstride = (size_t)L->nf * (xkind == NPK_F32 ? sizeof(float) : sizeof(double));
    const size_t ostride = (size_t)m * (okind == NPK_F32 ? sizeof(float) : sizeof(double));
    const char *xd = L->nf ? NP_HEAD(x)->data : NULL;
    const char *od = out != Py_None ? NP_HEAD(out)->data : NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        int error = od == NULL || err1 || (errs != NULL && errs[i]);
        self->count++;
        if (error) {
            self->errors++;
        }
        count_row(self, xd ? xd + (size_t)i * xstride : NULL, xkind,
                  od ? od + (size_t)i * ostride : NULL, okind, m, lats ? lats[i] : lat1, error);
    }
    Py_RETURN_NONE;
}

static PyObject *
Window_reset(Window *self, PyObject *Py_UNUSED(ignored))
{
    window_clear(self);
    Py_RETURN_NONE;
}

static PyObject *
Window_release(Window *self, PyObject *Py_UNUSED(ignored))
{
    fold_chunk(self);
    flush_rows(self);
    PyMem_Free(self->rows); /* a window that is done: its buffer is not kept */
    self->rows = NULL;
    self->cap_rows = 0;
    Py_RETURN_NONE;
}

static PyObject *
Window_fresh(Window *self, PyObject *Py_UNUSED(ignored))
{
    PyTypeObject *type = Py_TYPE(self);
    Window *w = (Window *)type->tp_alloc(type, 0);
    if (w == NULL) {
        return NULL;
    }
    if (window_setup(w, self->L) < 0) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

static PyObject *
int_list(const int64_t *c, Py_ssize_t n)
{
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyLong_FromLongLong((long long)c[i]);
        if (v == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

static PyObject *
feature_lists(Window *w)
{
    const Layout *L = w->L;
    PyObject *list = PyList_New(L->nf);
    if (list == NULL) {
        return NULL;
    }
    for (Py_ssize_t j = 0; j < L->nf; j++) {
        PyObject *c = int_list(w->fc + L->offsets[j], L->sizes[j] + 1);
        if (c == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, j, c);
    }
    return list;
}

/* (features, feature_non_finite, class_counts, confidence_counts, latency_counts) as lists,
 * without ending the latency chunk */
static PyObject *
Window_arrays(Window *self, PyObject *Py_UNUSED(ignored))
{
    const Layout *L = self->L;
    flush_rows(self);
    return Py_BuildValue("(NNNNN)", feature_lists(self), int_list(self->fnf, L->nf),
                         int_list(self->cls, L->ncls), int_list(self->conf, L->nconf + 1),
                         int_list(self->lat, L->nlat + 1));
}

static PyObject *
Window_window(Window *self, PyObject *Py_UNUSED(ignored))
{
    fold_chunk(self);
    flush_rows(self);
    const Layout *L = self->L;
    return Py_BuildValue(
        "{s:i,s:L,s:L,s:L,s:N,s:N,s:N,s:N,s:N,s:d,s:d}", "format", 1, "count", self->count,
        "errors", self->errors, "non_finite_outputs", self->non_finite, "features",
        feature_lists(self), "feature_non_finite", int_list(self->fnf, L->nf), "class_counts",
        int_list(self->cls, L->ncls), "confidence_counts", int_list(self->conf, L->nconf + 1),
        "latency_counts", int_list(self->lat, L->nlat + 1), "latency_sum_ms", self->lat_sum,
        "latency_max_ms", self->lat_max);
}

/* --- window_json: the same bytes as json.dumps(window(), separators=(",", ":")) --------- */

typedef struct {
    char *buf;
    size_t len, cap;
} Writer;

static int
w_reserve(Writer *w, size_t extra)
{
    if (w->len + extra <= w->cap) {
        return 0;
    }
    size_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + extra) {
        cap *= 2;
    }
    char *buf = PyMem_Realloc(w->buf, cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    w->buf = buf;
    w->cap = cap;
    return 0;
}

static int
w_raw(Writer *w, const char *s, size_t n)
{
    if (w_reserve(w, n) < 0) {
        return -1;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    return 0;
}

#define W_LIT(w, s) w_raw((w), (s), sizeof(s) - 1)

/* the decimal digits of v at p (room for 20 characters); returns the end */
static char *
put_int(char *p, long long v)
{
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    if (v < 0) {
        *p++ = '-';
    }
    if (u < 10) {
        *p++ = (char)('0' + (int)u);
        return p;
    }
    char tmp[20];
    int k = 0;
    while (u) {
        tmp[k++] = (char)('0' + (int)(u % 10));
        u /= 10;
    }
    while (k) {
        *p++ = tmp[--k];
    }
    return p;
}

static int
w_int(Writer *w, long long v)
{
    if (w_reserve(w, 21) < 0) {
        return -1;
    }
    w->len = (size_t)(put_int(w->buf + w->len, v) - w->buf);
    return 0;
}

static int
w_counts(Writer *w, const int64_t *c, Py_ssize_t n)
{
    if (w_reserve(w, (size_t)n * 21 + 2) < 0) {
        return -1;
    }
    char *p = w->buf + w->len;
    *p++ = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i) {
            *p++ = ',';
        }
        p = put_int(p, (long long)c[i]);
    }
    *p++ = ']';
    w->len = (size_t)(p - w->buf);
    return 0;
}

static int
w_float(Writer *w, double v)
{
    if (!isfinite(v)) {
        PyErr_SetString(PyExc_ValueError, "Out of range float values are not JSON compliant");
        return -1;
    }
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (s == NULL) {
        return -1;
    }
    int r = w_raw(w, s, strlen(s));
    PyMem_Free(s);
    return r;
}

static PyObject *
Window_window_json(Window *self, PyObject *Py_UNUSED(ignored))
{
    fold_chunk(self);
    flush_rows(self);
    const Layout *L = self->L;
    Writer w = {NULL, 0, 0};
    if (w_reserve(&w, (size_t)(L->total + L->nf + 64) * 3 + 400) < 0 ||
        W_LIT(&w, "{\"format\":1,\"count\":") < 0 || w_int(&w, self->count) < 0 ||
        W_LIT(&w, ",\"errors\":") < 0 || w_int(&w, self->errors) < 0 ||
        W_LIT(&w, ",\"non_finite_outputs\":") < 0 || w_int(&w, self->non_finite) < 0 ||
        W_LIT(&w, ",\"features\":[") < 0) {
        goto bad;
    }
    for (Py_ssize_t j = 0; j < L->nf; j++) {
        if ((j && W_LIT(&w, ",") < 0) || w_counts(&w, self->fc + L->offsets[j], L->sizes[j] + 1) < 0) {
            goto bad;
        }
    }
    if (W_LIT(&w, "],\"feature_non_finite\":") < 0 || w_counts(&w, self->fnf, L->nf) < 0 ||
        W_LIT(&w, ",\"class_counts\":") < 0 || w_counts(&w, self->cls, L->ncls) < 0 ||
        W_LIT(&w, ",\"confidence_counts\":") < 0 || w_counts(&w, self->conf, L->nconf + 1) < 0 ||
        W_LIT(&w, ",\"latency_counts\":") < 0 || w_counts(&w, self->lat, L->nlat + 1) < 0 ||
        W_LIT(&w, ",\"latency_sum_ms\":") < 0 || w_float(&w, self->lat_sum) < 0 ||
        W_LIT(&w, ",\"latency_max_ms\":") < 0 || w_float(&w, self->lat_max) < 0 ||
        W_LIT(&w, "}") < 0) {
        goto bad;
    }
    PyObject *bytes = PyBytes_FromStringAndSize(w.buf, (Py_ssize_t)w.len);
    PyMem_Free(w.buf);
    return bytes;
bad:
    PyMem_Free(w.buf);
    return NULL;
}

static PyMethodDef Window_methods[] = {
    {"update", (PyCFunction)(void (*)(void))Window_update, METH_FASTCALL | METH_KEYWORDS,
     "update(features, outputs, latency_ms, error=False): count one prediction"},
    {"_rows", (PyCFunction)(void (*)(void))Window_rows, METH_FASTCALL,
     "_rows(n, x, out, latency, errors): count n rows of normalized arrays"},
    {"reset", (PyCFunction)Window_reset, METH_NOARGS, "forget all counts"},
    {"release", (PyCFunction)Window_release, METH_NOARGS,
     "end the block (the latency chunk), as window() does"},
    {"_fresh", (PyCFunction)Window_fresh, METH_NOARGS, "an empty window of the same layout"},
    {"_arrays", (PyCFunction)Window_arrays, METH_NOARGS, "the counts as lists"},
    {"window", (PyCFunction)Window_window, METH_NOARGS, "the window as plain JSON values"},
    {"window_json", (PyCFunction)Window_window_json, METH_NOARGS,
     "the window as compact JSON bytes"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Window_members[] = {
    {"count", T_LONGLONG, offsetof(Window, count), READONLY, "predictions counted"},
    {"errors", T_LONGLONG, offsetof(Window, errors), READONLY, "predictions that failed"},
    {"non_finite_outputs", T_LONGLONG, offsetof(Window, non_finite), READONLY,
     "predictions with non-finite scores"},
    {"lat_sum", T_DOUBLE, offsetof(Window, lat_sum), READONLY,
     "latency sum of the folded chunks"},
    {"lat_max", T_DOUBLE, offsetof(Window, lat_max), READONLY,
     "latency maximum of the folded chunks"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edgeops_protocol._faststats.Window",
    .tp_basicsize = sizeof(Window),
    .tp_dealloc = (destructor)Window_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Window(features, confidence_edges, n_classes, latency_edges): the counts of "
              "one statistics window (see edgeops_protocol.stats)",
    .tp_methods = Window_methods,
    .tp_members = Window_members,
    .tp_new = Window_new,
};

/* --- the C API ------------------------------------------------------------------------- */

static int
add_row(PyObject *window, PyObject *x, PyObject *out, double latency_ms, long long limit,
        Py_ssize_t width)
{
    Window *w = (Window *)window;
    const Py_ssize_t nf = w->L->nf;
    if (limit > 0 && w->count + 1 >= limit) {
        return 0;
    }
    int xkind = np_type(x);
    if ((xkind != NPK_F32 && xkind != NPK_F64) || NP_HEAD(x)->nd < 2 ||
        NP_HEAD(x)->dimensions[0] != 1 || np_size(x) != width || (nf && nf != width)) {
        return 0;
    }
    int error = out == Py_None, okind = NPK_NONE;
    if (!error) {
        okind = np_kind(out);
        if (okind != NPK_F32 && okind != NPK_F64) {
            return 0;
        }
    }
    const char *xd = NP_HEAD(x)->data;
    double small[256];
    void *gathered = NULL;
    if (nf && np_kind(x) == NPK_NONE) { /* strided (e.g. a slice of a Fortran array) */
        float *row = xkind == NPK_F32 ? next_row(w) : NULL;
        if (row != NULL) { /* float32: gathered straight into the row buffer */
            np_gather(x, row, nf);
            row_added(w);
            xd = NULL;
        }
        else {
            size_t bytes = (size_t)nf * (xkind == NPK_F32 ? sizeof(float) : sizeof(double));
            gathered = bytes <= sizeof(small) ? (void *)small : PyMem_Malloc(bytes);
            if (gathered == NULL) {
                return 0;
            }
            np_gather(x, gathered, nf);
            xd = (const char *)gathered;
        }
    }
    w->count++;
    if (error) {
        w->errors++;
    }
    count_row(w, xd, xkind, error ? NULL : NP_HEAD(out)->data, okind, error ? 0 : np_size(out),
              latency_ms, error);
    if (gathered != NULL && gathered != (void *)small) {
        PyMem_Free(gathered);
    }
    return 1;
}

static EdgeopsStatsCAPI c_api = {EDGEOPS_FASTSTATS_API_VERSION, &WindowType, add_row};

/* --- the module ------------------------------------------------------------------------ */

static PyObject *
set_helpers(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *row64, *out64;
    if (!PyArg_ParseTuple(args, "OO", &row64, &out64)) {
        return NULL;
    }
    Py_INCREF(row64);
    Py_INCREF(out64);
    Py_XSETREF(row64_helper, row64);
    Py_XSETREF(out64_helper, out64);
    Py_RETURN_NONE;
}

static PyObject *
pairwise(PyObject *Py_UNUSED(module), PyObject *arg)
{
    if (np_kind(arg) != NPK_F64) {
        PyErr_SetString(PyExc_TypeError, "a contiguous float64 array");
        return NULL;
    }
    double s = 0.0;
    s += pairwise_sum((const double *)NP_HEAD(arg)->data, np_size(arg));
    return PyFloat_FromDouble(s);
}

static PyMethodDef module_methods[] = {
    {"_set_helpers", set_helpers, METH_VARARGS,
     "_set_helpers(row64, out64): the Python conversions of odd rows and scores"},
    {"_sum", pairwise, METH_O, "numpy's sum of a contiguous float64 array, as this module does it"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef faststats_module = {
    PyModuleDef_HEAD_INIT, "edgeops_protocol._faststats",
    "The statistics window's accumulator in C (see edgeops_protocol.stats).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__faststats(void)
{
    if (np_mirror_init() < 0) {
        return NULL;
    }
    if (PyType_Ready(&WindowType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&faststats_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&WindowType);
    if (PyModule_AddObject(m, "Window", (PyObject *)&WindowType) < 0) {
        Py_DECREF(&WindowType);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(&c_api, EDGEOPS_FASTSTATS_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
