/* edgeops firmware: the models a device runs, behind one interface.
 *
 * edgeops_model_load() takes an artifact's bytes (kept by the caller while the
 * model is used) and the manifest's model.format:
 *
 *   c-emlearn   the loadable emlearn form "EOML" (docs/firmware.md, "Artifact
 *               format"): a scikit-learn forest or tree as emlearn's node,
 *               root and leaf tables with float32 thresholds, evaluated as
 *               emlearn's generated C does; or an MLP run by emlearn's eml_net.
 *   tflite      a TFLite flatbuffer ("TFL3"), the tflm variant's artifact (runtime
 *               tflm), run by TFLite Micro when built with EDGEOPS_WITH_TFLM=1 and a
 *               runner: runners/tflm/edgeops_model_tflm.cc (the board SDK's TFLM) or,
 *               on the host port, ports/host/host_tflm.c (the tflite-micro
 *               interpreter in a coprocess). "c-tflm" is taken as a synonym for a
 *               built-in flatbuffer; over the air its artifact is C source and refused.
 *
 * edgeops_model_predict() writes the class index and n_outputs scores. For
 * emlearn models the scores are the one-hot vector of the class, which is what
 * the variant's baseline was built from (edgeops.pipeline.variants: emlearn
 * reports class indices), so telemetry confidence compares like with like. TFLM
 * runners quantize float features for an int8 input tensor and dequantize int8
 * scores with the functions below, so every runner does the same arithmetic as
 * the Python side (edgeops_agent.runtime.tflite.quantize / dequantize).
 */
#ifndef EDGEOPS_MODEL_H
#define EDGEOPS_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_config.h"
#include "edgeops_err.h"

#define EDGEOPS_ARTIFACT_MAGIC "EOML"
#define EDGEOPS_ARTIFACT_VERSION 1u
#define EDGEOPS_ARTIFACT_HEADER 32u

typedef enum {
    EDGEOPS_MODEL_NONE = 0,
    EDGEOPS_MODEL_TREES = 1,
    EDGEOPS_MODEL_MLP = 2,
    EDGEOPS_MODEL_TFLM = 3
} edgeops_model_kind_t;

typedef struct {
    uint32_t n_inputs;
    uint32_t n_outputs;
    uint32_t activation; /* emlearn's EmlNetActivationFunction */
    const float *weights; /* n_inputs * n_outputs, emlearn's layout: w[o + i * n_outputs] */
    const float *biases;
} edgeops_mlp_layer_t;

typedef struct {
    edgeops_model_kind_t kind;
    uint32_t n_features;
    uint32_t n_outputs; /* scores per prediction (classes) */
    const uint8_t *data;
    uint32_t size;
    /* trees */
    uint32_t n_nodes;
    uint32_t n_trees;
    uint32_t n_leaves;
    uint32_t leaf_bits; /* 0: a leaf is a class (majority vote); 8: class proportions */
    const uint8_t *nodes;
    const uint8_t *roots;
    const uint8_t *leaves;
    /* mlp */
    uint32_t n_layers;
    uint32_t width; /* widest layer */
    edgeops_mlp_layer_t layers[EDGEOPS_MLP_MAX_LAYERS];
    float act1[EDGEOPS_MLP_MAX_WIDTH];
    float act2[EDGEOPS_MLP_MAX_WIDTH];
    /* tflm: the plug-in's own state */
    void *tflm;
} edgeops_model_t;

edgeops_err_t edgeops_model_load(edgeops_model_t *m, const char *format, const uint8_t *data,
                                 uint32_t size, char *reason, size_t cap);
edgeops_err_t edgeops_model_predict(edgeops_model_t *m, const float *x, uint32_t n_x,
                                    float *scores, uint32_t n_scores, int32_t *cls);
void edgeops_model_unload(edgeops_model_t *m);

/* implemented in edgeops_model_emlearn.c (the one file that includes emlearn's headers) */
edgeops_err_t edgeops_model_emlearn_load(edgeops_model_t *m, const uint8_t *data, uint32_t size,
                                         char *reason, size_t cap);
edgeops_err_t edgeops_model_emlearn_predict(edgeops_model_t *m, const float *x, int32_t *cls);

/* TFLite flatbuffers, for the TFLM runners (pure C99, built with or without TFLM) */

/* EDGEOPS_OK when data is a TFLite flatbuffer (file identifier "TFL3" at byte 4); else
 * EDGEOPS_ERR_MODEL and a reason (C source, e.g. the c-tflm variant, is named as such) */
edgeops_err_t edgeops_model_tflite_check(const uint8_t *data, uint32_t size, char *reason,
                                         size_t cap);
/* float -> int8 as TFLite's Python side does: clamp(round_half_even(x / scale) + zero_point,
 * -128, 127) in float32; NaN gives zero_point (the quantized 0.0) */
void edgeops_model_quantize_int8(const float *x, uint32_t n, float scale, int32_t zero_point,
                                 int8_t *q);
/* int8 -> float: (q - zero_point) * scale in float32 */
void edgeops_model_dequantize_int8(const int8_t *q, uint32_t n, float scale, int32_t zero_point,
                                   float *out);
/* the first index of the largest score (NaN never wins) */
int32_t edgeops_model_argmax(const float *scores, uint32_t n);

#if EDGEOPS_WITH_TFLM
/* implemented by a TFLM runner: runners/tflm/edgeops_model_tflm.cc (the board SDK's TFLite
 * Micro) or ports/host/host_tflm.c (the host port: the tflite-micro interpreter in a
 * coprocess). load checks the flatbuffer and sets n_features / n_outputs; predict
 * quantizes, invokes, dequantizes and takes the argmax; unload frees the interpreter. */
edgeops_err_t edgeops_model_tflm_load(edgeops_model_t *m, const uint8_t *data, uint32_t size,
                                      char *reason, size_t cap);
edgeops_err_t edgeops_model_tflm_predict(edgeops_model_t *m, const float *x, uint32_t n_x,
                                         float *scores, uint32_t n_scores, int32_t *cls);
void edgeops_model_tflm_unload(edgeops_model_t *m);
#endif

#endif /* EDGEOPS_MODEL_H */
