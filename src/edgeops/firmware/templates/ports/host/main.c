/* edgeops host firmware: the portable core as an ordinary POSIX process.
 *
 *   edgeops-firmware --config device.toml
 *
 * Talks MQTT through libmosquitto (last will: the offline state, retained), keeps
 * its slots and state record in files (host_storage.c), and serves predictions on
 * standard input: one JSON array of features per line (or {"features": [...]}),
 * one JSON object per line on standard output:
 *
 *   {"class": 3, "label": "3", "scores": [0.0, ...], "latency_ms": 0.004}
 *   {"error": "no active model"}
 *
 * A sampled prediction's answer carries its "sample_id"; the line
 * {"sample_id": "...", "label": "walk"} sends the ground truth for it ({"ok": true}).
 *
 * Built with -DEDGEOPS_WITH_TFLM=1 it also runs TFLite flatbuffers (the tflm variant):
 * host_tflm.c runs TFLite Micro in a coprocess, and runtimes lists "tflite-micro".
 *
 * Telemetry windows close every window_count predictions (and every window_s
 * seconds). SIGTERM or SIGINT: the open window and the offline state are
 * published, then the process exits 0. Logs go to standard error.
 */
#include <errno.h>
#include <mosquitto.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "edgeops_agent.h"
#include "edgeops_json.h"
#include "edgeops_jsonw.h"
#include "host_config.h"
#include "host_storage.h"

#define LINE_MAX_BYTES 262144
#define LINE_TOKENS 8192
#define TICK_MS 100

static edgeops_agent_t agent;
static host_config_t config;
static host_storage_t files;
static char line[LINE_MAX_BYTES];
static size_t line_used;
static int line_overflow;
static edgeops_json_tok_t line_tokens[LINE_TOKENS];
static char answer[EDGEOPS_MESSAGE_MAX_BYTES];
static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

/* --- the port ------------------------------------------------------------------------ */

static edgeops_err_t port_publish(void *ctx, const char *topic, const uint8_t *payload,
                                  size_t len, int retain)
{
    const int rc = mosquitto_publish((struct mosquitto *)ctx, NULL, topic, (int)len, payload, 1,
                                     retain != 0);
    return rc == MOSQ_ERR_SUCCESS ? EDGEOPS_OK : EDGEOPS_ERR_IO;
}

static edgeops_err_t port_subscribe(void *ctx, const char *topic)
{
    return mosquitto_subscribe((struct mosquitto *)ctx, NULL, topic, 1) == MOSQ_ERR_SUCCESS
               ? EDGEOPS_OK
               : EDGEOPS_ERR_IO;
}

static edgeops_err_t port_unsubscribe(void *ctx, const char *topic)
{
    return mosquitto_unsubscribe((struct mosquitto *)ctx, NULL, topic) == MOSQ_ERR_SUCCESS
               ? EDGEOPS_OK
               : EDGEOPS_ERR_IO;
}

static double port_wall_time(void *ctx)
{
    struct timespec ts;
    (void)ctx;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t port_monotonic_us(void *ctx)
{
    struct timespec ts;
    (void)ctx;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint32_t port_random_u32(void *ctx)
{
    uint32_t v = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    (void)ctx;
    if (f == NULL || fread(&v, sizeof v, 1, f) != 1) {
        v = (uint32_t)time(NULL) ^ (uint32_t)getpid();
    }
    if (f != NULL) {
        fclose(f);
    }
    return v;
}

static void port_log(void *ctx, int level, const char *text)
{
    static const char *names[] = {"error", "warning", "info"};
    (void)ctx;
    fprintf(stderr, "edgeops-firmware %s: %s\n", names[level < 0 || level > 2 ? 2 : level], text);
}

/* --- MQTT ---------------------------------------------------------------------------- */

static void on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    (void)mosq;
    (void)obj;
    if (rc != 0) {
        fprintf(stderr, "edgeops-firmware warning: connection refused (%s)\n",
                mosquitto_connack_string(rc));
        return;
    }
    edgeops_agent_connected(&agent);
}

static void on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
    (void)mosq;
    (void)obj;
    (void)rc;
    edgeops_agent_disconnected(&agent);
}

