// edgeops firmware: the TFLite Micro runner, a plug-in for boards whose SDK ships TFLM
// (ESP-IDF: the esp-tflite-micro component; Zephyr: the tflite-micro module; Arduino:
// the Arduino_TensorFlowLite library). Build with -DEDGEOPS_WITH_TFLM=1 and this file.
//
// The artifact of a c-tflm deployment is the raw .tflite flatbuffer (file identifier
// "TFL3"), held in the agent's model buffer (EDGEOPS_MODEL_MAX_BYTES, 4-byte aligned;
// TFLM wants 16: raise the buffer's alignment if your kernels need it). One int8 or
// float32 input tensor of n_features values and one output tensor of n_outputs scores.
// Not compiled by edgeops' tests: TFLite Micro is not on the build machine as a C
// library (the tflite-micro Python package sizes the tensor arena instead).
#include <cmath>
#include <cstdio>
#include <cstring>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" {
#include "edgeops_model.h"
}

#ifndef EDGEOPS_TFLM_ARENA_BYTES
#define EDGEOPS_TFLM_ARENA_BYTES (64 * 1024)  // from `models show`: the measured arena
#endif

namespace {
alignas(16) uint8_t arena[2][EDGEOPS_TFLM_ARENA_BYTES];  // one per slot
tflite::MicroMutableOpResolver<12> resolver;
alignas(tflite::MicroInterpreter) uint8_t storage[2][sizeof(tflite::MicroInterpreter)];
bool resolver_ready = false;
const edgeops_model_t* owner[2] = {nullptr, nullptr};  // which model uses each interpreter

void add_ops() {
  if (resolver_ready) return;
  // the ops edgeops' Keras models use; add your model's (see `models show` / the .tflite)
  resolver.AddFullyConnected();
  resolver.AddConv2D();
  resolver.AddDepthwiseConv2D();
  resolver.AddMaxPool2D();
  resolver.AddAveragePool2D();
  resolver.AddReshape();
  resolver.AddSoftmax();
  resolver.AddRelu();
  resolver.AddQuantize();
  resolver.AddDequantize();
  resolver.AddMean();
  resolver.AddLogistic();
  resolver_ready = true;
}

int slot_of(const edgeops_model_t* m) { return m->tflm == storage[1] ? 1 : 0; }

// the interpreter this model had, else one no loaded model uses
int free_slot(const edgeops_model_t* m) {
  for (int i = 0; i < 2; i++) {
    if (owner[i] == m) return i;
  }
  for (int i = 0; i < 2; i++) {
    if (owner[i] == nullptr || owner[i]->kind != EDGEOPS_MODEL_TFLM) return i;
  }
  return 0;
}
}  // namespace

extern "C" edgeops_err_t edgeops_model_tflm_load(edgeops_model_t* m, const uint8_t* data,
                                                uint32_t size, char* reason, size_t cap) {
  if (size < 8 || std::memcmp(data + 4, "TFL3", 4) != 0) {
    std::snprintf(reason, cap, "the artifact is not a TFLite flatbuffer (C source? deploy the "
                  "flatbuffer bytes over the air)");
    return EDGEOPS_ERR_MODEL;
  }
  add_ops();
  // the agent keeps two models (serving and candidate): each gets an interpreter of its own
  const int slot = free_slot(m);
  owner[slot] = m;
  const tflite::Model* model = tflite::GetModel(data);
  auto* interp = new (storage[slot])
      tflite::MicroInterpreter(model, resolver, arena[slot], EDGEOPS_TFLM_ARENA_BYTES);
  if (interp->AllocateTensors() != kTfLiteOk) {
    std::snprintf(reason, cap, "the tensor arena of %d bytes is too small",
                  EDGEOPS_TFLM_ARENA_BYTES);
    return EDGEOPS_ERR_MODEL;
  }
  m->kind = EDGEOPS_MODEL_TFLM;
  m->data = data;
  m->size = size;
  m->n_features = interp->input(0)->bytes / (interp->input(0)->type == kTfLiteInt8 ? 1 : 4);
  m->n_outputs = interp->output(0)->bytes / (interp->output(0)->type == kTfLiteInt8 ? 1 : 4);
  m->tflm = storage[slot];
  return EDGEOPS_OK;
}

extern "C" edgeops_err_t edgeops_model_tflm_predict(edgeops_model_t* m, const float* x,
                                                   uint32_t n_x, float* scores,
                                                   uint32_t n_scores, int32_t* cls) {
  auto* interp = reinterpret_cast<tflite::MicroInterpreter*>(storage[slot_of(m)]);
  TfLiteTensor* in = interp->input(0);
  if (in->type == kTfLiteInt8) {
    for (uint32_t i = 0; i < n_x; i++) {
      const float q = std::round(x[i] / in->params.scale) + in->params.zero_point;
      in->data.int8[i] = static_cast<int8_t>(q < -128 ? -128 : q > 127 ? 127 : q);
    }
  } else {
    std::memcpy(in->data.f, x, sizeof(float) * n_x);
  }
  if (interp->Invoke() != kTfLiteOk) return EDGEOPS_ERR_MODEL;
  const TfLiteTensor* out = interp->output(0);
  int32_t best = 0;
  for (uint32_t i = 0; i < m->n_outputs && i < n_scores; i++) {
    scores[i] = out->type == kTfLiteInt8
                    ? (out->data.int8[i] - out->params.zero_point) * out->params.scale
                    : out->data.f[i];
    if (scores[i] > scores[best]) best = static_cast<int32_t>(i);
  }
  *cls = best;
  return EDGEOPS_OK;
}

extern "C" void edgeops_model_tflm_unload(edgeops_model_t* m) {
  for (int i = 0; i < 2; i++) {
    if (owner[i] == m) owner[i] = nullptr;
  }
  m->tflm = nullptr;
}
