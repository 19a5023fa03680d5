/* edgeops firmware: feature transforms (see edgeops_features.h for the formulas). */
#include "edgeops_features.h"

#include <math.h>
#include <string.h>

/* numpy's PW_BLOCKSIZE: blocks up to this size are summed with 8 accumulators */
#define PAIRWISE_BLOCK 128u

typedef enum { TERM_X = 0, TERM_SQUARE = 1, TERM_CENTERED_SQUARE = 2 } term_t;

static double term(const double *x, uint32_t i, term_t kind, double mean)
{
    if (kind == TERM_X) {
        return x[i];
    }
    if (kind == TERM_SQUARE) {
        return x[i] * x[i];
    }
    const double y = x[i] - mean;
    return y * y;
}

/* numpy's pairwise_sum (loops_utils.h.src) over term(x, i): the same additions in the
 * same order, so the same rounding. Squares are rounded before they are added, as
 * numpy does when it sums the array x * x. */
static double pairwise(const double *x, uint32_t n, term_t kind, double mean)
{
    if (n < 8u) {
        double res = 0.0;
        for (uint32_t i = 0; i < n; i++) {
            res += term(x, i, kind, mean);
        }
        return res;
    }
    if (n <= PAIRWISE_BLOCK) {
        double r[8];
        uint32_t i;
        for (uint32_t j = 0; j < 8u; j++) {
            r[j] = term(x, j, kind, mean);
        }
        for (i = 8u; i < n - (n % 8u); i += 8u) {
            for (uint32_t j = 0; j < 8u; j++) {
                r[j] += term(x, i + j, kind, mean);
            }
        }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) {
            res += term(x, i, kind, mean);
        }
        return res;
    }
    uint32_t half = n / 2u;
    half -= half % 8u;
    return pairwise(x, half, kind, mean) + pairwise(x + half, n - half, kind, mean);
}

double edgeops_features_sum(const double *x, uint32_t n)
{
    return pairwise(x, n, TERM_X, 0.0);
}

static double window_mean(const double *x, uint32_t length)
{
    return pairwise(x, length, TERM_X, 0.0) / (double)length;
}

static double window_extreme(const double *x, uint32_t length, int want_max)
{
    double best = x[0];
    for (uint32_t i = 0; i < length; i++) {
        if (x[i] != x[i]) {
            return x[i]; /* NaN wins, as in numpy.min / numpy.max */
        }
        if (want_max ? x[i] > best : x[i] < best) {
            best = x[i];
        }
    }
    return best;
}

edgeops_err_t edgeops_features_window_stat(const double *x, uint32_t length,
                                           edgeops_window_stat_t stat, double *out)
{
    if (x == NULL || out == NULL || length < 2u) {
        return EDGEOPS_ERR_ARG;
    }
    switch (stat) {
    case EDGEOPS_STAT_MEAN:
        *out = window_mean(x, length);
        return EDGEOPS_OK;
    case EDGEOPS_STAT_STD: {
        const double mean = window_mean(x, length);
        *out = sqrt(pairwise(x, length, TERM_CENTERED_SQUARE, mean) / (double)length);
        return EDGEOPS_OK;
    }
    case EDGEOPS_STAT_MIN:
        *out = window_extreme(x, length, 0);
        return EDGEOPS_OK;
    case EDGEOPS_STAT_MAX:
        *out = window_extreme(x, length, 1);
        return EDGEOPS_OK;
    case EDGEOPS_STAT_RMS:
        *out = sqrt(pairwise(x, length, TERM_SQUARE, 0.0) / (double)length);
        return EDGEOPS_OK;
    case EDGEOPS_STAT_PTP:
        *out = window_extreme(x, length, 1) - window_extreme(x, length, 0);
        return EDGEOPS_OK;
    case EDGEOPS_STAT_ZCR: {
        const double mean = window_mean(x, length);
        uint32_t crossings = 0;
        for (uint32_t i = 0; i + 1u < length; i++) {
            const double a = x[i] - mean;
            const double b = x[i + 1u] - mean;
            if ((a < 0.0 && b > 0.0) || (b < 0.0 && a > 0.0)) {
                crossings++;
            }
        }
        *out = (double)crossings / (double)(length - 1u);
        return EDGEOPS_OK;
    }
    }
    return EDGEOPS_ERR_ARG;
}

