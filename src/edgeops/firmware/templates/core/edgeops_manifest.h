/* edgeops firmware: the desired-state envelope — shape, HMAC, and the device's checks.
 *
 * The same rules as edgeops_protocol.manifest (parse_envelope, verify_envelope
 * with alg "hmac-sha256", validate_manifest, check_manifest) and the agent's
 * runnable check, in the Python agent's order (docs/protocol.md, "What a
 * device checks, in order"):
 *
 *   1. edgeops_manifest_envelope: protocol 1, type "desired", manifest object,
 *      signature {alg, key_id, value} strings;
 *   2. edgeops_manifest_addressed: fleet and device are this device's (others'
 *      manifests are dropped without an event);
 *   3. edgeops_manifest_verify: HMAC-SHA256 with this device's key over the
 *      canonical JSON of the manifest (edgeops_json_canonical);
 *   4. edgeops_manifest_read: every field of the right type and within bounds;
 *   5. edgeops_manifest_check: seq above accepted_seq (equal: already handled),
 *      not expired, hardware and runtime targeted, size within limits, format
 *      runnable here.
 *
 * Every function is pure: a parsed document and the device's facts in, a
 * result and a reason out. Reasons are what the rejected event reports.
 */
#ifndef EDGEOPS_MANIFEST_H
#define EDGEOPS_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_config.h"
#include "edgeops_err.h"
#include "edgeops_json.h"

typedef struct {
    const char *fleet;
    const char *device;
    const char *hardware;
    const char *const *runtimes; /* runtime packages as reported: "emlearn", "tflite-micro" */
    uint32_t n_runtimes;
    const char *hmac_key_id;
    const uint8_t *hmac_key;
    size_t hmac_key_len;
    uint32_t max_artifact_bytes;
    uint32_t max_manifest_bytes;
    /* what the device offers the firmware, reported in its state (0: not declared);
     * a rollout skips a device a variant's measured footprint does not fit */
    uint32_t flash_bytes;
    uint32_t ram_bytes;
} edgeops_device_t;

typedef struct {
    int32_t tok; /* the manifest object in the document it was read from */
    int64_t seq;
    double issued_at;
    double expires_at;
    char deployment[EDGEOPS_DEPLOYMENT_MAX + 1];
    char rollout[EDGEOPS_ROLLOUT_MAX + 1];
    uint8_t has_rollout;
    char name[EDGEOPS_NAME_MAX + 1];
    int64_t version;
    char variant[EDGEOPS_VARIANT_MAX + 1];
    char format[16];
    char runtime[16];
    uint8_t sha256[32];
    uint32_t size;
    uint32_t chunk_size;
    uint32_t n_chunks;
    int32_t chunks;         /* array of chunk SHA-256 hex strings */
    int32_t target_hardware;
    int32_t target_runtime;
    int32_t health_inputs;  /* array of input rows */
    int32_t health_outputs; /* array: a number (class index) or a row per input */
    double atol;
    double latency_budget_ms;
    double probation_s;
    double max_error_rate;
    int32_t serving;
} edgeops_manifest_t;

/* the runtime family of a runtime package ("emlearn" -> "emlearn", "tflite-micro" -> "tflm") */
const char *edgeops_manifest_family(const char *runtime);

edgeops_err_t edgeops_manifest_envelope(const edgeops_json_doc_t *doc, int32_t *manifest,
                                        char *reason, size_t cap);
int edgeops_manifest_addressed(const edgeops_json_doc_t *doc, int32_t manifest,
                               const edgeops_device_t *dev);
edgeops_err_t edgeops_manifest_verify(const edgeops_json_doc_t *doc, const edgeops_device_t *dev,
                                      char *reason, size_t cap);
edgeops_err_t edgeops_manifest_read(const edgeops_json_doc_t *doc, int32_t manifest,
                                    edgeops_manifest_t *m, char *reason, size_t cap);
/* EDGEOPS_OK: act on it; EDGEOPS_ERR_ALREADY: seq already handled; EDGEOPS_ERR_REJECTED */
edgeops_err_t edgeops_manifest_check(const edgeops_json_doc_t *doc, const edgeops_manifest_t *m,
                                     const edgeops_device_t *dev, int64_t accepted_seq,
                                     double now, char *reason, size_t cap);
/* the SHA-256 of chunk i (from the manifest's hex list) */
edgeops_err_t edgeops_manifest_chunk_hash(const edgeops_json_doc_t *doc,
                                          const edgeops_manifest_t *m, uint32_t i,
                                          uint8_t out[32]);

#endif /* EDGEOPS_MANIFEST_H */