static void on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *msg)
{
    (void)mosq;
    (void)obj;
    edgeops_agent_message(&agent, msg->topic, (const uint8_t *)msg->payload,
                          msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0u);
}

/* --- predictions on standard input --------------------------------------------------- */

static void reply_error(const char *text)
{
    edgeops_jsonw_t w;
    size_t n = 0;
    edgeops_jsonw_init(&w, answer, sizeof answer);
    edgeops_jsonw_object(&w);
    edgeops_jsonw_key(&w, "error");
    edgeops_jsonw_string(&w, text);
    edgeops_jsonw_end(&w);
    if (edgeops_jsonw_finish(&w, &n) == EDGEOPS_OK) {
        fprintf(stdout, "%s\n", answer);
    }
}

/* {"sample_id": "...", "label": "..."}: a label for one of this device's samples */
static void label_line(const edgeops_json_doc_t *doc)
{
    char sample_id[256];
    char label[256];
    if (edgeops_json_string(doc, edgeops_json_get(doc, 0, "sample_id"), sample_id,
                            sizeof sample_id, NULL) != EDGEOPS_OK ||
        edgeops_json_string(doc, edgeops_json_get(doc, 0, "label"), label, sizeof label, NULL) !=
            EDGEOPS_OK ||
        edgeops_agent_label(&agent, sample_id, label) != EDGEOPS_OK) {
        reply_error("a label line is {\"sample_id\": \"<this device>/...\", \"label\": \"...\"}");
        return;
    }
    fprintf(stdout, "{\"ok\":true}\n");
}

static void predict_line(const char *text, size_t len)
{
    static float x[EDGEOPS_MAX_FEATURES];
    edgeops_json_doc_t doc;
    edgeops_prediction_t p;
    edgeops_jsonw_t w;
    size_t n = 0;
    if (edgeops_json_parse(&doc, text, len, line_tokens, LINE_TOKENS) != EDGEOPS_OK) {
        reply_error("a line must be a JSON array of numbers or {\"features\": [...]}");
        return;
    }
    int32_t row = 0;
    if (edgeops_json_is(&doc, 0, EDGEOPS_JSON_OBJECT) && edgeops_json_get(&doc, 0, "label") >= 0) {
        label_line(&doc);
        return;
    }
    if (edgeops_json_is(&doc, 0, EDGEOPS_JSON_OBJECT)) {
        row = edgeops_json_get(&doc, 0, "features");
    }
    if (!edgeops_json_is(&doc, row, EDGEOPS_JSON_ARRAY) ||
        doc.toks[row].size > EDGEOPS_MAX_FEATURES) {
        reply_error("a line must be a JSON array of numbers or {\"features\": [...]}");
        return;
    }
    const uint32_t n_x = doc.toks[row].size;
    int32_t v = edgeops_json_first(&doc, row);
    for (uint32_t j = 0; j < n_x; j++, v = edgeops_json_after(&doc, v)) {
        double d;
        if (edgeops_json_number(&doc, v, &d) != EDGEOPS_OK) {
            reply_error("features must be finite numbers");
            return;
        }
        x[j] = (float)d;
    }
    const edgeops_err_t err = edgeops_agent_predict(&agent, x, n_x, &p);
    if (err != EDGEOPS_OK) {
        reply_error(err == EDGEOPS_ERR_ARG ? "wrong number of features for the active model"
                                           : edgeops_err_str(err));
        return;
    }
    edgeops_jsonw_init(&w, answer, sizeof answer);
    edgeops_jsonw_object(&w);
    edgeops_jsonw_key(&w, "class");
    edgeops_jsonw_int(&w, p.cls);
    edgeops_jsonw_key(&w, "label");
    if (p.label != NULL) {
        edgeops_jsonw_string(&w, p.label);
    } else {
        edgeops_jsonw_null(&w);
    }
    edgeops_jsonw_key(&w, "scores");
    edgeops_jsonw_array(&w);
    for (uint32_t i = 0; i < p.n_scores; i++) {
        edgeops_jsonw_double(&w, (double)p.scores[i]);
    }
    edgeops_jsonw_end(&w);
    edgeops_jsonw_key(&w, "latency_ms");
    edgeops_jsonw_double(&w, p.latency_ms);
    if (p.sample_id[0] != '\0') {
        edgeops_jsonw_key(&w, "sample_id");
        edgeops_jsonw_string(&w, p.sample_id);
    }
    edgeops_jsonw_end(&w);
    if (edgeops_jsonw_finish(&w, &n) == EDGEOPS_OK) {
        fprintf(stdout, "%s\n", answer);
    }
}

