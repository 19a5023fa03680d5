/* edgeops firmware on Zephyr: slots on flash_area partitions, the state record in NVS,
 * MQTT through Zephyr's MQTT client (subsys/net/lib/mqtt).
 *
 * A template: bring the network up (and SNTP: manifest expiry needs the wall clock),
 * set the identity and HMAC key (from provisioning in production), and call
 * edgeops_agent_predict() from your application. Not built by edgeops' tests (it
 * needs the Zephyr SDK); the core it uses is built in them with -std=c99 -Werror.
 * Everything runs on the main thread: the MQTT poll loop, the tick and (here) the
 * application, so the single-threaded core needs no lock.
 */
#include <string.h>
#include <zephyr/drivers/flash.h>
#include <zephyr/fs/nvs.h>
#include <zephyr/kernel.h>
#include <zephyr/logging/log.h>
#include <zephyr/net/mqtt.h>
#include <zephyr/net/socket.h>
#include <zephyr/random/random.h>
#include <zephyr/storage/flash_map.h>
#include <zephyr/sys/timeutil.h>

#include "edgeops_agent.h"
#include "edgeops_codec.h"

LOG_MODULE_REGISTER(edgeops, LOG_LEVEL_INF);

#define DEVICE_ID "nrf-01"
#define FLEET "lab"
#define HARDWARE "nrf52840"
#define BROKER_ADDR "192.168.1.10"
#define BROKER_PORT 1883
#define HMAC_KEY_ID "nrf-01-00000000"
#define HMAC_KEY_B64 "" /* the key `edgeops` generated for this device */
/* flash and RAM this device offers the firmware, reported in its state (0: not declared) */
#ifndef DEVICE_FLASH_BYTES
#define DEVICE_FLASH_BYTES 0u
#endif
#ifndef DEVICE_RAM_BYTES
#define DEVICE_RAM_BYTES 0u
#endif
#define MANIFEST_REGION (16u * 1024u)

static edgeops_agent_t agent;
static const struct flash_area *slots[2];
static struct nvs_fs nvs;
static uint8_t hmac_key[64];
static struct mqtt_client client;
static struct sockaddr_storage broker;
static uint8_t rx_buffer[1024];
static uint8_t tx_buffer[1024];
static uint8_t payload[EDGEOPS_MANIFEST_MAX_BYTES];
static char topic_buf[EDGEOPS_TOPIC_MAX];
static char will[256];
static uint16_t message_id = 1;

/* --- storage ------------------------------------------------------------------------- */

static uint32_t st_capacity(void *ctx, edgeops_region_t region)
{
    ARG_UNUSED(ctx);
    return region == EDGEOPS_REGION_MANIFEST ? MANIFEST_REGION
                                             : (uint32_t)slots[0]->fa_size - MANIFEST_REGION;
}

static off_t base(int slot, edgeops_region_t region)
{
    return region == EDGEOPS_REGION_MANIFEST ? (off_t)(slots[slot]->fa_size - MANIFEST_REGION) : 0;
}

static edgeops_err_t st_erase(void *ctx, int slot, edgeops_region_t region)
{
    return flash_area_erase(slots[slot], base(slot, region), st_capacity(ctx, region)) == 0
               ? EDGEOPS_OK
               : EDGEOPS_ERR_STORAGE;
}

/* flash_area_write needs the flash's write-block alignment: chunk offsets are multiples of
 * chunk_size, so keep chunk_size a multiple of it (4096 is for every common part). A place
 * written before does not take other bytes until erased: the core reads every chunk back
 * and erases the slot when one does not read back (a damaged chunk kept across a reboot). */
