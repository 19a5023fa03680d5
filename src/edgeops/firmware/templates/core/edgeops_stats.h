/* edgeops firmware: telemetry windows, counted as edgeops_protocol.stats.WindowStats does.
 *
 * edgeops_serving_read() takes the bins a window uses from the manifest's
 * serving section, with the rules of edgeops_agent.telemetry.window_baseline:
 * feature edges from serving.baseline.features when usable and one per model
 * input (else no feature histograms), labels from serving.labels, else the
 * baseline's, else "0", "1", ...; confidence edges from the baseline, else
 * 0.0, 0.1, ..., 1.0. edgeops_stats_update() counts one prediction with the
 * bin rule of edgeops_protocol.histogram (underflow, interior bins with the
 * last one closed, overflow; non-finite values apart), and
 * edgeops_stats_write() writes the "stats" object of a telemetry message with
 * the same fields, in the same order, as WindowStats.window().
 */
#ifndef EDGEOPS_STATS_H
#define EDGEOPS_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_config.h"
#include "edgeops_err.h"
#include "edgeops_json.h"
#include "edgeops_jsonw.h"

#define EDGEOPS_STATS_FORMAT 1

typedef struct {
    uint32_t n_features; /* 0: the window counts no features */
    uint32_t edge_start[EDGEOPS_MAX_FEATURES + 1];
    double edges[EDGEOPS_MAX_EDGE_VALUES];
    uint32_t n_labels;
    uint32_t label_start[EDGEOPS_MAX_CLASSES + 1];
    char labels[EDGEOPS_LABELS_BYTES];
    uint32_t n_conf_edges;
    double conf_edges[EDGEOPS_MAX_CONFIDENCE_EDGES];
} edgeops_serving_t;

typedef struct {
    const edgeops_serving_t *serving;
    uint32_t count;
    uint32_t errors;
    uint32_t non_finite_outputs;
    uint32_t feature_counts[EDGEOPS_MAX_EDGE_VALUES + EDGEOPS_MAX_FEATURES];
    uint32_t feature_non_finite[EDGEOPS_MAX_FEATURES];
    uint32_t class_counts[EDGEOPS_MAX_CLASSES];
    uint32_t conf_counts[EDGEOPS_MAX_CONFIDENCE_EDGES + 1];
    uint32_t latency_counts[EDGEOPS_LATENCY_BINS];
    double latency_sum_ms;
    double latency_max_ms;
} edgeops_stats_t;

/* the bins of the manifest's serving section; a non-empty problem says what was unusable
 * (the window then counts less, as the Python agent's does); EDGEOPS_ERR_SPACE when the
 * baseline is over this build's limits */
edgeops_err_t edgeops_serving_read(edgeops_serving_t *s, const edgeops_json_doc_t *doc,
                                   int32_t serving, uint32_t n_features, uint32_t n_outputs,
                                   char *problem, size_t cap);
const char *edgeops_serving_label(const edgeops_serving_t *s, uint32_t k);

/* index into the len(edges) + 1 counts for a finite value (edgeops_protocol.histogram) */
uint32_t edgeops_stats_bin(const double *edges, uint32_t n_edges, double v);

void edgeops_stats_reset(edgeops_stats_t *w, const edgeops_serving_t *s);
/* one prediction: x has the model's n_x inputs; out (n_out scores) is NULL when the model
 * failed (error) */
void edgeops_stats_update(edgeops_stats_t *w, const float *x, uint32_t n_x, const float *out,
                          uint32_t n_out, double latency_ms, int error);
void edgeops_stats_write(const edgeops_stats_t *w, edgeops_jsonw_t *jw);

#endif /* EDGEOPS_STATS_H */