/* read what standard input has; answer every complete line. 0 at end of input */
static int pump_stdin(void)
{
    struct pollfd pfd = {STDIN_FILENO, POLLIN, 0};
    int lines = 0;
    while (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLIN | POLLHUP))) {
        char buf[65536];
        const ssize_t got = read(STDIN_FILENO, buf, sizeof buf);
        if (got <= 0) {
            if (got < 0 && errno == EINTR) {
                continue;
            }
            return 0;
        }
        for (ssize_t i = 0; i < got; i++) {
            if (buf[i] != '\n') {
                if (line_used + 1 < sizeof line) {
                    line[line_used++] = buf[i];
                } else {
                    line_overflow = 1;
                }
                continue;
            }
            if (line_overflow) {
                reply_error("line too long");
            } else if (line_used > 0) {
                predict_line(line, line_used);
            }
            line_used = 0;
            line_overflow = 0;
            lines++;
        }
        if (lines > 0) {
            fflush(stdout);
        }
    }
    return 1;
}

/* --- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    char err[512];
    char will[512];
    char client_id[128];
#if EDGEOPS_WITH_TFLM /* TFLite flatbuffers too: host_tflm.c, the tflm variant */
    const char *runtimes[] = {"emlearn", "tflite-micro"};
#else
    const char *runtimes[] = {"emlearn"};
