#include "edgeops_model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

edgeops_err_t edgeops_model_load(edgeops_model_t *m, const char *format, const uint8_t *data,
                                 uint32_t size, char *reason, size_t cap)
{
    memset(m, 0, sizeof *m);
    if (strcmp(format, "c-emlearn") == 0) {
        if (size >= 2 && data[0] == '/' && (data[1] == '*' || data[1] == '/')) {
            snprintf(reason, cap,
                     "the artifact is emlearn C source (the inline form, compiled into a "
                     "firmware); over MQTT this device loads the loadable emlearn variant");
            return EDGEOPS_ERR_UNSUPPORTED;
        }
        return edgeops_model_emlearn_load(m, data, size, reason, cap);
    }
#if EDGEOPS_WITH_TFLM
    if (strcmp(format, "c-tflm") == 0) {
        return edgeops_model_tflm_load(m, data, size, reason, cap);
    }
#endif
    snprintf(reason, cap, "model format %s does not run on this device", format);
    return EDGEOPS_ERR_UNSUPPORTED;
}

edgeops_err_t edgeops_model_predict(edgeops_model_t *m, const float *x, uint32_t n_x,
                                    float *scores, uint32_t n_scores, int32_t *cls)
{
    if (m->kind == EDGEOPS_MODEL_NONE) {
        return EDGEOPS_ERR_NO_MODEL;
    }
    if (n_x != m->n_features || n_scores < m->n_outputs) {
        return EDGEOPS_ERR_ARG;
    }
#if EDGEOPS_WITH_TFLM
    if (m->kind == EDGEOPS_MODEL_TFLM) {
        return edgeops_model_tflm_predict(m, x, n_x, scores, n_scores, cls);
    }
#endif
    const edgeops_err_t err = edgeops_model_emlearn_predict(m, x, cls);
    if (err != EDGEOPS_OK) {
        return err;
    }
    for (uint32_t i = 0; i < m->n_outputs; i++) {
        scores[i] = (int32_t)i == *cls ? 1.0f : 0.0f;
    }
    return EDGEOPS_OK;
}

void edgeops_model_unload(edgeops_model_t *m)
{
#if EDGEOPS_WITH_TFLM
    if (m->kind == EDGEOPS_MODEL_TFLM) {
        edgeops_model_tflm_unload(m);
    }
#endif
    m->kind = EDGEOPS_MODEL_NONE;
}
