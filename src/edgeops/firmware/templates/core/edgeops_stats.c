#include "edgeops_stats.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const double LATENCY_EDGES_MS[EDGEOPS_LATENCY_BINS - 1] = {
    0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
};
static const double CONFIDENCE_EDGES[11] = {0.0, 0.1, 0.2, 0.3, 0.4, 0.5,
                                            0.6, 0.7, 0.8, 0.9, 1.0};

uint32_t edgeops_stats_bin(const double *edges, uint32_t n_edges, double v)
{
    /* searchsorted(edges, v, side="right"): the number of edges <= v */
    uint32_t lo = 0;
    uint32_t hi = n_edges;
    while (lo < hi) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (edges[mid] <= v) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (n_edges > 0 && v == edges[n_edges - 1]) {
        return n_edges - 1; /* the last interior bin is closed */
    }
    return lo;
}

/* edges usable as histogram bins: at least two, finite, strictly increasing */
static int read_edges(const edgeops_json_doc_t *doc, int32_t list, double *out, uint32_t cap,
                      uint32_t *n, int *space)
{
    *space = 0;
    if (!edgeops_json_is(doc, list, EDGEOPS_JSON_ARRAY) || doc->toks[list].size < 2) {
        return 0;
    }
    if (doc->toks[list].size > cap) {
        *space = 1;
        return 0;
    }
    int32_t e = edgeops_json_first(doc, list);
    for (uint32_t i = 0; i < doc->toks[list].size; i++, e = edgeops_json_after(doc, e)) {
        if (edgeops_json_number(doc, e, &out[i]) != EDGEOPS_OK) {
            return 0;
        }
        if (i > 0 && !(out[i] > out[i - 1])) {
            return 0;
        }
    }
    *n = doc->toks[list].size;
    return 1;
}

static void note(char *problem, size_t cap, const char *text)
{
    if (problem != NULL && cap > 0 && problem[0] == '\0') {
        snprintf(problem, cap, "%s", text);
    }
}

