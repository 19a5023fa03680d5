/* edgeops firmware: compile-time sizes of every static buffer (the memory budget).
 *
 * The core never allocates: each limit below sizes an array inside
 * edgeops_agent_t (see docs/firmware.md, "Memory budget"). Override any of
 * them with -DNAME=value, or put them in a header of your own and build with
 * -DEDGEOPS_USER_CONFIG='"my_config.h"'. The defaults suit the host port and
 * an ESP32 with a few hundred KiB of RAM; a Cortex-M4 with 128 KiB wants
 * smaller ones (docs/firmware.md lists a profile).
 */
#ifndef EDGEOPS_CONFIG_H
#define EDGEOPS_CONFIG_H

#ifdef EDGEOPS_USER_CONFIG
#include EDGEOPS_USER_CONFIG
#endif

/* the desired-state envelope (manifest with baseline and health vectors) */
#ifndef EDGEOPS_MANIFEST_MAX_BYTES
#define EDGEOPS_MANIFEST_MAX_BYTES 65536u
#endif
/* JSON tokens of one parsed message: about one per number, string and container */
#ifndef EDGEOPS_JSON_MAX_TOKENS
#define EDGEOPS_JSON_MAX_TOKENS 8192u
#endif
#ifndef EDGEOPS_JSON_MAX_DEPTH
#define EDGEOPS_JSON_MAX_DEPTH 24u
#endif
/* the model artifact; two of these buffers exist (serving + candidate) */
#ifndef EDGEOPS_MODEL_MAX_BYTES
#define EDGEOPS_MODEL_MAX_BYTES 262144u
#endif
/* chunks of one artifact (their SHA-256s are kept: 32 bytes each) */
#ifndef EDGEOPS_MAX_CHUNKS
#define EDGEOPS_MAX_CHUNKS 256u
#endif
/* largest chunk_size accepted (one MQTT payload) */
#ifndef EDGEOPS_CHUNK_MAX_BYTES
#define EDGEOPS_CHUNK_MAX_BYTES 65536u
#endif
/* model inputs, baseline bin edges (all features together), classes */
#ifndef EDGEOPS_MAX_FEATURES
#define EDGEOPS_MAX_FEATURES 256u
#endif
#ifndef EDGEOPS_MAX_EDGE_VALUES
#define EDGEOPS_MAX_EDGE_VALUES 4096u
#endif
#ifndef EDGEOPS_MAX_CLASSES
#define EDGEOPS_MAX_CLASSES 64u
#endif
#ifndef EDGEOPS_MAX_CONFIDENCE_EDGES
#define EDGEOPS_MAX_CONFIDENCE_EDGES 32u
#endif
/* label names (serving.labels), all together, NUL-terminated */
#ifndef EDGEOPS_LABELS_BYTES
#define EDGEOPS_LABELS_BYTES 2048u
#endif
/* one outgoing message (a telemetry window is the largest) */
#ifndef EDGEOPS_MESSAGE_MAX_BYTES
#define EDGEOPS_MESSAGE_MAX_BYTES 16384u
#endif
/* events and windows waiting for the broker; the oldest are dropped when full */
#ifndef EDGEOPS_OUTBOX_BYTES
#define EDGEOPS_OUTBOX_BYTES 32768u
#endif
/* latencies kept for the probation median (the Python agent keeps 1000) */
#ifndef EDGEOPS_PROBATION_LATENCIES
#define EDGEOPS_PROBATION_LATENCIES 64u
#endif
/* emlearn MLP: widest layer and number of layers */
#ifndef EDGEOPS_MLP_MAX_WIDTH
#define EDGEOPS_MLP_MAX_WIDTH 256u
#endif
#ifndef EDGEOPS_MLP_MAX_LAYERS
#define EDGEOPS_MLP_MAX_LAYERS 8u
#endif
/* bytes read from storage at a time when hashing or copying a slot */
#ifndef EDGEOPS_COPY_BUFFER_BYTES
#define EDGEOPS_COPY_BUFFER_BYTES 1024u
#endif
/* 1: run TFLite flatbuffers (format "tflite", runtime "tflm") with a TFLite Micro runner:
 * runners/tflm/ on a board (the SDK's TFLM), ports/host/host_tflm.c on the host */
#ifndef EDGEOPS_WITH_TFLM
#define EDGEOPS_WITH_TFLM 0
#endif
/* TFLM's tensor arena per loaded model (the tflm variant records what it needs: arena_bytes) */
#ifndef EDGEOPS_TFLM_ARENA_BYTES
#define EDGEOPS_TFLM_ARENA_BYTES 65536u
#endif
/* EDGEOPS_FEATURES_SHA256 "<64 hex digits>": the SHA-256 of the canonical JSON of the fitted
 * feature transforms compiled into this firmware (`edgeops firmware generate` defines it in
 * app/edgeops_board_config.h). A manifest whose serving.features hash differently is
 * rejected. Not defined: not checked (the host firmware takes feature vectors). */

#define EDGEOPS_PROTOCOL 1
#define EDGEOPS_FIRMWARE_VERSION "0.1.0"
#define EDGEOPS_ID_MAX 64u           /* fleet and device ids */
#define EDGEOPS_NAME_MAX 128u        /* model name (state message limit) */
#define EDGEOPS_VARIANT_MAX 64u
#define EDGEOPS_DEPLOYMENT_MAX 160u
#define EDGEOPS_ROLLOUT_MAX 64u
#define EDGEOPS_REASON_MAX 1024u
#define EDGEOPS_TOPIC_MAX 192u
#define EDGEOPS_BOOT_MAX 32u
#define EDGEOPS_LATENCY_BINS 16u     /* fixed by the protocol */
/* the state record: about 1 KiB, plus one bit per chunk of the download progress */
#define EDGEOPS_STATE_RECORD_MAX (1536u + (EDGEOPS_MAX_CHUNKS + 7u) / 8u)

#endif /* EDGEOPS_CONFIG_H */