edgeops_err_t edgeops_features_fft_bands(const double *x, uint32_t length, uint32_t bands,
                                         const double *cos_table, const double *sin_table,
                                         double *power, double *out)
{
    const uint32_t half = length / 2u;
    if (x == NULL || cos_table == NULL || sin_table == NULL || power == NULL || out == NULL ||
        length < 2u || bands < 1u || bands > half) {
        return EDGEOPS_ERR_ARG;
    }
    const double mean = window_mean(x, length);
    power[0] = 0.0; /* the DC bin of the mean-removed window is not used */
    for (uint32_t k = 1; k <= half; k++) {
        double re = 0.0;
        double im = 0.0;
        uint32_t m = 0; /* k * i mod length */
        for (uint32_t i = 0; i < length; i++) {
            const double y = x[i] - mean;
            re += y * cos_table[m];
            im -= y * sin_table[m];
            m += k;
            if (m >= length) {
                m -= length;
            }
        }
        power[k] = (re * re + im * im) / (double)length;
    }
    for (uint32_t b = 0; b < bands; b++) {
        const uint32_t first = 1u + b * half / bands;
        const uint32_t stop = 1u + (b + 1u) * half / bands;
        out[b] = pairwise(power + first, stop - first, TERM_X, 0.0);
    }
    return EDGEOPS_OK;
}

double edgeops_features_clip(double v, int has_lower, double lower, int has_upper,
                             double upper)
{
    /* written so that NaN stays NaN, as numpy.maximum / numpy.minimum keep it */
    if (has_lower && v < lower) {
        v = lower;
    }
    if (has_upper && v > upper) {
        v = upper;
    }
    return v;
}

double edgeops_features_scale(double v, double center, double scale)
{
    return (v - center) / scale;
}

int edgeops_features_one_hot(const char *value, const char *const *categories, uint32_t n,
                             double *out)
{
    int unknown = 1;
    for (uint32_t j = 0; j < n; j++) {
        const int hit = value != NULL && strcmp(value, categories[j]) == 0;
        out[j] = hit ? 1.0 : 0.0;
        if (hit) {
            unknown = 0;
        }
    }
    return unknown;
}

