/* The agent's lifecycle, messages out (state, events, telemetry), predictions and
 * probation. Deployments are in edgeops_deploy.c. */
#include "edgeops_agent.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeops_codec.h"
#include "edgeops_jsonw.h"

enum { OUT_EVENT = 0, OUT_TELEMETRY = 1, OUT_SAMPLE = 2, OUT_LABEL = 3 };
#define PROBATION_MIN_PREDICTIONS 20u

static void sampler_start(edgeops_agent_t *a);

void edgeops_agent_log(edgeops_agent_t *a, int level, const char *fmt, ...)
{
    char text[320];
    va_list ap;
    if (a->port.log == NULL) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    a->port.log(a->port.ctx, level, text);
}

double edgeops_agent_now(edgeops_agent_t *a)
{
    return a->port.wall_time(a->port.ctx);
}

static int topic(char *out, const char *fleet, const char *device, const char *kind)
{
    const int n = snprintf(out, EDGEOPS_TOPIC_MAX, "edgeops/%s/devices/%s/%s", fleet, device, kind);
    return n > 0 && n < (int)EDGEOPS_TOPIC_MAX;
}

edgeops_err_t edgeops_agent_init(edgeops_agent_t *a, const edgeops_device_t *device,
                                 const edgeops_storage_t *storage, const edgeops_port_t *port,
                                 const edgeops_agent_options_t *options)
{
    memset(a, 0, sizeof *a);
    if (device == NULL || edgeops_storage_check(storage) != EDGEOPS_OK || port == NULL ||
        port->publish == NULL || port->subscribe == NULL || port->unsubscribe == NULL ||
        port->wall_time == NULL || port->monotonic_us == NULL || port->random_u32 == NULL ||
        options == NULL || device->hmac_key == NULL) {
        return EDGEOPS_ERR_ARG;
    }
    a->device = *device;
    a->storage = *storage;
    a->port = *port;
    a->options = *options;
    if (a->options.download_stall_s <= 0) {
        a->options.download_stall_s = 10.0;
    }
    if (a->options.download_timeout_s <= 0) {
        a->options.download_timeout_s = 300.0;
    }
    /* the artifact must fit a model buffer and a slot; the envelope a manifest region */
    uint32_t limit = storage->capacity(storage->ctx, EDGEOPS_REGION_ARTIFACT);
    if (limit > EDGEOPS_MODEL_MAX_BYTES) {
        limit = EDGEOPS_MODEL_MAX_BYTES;
    }
    if (a->device.max_artifact_bytes == 0 || a->device.max_artifact_bytes > limit) {
        a->device.max_artifact_bytes = limit;
    }
    limit = storage->capacity(storage->ctx, EDGEOPS_REGION_MANIFEST);
    if (limit > EDGEOPS_MANIFEST_MAX_BYTES) {
        limit = EDGEOPS_MANIFEST_MAX_BYTES;
    }
    a->device.max_manifest_bytes = limit;
    if (!topic(a->topic_state, device->fleet, device->device, "state") ||
        !topic(a->topic_desired, device->fleet, device->device, "desired") ||
        !topic(a->topic_events, device->fleet, device->device, "events") ||
        !topic(a->topic_telemetry, device->fleet, device->device, "telemetry") ||
        !topic(a->topic_samples, device->fleet, device->device, "samples") ||
        !topic(a->topic_labels, device->fleet, device->device, "labels")) {
        return EDGEOPS_ERR_ARG;
    }
    snprintf(a->artifacts_prefix, sizeof a->artifacts_prefix, "edgeops/%s/artifacts/",
             device->fleet);
    edgeops_state_reset(&a->state);
    a->window_slot = EDGEOPS_NO_SLOT;
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_agent_save(edgeops_agent_t *a)
{
    const edgeops_err_t err = edgeops_state_save(&a->state, &a->storage);
    if (err != EDGEOPS_OK) {
        a->counters.storage_errors++;
        edgeops_agent_log(a, EDGEOPS_LOG_ERROR, "cannot write the state record: %s",
                          edgeops_err_str(err));
    }
    return err;
}

edgeops_err_t edgeops_agent_start(edgeops_agent_t *a)
{
    edgeops_err_t err = edgeops_state_load(&a->state, &a->storage);
    if (err != EDGEOPS_OK) {
        return err;
    }
    a->state.boot++;
    err = edgeops_agent_save(a);
    if (err != EDGEOPS_OK) {
        return err;
    }
    snprintf(a->boot, sizeof a->boot, "%lu-%08lx", (unsigned long)a->state.boot,
             (unsigned long)a->port.random_u32(a->port.ctx));
    sampler_start(a);
    a->started = 1;
    edgeops_agent_serve_active(a, 1);
    edgeops_deploy_resume(a);
    edgeops_agent_log(a, EDGEOPS_LOG_INFO, "agent %s/%s started (boot %s)", a->device.fleet,
                      a->device.device, a->boot);
    return EDGEOPS_OK;
}

const edgeops_slot_meta_t *edgeops_agent_active(const edgeops_agent_t *a)
{
    const int slot = a->state.active;
    if (slot == EDGEOPS_NO_SLOT || !a->state.slots[slot].valid ||
        a->models[slot].kind == EDGEOPS_MODEL_NONE) {
        return NULL;
    }
    return &a->state.slots[slot];
}

/* --- the outbox: events and windows wait here while the broker is away --------------- */

static const char *out_topic(edgeops_agent_t *a, int kind)
{
    switch (kind) {
    case OUT_EVENT:
        return a->topic_events;
    case OUT_SAMPLE:
        return a->topic_samples;
    case OUT_LABEL:
        return a->topic_labels;
    default:
        return a->topic_telemetry;
    }
}

static void outbox_drop_first(edgeops_agent_t *a)
{
    const uint32_t len = (uint32_t)a->outbox[1] | ((uint32_t)a->outbox[2] << 8) |
                         ((uint32_t)a->outbox[3] << 16) | ((uint32_t)a->outbox[4] << 24);
    const uint32_t entry = 5u + len;
    memmove(a->outbox, a->outbox + entry, a->outbox_used - entry);
    a->outbox_used -= entry;
}

static void outbox_flush(edgeops_agent_t *a)
{
    while (a->connected && a->outbox_used > 0) {
        const uint32_t len = (uint32_t)a->outbox[1] | ((uint32_t)a->outbox[2] << 8) |
                             ((uint32_t)a->outbox[3] << 16) | ((uint32_t)a->outbox[4] << 24);
        if (a->port.publish(a->port.ctx, out_topic(a, a->outbox[0]), a->outbox + 5, len, 0) !=
            EDGEOPS_OK) {
            a->counters.publish_failed++;
            return;
        }
        outbox_drop_first(a);
    }
}

static void send(edgeops_agent_t *a, int kind, const char *payload, size_t len, int keep)
{
    if (a->connected && a->outbox_used == 0) {
        if (a->port.publish(a->port.ctx, out_topic(a, kind), (const uint8_t *)payload, len, 0) ==
            EDGEOPS_OK) {
            return;
        }
        a->counters.publish_failed++;
    }
    if (!keep) {
        return;
    }
    const uint32_t need = 5u + (uint32_t)len;
    if (need > sizeof a->outbox) {
        a->outbox_dropped++;
        return;
    }
    while (a->outbox_used + need > sizeof a->outbox) {
        outbox_drop_first(a);
        a->outbox_dropped++;
    }
    uint8_t *p = a->outbox + a->outbox_used;
    p[0] = (uint8_t)kind;
    for (unsigned i = 0; i < 4; i++) {
        p[1 + i] = (uint8_t)((uint32_t)len >> (8 * i));
    }
    memcpy(p + 5, payload, len);
    a->outbox_used += need;
    outbox_flush(a);
}

/* --- messages ------------------------------------------------------------------------ */

static void head(edgeops_agent_t *a, edgeops_jsonw_t *w, const char *type)
{
    edgeops_jsonw_init(w, a->message, sizeof a->message);
    edgeops_jsonw_object(w);
    edgeops_jsonw_key(w, "protocol");
    edgeops_jsonw_int(w, EDGEOPS_PROTOCOL);
    edgeops_jsonw_key(w, "type");
    edgeops_jsonw_string(w, type);
    edgeops_jsonw_key(w, "fleet");
    edgeops_jsonw_string(w, a->device.fleet);
    edgeops_jsonw_key(w, "device");
    edgeops_jsonw_string(w, a->device.device);
}

static void model_ref(edgeops_jsonw_t *w, const edgeops_slot_meta_t *m, int with_seq,
                      int with_time)
{
    char hex[65];
    edgeops_codec_hex_encode(m->sha256, 32, hex);
    edgeops_jsonw_object(w);
    edgeops_jsonw_key(w, "name");
    edgeops_jsonw_string(w, m->name);
    edgeops_jsonw_key(w, "version");
    edgeops_jsonw_int(w, m->version);
    edgeops_jsonw_key(w, "variant");
    edgeops_jsonw_string(w, m->variant);
    edgeops_jsonw_key(w, "sha256");
    edgeops_jsonw_string(w, hex);
    if (with_seq) {
        edgeops_jsonw_key(w, "seq");
        edgeops_jsonw_int(w, m->seq);
    }
    if (with_time) {
        edgeops_jsonw_key(w, "activated_at");
        edgeops_jsonw_double(w, m->activated_at);
    }
    edgeops_jsonw_end(w);
}

size_t edgeops_agent_offline_state(edgeops_agent_t *a, char *buf, size_t cap)
{
    edgeops_jsonw_t w;
    size_t len = 0;
    edgeops_jsonw_init(&w, buf, cap);
    edgeops_jsonw_object(&w);
    edgeops_jsonw_key(&w, "protocol");
    edgeops_jsonw_int(&w, EDGEOPS_PROTOCOL);
    edgeops_jsonw_key(&w, "type");
    edgeops_jsonw_string(&w, "state");
    edgeops_jsonw_key(&w, "fleet");
    edgeops_jsonw_string(&w, a->device.fleet);
    edgeops_jsonw_key(&w, "device");
    edgeops_jsonw_string(&w, a->device.device);
    edgeops_jsonw_key(&w, "online");
    edgeops_jsonw_bool(&w, 0);
    edgeops_jsonw_key(&w, "ts");
    edgeops_jsonw_double(&w, edgeops_agent_now(a));
    edgeops_jsonw_end(&w);
    return edgeops_jsonw_finish(&w, &len) == EDGEOPS_OK ? len : 0;
}

void edgeops_agent_publish_state(edgeops_agent_t *a)
{
    edgeops_jsonw_t w;
    size_t len = 0;
    if (!a->connected) {
        return;
    }
    const int active = a->state.active;
    head(a, &w, "state");
    edgeops_jsonw_key(&w, "online");
    edgeops_jsonw_bool(&w, 1);
    edgeops_jsonw_key(&w, "boot");
    edgeops_jsonw_string(&w, a->boot);
    edgeops_jsonw_key(&w, "ts");
    edgeops_jsonw_double(&w, edgeops_agent_now(a));
    edgeops_jsonw_key(&w, "agent");
    edgeops_jsonw_string(&w, "edgeops-firmware " EDGEOPS_FIRMWARE_VERSION);
    edgeops_jsonw_key(&w, "hardware");
    edgeops_jsonw_string(&w, a->device.hardware);
    edgeops_jsonw_key(&w, "runtimes");
    edgeops_jsonw_array(&w);
    for (uint32_t i = 0; i < a->device.n_runtimes; i++) {
        edgeops_jsonw_string(&w, a->device.runtimes[i]);
    }
    edgeops_jsonw_end(&w);
    edgeops_jsonw_key(&w, "accepted_seq");
    edgeops_jsonw_int(&w, a->state.accepted_seq);
    edgeops_jsonw_key(&w, "model");
    if (active != EDGEOPS_NO_SLOT && a->state.slots[active].valid) {
        model_ref(&w, &a->state.slots[active], 1, 1);
    } else {
        edgeops_jsonw_null(&w);
    }
    edgeops_jsonw_key(&w, "previous");
    if (active != EDGEOPS_NO_SLOT && a->state.slots[1 - active].valid) {
        model_ref(&w, &a->state.slots[1 - active], 1, 0);
    } else {
        edgeops_jsonw_null(&w);
    }
    edgeops_jsonw_key(&w, "tags");
    edgeops_jsonw_array(&w);
    for (uint32_t i = 0; i < a->options.n_tags; i++) {
        edgeops_jsonw_string(&w, a->options.tags[i]);
    }
    edgeops_jsonw_end(&w);
    edgeops_jsonw_key(&w, "outbox_dropped");
    edgeops_jsonw_int(&w, a->outbox_dropped);
    if (a->device.flash_bytes > 0u) {
        edgeops_jsonw_key(&w, "flash_bytes");
        edgeops_jsonw_int(&w, a->device.flash_bytes);
    }
    if (a->device.ram_bytes > 0u) {
        edgeops_jsonw_key(&w, "ram_bytes");
        edgeops_jsonw_int(&w, a->device.ram_bytes);
    }
    edgeops_jsonw_end(&w);
    if (edgeops_jsonw_finish(&w, &len) != EDGEOPS_OK) {
        edgeops_agent_log(a, EDGEOPS_LOG_ERROR, "the state message is over %u bytes",
                          (unsigned)sizeof a->message);
        return;
    }
    if (a->port.publish(a->port.ctx, a->topic_state, (const uint8_t *)a->message, len, 1) !=
        EDGEOPS_OK) {
        a->counters.publish_failed++;
    }
}

static void event_message(edgeops_agent_t *a, const char *event, int64_t seq,
                          const char *deployment, const char *rollout, double progress,
                          const char *step, const char *reason, const edgeops_download_t *d)
{
    edgeops_jsonw_t w;
    size_t len = 0;
    head(a, &w, "event");
    edgeops_jsonw_key(&w, "boot");
    edgeops_jsonw_string(&w, a->boot);
    edgeops_jsonw_key(&w, "ts");
    edgeops_jsonw_double(&w, edgeops_agent_now(a));
    edgeops_jsonw_key(&w, "seq");
    edgeops_jsonw_int(&w, seq >= 0 && seq <= (INT64_C(1) << 53) ? seq : 0);
    edgeops_jsonw_key(&w, "deployment");
    if (deployment != NULL) {
        edgeops_jsonw_string(&w, deployment);
    } else {
        edgeops_jsonw_null(&w);
    }
    edgeops_jsonw_key(&w, "rollout");
    if (rollout != NULL) {
        edgeops_jsonw_string(&w, rollout);
    } else {
        edgeops_jsonw_null(&w);
    }
    edgeops_jsonw_key(&w, "event");
    edgeops_jsonw_string(&w, event);
    edgeops_jsonw_key(&w, "reason");
    const char *why = reason != NULL ? reason : "";
    const size_t why_len = strlen(why);
    edgeops_jsonw_string_n(&w, why, why_len > 1024 ? 1024 : why_len);
    if (progress >= 0) {
        edgeops_jsonw_key(&w, "progress");
        edgeops_jsonw_double(&w, progress);
    }
    if (step != NULL) {
        edgeops_jsonw_key(&w, "step");
        edgeops_jsonw_string(&w, step);
    }
    if (d != NULL) {
        edgeops_jsonw_key(&w, "chunks_total");
        edgeops_jsonw_int(&w, d->n_chunks);
        edgeops_jsonw_key(&w, "chunks_held");
        edgeops_jsonw_int(&w, d->received);
        edgeops_jsonw_key(&w, "chunks_resumed");
        edgeops_jsonw_int(&w, d->resumed);
        edgeops_jsonw_key(&w, "chunks_damaged");
        edgeops_jsonw_int(&w, d->damaged);
        edgeops_jsonw_key(&w, "chunks_written");
        edgeops_jsonw_int(&w, d->written);
    }
    edgeops_jsonw_end(&w);
    if (edgeops_jsonw_finish(&w, &len) != EDGEOPS_OK) {
        return;
    }
    edgeops_agent_log(a, EDGEOPS_LOG_INFO, "event %s seq %lld %s", event, (long long)seq,
                      reason != NULL ? reason : "");
    /* downloading events are progress only: not kept while offline (as the Python agent) */
    send(a, OUT_EVENT, a->message, len, strcmp(event, "downloading") != 0);
}

void edgeops_agent_event(edgeops_agent_t *a, const char *event, int64_t seq,
                         const char *deployment, const char *rollout, double progress,
                         const char *step, const char *reason)
{
    event_message(a, event, seq, deployment, rollout, progress, step, reason, NULL);
}

void edgeops_agent_download_event(edgeops_agent_t *a, const char *event, double progress)
{
    const edgeops_download_t *d = &a->download;
    event_message(a, event, d->seq, d->deployment, d->has_rollout ? d->rollout : NULL, progress,
                  NULL, NULL, d);
}

/* --- telemetry windows --------------------------------------------------------------- */

void edgeops_agent_close_window(edgeops_agent_t *a)
{
    edgeops_jsonw_t w;
    size_t len = 0;
    const int slot = a->window_slot;
    if (!a->window_open) {
        return;
    }
    a->window_open = 0;
    if (a->window.count == 0 || slot == EDGEOPS_NO_SLOT) {
        return;
    }
    a->window_seq++;
    const double now = edgeops_agent_now(a);
    head(a, &w, "telemetry");
    edgeops_jsonw_key(&w, "boot");
    edgeops_jsonw_string(&w, a->boot);
    edgeops_jsonw_key(&w, "seq");
    edgeops_jsonw_int(&w, a->window_seq);
    edgeops_jsonw_key(&w, "start");
    edgeops_jsonw_double(&w, a->window_start);
    edgeops_jsonw_key(&w, "end");
    edgeops_jsonw_double(&w, now > a->window_start ? now : a->window_start);
    edgeops_jsonw_key(&w, "model");
    model_ref(&w, &a->state.slots[slot], 0, 0);
    edgeops_jsonw_key(&w, "stats");
    edgeops_stats_write(&a->window, &w);
    edgeops_jsonw_end(&w);
    if (edgeops_jsonw_finish(&w, &len) != EDGEOPS_OK) {
        a->outbox_dropped++;
        edgeops_agent_log(a, EDGEOPS_LOG_ERROR,
                          "a telemetry window is over EDGEOPS_MESSAGE_MAX_BYTES (%u); dropped",
                          (unsigned)EDGEOPS_MESSAGE_MAX_BYTES);
        return;
    }
    a->counters.windows++;
    send(a, OUT_TELEMETRY, a->message, len, 1);
}

/* --- samples (docs/protocol.md, "Samples and labels") -------------------------------- */

#define SAMPLES_PER_HOUR_MAX 1000000.0
#define SAMPLE_BYTES_PER_HOUR_MAX (10.0 * 1024.0 * 1024.0 * 1024.0)
#define HOUR_US 3600000000.0

static int budget_ok(double v, double hi)
{
    return v >= 0.0 && v <= hi; /* NaN fails */
}

edgeops_err_t edgeops_agent_set_sampling(edgeops_agent_t *a, double per_hour,
                                         double bytes_per_hour)
{
    if (!budget_ok(per_hour, SAMPLES_PER_HOUR_MAX) ||
        !budget_ok(bytes_per_hour, SAMPLE_BYTES_PER_HOUR_MAX)) {
        return EDGEOPS_ERR_ARG;
    }
    a->sampler.config_per_hour = a->sampler.per_hour = per_hour;
    a->sampler.config_bytes_per_hour = a->sampler.bytes_per_hour = bytes_per_hour;
    a->sampler.hour_open = 0;
    return EDGEOPS_OK;
}

/* a new boot: sample seq from 1, the draws seeded from "<device>/<boot>" */
static void sampler_start(edgeops_agent_t *a)
{
    edgeops_sampler_t *s = &a->sampler;
    char seed[EDGEOPS_SAMPLE_ID_MAX];
    const int n = snprintf(seed, sizeof seed, "%s/%s", a->device.device, a->boot);
    s->rng = edgeops_codec_crc32(0, (const uint8_t *)seed, n > 0 ? (size_t)n : 0u) | 1u;
    s->seq = 0;
    s->hour_open = 0;
    s->avg_size = 1024.0;
}

static uint32_t sampler_draw(edgeops_sampler_t *s)
{
    uint32_t x = s->rng; /* xorshift32 */
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    s->rng = x;
    return x;
}

/* the budget in force for the model of a->doc's manifest: each key serving.sampling gives
 * ({"per_hour": N, "bytes_per_hour": B}) over the device's own; an unusable one is
 * ignored with a warning, as the Python agent does (budget_from) */
static void sampler_configure(edgeops_agent_t *a, int32_t serving)
{
    edgeops_sampler_t *s = &a->sampler;
    double per_hour = s->config_per_hour;
    double bytes_per_hour = s->config_bytes_per_hour;
    const int32_t sampling = serving >= 0 ? edgeops_json_get(&a->doc, serving, "sampling") : -1;
    if (sampling >= 0 && !edgeops_json_is(&a->doc, sampling, EDGEOPS_JSON_NULL)) {
        int ok = edgeops_json_is(&a->doc, sampling, EDGEOPS_JSON_OBJECT);
        double v[2] = {per_hour, bytes_per_hour};
        static const char *const keys[2] = {"per_hour", "bytes_per_hour"};
        static const double limits[2] = {SAMPLES_PER_HOUR_MAX, SAMPLE_BYTES_PER_HOUR_MAX};
        uint32_t known = 0;
        for (unsigned k = 0; ok && k < 2; k++) {
            const int32_t t = edgeops_json_get(&a->doc, sampling, keys[k]);
            if (t < 0) {
                continue;
            }
            known++;
            ok = edgeops_json_is(&a->doc, t, EDGEOPS_JSON_NUMBER) &&
                 edgeops_json_number(&a->doc, t, &v[k]) == EDGEOPS_OK &&
                 budget_ok(v[k], limits[k]);
        }
        if (ok && a->doc.toks[sampling].size == known) {
            per_hour = v[0];
            bytes_per_hour = v[1];
        } else {
            a->counters.sampling_config_bad++;
            edgeops_agent_log(a, EDGEOPS_LOG_WARNING,
                              "serving.sampling must be {\"per_hour\": N, \"bytes_per_hour\": B} "
                              "(0..1000000, 0..10 GiB); using the device's sampling budget");
        }
    }
    if (per_hour != s->per_hour || bytes_per_hour != s->bytes_per_hour) {
        s->per_hour = per_hour;
        s->bytes_per_hour = bytes_per_hour;
        s->hour_open = 0; /* another budget: its hour starts with the next prediction */
    }
}

/* count one prediction; 1 if it is to be sampled (then sampler_spend) */
static int sampler_want(edgeops_agent_t *a)
{
    edgeops_sampler_t *s = &a->sampler;
    if (s->per_hour <= 0.0 && s->bytes_per_hour <= 0.0) {
        return 0;
    }
    const uint64_t now = a->port.monotonic_us(a->port.ctx);
    const double elapsed = (double)(now - s->hour_start_us);
    if (!s->hour_open || elapsed >= HOUR_US) {
        double p = 1.0;
        if (s->hour_open && s->seen > 0) { /* predictions per hour, over the last one */
            const double rate = (double)s->seen * HOUR_US / elapsed;
            double target = s->per_hour > 0.0 ? s->per_hour : rate;
            if (s->bytes_per_hour > 0.0) {
                const double by_bytes = s->bytes_per_hour / (s->avg_size > 1.0 ? s->avg_size : 1.0);
                target = by_bytes < target ? by_bytes : target;
            }
            p = 2.0 * target / rate;
        }
        s->p = p >= 1.0 ? 0xffffffffu : (uint32_t)(p * 4294967296.0);
        s->hour_open = 1;
        s->hour_start_us = now;
        s->seen = s->taken = 0;
        s->bytes = 0;
    }
    s->seen++;
    if (s->p != 0xffffffffu && sampler_draw(s) >= s->p) {
        return 0;
    }
    if (s->per_hour > 0.0 && (double)s->taken + 1.0 > s->per_hour) {
        return 0;
    }
    /* bytes: the sample that crosses the budget still goes (as the Python agent's) */
    return !(s->bytes_per_hour > 0.0 && (double)s->bytes >= s->bytes_per_hour);
}

static void sampler_spend(edgeops_sampler_t *s, size_t size)
{
    s->taken++;
    s->bytes += size;
    s->seq++;
    s->avg_size += 0.2 * ((double)size - s->avg_size);
}

/* a float32 as the Python agent writes it: the double of its %.9g (reads back the same) */
static double short_float(float v)
{
    char text[32];
    snprintf(text, sizeof text, "%.9g", (double)v);
    return strtod(text, NULL);
}

/* the sample message of one prediction into a->message; its length, 0 if it cannot be sent */
static size_t sample_message(edgeops_agent_t *a, int slot, const float *x, uint32_t n_x,
                             const edgeops_prediction_t *p, const char *sample_id)
{
    edgeops_jsonw_t w;
    size_t len = 0;
    char cls[16];
    head(a, &w, "sample");
    edgeops_jsonw_key(&w, "boot");
    edgeops_jsonw_string(&w, a->boot);
    edgeops_jsonw_key(&w, "seq");
    edgeops_jsonw_int(&w, (int64_t)a->sampler.seq + 1);
    edgeops_jsonw_key(&w, "ts");
    edgeops_jsonw_double(&w, edgeops_agent_now(a));
    edgeops_jsonw_key(&w, "sample_id");
    edgeops_jsonw_string(&w, sample_id);
    edgeops_jsonw_key(&w, "model");
    model_ref(&w, &a->state.slots[slot], 0, 0);
    edgeops_jsonw_key(&w, "input");
    edgeops_jsonw_null(&w); /* the core sees the model's inputs, not the raw sample */
    edgeops_jsonw_key(&w, "features");
    edgeops_jsonw_array(&w);
    for (uint32_t j = 0; j < n_x; j++) {
        edgeops_jsonw_double(&w, short_float(x[j]));
    }
    edgeops_jsonw_end(&w);
    edgeops_jsonw_key(&w, "outputs");
    edgeops_jsonw_array(&w);
    for (uint32_t k = 0; k < p->n_scores; k++) {
        edgeops_jsonw_double(&w, short_float(p->scores[k]));
    }
    edgeops_jsonw_end(&w);
    edgeops_jsonw_key(&w, "predicted");
    if (p->label != NULL && p->label[0] != '\0') {
        edgeops_jsonw_string(&w, p->label);
    } else {
        snprintf(cls, sizeof cls, "%ld", (long)p->cls);
        edgeops_jsonw_string(&w, cls);
    }
    edgeops_jsonw_end(&w);
    return edgeops_jsonw_finish(&w, &len) == EDGEOPS_OK ? len : 0u;
}

/* after a prediction that succeeded: maybe a sample of it (its id into out->sample_id) */
static void maybe_sample(edgeops_agent_t *a, int slot, const float *x, uint32_t n_x,
                         edgeops_prediction_t *out)
{
    char sample_id[EDGEOPS_SAMPLE_ID_MAX];
    if (!sampler_want(a)) {
        return;
    }
    int finite = 1;
    for (uint32_t j = 0; finite && j < n_x; j++) {
        finite = isfinite(x[j]);
    }
    for (uint32_t k = 0; finite && k < out->n_scores; k++) {
        finite = isfinite(out->scores[k]);
    }
    snprintf(sample_id, sizeof sample_id, "%s/%s/%lu", a->device.device, a->boot,
             (unsigned long)a->sampler.seq + 1u);
    const size_t len = finite ? sample_message(a, slot, x, n_x, out, sample_id) : 0u;
    if (len == 0) { /* no label could use it / the collector would refuse it */
        a->counters.samples_skipped++;
        return;
    }
    sampler_spend(&a->sampler, len);
    a->counters.samples++;
    snprintf(out->sample_id, sizeof out->sample_id, "%s", sample_id);
    send(a, OUT_SAMPLE, a->message, len, 1);
}

edgeops_err_t edgeops_agent_label(edgeops_agent_t *a, const char *sample_id, const char *label)
{
    edgeops_jsonw_t w;
    size_t len = 0;
    const size_t dev = strlen(a->device.device);
    if (sample_id == NULL || label == NULL || label[0] == '\0' || strlen(label) > 128 ||
        strlen(sample_id) > 200 || strncmp(sample_id, a->device.device, dev) != 0 ||
        sample_id[dev] != '/') {
        return EDGEOPS_ERR_ARG;
    }
    head(a, &w, "label");
    edgeops_jsonw_key(&w, "sample_id");
    edgeops_jsonw_string(&w, sample_id);
    edgeops_jsonw_key(&w, "label");
    edgeops_jsonw_string(&w, label);
    edgeops_jsonw_key(&w, "ts");
    edgeops_jsonw_double(&w, edgeops_agent_now(a));
    edgeops_jsonw_end(&w);
    if (edgeops_jsonw_finish(&w, &len) != EDGEOPS_OK) {
        return EDGEOPS_ERR_SPACE;
    }
    a->counters.labels++;
    send(a, OUT_LABEL, a->message, len, 1);
    return EDGEOPS_OK;
}

/* --- serving ------------------------------------------------------------------------- */

void edgeops_agent_serve_active(edgeops_agent_t *a, int resume_probation)
{
    char problem[160];
    edgeops_agent_close_window(a);
    a->probation.active = 0;
    for (;;) {
        const int slot = a->state.active;
        if (slot == EDGEOPS_NO_SLOT) {
            return;
        }
        if (edgeops_deploy_load_slot(a, slot) == EDGEOPS_OK) {
            const edgeops_model_t *m = &a->models[slot];
            const edgeops_err_t err = edgeops_serving_read(
                &a->serving, &a->doc, a->manifest.serving, m->n_features, m->n_outputs, problem,
                sizeof problem);
            if (err == EDGEOPS_OK) {
                sampler_configure(a, a->manifest.serving);
                if (problem[0] != '\0') {
                    edgeops_agent_log(a, EDGEOPS_LOG_WARNING, "%s; windows count less", problem);
                }
                const double until = a->state.slots[slot].activated_at + a->manifest.probation_s;
                if (resume_probation && until > edgeops_agent_now(a)) {
                    memset(&a->probation, 0, sizeof a->probation);
                    a->probation.active = 1;
                    a->probation.until = until;
                    a->probation.max_error_rate = a->manifest.max_error_rate;
                    a->probation.latency_budget_ms = a->manifest.latency_budget_ms;
                }
                return;
            }
            edgeops_agent_log(a, EDGEOPS_LOG_ERROR, "slot %d: serving.baseline is over this "
                              "build's limits", slot);
        }
        /* the active slot cannot be served: forget it and serve the other one, if any */
        edgeops_agent_log(a, EDGEOPS_LOG_ERROR, "active slot %d cannot be loaded (%s); "
                          "switching back", slot, a->reason);
        a->models[slot].kind = EDGEOPS_MODEL_NONE;
        a->state.slots[slot].valid = 0;
        a->state.active = a->state.slots[1 - slot].valid ? (int8_t)(1 - slot) : EDGEOPS_NO_SLOT;
        (void)edgeops_agent_save(a);
        resume_probation = 0;
    }
}

static double median(float *v, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++) { /* insertion sort: n is small */
        const float x = v[i];
        uint32_t j = i;
        while (j > 0 && v[j - 1] > x) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
    return n % 2 ? (double)v[n / 2] : ((double)v[n / 2 - 1] + (double)v[n / 2]) / 2.0;
}

/* the reason the model fails probation with this prediction, or NULL */
static const char *probation_record(edgeops_agent_t *a, int error, double latency_ms)
{
    edgeops_probation_t *p = &a->probation;
    float sorted[EDGEOPS_PROBATION_LATENCIES];
    if (!p->active || edgeops_agent_now(a) >= p->until) {
        return NULL;
    }
    p->count++;
    p->errors += error ? 1u : 0u;
    p->latencies[(p->count - 1) % EDGEOPS_PROBATION_LATENCIES] = (float)latency_ms;
    if (p->n_latencies < EDGEOPS_PROBATION_LATENCIES) {
        p->n_latencies++;
    }
    if (p->count < PROBATION_MIN_PREDICTIONS) {
        return NULL;
    }
    const double rate = (double)p->errors / (double)p->count;
    if (rate > p->max_error_rate) {
        snprintf(a->reason, sizeof a->reason,
                 "probation: error rate %.2f over %lu predictions is above %g", rate,
                 (unsigned long)p->count, p->max_error_rate);
        return a->reason;
    }
    if (p->latency_budget_ms > 0) {
        memcpy(sorted, p->latencies, sizeof(float) * p->n_latencies);
        const double p50 = median(sorted, p->n_latencies);
        if (p50 > p->latency_budget_ms) {
            snprintf(a->reason, sizeof a->reason,
                     "probation: median latency %.1f ms over %lu predictions is above the budget "
                     "of %g ms",
                     p50, (unsigned long)p->count, p->latency_budget_ms);
            return a->reason;
        }
    }
    return NULL;
}

edgeops_err_t edgeops_agent_predict(edgeops_agent_t *a, const float *x, uint32_t n_x,
                                    edgeops_prediction_t *out)
{
    const int slot = a->state.active;
    int32_t cls = -1;
    memset(out, 0, sizeof *out);
    out->cls = -1;
    if (!a->started || slot == EDGEOPS_NO_SLOT || a->models[slot].kind == EDGEOPS_MODEL_NONE) {
        return EDGEOPS_ERR_NO_MODEL;
    }
    edgeops_model_t *m = &a->models[slot];
    if (n_x != m->n_features) {
        return EDGEOPS_ERR_ARG; /* not one of its inputs: not counted (as the Python agent) */
    }
    const uint64_t t0 = a->port.monotonic_us(a->port.ctx);
    const edgeops_err_t err = edgeops_model_predict(m, x, n_x, out->scores, EDGEOPS_MAX_CLASSES,
                                                    &cls);
    const uint64_t t1 = a->port.monotonic_us(a->port.ctx);
    out->latency_ms = (double)(t1 - t0) / 1000.0;
    out->n_scores = m->n_outputs;
    int finite = err == EDGEOPS_OK;
    for (uint32_t i = 0; finite && i < out->n_scores; i++) {
        finite = isfinite(out->scores[i]);
    }
    if (err == EDGEOPS_OK) {
        out->cls = cls;
        out->label = edgeops_serving_label(&a->serving, (uint32_t)cls);
    }
    if (!a->window_open) {
        edgeops_stats_reset(&a->window, &a->serving);
        a->window_open = 1;
        a->window_start = edgeops_agent_now(a);
        a->window_slot = slot;
    }
    edgeops_stats_update(&a->window, x, n_x, err == EDGEOPS_OK ? out->scores : NULL,
                         out->n_scores, out->latency_ms, err != EDGEOPS_OK);
    if (a->options.window_count > 0 && a->window.count >= a->options.window_count) {
        edgeops_agent_close_window(a);
    }
    if (err == EDGEOPS_OK) {
        maybe_sample(a, slot, x, n_x, out);
    }
    const char *failed = probation_record(a, !finite, out->latency_ms);
    if (failed != NULL) {
        a->probation.active = 0;
        edgeops_deploy_rollback(a, failed);
    }
    return err;
}

/* --- the MQTT side ------------------------------------------------------------------- */

void edgeops_agent_connected(edgeops_agent_t *a)
{
    a->connected = 1;
    if (a->port.subscribe(a->port.ctx, a->topic_desired) != EDGEOPS_OK) {
        a->counters.publish_failed++;
    }
    edgeops_agent_publish_state(a);
    edgeops_deploy_announce(a);
    outbox_flush(a);
}

void edgeops_agent_disconnected(edgeops_agent_t *a)
{
    a->connected = 0;
}

void edgeops_agent_message(edgeops_agent_t *a, const char *topic_name, const uint8_t *payload,
                           size_t len)
{
    a->counters.messages++;
    if (strcmp(topic_name, a->topic_desired) == 0) {
        if (len > EDGEOPS_MANIFEST_MAX_BYTES) {
            a->counters.dropped_oversized++;
            edgeops_agent_log(a, EDGEOPS_LOG_WARNING,
                              "dropped a desired state of %lu bytes (limit %u)",
                              (unsigned long)len, (unsigned)EDGEOPS_MANIFEST_MAX_BYTES);
            return;
        }
        edgeops_deploy_desired(a, payload, len);
    } else if (strncmp(topic_name, a->artifacts_prefix, strlen(a->artifacts_prefix)) == 0) {
        if (len > EDGEOPS_CHUNK_MAX_BYTES) {
            a->counters.dropped_oversized++;
            return;
        }
        edgeops_deploy_chunk(a, topic_name, payload, len);
    } else {
        a->counters.unknown_topic++;
    }
}

void edgeops_agent_tick(edgeops_agent_t *a)
{
    if (!a->started) {
        return;
    }
    edgeops_deploy_tick(a);
    const double now = edgeops_agent_now(a);
    if (a->probation.active && now >= a->probation.until) {
        a->probation.active = 0;
        edgeops_agent_log(a, EDGEOPS_LOG_INFO, "probation passed after %lu predictions",
                          (unsigned long)a->probation.count);
    }
    if (a->window_open && a->options.window_s > 0 && now - a->window_start >= a->options.window_s) {
        edgeops_agent_close_window(a);
    }
    outbox_flush(a);
}

void edgeops_agent_stop(edgeops_agent_t *a)
{
    char buf[256];
    edgeops_agent_close_window(a);
    outbox_flush(a);
    if (a->connected) {
        const size_t n = edgeops_agent_offline_state(a, buf, sizeof buf);
        if (n > 0) {
            (void)a->port.publish(a->port.ctx, a->topic_state, (const uint8_t *)buf, n, 1);
        }
    }
    a->started = 0;
}
