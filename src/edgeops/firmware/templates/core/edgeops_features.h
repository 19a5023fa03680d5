/* edgeops firmware: the feature transforms of edgeops_protocol.features, in C.
 *
 * A model trained by edgeops reads features, not raw samples: window statistics
 * and FFT band energies of sensor windows, selected numeric inputs, clipping,
 * scaling and one-hot categories (edgeops_protocol.feature_spec). These are the
 * same formulas (edgeops_protocol.transforms, "the contract a C port
 * implements"), computed in double as Python computes them in float64, and
 * rounded to float once at the end, as Python's float32 cast does:
 *
 *   mean  (1/L) sum x[i]            std   sqrt((1/L) sum (x[i] - mean)^2)
 *   min   min x[i]                  max   max x[i]
 *   rms   sqrt((1/L) sum x[i]^2)    ptp   max - min
 *   zcr   (1/(L-1)) #{i : y[i] < 0 < y[i+1] or y[i+1] < 0 < y[i]}, y = x - mean
 *   fft_bands  P[k] = |DFT(y)[k]|^2 / L for k = 1 .. L/2; band b sums the bins
 *              1 + (b*M)/B <= k <= ((b+1)*M)/B, M = L/2
 *   clip  min(max(v, lower), upper), a missing bound skipped
 *   scale (v - center) / scale
 *   one_hot  1 for the matching category (strcmp with Python's str(value)), else 0
 *
 * Sums use numpy's pairwise summation (edgeops_features_sum), so window_stats are
 * bit for bit numpy's; fft_bands is a direct DFT over a table of cos/sin(2 pi m / L)
 * (generated in Python) where numpy runs pocketfft: equal within float rounding
 * (docs/firmware.md, "Feature transforms", gives the tolerance `edgeops firmware
 * test` holds them to). NaN propagates as in numpy: min, max, clip and the sums
 * keep it; zcr does not count it.
 *
 * A spec (edgeops_feature_spec_t) is data: `edgeops firmware generate` writes one
 * per model from its fitted feature spec (app/edgeops_feature_params.c).
 * edgeops_features_run() runs it on one raw sample. No allocation: the caller
 * gives a work buffer of EDGEOPS_FEATURES_WORK(n_features, longest window) doubles.
 */
#ifndef EDGEOPS_FEATURES_H
#define EDGEOPS_FEATURES_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_err.h"

typedef enum {
    EDGEOPS_FEATURE_INPUT_WINDOW = 0,
    EDGEOPS_FEATURE_INPUT_NUMERIC = 1,
    EDGEOPS_FEATURE_INPUT_CATEGORICAL = 2
} edgeops_feature_input_kind_t;

/* window statistics, in edgeops_protocol.feature_spec.WINDOW_STATS order */
typedef enum {
    EDGEOPS_STAT_MEAN = 0,
    EDGEOPS_STAT_STD = 1,
    EDGEOPS_STAT_MIN = 2,
    EDGEOPS_STAT_MAX = 3,
    EDGEOPS_STAT_RMS = 4,
    EDGEOPS_STAT_PTP = 5,
    EDGEOPS_STAT_ZCR = 6
} edgeops_window_stat_t;

typedef enum {
    EDGEOPS_FEATURE_WINDOW_STATS = 0,
    EDGEOPS_FEATURE_FFT_BANDS = 1,
    EDGEOPS_FEATURE_WINDOW_RAW = 2,
    EDGEOPS_FEATURE_SELECT = 3,
    EDGEOPS_FEATURE_CLIP = 4,
    EDGEOPS_FEATURE_SCALE = 5,
    EDGEOPS_FEATURE_ONE_HOT = 6
} edgeops_feature_op_t;

typedef struct {
    const char *name;
    edgeops_feature_input_kind_t kind;
    uint32_t length; /* window: samples per window; numeric: 1; categorical: 0 */
} edgeops_feature_input_t;

/* One step. Producing steps (window_stats, fft_bands, window_raw, select, one_hot)
 * append their features to the output in order; clip and scale rewrite features
 * already produced, named by their positions. */
typedef struct {
    edgeops_feature_op_t op;
    uint32_t input;           /* window_stats, fft_bands, window_raw, one_hot: input index */
    uint32_t count;           /* stats, bands, inputs (select), features (clip, scale),
                                 categories (one_hot) */
    const uint8_t *stats;     /* window_stats: edgeops_window_stat_t per produced feature */
    const uint16_t *indices;  /* select: input indices; clip, scale: feature positions */
    const double *first;      /* scale: center; clip: lower */
    const double *second;     /* scale: scale; clip: upper */
    const uint8_t *has_first; /* clip: 1 when the lower bound is given */
    const uint8_t *has_second;/* clip: 1 when the upper bound is given */
    const char *const *categories; /* one_hot, in the fitted order */
    uint8_t unknown_is_error; /* one_hot: an unknown or missing category is an error */
    const double *cos_table;  /* fft_bands: cos(2 pi m / L) for m = 0 .. L-1 */
    const double *sin_table;  /* fft_bands: sin(2 pi m / L) */
} edgeops_feature_step_t;

typedef struct {
    const edgeops_feature_input_t *inputs;
    uint32_t n_inputs;
    const edgeops_feature_step_t *steps;
    uint32_t n_steps;
    uint32_t n_features;
    uint32_t max_window; /* the longest window input (0 without windows) */
    const char *spec_hash; /* edgeops_protocol.features spec_hash of the spec */
} edgeops_feature_spec_t;

/* One raw input value of a sample, in the spec's input order. */
typedef struct {
    const double *values;  /* window: `length` samples; numeric: one value */
    const char *category;  /* categorical: str(value) as Python writes it; NULL: missing */
} edgeops_feature_value_t;

/* doubles of work space edgeops_features_run needs */
#define EDGEOPS_FEATURES_WORK(n_features, max_window) \
    ((size_t)(n_features) + (size_t)(max_window) / 2u + 1u)

/* numpy's pairwise summation of x[0..n-1] (numpy.add.reduce on contiguous doubles) */
double edgeops_features_sum(const double *x, uint32_t n);

/* one window statistic of x[0..length-1] (length >= 2) */
edgeops_err_t edgeops_features_window_stat(const double *x, uint32_t length,
                                           edgeops_window_stat_t stat, double *out);

/* the energies of `bands` bands (1 <= bands <= length / 2); `power` holds
 * length / 2 + 1 doubles of work space */
edgeops_err_t edgeops_features_fft_bands(const double *x, uint32_t length, uint32_t bands,
                                         const double *cos_table, const double *sin_table,
                                         double *power, double *out);

double edgeops_features_clip(double v, int has_lower, double lower, int has_upper,
                             double upper);
double edgeops_features_scale(double v, double center, double scale);

/* out[j] = 1 for the category equal to `value`, else 0; returns 1 when `value` is in
 * none of the categories (or NULL), else 0 */
int edgeops_features_one_hot(const char *value, const char *const *categories, uint32_t n,
                             double *out);

/* The features of one raw sample: out[0 .. spec->n_features - 1]. EDGEOPS_ERR_ARG for
 * a spec or sample that does not hold together, or an unknown category where the spec
 * says unknown: error; EDGEOPS_ERR_SPACE when work or out is too small. */
edgeops_err_t edgeops_features_run(const edgeops_feature_spec_t *spec,
                                   const edgeops_feature_value_t *raw, double *work,
                                   size_t work_len, float *out, uint32_t out_len);

#endif /* EDGEOPS_FEATURES_H */