static edgeops_err_t run_step(const edgeops_feature_spec_t *spec, const edgeops_feature_step_t *s,
                              const edgeops_feature_value_t *raw, double *f, uint32_t *pos,
                              double *scratch)
{
    const edgeops_feature_input_t *in = s->input < spec->n_inputs ? &spec->inputs[s->input] : NULL;
    const uint32_t n_out = spec->n_features;
    switch (s->op) {
    case EDGEOPS_FEATURE_WINDOW_STATS:
        if (in == NULL || in->kind != EDGEOPS_FEATURE_INPUT_WINDOW || s->stats == NULL ||
            raw[s->input].values == NULL || *pos + s->count > n_out) {
            return EDGEOPS_ERR_ARG;
        }
        for (uint32_t j = 0; j < s->count; j++) {
            const edgeops_err_t err = edgeops_features_window_stat(
                raw[s->input].values, in->length, (edgeops_window_stat_t)s->stats[j], &f[*pos]);
            if (err != EDGEOPS_OK) {
                return err;
            }
            (*pos)++;
        }
        return EDGEOPS_OK;
    case EDGEOPS_FEATURE_FFT_BANDS: {
        if (in == NULL || in->kind != EDGEOPS_FEATURE_INPUT_WINDOW ||
            raw[s->input].values == NULL || *pos + s->count > n_out ||
            in->length > spec->max_window) {
            return EDGEOPS_ERR_ARG;
        }
        const edgeops_err_t err =
            edgeops_features_fft_bands(raw[s->input].values, in->length, s->count, s->cos_table,
                                       s->sin_table, scratch, &f[*pos]);
        *pos += s->count;
        return err;
    }
    case EDGEOPS_FEATURE_WINDOW_RAW:
        if (in == NULL || in->kind != EDGEOPS_FEATURE_INPUT_WINDOW ||
            raw[s->input].values == NULL || *pos + in->length > n_out) {
            return EDGEOPS_ERR_ARG;
        }
        for (uint32_t j = 0; j < in->length; j++) {
            f[(*pos)++] = raw[s->input].values[j];
        }
        return EDGEOPS_OK;
    case EDGEOPS_FEATURE_SELECT:
        if (s->indices == NULL || *pos + s->count > n_out) {
            return EDGEOPS_ERR_ARG;
        }
        for (uint32_t j = 0; j < s->count; j++) {
            const uint32_t i = s->indices[j];
            if (i >= spec->n_inputs || spec->inputs[i].kind != EDGEOPS_FEATURE_INPUT_NUMERIC ||
                raw[i].values == NULL) {
                return EDGEOPS_ERR_ARG;
            }
            f[(*pos)++] = raw[i].values[0];
        }
        return EDGEOPS_OK;
    case EDGEOPS_FEATURE_ONE_HOT:
        if (in == NULL || in->kind != EDGEOPS_FEATURE_INPUT_CATEGORICAL ||
            s->categories == NULL || *pos + s->count > n_out) {
            return EDGEOPS_ERR_ARG;
        }
        if (edgeops_features_one_hot(raw[s->input].category, s->categories, s->count,
                                     &f[*pos]) &&
            s->unknown_is_error) {
            return EDGEOPS_ERR_ARG;
        }
        *pos += s->count;
        return EDGEOPS_OK;
    case EDGEOPS_FEATURE_CLIP:
    case EDGEOPS_FEATURE_SCALE:
        if (s->indices == NULL || s->first == NULL || s->second == NULL ||
            (s->op == EDGEOPS_FEATURE_CLIP && (s->has_first == NULL || s->has_second == NULL))) {
            return EDGEOPS_ERR_ARG;
        }
        for (uint32_t j = 0; j < s->count; j++) {
            const uint32_t i = s->indices[j];
            if (i >= *pos) {
                return EDGEOPS_ERR_ARG; /* only features produced by earlier steps */
            }
            f[i] = s->op == EDGEOPS_FEATURE_SCALE
                       ? edgeops_features_scale(f[i], s->first[j], s->second[j])
                       : edgeops_features_clip(f[i], s->has_first[j], s->first[j],
                                               s->has_second[j], s->second[j]);
        }
        return EDGEOPS_OK;
    }
    return EDGEOPS_ERR_ARG;
}

edgeops_err_t edgeops_features_run(const edgeops_feature_spec_t *spec,
                                   const edgeops_feature_value_t *raw, double *work,
                                   size_t work_len, float *out, uint32_t out_len)
{
    uint32_t pos = 0;
    if (spec == NULL || raw == NULL || work == NULL || out == NULL) {
        return EDGEOPS_ERR_ARG;
    }
    if (work_len < EDGEOPS_FEATURES_WORK(spec->n_features, spec->max_window) ||
        out_len < spec->n_features) {
        return EDGEOPS_ERR_SPACE;
    }
    for (uint32_t i = 0; i < spec->n_steps; i++) {
        const edgeops_err_t err =
            run_step(spec, &spec->steps[i], raw, work, &pos, work + spec->n_features);
        if (err != EDGEOPS_OK) {
            return err;
        }
    }
    if (pos != spec->n_features) {
        return EDGEOPS_ERR_ARG;
    }
    for (uint32_t j = 0; j < spec->n_features; j++) {
        out[j] = (float)work[j];
    }
    return EDGEOPS_OK;
}
