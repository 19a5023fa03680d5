/* edgeops firmware on ESP-IDF: storage on two flash partitions and NVS, MQTT via esp-mqtt.
 *
 * A template: fill in the Wi-Fi bring-up (example_connect() from protocol_examples_common
 * or your own), the device's identity and HMAC key (here from menuconfig-style defines;
 * in production from an encrypted NVS partition written at provisioning), and where your
 * application calls edgeops_agent_predict(). Not built by edgeops' tests (it needs the
 * ESP-IDF SDK); the core it uses is built in them with -std=c99 -Werror.
 *
 * Threads: esp-mqtt calls mqtt_event() on its own task, a timer ticks, the application
 * predicts on its task. The core is single-threaded, so every call into the agent holds
 * agent_lock.
 */
#include <string.h>
#include <time.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_partition.h"
#include "esp_random.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/semphr.h"
#include "mqtt_client.h"
#include "nvs.h"
#include "nvs_flash.h"

#include "edgeops_agent.h"
#include "edgeops_codec.h"

#ifndef EDGEOPS_DEVICE_ID
#define EDGEOPS_DEVICE_ID "esp32-01"
#define EDGEOPS_FLEET "lab"
#define EDGEOPS_BROKER_URI "mqtt://192.168.1.10:1883"
#define EDGEOPS_HARDWARE "esp32"
#define EDGEOPS_HMAC_KEY_ID "esp32-01-00000000"
#define EDGEOPS_HMAC_KEY_B64 "" /* base64 of the key `edgeops` generated for this device */
#endif

/* flash and RAM this device offers the firmware, reported in its state (0: not declared);
 * a rollout skips the device when a variant's measured footprint does not fit */
#ifndef EDGEOPS_DEVICE_FLASH_BYTES
#define EDGEOPS_DEVICE_FLASH_BYTES 0u
#endif
#ifndef EDGEOPS_DEVICE_RAM_BYTES
#define EDGEOPS_DEVICE_RAM_BYTES 0u
#endif

#define MANIFEST_REGION (64u * 1024u) /* the end of each slot partition */
static const char *TAG = "edgeops";

static edgeops_agent_t agent; /* every buffer of the core: see edgeops_board_config.h */
static SemaphoreHandle_t agent_lock;
static esp_mqtt_client_handle_t mqtt;
static const esp_partition_t *slots[2];
static nvs_handle_t nvs;
static uint8_t hmac_key[64];
static char rx[EDGEOPS_MANIFEST_MAX_BYTES]; /* esp-mqtt delivers big messages in pieces */
static char rx_topic[EDGEOPS_TOPIC_MAX];
static char will[256];

/* --- storage: artifact at the start of a slot partition, manifest at its end ----------- */

static uint32_t st_capacity(void *ctx, edgeops_region_t region)
{
    (void)ctx;
    return region == EDGEOPS_REGION_MANIFEST ? MANIFEST_REGION
                                             : (uint32_t)slots[0]->size - MANIFEST_REGION;
}

static uint32_t region_base(int slot, edgeops_region_t region)
{
    return region == EDGEOPS_REGION_MANIFEST ? (uint32_t)slots[slot]->size - MANIFEST_REGION : 0u;
}

static edgeops_err_t st_erase(void *ctx, int slot, edgeops_region_t region)
{
    return esp_partition_erase_range(slots[slot], region_base(slot, region),
                                     st_capacity(ctx, region)) == ESP_OK
               ? EDGEOPS_OK
               : EDGEOPS_ERR_STORAGE;
}

/* NOR flash: a write only clears bits, so a place written before does not take other bytes
 * until its region is erased. The core reads every chunk back after writing it and erases
 * the slot when one does not read back (a damaged chunk kept across a reboot). */
