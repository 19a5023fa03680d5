/* edgeops firmware application glue: raw sample -> feature transforms -> model.
 *
 * `edgeops firmware generate` writes, next to this file, the model's feature spec
 * (edgeops_feature_params.h/.c: the fitted transforms of edgeops_protocol.features
 * as data) and the model itself (edgeops_model_data.h/.c): the loadable emlearn
 * artifact (EOML) as a C array, emlearn's inline C, or a TFLite flatbuffer for
 * TFLite Micro. An application:
 *
 *   static edgeops_app_t app;
 *   edgeops_app_init(&app, reason, sizeof reason);     loads the built-in model
 *   edgeops_app_raw(&app, samples, categories);        a flat buffer -> the raw sample
 *   edgeops_app_features(&app);                        -> app.features
 *   edgeops_app_predict(&app, &cls);                   the built-in model, or with an
 *   edgeops_agent_predict(&agent, app.features, EDGEOPS_APP_N_FEATURES, &p);
 *                                                      the model received over the air
 *
 * The transforms compiled in are the ones this model was trained with: a model
 * deployed over the air later must have been trained on the same fitted features
 * (docs/firmware.md, "Generated projects").
 */
#ifndef EDGEOPS_APP_H
#define EDGEOPS_APP_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_err.h"
#include "edgeops_feature_params.h"
#include "edgeops_features.h"
#include "edgeops_model.h"
#include "edgeops_model_data.h"

typedef struct {
    edgeops_model_t model; /* the built-in model (EOML or TFLM) */
    int loaded;
    edgeops_feature_value_t raw[EDGEOPS_APP_N_INPUTS];
    double work[EDGEOPS_FEATURES_WORK(EDGEOPS_APP_N_FEATURES, EDGEOPS_APP_MAX_WINDOW)];
    float features[EDGEOPS_APP_N_FEATURES];
    float scores[EDGEOPS_APP_N_CLASSES];
} edgeops_app_t;

/* EDGEOPS_ERR_UNSUPPORTED (and a reason) when this build cannot run the built-in model,
 * e.g. a TFLite model without EDGEOPS_WITH_TFLM; the transforms work regardless */
edgeops_err_t edgeops_app_init(edgeops_app_t *app, char *reason, size_t cap);

/* Point app->raw at one sample: `samples` holds the numeric and window inputs in the
 * spec's input order (EDGEOPS_APP_RAW_DOUBLES doubles, edgeops_app_raw_offsets),
 * `categories` one string (or NULL: missing) per input, used for categorical ones
 * (may be NULL when the spec has none). The buffers must outlive the prediction. */
void edgeops_app_raw(edgeops_app_t *app, const double *samples, const char *const *categories);

/* app->raw -> app->features */
edgeops_err_t edgeops_app_features(edgeops_app_t *app);

/* the built-in model on app->features */
edgeops_err_t edgeops_app_predict(edgeops_app_t *app, int32_t *cls);

#endif /* EDGEOPS_APP_H */
