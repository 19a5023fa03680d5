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
    if (strcmp(format, "tflite") == 0 || strcmp(format, "c-tflm") == 0) {
#if EDGEOPS_WITH_TFLM
        return edgeops_model_tflm_load(m, data, size, reason, cap);
#else
        snprintf(reason, cap,
                 "model format %s needs TFLite Micro (a firmware built with EDGEOPS_WITH_TFLM=1)",
                 format);
        return EDGEOPS_ERR_UNSUPPORTED;
#endif
    }
    snprintf(reason, cap, "model format %s does not run on this device", format);
    return EDGEOPS_ERR_UNSUPPORTED;
}

edgeops_err_t edgeops_model_tflite_check(const uint8_t *data, uint32_t size, char *reason,
                                         size_t cap)
{
    if (size >= 8 && memcmp(data + 4, "TFL3", 4) == 0) {
        return EDGEOPS_OK;
    }
    if (size >= 2 && data[0] == '/' && (data[1] == '*' || data[1] == '/')) {
        snprintf(reason, cap,
                 "the artifact is C source (the c-tflm variant, compiled into a firmware); over "
                 "the air this device loads the tflm variant, the flatbuffer itself");
    } else {
        snprintf(reason, cap, "the artifact is not a TFLite flatbuffer (no TFL3 identifier)");
    }
    return EDGEOPS_ERR_MODEL;
}

void edgeops_model_quantize_int8(const float *x, uint32_t n, float scale, int32_t zero_point,
                                 int8_t *q)
{
    for (uint32_t i = 0; i < n; i++) {
        /* float32 division and numpy's rounding (half to even: nearbyintf in the default
         * rounding mode), then the zero point, then the clamp */
        float v = nearbyintf(x[i] / scale) + (float)zero_point;
        if (v != v) {
            v = (float)zero_point;
        }
        q[i] = (int8_t)(v < -128.0f ? -128 : v > 127.0f ? 127 : (int32_t)v);
    }
}

void edgeops_model_dequantize_int8(const int8_t *q, uint32_t n, float scale, int32_t zero_point,
                                   float *out)
{
    for (uint32_t i = 0; i < n; i++) {
        out[i] = ((float)q[i] - (float)zero_point) * scale;
    }
}

int32_t edgeops_model_argmax(const float *scores, uint32_t n)
{
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++) {
        if (scores[i] > scores[best] || (scores[best] != scores[best] && scores[i] == scores[i])) {
            best = (int32_t)i;
        }
    }
    return best;
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
