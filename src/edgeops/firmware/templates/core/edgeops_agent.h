/* edgeops firmware: the device agent — desired manifests in, deployments, state,
 * events and telemetry out (docs/protocol.md), as edgeops_agent (Python) does.
 *
 * A port owns one edgeops_agent_t (static: it holds every buffer, see
 * edgeops_config.h) and drives it from one thread:
 *
 *   edgeops_agent_init(&a, &device, &storage, &port, &options);
 *   edgeops_agent_set_sampling(&a, 60, 0);     optional: samples per hour, bytes per hour
 *   edgeops_agent_start(&a);                   state record, active model, resume
 *   edgeops_agent_offline_state(&a, buf, cap); the last will to connect with
 *   ... connect ...  edgeops_agent_connected(&a);
 *   on every MQTT message: edgeops_agent_message(&a, topic, payload, len);
 *   every 100 ms to 1 s:   edgeops_agent_tick(&a);
 *   the application:       edgeops_agent_predict(&a, x, n, &prediction);
 *                          edgeops_agent_label(&a, prediction.sample_id, "walk");  (later)
 *   on shutdown:           edgeops_agent_stop(&a);
 *
 * Nothing here blocks or allocates; the port's callbacks do the I/O.
 */
#ifndef EDGEOPS_AGENT_H
#define EDGEOPS_AGENT_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_config.h"
#include "edgeops_err.h"
#include "edgeops_json.h"
#include "edgeops_manifest.h"
#include "edgeops_model.h"
#include "edgeops_state.h"
#include "edgeops_stats.h"
#include "edgeops_storage.h"

enum { EDGEOPS_LOG_ERROR = 0, EDGEOPS_LOG_WARNING = 1, EDGEOPS_LOG_INFO = 2 };

typedef struct {
    void *ctx;
    /* QoS 1; EDGEOPS_ERR_IO when it cannot be sent now (the message is then kept) */
    edgeops_err_t (*publish)(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                             int retain);
    edgeops_err_t (*subscribe)(void *ctx, const char *topic);
    edgeops_err_t (*unsubscribe)(void *ctx, const char *topic);
    double (*wall_time)(void *ctx);      /* Unix seconds (manifest expiry, message times) */
    uint64_t (*monotonic_us)(void *ctx); /* latency, download timeouts */
    uint32_t (*random_u32)(void *ctx);   /* the boot id */
    void (*log)(void *ctx, int level, const char *text); /* may be NULL */
} edgeops_port_t;

typedef struct {
    uint32_t window_count;     /* predictions per telemetry window; 0: by time only */
    double window_s;           /* seconds per window; 0: by count only */
    double download_stall_s;   /* subscribe to the chunks again after this long without one */
    double download_timeout_s; /* fail the download after this long without a new chunk */
    const char *const *tags;
    uint32_t n_tags;
} edgeops_agent_options_t;

/* "<device>/<boot>/<seq>" of a sample */
#define EDGEOPS_SAMPLE_ID_MAX (EDGEOPS_ID_MAX + EDGEOPS_BOOT_MAX + 16u)

typedef struct {
    int32_t cls;
    const char *label; /* serving.labels[cls], or NULL */
    uint32_t n_scores;
    float scores[EDGEOPS_MAX_CLASSES];
    double latency_ms;
    /* the sample_id when this prediction was sampled (a label for it may follow), else "" */
    char sample_id[EDGEOPS_SAMPLE_ID_MAX];
} edgeops_prediction_t;

typedef struct {
    uint32_t messages;
    uint32_t dropped_oversized;
    uint32_t unknown_topic;
    uint32_t other_device;
    uint32_t rejected;
    uint32_t already_handled;
    uint32_t chunks_stored;
    uint32_t chunks_duplicate;
    uint32_t chunks_bad;
    uint32_t chunks_unexpected;
    uint32_t deployments;
    uint32_t rollbacks;
    uint32_t windows;
    uint32_t publish_failed;
    uint32_t storage_errors;
    uint32_t samples;              /* sample messages made */
    uint32_t samples_skipped;      /* drawn, but with a non-finite value or too big to send */
    uint32_t sampling_config_bad;  /* a serving.sampling not usable: the device's budget used */
    uint32_t labels;
} edgeops_agent_counters_t;

typedef enum {
    EDGEOPS_PHASE_IDLE = 0,
    EDGEOPS_PHASE_DOWNLOADING = 1
} edgeops_phase_t;

