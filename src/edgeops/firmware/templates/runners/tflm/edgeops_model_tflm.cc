// edgeops firmware: the TFLite Micro runner, a plug-in for boards whose SDK ships TFLM
// (ESP-IDF: the esp-tflite-micro component; Zephyr: the tflite-micro module; Arduino:
// the Arduino_TensorFlowLite library). Build with -DEDGEOPS_WITH_TFLM=1 and this file.
//
// The artifact of a tflm deployment (format "tflite", runtime "tflm") is the raw .tflite
// flatbuffer (file identifier "TFL3"), held in the agent's model buffer
// (EDGEOPS_MODEL_MAX_BYTES, 4-byte aligned; TFLM wants 16: raise the buffer's alignment
// if your kernels need it). One int8 or float32 input tensor of n_features values and one
// output tensor of n_outputs scores. Quantization, dequantization and the argmax are the
// core's (edgeops_model.h), the same as the host port's runner (ports/host/host_tflm.c)
// and the Python side's. Not compiled by edgeops' tests: TFLite Micro is not on the build
// machine as a C library; the host runner executes the same interface with the
// tflite-micro Python package's interpreter in a coprocess.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" {
#include "edgeops_model.h"
}

#ifndef TFLITE_SCHEMA_VERSION  // tensorflow/lite/version.h, not in every TFLM distribution
#define TFLITE_SCHEMA_VERSION 3
#endif

// EDGEOPS_TFLM_ARENA_BYTES (edgeops_config.h, 64 KiB by default): at least the tflm
// variant's measured arena_bytes (`edgeops models show`)

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
  const edgeops_err_t checked = edgeops_model_tflite_check(data, size, reason, cap);
  if (checked != EDGEOPS_OK) return checked;
  add_ops();
  // the agent keeps two models (serving and candidate): each gets an interpreter of its own
  const int slot = free_slot(m);
  owner[slot] = m;
  const tflite::Model* model = tflite::GetModel(data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    owner[slot] = nullptr;
    std::snprintf(reason, cap, "the flatbuffer has schema version %u, this TFLM reads %u",
                  static_cast<unsigned>(model->version()),
                  static_cast<unsigned>(TFLITE_SCHEMA_VERSION));
    return EDGEOPS_ERR_MODEL;
  }
  auto* interp = new (storage[slot])
      tflite::MicroInterpreter(model, resolver, arena[slot], EDGEOPS_TFLM_ARENA_BYTES);
  if (interp->AllocateTensors() != kTfLiteOk) {
    owner[slot] = nullptr;
    std::snprintf(reason, cap, "the tensor arena of %u bytes is too small",
                  static_cast<unsigned>(EDGEOPS_TFLM_ARENA_BYTES));
    return EDGEOPS_ERR_MODEL;
  }
  const TfLiteTensor* in = interp->input(0);
  const TfLiteTensor* out = interp->output(0);
  if ((in->type != kTfLiteInt8 && in->type != kTfLiteFloat32) ||
      (out->type != kTfLiteInt8 && out->type != kTfLiteFloat32)) {
    owner[slot] = nullptr;
    std::snprintf(reason, cap, "the model's input and output must be int8 or float32 tensors");
    return EDGEOPS_ERR_MODEL;
  }
  const uint32_t n_in = in->bytes / (in->type == kTfLiteInt8 ? 1 : 4);
  const uint32_t n_out = out->bytes / (out->type == kTfLiteInt8 ? 1 : 4);
  if (n_in == 0 || n_in > EDGEOPS_MAX_FEATURES || n_out == 0 || n_out > EDGEOPS_MAX_CLASSES) {
    owner[slot] = nullptr;
    std::snprintf(reason, cap, "the model takes %u values and gives %u; this build allows "
                  "%u and %u", static_cast<unsigned>(n_in), static_cast<unsigned>(n_out),
                  static_cast<unsigned>(EDGEOPS_MAX_FEATURES),
                  static_cast<unsigned>(EDGEOPS_MAX_CLASSES));
    return EDGEOPS_ERR_MODEL;
  }
  m->kind = EDGEOPS_MODEL_TFLM;
  m->data = data;
  m->size = size;
  m->n_features = n_in;
  m->n_outputs = n_out;
  m->tflm = storage[slot];
  return EDGEOPS_OK;
}

extern "C" edgeops_err_t edgeops_model_tflm_predict(edgeops_model_t* m, const float* x,
                                                   uint32_t n_x, float* scores,
                                                   uint32_t n_scores, int32_t* cls) {
  auto* interp = reinterpret_cast<tflite::MicroInterpreter*>(storage[slot_of(m)]);
  TfLiteTensor* in = interp->input(0);
  if (in->type == kTfLiteInt8) {
    edgeops_model_quantize_int8(x, n_x, in->params.scale, in->params.zero_point,
                                in->data.int8);
  } else {
    std::memcpy(in->data.f, x, sizeof(float) * n_x);
  }
  if (interp->Invoke() != kTfLiteOk) return EDGEOPS_ERR_MODEL;
  const TfLiteTensor* out = interp->output(0);
  const uint32_t n = m->n_outputs < n_scores ? m->n_outputs : n_scores;
  if (out->type == kTfLiteInt8) {
    edgeops_model_dequantize_int8(out->data.int8, n, out->params.scale,
                                  out->params.zero_point, scores);
  } else {
    std::memcpy(scores, out->data.f, sizeof(float) * n);
  }
  *cls = edgeops_model_argmax(scores, n);
  return EDGEOPS_OK;
}

extern "C" void edgeops_model_tflm_unload(edgeops_model_t* m) {
  for (int i = 0; i < 2; i++) {
    if (owner[i] == m) owner[i] = nullptr;
  }
  m->tflm = nullptr;
}