static edgeops_err_t st_write(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                              const uint8_t *data, uint32_t len)
{
    (void)ctx;
    return esp_partition_write(slots[slot], region_base(slot, region) + offset, data, len) ==
                   ESP_OK
               ? EDGEOPS_OK
               : EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t st_read(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                             uint8_t *buf, uint32_t len)
{
    (void)ctx;
    return esp_partition_read(slots[slot], region_base(slot, region) + offset, buf, len) == ESP_OK
               ? EDGEOPS_OK
               : EDGEOPS_ERR_STORAGE;
}

/* NVS writes are atomic per key; the core still alternates two keys, as on raw flash. A
 * download writes the record once per chunk (its progress); NVS spreads the writes. */
static edgeops_err_t st_record_write(void *ctx, int copy, const uint8_t *data, uint32_t len)
{
    (void)ctx;
    const char *key = copy ? "rec1" : "rec0";
    return nvs_set_blob(nvs, key, data, len) == ESP_OK && nvs_commit(nvs) == ESP_OK
               ? EDGEOPS_OK
               : EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t st_record_read(void *ctx, int copy, uint8_t *buf, uint32_t cap,
                                    uint32_t *len)
{
    (void)ctx;
    size_t n = cap;
    const esp_err_t err = nvs_get_blob(nvs, copy ? "rec1" : "rec0", buf, &n);
    *len = err == ESP_OK ? (uint32_t)n : 0u;
    return err == ESP_OK || err == ESP_ERR_NVS_NOT_FOUND ? EDGEOPS_OK : EDGEOPS_ERR_STORAGE;
}

/* --- the port ------------------------------------------------------------------------ */

static edgeops_err_t p_publish(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                               int retain)
{
    (void)ctx;
    return esp_mqtt_client_enqueue(mqtt, topic, (const char *)payload, (int)len, 1, retain,
                                   true) >= 0
               ? EDGEOPS_OK
               : EDGEOPS_ERR_IO;
}

static edgeops_err_t p_subscribe(void *ctx, const char *topic)
{
    (void)ctx;
    return esp_mqtt_client_subscribe(mqtt, topic, 1) >= 0 ? EDGEOPS_OK : EDGEOPS_ERR_IO;
}

static edgeops_err_t p_unsubscribe(void *ctx, const char *topic)
{
    (void)ctx;
    return esp_mqtt_client_unsubscribe(mqtt, topic) >= 0 ? EDGEOPS_OK : EDGEOPS_ERR_IO;
}

static double p_wall_time(void *ctx)
{
    struct timeval tv; /* set by SNTP (esp_sntp) before the agent connects */
    (void)ctx;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static uint64_t p_monotonic_us(void *ctx)
{
    (void)ctx;
    return (uint64_t)esp_timer_get_time();
}

static uint32_t p_random(void *ctx)
{
    (void)ctx;
    return esp_random();
}

static void p_log(void *ctx, int level, const char *text)
{
    (void)ctx;
    if (level == EDGEOPS_LOG_ERROR) {
        ESP_LOGE(TAG, "%s", text);
    } else if (level == EDGEOPS_LOG_WARNING) {
        ESP_LOGW(TAG, "%s", text);
    } else {
        ESP_LOGI(TAG, "%s", text);
    }
}

static void mqtt_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    esp_mqtt_event_handle_t ev = (esp_mqtt_event_handle_t)data;
    (void)arg;
    (void)base;
    xSemaphoreTake(agent_lock, portMAX_DELAY);
    if (id == MQTT_EVENT_CONNECTED) {
        edgeops_agent_connected(&agent);
    } else if (id == MQTT_EVENT_DISCONNECTED) {
        edgeops_agent_disconnected(&agent);
    } else if (id == MQTT_EVENT_DATA) {
        if (ev->current_data_offset == 0) {
            const int n = ev->topic_len < (int)sizeof rx_topic - 1 ? ev->topic_len
                                                                   : (int)sizeof rx_topic - 1;
            memcpy(rx_topic, ev->topic, (size_t)n);
            rx_topic[n] = '\0';
        }
        if (ev->total_data_len <= (int)sizeof rx) {
            memcpy(rx + ev->current_data_offset, ev->data, (size_t)ev->data_len);
            if (ev->current_data_offset + ev->data_len == ev->total_data_len) {
                edgeops_agent_message(&agent, rx_topic, (const uint8_t *)rx,
                                      (size_t)ev->total_data_len);
            }
        } else if (ev->current_data_offset == 0) {
            ESP_LOGW(TAG, "dropped a message of %d bytes on %s", ev->total_data_len, rx_topic);
        }
    }
    xSemaphoreGive(agent_lock);
}

static void tick(void *arg)
{
    (void)arg;
    xSemaphoreTake(agent_lock, portMAX_DELAY);
    edgeops_agent_tick(&agent);
    xSemaphoreGive(agent_lock);
}

/* what the application calls with its feature vector */
edgeops_err_t app_predict(const float *x, uint32_t n, edgeops_prediction_t *out)
{
    xSemaphoreTake(agent_lock, portMAX_DELAY);
    const edgeops_err_t err = edgeops_agent_predict(&agent, x, n, out);
    xSemaphoreGive(agent_lock);
    return err;
}

void app_main(void)
{
    static const char *runtimes[] = {"emlearn"};
    static const char *tags[] = {"esp32"};
    size_t key_len = 0;
    ESP_ERROR_CHECK(nvs_flash_init());
    ESP_ERROR_CHECK(nvs_open("edgeops", NVS_READWRITE, &nvs));
    slots[0] = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, 0x40, "eo_slot0");
    slots[1] = esp_partition_find_first(ESP_PARTITION_TYPE_DATA, 0x40, "eo_slot1");
    if (slots[0] == NULL || slots[1] == NULL ||
        edgeops_codec_b64_decode(EDGEOPS_HMAC_KEY_B64, strlen(EDGEOPS_HMAC_KEY_B64), hmac_key,
                                 sizeof hmac_key, &key_len) != EDGEOPS_OK ||
        key_len < 16) {
        ESP_LOGE(TAG, "missing eo_slot partitions or HMAC key; see ports/esp-idf/README.md");
        return;
    }
    /* TODO(board): Wi-Fi up and SNTP synced here (manifest expiry needs the wall clock) */
    agent_lock = xSemaphoreCreateMutex();
    const edgeops_storage_t storage = {NULL,     st_capacity,     st_erase,      st_write,
                                       st_read,  st_record_write, st_record_read};
    const edgeops_device_t device = {EDGEOPS_FLEET, EDGEOPS_DEVICE_ID, EDGEOPS_HARDWARE,
                                     runtimes, 1, EDGEOPS_HMAC_KEY_ID, hmac_key, key_len,
                                     0, 0, EDGEOPS_DEVICE_FLASH_BYTES, EDGEOPS_DEVICE_RAM_BYTES};
    const edgeops_port_t port = {NULL, p_publish, p_subscribe, p_unsubscribe, p_wall_time,
                                 p_monotonic_us, p_random, p_log};
    const edgeops_agent_options_t options = {100, 60.0, 10.0, 300.0, tags, 1};
    ESP_ERROR_CHECK(edgeops_agent_init(&agent, &device, &storage, &port, &options) == EDGEOPS_OK
                        ? ESP_OK
                        : ESP_FAIL);
    ESP_ERROR_CHECK(edgeops_agent_start(&agent) == EDGEOPS_OK ? ESP_OK : ESP_FAIL);
    const size_t will_len = edgeops_agent_offline_state(&agent, will, sizeof will);
    const esp_mqtt_client_config_t cfg = {
        .broker.address.uri = EDGEOPS_BROKER_URI,
        .session.last_will = {.topic = agent.topic_state, .msg = will,
                              .msg_len = (int)will_len, .qos = 1, .retain = 1},
        .session.keepalive = 30,
        .buffer.size = 4096,
    };
    mqtt = esp_mqtt_client_init(&cfg);
    esp_mqtt_client_register_event(mqtt, ESP_EVENT_ANY_ID, mqtt_event, NULL);
    esp_mqtt_client_start(mqtt);
    const esp_timer_create_args_t timer = {.callback = tick, .name = "edgeops"};
    esp_timer_handle_t handle;
    ESP_ERROR_CHECK(esp_timer_create(&timer, &handle));
    ESP_ERROR_CHECK(esp_timer_start_periodic(handle, 200 * 1000));
}