static edgeops_err_t st_write(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                              const uint8_t *data, uint32_t len)
{
    ARG_UNUSED(ctx);
    return flash_area_write(slots[slot], base(slot, region) + offset, data, len) == 0
               ? EDGEOPS_OK
               : EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t st_read(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                             uint8_t *buf, uint32_t len)
{
    ARG_UNUSED(ctx);
    return flash_area_read(slots[slot], base(slot, region) + offset, buf, len) == 0
               ? EDGEOPS_OK
               : EDGEOPS_ERR_STORAGE;
}

/* NVS: one record write per downloaded chunk (the progress); NVS spreads them over sectors */
static edgeops_err_t st_record_write(void *ctx, int copy, const uint8_t *data, uint32_t len)
{
    ARG_UNUSED(ctx);
    return nvs_write(&nvs, (uint16_t)(1 + copy), data, len) >= 0 ? EDGEOPS_OK
                                                                 : EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t st_record_read(void *ctx, int copy, uint8_t *buf, uint32_t cap,
                                    uint32_t *len)
{
    ARG_UNUSED(ctx);
    const ssize_t n = nvs_read(&nvs, (uint16_t)(1 + copy), buf, cap);
    *len = n > 0 && (uint32_t)n <= cap ? (uint32_t)n : 0u;
    return n >= 0 || n == -ENOENT ? EDGEOPS_OK : EDGEOPS_ERR_STORAGE;
}

/* --- MQTT ---------------------------------------------------------------------------- */

static edgeops_err_t p_publish(void *ctx, const char *topic, const uint8_t *data, size_t len,
                               int retain)
{
    struct mqtt_publish_param p = {0};
    ARG_UNUSED(ctx);
    p.message.topic.qos = MQTT_QOS_1_AT_LEAST_ONCE;
    p.message.topic.topic.utf8 = (const uint8_t *)topic;
    p.message.topic.topic.size = strlen(topic);
    p.message.payload.data = (uint8_t *)data;
    p.message.payload.len = len;
    p.message_id = message_id++;
    p.retain_flag = retain ? 1 : 0;
    return mqtt_publish(&client, &p) == 0 ? EDGEOPS_OK : EDGEOPS_ERR_IO;
}

static edgeops_err_t subscription(const char *topic, int subscribe)
{
    struct mqtt_topic t = {.topic = {.utf8 = (const uint8_t *)topic, .size = strlen(topic)},
                           .qos = MQTT_QOS_1_AT_LEAST_ONCE};
    const struct mqtt_subscription_list list = {.list = &t, .list_count = 1,
                                                .message_id = message_id++};
    const int rc = subscribe ? mqtt_subscribe(&client, &list) : mqtt_unsubscribe(&client, &list);
    return rc == 0 ? EDGEOPS_OK : EDGEOPS_ERR_IO;
}

static edgeops_err_t p_subscribe(void *ctx, const char *topic)
{
    ARG_UNUSED(ctx);
    return subscription(topic, 1);
}

static edgeops_err_t p_unsubscribe(void *ctx, const char *topic)
{
    ARG_UNUSED(ctx);
    return subscription(topic, 0);
}

static double p_wall_time(void *ctx)
{
    struct timespec ts; /* CLOCK_REALTIME, set from SNTP at start-up */
    ARG_UNUSED(ctx);
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t p_monotonic_us(void *ctx)
{
    ARG_UNUSED(ctx);
    return k_ticks_to_us_floor64(k_uptime_ticks());
}

static uint32_t p_random(void *ctx)
{
    ARG_UNUSED(ctx);
    return sys_rand32_get();
}

static void p_log(void *ctx, int level, const char *text)
{
    ARG_UNUSED(ctx);
    if (level == EDGEOPS_LOG_ERROR) {
        LOG_ERR("%s", text);
    } else {
        LOG_INF("%s", text);
    }
}

static void mqtt_event(struct mqtt_client *c, const struct mqtt_evt *evt)
{
    if (evt->type == MQTT_EVT_CONNACK && evt->result == 0) {
        edgeops_agent_connected(&agent);
    } else if (evt->type == MQTT_EVT_DISCONNECT) {
        edgeops_agent_disconnected(&agent);
    } else if (evt->type == MQTT_EVT_PUBLISH) {
        const struct mqtt_publish_param *p = &evt->param.publish;
        const size_t len = p->message.payload.len;
        const size_t tlen = MIN(p->message.topic.topic.size, sizeof topic_buf - 1);
        memcpy(topic_buf, p->message.topic.topic.utf8, tlen);
        topic_buf[tlen] = '\0';
        if (len <= sizeof payload && mqtt_readall_publish_payload(c, payload, len) == 0) {
            edgeops_agent_message(&agent, topic_buf, payload, len);
        }
        if (p->message.topic.qos == MQTT_QOS_1_AT_LEAST_ONCE) {
            const struct mqtt_puback_param ack = {.message_id = p->message_id};
            mqtt_publish_qos1_ack(c, &ack);
        }
    }
}

int main(void)
{
    static const char *runtimes[] = {"emlearn"};
    static const char *tags[] = {"zephyr"};
    static struct mqtt_utf8 will_topic, will_message;
    static struct mqtt_topic will_t;
    size_t key_len = 0;
    const struct flash_area *state_area;
    if (flash_area_open(FIXED_PARTITION_ID(eo_slot0), &slots[0]) != 0 ||
        flash_area_open(FIXED_PARTITION_ID(eo_slot1), &slots[1]) != 0 ||
        flash_area_open(FIXED_PARTITION_ID(eo_state), &state_area) != 0) {
        LOG_ERR("missing eo_slot0/eo_slot1/eo_state partitions (app.overlay)");
        return 0;
    }
    nvs.flash_device = state_area->fa_dev;
    nvs.offset = state_area->fa_off;
    nvs.sector_size = 4096;
    nvs.sector_count = state_area->fa_size / 4096;
    if (nvs_mount(&nvs) != 0 ||
        edgeops_codec_b64_decode(HMAC_KEY_B64, strlen(HMAC_KEY_B64), hmac_key, sizeof hmac_key,
                                 &key_len) != EDGEOPS_OK ||
        key_len < 16) {
        LOG_ERR("no NVS or no HMAC key; see ports/zephyr/README.md");
        return 0;
    }
    /* TODO(board): network up, SNTP -> clock_settime(CLOCK_REALTIME) */
    const edgeops_storage_t storage = {NULL,    st_capacity,     st_erase,      st_write,
                                       st_read, st_record_write, st_record_read};
    const edgeops_device_t device = {FLEET, DEVICE_ID, HARDWARE, runtimes, 1, HMAC_KEY_ID,
                                     hmac_key, key_len, 0, 0, DEVICE_FLASH_BYTES,
                                     DEVICE_RAM_BYTES};
    const edgeops_port_t port = {NULL, p_publish, p_subscribe, p_unsubscribe, p_wall_time,
                                 p_monotonic_us, p_random, p_log};
    const edgeops_agent_options_t options = {100, 60.0, 10.0, 300.0, tags, 1};
    if (edgeops_agent_init(&agent, &device, &storage, &port, &options) != EDGEOPS_OK ||
        edgeops_agent_start(&agent) != EDGEOPS_OK) {
        LOG_ERR("edgeops agent did not start");
        return 0;
    }
    struct sockaddr_in *b4 = (struct sockaddr_in *)&broker;
    b4->sin_family = AF_INET;
    b4->sin_port = htons(BROKER_PORT);
    zsock_inet_pton(AF_INET, BROKER_ADDR, &b4->sin_addr);
    const size_t will_len = edgeops_agent_offline_state(&agent, will, sizeof will);
    will_topic = (struct mqtt_utf8){.utf8 = (uint8_t *)agent.topic_state,
                                    .size = strlen(agent.topic_state)};
    will_t = (struct mqtt_topic){.topic = will_topic, .qos = MQTT_QOS_1_AT_LEAST_ONCE};
    will_message = (struct mqtt_utf8){.utf8 = (uint8_t *)will, .size = will_len};
    for (;;) {
        mqtt_client_init(&client);
        client.broker = &broker;
        client.evt_cb = mqtt_event;
        client.client_id = (struct mqtt_utf8){.utf8 = (uint8_t *)DEVICE_ID,
                                              .size = strlen(DEVICE_ID)};
        client.protocol_version = MQTT_VERSION_3_1_1;
        client.will_topic = &will_t;
        client.will_message = &will_message;
        client.will_retain = 1;
        client.rx_buf = rx_buffer;
        client.rx_buf_size = sizeof rx_buffer;
        client.tx_buf = tx_buffer;
        client.tx_buf_size = sizeof tx_buffer;
        client.transport.type = MQTT_TRANSPORT_NON_SECURE;
        if (mqtt_connect(&client) != 0) {
            k_sleep(K_SECONDS(2));
            continue;
        }
        struct zsock_pollfd fds = {.fd = client.transport.tcp.sock, .events = ZSOCK_POLLIN};
        int64_t next_tick = k_uptime_get();
        for (;;) {
            if (zsock_poll(&fds, 1, 100) > 0 && mqtt_input(&client) != 0) {
                break;
            }
            if (mqtt_live(&client) != 0 && mqtt_live(&client) != -EAGAIN) {
                break;
            }
            if (k_uptime_get() >= next_tick) {
                edgeops_agent_tick(&agent);
                next_tick += 200;
            }
            /* the application: edgeops_agent_predict(&agent, features, n, &prediction); */
        }
        edgeops_agent_disconnected(&agent);
        mqtt_abort(&client);
        k_sleep(K_SECONDS(1));
    }
    return 0;
}