typedef struct {
    edgeops_phase_t phase;
    int slot;
    int64_t seq;
    char deployment[EDGEOPS_DEPLOYMENT_MAX + 1];
    char rollout[EDGEOPS_ROLLOUT_MAX + 1];
    uint8_t has_rollout;
    uint8_t sha256[32];
    char sha_hex[65];
    uint32_t size;
    uint32_t chunk_size;
    uint32_t n_chunks;
    uint32_t received; /* chunks held: the bits of state.progress.have */
    uint32_t resumed;  /* held from before (a restart, an earlier attempt), re-verified */
    uint32_t damaged;  /* were held, failed their SHA-256 when re-read: downloaded again */
    uint32_t written;  /* chunks written to the slot since this download (re)started */
    uint8_t restarted; /* a chunk did not read back as written: the slot was erased once */
    uint32_t manifest_len;
    uint8_t chunk_hashes[EDGEOPS_MAX_CHUNKS][32];
    /* the chunks held are a->state.progress.have (persisted with the state record) */
    uint8_t bad[(EDGEOPS_MAX_CHUNKS + 7) / 8];
    uint64_t last_chunk_us;
    uint64_t last_subscribe_us;
    int reported_decile;
} edgeops_download_t;

typedef struct {
    int active;
    double until;
    double max_error_rate;
    double latency_budget_ms;
    uint32_t count;
    uint32_t errors;
    uint32_t n_latencies;
    float latencies[EDGEOPS_PROBATION_LATENCIES];
} edgeops_probation_t;

/* which predictions become samples (docs/firmware.md, "Samples and labels"): at most
 * per_hour samples and bytes_per_hour bytes of them in each hour (0: no limit of that
 * kind; both 0: no sampling); a prediction is a candidate with probability p, twice the
 * budget over the previous hour's predictions (1 in the first hour) */
typedef struct {
    double config_per_hour; /* the device's own budget (edgeops_agent_set_sampling) */
    double config_bytes_per_hour;
    double per_hour; /* the budget in force: serving.sampling's keys over the device's */
    double bytes_per_hour;
    int hour_open;
    uint64_t hour_start_us;
    uint32_t seen;  /* predictions this hour */
    uint32_t taken; /* samples this hour */
    uint64_t bytes; /* their bytes */
    uint32_t p;     /* a prediction is a candidate when the draw is below p (~0u: always) */
    double avg_size;
    uint32_t rng;
    uint32_t seq; /* samples of this boot */
} edgeops_sampler_t;

typedef struct {
    edgeops_device_t device;
    edgeops_storage_t storage;
    edgeops_port_t port;
    edgeops_agent_options_t options;
    edgeops_state_t state;
    edgeops_agent_counters_t counters;
    char boot[EDGEOPS_BOOT_MAX];
    int connected;
    int started;
    char topic_state[EDGEOPS_TOPIC_MAX];
    char topic_desired[EDGEOPS_TOPIC_MAX];
    char topic_events[EDGEOPS_TOPIC_MAX];
    char topic_telemetry[EDGEOPS_TOPIC_MAX];
    char topic_samples[EDGEOPS_TOPIC_MAX];
    char topic_labels[EDGEOPS_TOPIC_MAX];
    char artifacts_prefix[EDGEOPS_TOPIC_MAX];
    /* the one parsed JSON document (a message, or a manifest read back from a slot) */
    edgeops_json_doc_t doc;
    edgeops_json_tok_t tokens[EDGEOPS_JSON_MAX_TOKENS];
    char text[EDGEOPS_MANIFEST_MAX_BYTES];
    edgeops_manifest_t manifest;
    /* the models of slots 0 and 1, and the bytes they run from */
    edgeops_model_t models[2];
    union {
        uint8_t bytes[EDGEOPS_MODEL_MAX_BYTES];
        uint32_t align;
    } model_buf[2];
    char formats[2][16];
    /* the active model's serving section and its open telemetry window */
    edgeops_serving_t serving;
    edgeops_stats_t window;
    int window_open;
    double window_start;
    uint32_t window_seq;
    int window_slot;
    edgeops_download_t download;
    edgeops_probation_t probation;
    edgeops_sampler_t sampler;
    /* messages waiting for the broker: [kind u8][len u32 LE][payload] ... */
    uint8_t outbox[EDGEOPS_OUTBOX_BYTES];
    uint32_t outbox_used;
    uint32_t outbox_dropped;
    char message[EDGEOPS_MESSAGE_MAX_BYTES];
    char reason[EDGEOPS_REASON_MAX + 1];
    uint8_t copy[EDGEOPS_COPY_BUFFER_BYTES];
} edgeops_agent_t;