#endif
    const char *tags[HOST_MAX_TAGS];
    edgeops_storage_t storage;
    edgeops_device_t device;
    edgeops_agent_options_t options;
    edgeops_port_t port;
    struct mosquitto *mosq;
    int stdin_open = 1;
    if (argc != 3 || strcmp(argv[1], "--config") != 0) {
        fprintf(stderr, "usage: %s --config FILE\n", argv[0]);
        return 2;
    }
    if (host_config_load(&config, argv[2], err, sizeof err) != 0) {
        fprintf(stderr, "edgeops-firmware: %s\n", err);
        return 2;
    }
    uint32_t artifact_capacity = EDGEOPS_MODEL_MAX_BYTES;
    if (config.max_artifact_bytes >= 1 && config.max_artifact_bytes < artifact_capacity) {
        artifact_capacity = (uint32_t)config.max_artifact_bytes;
    }
    if (host_storage_open(&files, &storage, config.state_dir, artifact_capacity,
                          EDGEOPS_MANIFEST_MAX_BYTES) != 0) {
        fprintf(stderr, "edgeops-firmware: cannot create the state directory %s\n",
                config.state_dir);
        return 2;
    }
    for (int i = 0; i < config.n_tags; i++) {
        tags[i] = config.tags[i];
    }
    memset(&device, 0, sizeof device);
    device.fleet = config.fleet;
    device.device = config.device;
    device.hardware = config.hardware;
    device.runtimes = runtimes;
    device.n_runtimes = (uint32_t)(sizeof runtimes / sizeof runtimes[0]);
    device.hmac_key_id = config.hmac_key_id;
    device.hmac_key = config.hmac_key;
    device.hmac_key_len = config.hmac_key_len;
    device.max_artifact_bytes = artifact_capacity;
    device.flash_bytes = (uint32_t)config.flash_bytes;
    device.ram_bytes = (uint32_t)config.ram_bytes;
    memset(&options, 0, sizeof options);
    options.window_count = config.window_count > 0 ? (uint32_t)config.window_count : 0u;
    options.window_s = config.window_s;
    options.download_stall_s = config.download_stall_s;
    options.download_timeout_s = config.download_timeout_s;
    options.tags = tags;
    options.n_tags = (uint32_t)config.n_tags;

    mosquitto_lib_init();
    snprintf(client_id, sizeof client_id, "edgeops-fw-%.64s-%d", config.device, (int)getpid());
    mosq = mosquitto_new(client_id, true, NULL);
    if (mosq == NULL) {
        fprintf(stderr, "edgeops-firmware: cannot create the MQTT client\n");
        return 1;
    }
    if (host_config_mqtt(&config, mosq, err, sizeof err) != 0) { /* login, TLS */
        fprintf(stderr, "edgeops-firmware: %s\n", err);
        return 2;
    }
    memset(&port, 0, sizeof port);
    port.ctx = mosq;
    port.publish = port_publish;
    port.subscribe = port_subscribe;
    port.unsubscribe = port_unsubscribe;
    port.wall_time = port_wall_time;
    port.monotonic_us = port_monotonic_us;
    port.random_u32 = port_random_u32;
    port.log = port_log;
    if (edgeops_agent_init(&agent, &device, &storage, &port, &options) != EDGEOPS_OK ||
        edgeops_agent_set_sampling(&agent, config.samples_per_hour,
                                   config.sample_bytes_per_hour) != EDGEOPS_OK) {
        fprintf(stderr, "edgeops-firmware: bad device configuration\n");
        return 2;
    }
    if (edgeops_agent_start(&agent) != EDGEOPS_OK) {
        fprintf(stderr, "edgeops-firmware: cannot start (state directory %s)\n",
                config.state_dir);
        return 1;
    }
    const size_t will_len = edgeops_agent_offline_state(&agent, will, sizeof will);
    mosquitto_will_set(mosq, agent.topic_state, (int)will_len, will, 1, true);
    mosquitto_connect_callback_set(mosq, on_connect);
    mosquitto_disconnect_callback_set(mosq, on_disconnect);
    mosquitto_message_callback_set(mosq, on_message);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);

    const int keepalive = config.keepalive >= 1 ? (int)config.keepalive : 30;
    int connected_once = 0;
    uint64_t next_tick = port_monotonic_us(NULL);
    uint64_t retry_at = 0;
    unsigned backoff_ms = 250;
    while (!stopping) {
        const uint64_t now = port_monotonic_us(NULL);
        if (!connected_once && now >= retry_at) {
            const int crc = mosquitto_connect(mosq, config.broker_host, config.broker_port,
                                              keepalive);
            if (crc == MOSQ_ERR_SUCCESS) {
                connected_once = 1;
            } else {
                fprintf(stderr, "edgeops-firmware warning: cannot connect to %s:%d (%s)\n",
                        config.broker_host, config.broker_port, mosquitto_strerror(crc));
                retry_at = now + (uint64_t)backoff_ms * 1000u;
                backoff_ms = backoff_ms < 8000 ? backoff_ms * 2 : 8000;
            }
        }
        if (connected_once) {
            const int rc = mosquitto_loop(mosq, 20, 1);
            if (rc != MOSQ_ERR_SUCCESS && !stopping) {
                if (agent.connected) {
                    edgeops_agent_disconnected(&agent);
                }
                if (now >= retry_at) {
                    /* a login the broker refuses (on_connect) backs off like a failed
                     * connection: the backoff starts over only once connected */
                    const int rrc = mosquitto_reconnect(mosq);
                    if (rrc != MOSQ_ERR_SUCCESS) {
                        fprintf(stderr, "edgeops-firmware warning: cannot connect to %s:%d "
                                "(%s)\n", config.broker_host, config.broker_port,
                                mosquitto_strerror(rrc));
                    }
                    retry_at = now + (uint64_t)backoff_ms * 1000u;
                    backoff_ms = backoff_ms < 8000 ? backoff_ms * 2 : 8000;
                } else {
                    struct timespec pause = {0, 20 * 1000000L}; /* no busy loop meanwhile */
                    nanosleep(&pause, NULL);
                }
            } else if (agent.connected) {
                backoff_ms = 250;
            }
        } else {
            struct timespec pause = {0, 20 * 1000000L};
            nanosleep(&pause, NULL);
        }
        if (stdin_open) {
            stdin_open = pump_stdin();
        }
        if (now >= next_tick) {
            edgeops_agent_tick(&agent);
            next_tick = now + TICK_MS * 1000u;
        }
    }
    edgeops_agent_stop(&agent);
    for (int i = 0; i < 25 && agent.connected; i++) { /* let the last messages go out */
        mosquitto_loop(mosq, 20, 1);
    }
    mosquitto_disconnect(mosq);
    mosquitto_loop(mosq, 20, 1);
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();
    return 0;
}