static edgeops_err_t read_labels(edgeops_serving_t *s, const edgeops_json_doc_t *doc,
                                 int32_t list)
{
    uint32_t used = 0;
    int32_t e = edgeops_json_first(doc, list);
    s->n_labels = 0;
    for (uint32_t i = 0; i < doc->toks[list].size; i++, e = edgeops_json_after(doc, e)) {
        char text[64];
        size_t n = 0;
        if (i >= EDGEOPS_MAX_CLASSES) {
            return EDGEOPS_ERR_SPACE;
        }
        if (edgeops_json_is(doc, e, EDGEOPS_JSON_STRING)) {
            const size_t room = sizeof s->labels - used;
            if (edgeops_json_string(doc, e, s->labels + used, room, &n) != EDGEOPS_OK) {
                return EDGEOPS_ERR_SPACE;
            }
        } else {
            /* str() of a number label, as the Python agent does */
            const edgeops_json_tok_t *t = &doc->toks[e];
            double v;
            if (t->type == EDGEOPS_JSON_NUMBER && t->is_int && t->end - t->start < sizeof text) {
                n = t->end - t->start;
                memcpy(text, doc->text + t->start, n);
            } else if (edgeops_json_number(doc, e, &v) == EDGEOPS_OK) {
                n = edgeops_json_format_double(v, text, sizeof text);
            } else {
                return EDGEOPS_ERR_PROTOCOL;
            }
            if (used + n + 1 > sizeof s->labels) {
                return EDGEOPS_ERR_SPACE;
            }
            memcpy(s->labels + used, text, n);
            s->labels[used + n] = '\0';
        }
        s->label_start[i] = used;
        used += (uint32_t)n + 1;
        s->n_labels = i + 1;
    }
    s->label_start[s->n_labels] = used;
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_serving_read(edgeops_serving_t *s, const edgeops_json_doc_t *doc,
                                   int32_t serving, uint32_t n_features, uint32_t n_outputs,
                                   char *problem, size_t cap)
{
    int space = 0;
    if (problem != NULL && cap > 0) {
        problem[0] = '\0';
    }
    s->n_features = 0;
    s->edge_start[0] = 0;
    const int32_t baseline = edgeops_json_get(doc, serving, "baseline");
    const int32_t outputs = edgeops_json_get(doc, baseline, "outputs");
    const int32_t features = edgeops_json_get(doc, baseline, "features");
    if (edgeops_json_is(doc, features, EDGEOPS_JSON_ARRAY) && doc->toks[features].size > 0) {
        const uint32_t n = doc->toks[features].size;
        uint32_t used = 0;
        int ok = 1;
        int32_t f = edgeops_json_first(doc, features);
        if (n > EDGEOPS_MAX_FEATURES) {
            return EDGEOPS_ERR_SPACE;
        }
        for (uint32_t j = 0; j < n && ok; j++, f = edgeops_json_after(doc, f)) {
            uint32_t k = 0;
            ok = edgeops_json_get(doc, f, "name") >= 0 &&
                 read_edges(doc, edgeops_json_get(doc, f, "edges"), s->edges + used,
                            EDGEOPS_MAX_EDGE_VALUES - used, &k, &space);
            if (space) {
                return EDGEOPS_ERR_SPACE;
            }
            s->edge_start[j] = used;
            used += k;
        }
        if (!ok) {
            note(problem, cap, "serving.baseline.features cannot be used");
        } else if (n != n_features) {
            note(problem, cap, "serving.baseline has another number of features than the model");
        } else {
            s->n_features = n;
            s->edge_start[n] = used;
        }
    }
    /* labels: serving.labels, else the baseline's, else "0", "1", ... */
    int32_t labels = edgeops_json_get(doc, serving, "labels");
    if (!edgeops_json_is(doc, labels, EDGEOPS_JSON_ARRAY) || doc->toks[labels].size == 0) {
        labels = edgeops_json_get(doc, outputs, "labels");
    }
    if (edgeops_json_is(doc, labels, EDGEOPS_JSON_ARRAY) && doc->toks[labels].size > 0) {
        const edgeops_err_t err = read_labels(s, doc, labels);
        if (err != EDGEOPS_OK) {
            return err;
        }
    } else {
        const uint32_t n = n_outputs > 2 ? n_outputs : 2;
        uint32_t used = 0;
        if (n > EDGEOPS_MAX_CLASSES) {
            return EDGEOPS_ERR_SPACE;
        }
        for (uint32_t i = 0; i < n; i++) {
            s->label_start[i] = used;
            used += (uint32_t)snprintf(s->labels + used, sizeof s->labels - used, "%lu",
                                       (unsigned long)i) + 1;
        }
        s->n_labels = n;
        s->label_start[n] = used;
    }
    const int32_t conf = edgeops_json_get(doc, outputs, "confidence_edges");
    if (conf < 0 || !read_edges(doc, conf, s->conf_edges, EDGEOPS_MAX_CONFIDENCE_EDGES,
                                &s->n_conf_edges, &space)) {
        if (conf >= 0) {
            note(problem, cap, "serving.baseline confidence_edges are unusable");
        }
        memcpy(s->conf_edges, CONFIDENCE_EDGES, sizeof CONFIDENCE_EDGES);
        s->n_conf_edges = 11;
    }
    return EDGEOPS_OK;
}

const char *edgeops_serving_label(const edgeops_serving_t *s, uint32_t k)
{
    return k < s->n_labels ? s->labels + s->label_start[k] : NULL;
}

void edgeops_stats_reset(edgeops_stats_t *w, const edgeops_serving_t *s)
{
    memset(w, 0, sizeof *w);
    w->serving = s;
}

static uint32_t n_classes(const edgeops_serving_t *s)
{
    return s->n_labels > 0 ? s->n_labels : 1;
}

void edgeops_stats_update(edgeops_stats_t *w, const float *x, uint32_t n_x, const float *out,
                          uint32_t n_out, double latency_ms, int error)
{
    const edgeops_serving_t *s = w->serving;
    w->count++;
    if (error || out == NULL) {
        w->errors++;
    }
    if (s->n_features > 0 && n_x == s->n_features) {
        for (uint32_t j = 0; j < n_x; j++) {
            const double v = (double)x[j];
            if (!isfinite(v)) {
                w->feature_non_finite[j]++;
                continue;
            }
            const uint32_t start = s->edge_start[j];
            const uint32_t n = s->edge_start[j + 1] - start;
            w->feature_counts[start + j + edgeops_stats_bin(s->edges + start, n, v)]++;
        }
    }
    if (!error && out != NULL) {
        int finite = 1;
        for (uint32_t i = 0; i < n_out; i++) {
            finite = finite && isfinite(out[i]);
        }
        if (!finite) {
            w->non_finite_outputs++;
        } else if (n_out > 1) {
            uint32_t k = 0;
            for (uint32_t i = 1; i < n_out; i++) {
                if (out[i] > out[k]) {
                    k = i;
                }
            }
            if (k < n_classes(s)) {
                w->class_counts[k]++;
            }
            w->conf_counts[edgeops_stats_bin(s->conf_edges, s->n_conf_edges, (double)out[k])]++;
        } else {
            const double p = n_out == 1 ? (double)out[0] : 0.0;
            const uint32_t k = p >= 0.5 ? 1u : 0u;
            if (k < n_classes(s)) {
                w->class_counts[k]++;
            }
            w->conf_counts[edgeops_stats_bin(s->conf_edges, s->n_conf_edges,
                                             p > 1.0 - p ? p : 1.0 - p)]++;
        }
    }
    if (isfinite(latency_ms)) {
        w->latency_counts[edgeops_stats_bin(LATENCY_EDGES_MS, EDGEOPS_LATENCY_BINS - 1,
                                            latency_ms)]++;
        w->latency_sum_ms += latency_ms;
        if (latency_ms > w->latency_max_ms) {
            w->latency_max_ms = latency_ms;
        }
    }
}

static void counts(edgeops_jsonw_t *jw, const uint32_t *c, uint32_t n)
{
    edgeops_jsonw_array(jw);
    for (uint32_t i = 0; i < n; i++) {
        edgeops_jsonw_int(jw, (int64_t)c[i]);
    }
    edgeops_jsonw_end(jw);
}

void edgeops_stats_write(const edgeops_stats_t *w, edgeops_jsonw_t *jw)
{
    const edgeops_serving_t *s = w->serving;
    edgeops_jsonw_object(jw);
    edgeops_jsonw_key(jw, "format");
    edgeops_jsonw_int(jw, EDGEOPS_STATS_FORMAT);
    edgeops_jsonw_key(jw, "count");
    edgeops_jsonw_int(jw, (int64_t)w->count);
    edgeops_jsonw_key(jw, "errors");
    edgeops_jsonw_int(jw, (int64_t)w->errors);
    edgeops_jsonw_key(jw, "non_finite_outputs");
    edgeops_jsonw_int(jw, (int64_t)w->non_finite_outputs);
    edgeops_jsonw_key(jw, "features");
    edgeops_jsonw_array(jw);
    for (uint32_t j = 0; j < s->n_features; j++) {
        const uint32_t start = s->edge_start[j];
        const uint32_t n = s->edge_start[j + 1] - start + 1;
        counts(jw, w->feature_counts + start + j, n);
    }
    edgeops_jsonw_end(jw);
    edgeops_jsonw_key(jw, "feature_non_finite");
    counts(jw, w->feature_non_finite, s->n_features);
    edgeops_jsonw_key(jw, "class_counts");
    counts(jw, w->class_counts, n_classes(s));
    edgeops_jsonw_key(jw, "confidence_counts");
    counts(jw, w->conf_counts, s->n_conf_edges + 1);
    edgeops_jsonw_key(jw, "latency_counts");
    counts(jw, w->latency_counts, EDGEOPS_LATENCY_BINS);
    edgeops_jsonw_key(jw, "latency_sum_ms");
    edgeops_jsonw_double(jw, w->latency_sum_ms);
    edgeops_jsonw_key(jw, "latency_max_ms");
    edgeops_jsonw_double(jw, w->latency_max_ms);
    edgeops_jsonw_end(jw);
}
