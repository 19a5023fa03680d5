/* edgeops firmware application glue (see edgeops_app.h). */
#include "edgeops_app.h"

#include <stdio.h>
#include <string.h>

edgeops_err_t edgeops_app_init(edgeops_app_t *app, char *reason, size_t cap)
{
    memset(app, 0, sizeof *app);
#if EDGEOPS_APP_MODEL_INLINE
    (void)reason;
    (void)cap;
    app->loaded = 1;
    return EDGEOPS_OK;
#elif EDGEOPS_APP_MODEL_TFLM && !EDGEOPS_WITH_TFLM
    snprintf(reason, cap,
             "the built-in model is a TFLite flatbuffer; build with EDGEOPS_WITH_TFLM=1 and "
             "TFLite Micro from the board SDK (runners/tflm) to run it");
    return EDGEOPS_ERR_UNSUPPORTED;
#else
    const edgeops_err_t err = edgeops_model_load(&app->model, EDGEOPS_APP_MODEL_FORMAT,
                                                 edgeops_app_model, edgeops_app_model_len,
                                                 reason, cap);
    app->loaded = err == EDGEOPS_OK;
    return err;
#endif
}

void edgeops_app_raw(edgeops_app_t *app, const double *samples, const char *const *categories)
{
    for (uint32_t i = 0; i < EDGEOPS_APP_N_INPUTS; i++) {
        const edgeops_feature_input_t *in = &edgeops_app_feature_spec.inputs[i];
        app->raw[i].values =
            in->kind == EDGEOPS_FEATURE_INPUT_CATEGORICAL ? NULL
                                                          : samples + edgeops_app_raw_offsets[i];
        app->raw[i].category = in->kind == EDGEOPS_FEATURE_INPUT_CATEGORICAL && categories != NULL
                                   ? categories[i]
                                   : NULL;
    }
}

edgeops_err_t edgeops_app_features(edgeops_app_t *app)
{
    return edgeops_features_run(&edgeops_app_feature_spec, app->raw, app->work,
                                sizeof app->work / sizeof app->work[0], app->features,
                                EDGEOPS_APP_N_FEATURES);
}

edgeops_err_t edgeops_app_predict(edgeops_app_t *app, int32_t *cls)
{
    if (!app->loaded) {
        return EDGEOPS_ERR_NO_MODEL;
    }
#if EDGEOPS_APP_MODEL_INLINE
    const int32_t out = edgeops_app_inline_predict(app->features, EDGEOPS_APP_N_FEATURES);
    if (out < 0 || (uint32_t)out >= EDGEOPS_APP_N_CLASSES) {
        return EDGEOPS_ERR_MODEL;
    }
    *cls = out;
    return EDGEOPS_OK;
#else
    return edgeops_model_predict(&app->model, app->features, EDGEOPS_APP_N_FEATURES, app->scores,
                                 EDGEOPS_APP_N_CLASSES, cls);
#endif
}