edgeops_err_t edgeops_agent_init(edgeops_agent_t *a, const edgeops_device_t *device,
                                 const edgeops_storage_t *storage, const edgeops_port_t *port,
                                 const edgeops_agent_options_t *options);
/* the device's sampling budget (after init, before start): samples and bytes of samples
 * per hour, 0 for no limit of that kind, both 0 (the default) for no sampling; a
 * manifest's serving.sampling overrides each key it gives. EDGEOPS_ERR_ARG out of range
 * (0..1000000 samples, 0..10 GiB) */
edgeops_err_t edgeops_agent_set_sampling(edgeops_agent_t *a, double per_hour,
                                         double bytes_per_hour);
edgeops_err_t edgeops_agent_start(edgeops_agent_t *a);
/* the retained state the broker publishes as the last will ({"online": false}) */
size_t edgeops_agent_offline_state(edgeops_agent_t *a, char *buf, size_t cap);
void edgeops_agent_connected(edgeops_agent_t *a);
void edgeops_agent_disconnected(edgeops_agent_t *a);
void edgeops_agent_message(edgeops_agent_t *a, const char *topic, const uint8_t *payload,
                           size_t len);
void edgeops_agent_tick(edgeops_agent_t *a);
edgeops_err_t edgeops_agent_predict(edgeops_agent_t *a, const float *x, uint32_t n_x,
                                    edgeops_prediction_t *out);
/* ground truth for one of this device's samples (a prediction's sample_id), published on
 * the labels topic through the outbox; EDGEOPS_ERR_ARG for another device's sample id, an
 * empty label, or one over 128 characters */
edgeops_err_t edgeops_agent_label(edgeops_agent_t *a, const char *sample_id, const char *label);
/* closes the open telemetry window and publishes the offline state */
void edgeops_agent_stop(edgeops_agent_t *a);
/* the active slot's model, or NULL */
const edgeops_slot_meta_t *edgeops_agent_active(const edgeops_agent_t *a);

/* --- shared by edgeops_agent.c and edgeops_deploy.c (not for ports) ------------------- */
void edgeops_agent_log(edgeops_agent_t *a, int level, const char *fmt, ...);
double edgeops_agent_now(edgeops_agent_t *a);
/* an event about a deployment (seq, deployment, rollout) */
void edgeops_agent_event(edgeops_agent_t *a, const char *event, int64_t seq,
                         const char *deployment, const char *rollout, double progress,
                         const char *step, const char *reason);
/* an event about the download in flight (a->download): its ids, and its chunk counts
 * (chunks_total, chunks_held, chunks_resumed, chunks_damaged, chunks_written) */
void edgeops_agent_download_event(edgeops_agent_t *a, const char *event, double progress);
void edgeops_agent_publish_state(edgeops_agent_t *a);
edgeops_err_t edgeops_agent_save(edgeops_agent_t *a);
void edgeops_agent_close_window(edgeops_agent_t *a);
/* the active slot changed: serve its model, its serving section, and its probation */
void edgeops_agent_serve_active(edgeops_agent_t *a, int resume_probation);

void edgeops_deploy_desired(edgeops_agent_t *a, const uint8_t *payload, size_t len);
void edgeops_deploy_chunk(edgeops_agent_t *a, const char *topic, const uint8_t *payload,
                          size_t len);
void edgeops_deploy_tick(edgeops_agent_t *a);
void edgeops_deploy_resume(edgeops_agent_t *a);
void edgeops_deploy_announce(edgeops_agent_t *a);
void edgeops_deploy_rollback(edgeops_agent_t *a, const char *reason);
/* lowercase hex SHA-256 of the canonical JSON of serving.features (of "null" without it):
 * the fingerprint a firmware built with EDGEOPS_FEATURES_SHA256 compares */
edgeops_err_t edgeops_deploy_features_sha256(const edgeops_json_doc_t *doc, int32_t serving,
                                             char hex[65]);
/* read a slot's manifest into a->doc and its model into a->models[slot] */
edgeops_err_t edgeops_deploy_load_slot(edgeops_agent_t *a, int slot);

#endif /* EDGEOPS_AGENT_H */
