/* edgeops footprint image: everything edgeops puts in a firmware, linked for sizing.
 *
 * The agent (deployments over MQTT into slots, manifests, SHA-256/HMAC, JSON,
 * telemetry, the state record), the emlearn loader, the feature transforms and the
 * built-in model, with the buffers of edgeops_board_config.h, linked with newlib-nano
 * (float printf, which Python-exact JSON numbers need). TFLite Micro itself is not in
 * it (it comes from the board SDK): a TFLite model adds TFLM's code and its arena.
 * The board's own parts are stubs here: the MQTT client, the flash driver, clocks.
 * `make size` prints what arm-none-eabi-size says of it; `edgeops firmware generate
 * --target cortex-m4` records flash (text + data) and RAM (data + bss) on the variant.
 * Not meant to run: the stubs fail every I/O call.
 */
#include <string.h>

#include "edgeops_agent.h"
#include "edgeops_app.h"

static edgeops_agent_t agent;
static edgeops_app_t app;
static double samples[EDGEOPS_APP_RAW_DOUBLES + 1];
static volatile uint32_t ticks;
static volatile uint8_t model_byte;

static edgeops_err_t no_publish(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                                int retain)
{
    (void)ctx;
    (void)topic;
    (void)payload;
    (void)len;
    (void)retain;
    return EDGEOPS_ERR_IO;
}

static edgeops_err_t no_subscribe(void *ctx, const char *topic)
{
    (void)ctx;
    (void)topic;
    return EDGEOPS_ERR_IO;
}

static double wall_time(void *ctx)
{
    (void)ctx;
    return 1.8e9 + (double)ticks;
}

static uint64_t monotonic_us(void *ctx)
{
    (void)ctx;
    return (uint64_t)ticks * 1000u;
}

static uint32_t random_u32(void *ctx)
{
    (void)ctx;
    return ticks * 2654435761u;
}

static uint32_t st_capacity(void *ctx, edgeops_region_t region)
{
    (void)ctx;
    return region == EDGEOPS_REGION_MANIFEST ? EDGEOPS_MANIFEST_MAX_BYTES
                                             : EDGEOPS_MODEL_MAX_BYTES;
}

static edgeops_err_t st_erase(void *ctx, int slot, edgeops_region_t region)
{
    (void)ctx;
    (void)slot;
    (void)region;
    return EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t st_write(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                              const uint8_t *data, uint32_t len)
{
    (void)ctx;
    (void)slot;
    (void)region;
    (void)offset;
    (void)data;
    (void)len;
    return EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t st_read(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                             uint8_t *data, uint32_t len)
{
    (void)ctx;
    (void)slot;
    (void)region;
    (void)offset;
    (void)data;
    (void)len;
    return EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t record_write(void *ctx, int copy, const uint8_t *data, uint32_t len)
{
    (void)ctx;
    (void)copy;
    (void)data;
    (void)len;
    return EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t record_read(void *ctx, int copy, uint8_t *data, uint32_t cap,
                                 uint32_t *len)
{
    (void)ctx;
    (void)copy;
    (void)data;
    (void)cap;
    (void)len;
    return EDGEOPS_ERR_STORAGE;
}

int main(void)
{
    static const uint8_t key[32] = {1};
    static const char *const runtimes[] = {"emlearn"};
    char reason[128];
    int32_t cls = -1;
    edgeops_prediction_t p;
    const edgeops_device_t device = {"fleet", "mcu-01", "cortex-m4", runtimes, 1, "key",
                                     key, sizeof key, 0, 0, 0, 0};
    const edgeops_storage_t storage = {NULL, st_capacity, st_erase, st_write,
                                       st_read, record_write, record_read};
    const edgeops_port_t port = {NULL,         no_publish, no_subscribe, no_subscribe, wall_time,
                                 monotonic_us, random_u32, NULL};
    const edgeops_agent_options_t options = {100, 60.0, 10.0, 300.0, NULL, 0};
    static const char desired[] = "{}";
    memset(&p, 0, sizeof p);
    if (edgeops_agent_init(&agent, &device, &storage, &port, &options) == EDGEOPS_OK) {
        (void)edgeops_agent_start(&agent);
        edgeops_agent_connected(&agent);
        edgeops_agent_message(&agent, agent.topic_desired, (const uint8_t *)desired,
                              sizeof desired - 1);
        edgeops_agent_message(&agent, "edgeops/fleet/artifacts/0/0", (const uint8_t *)desired,
                              sizeof desired - 1);
        edgeops_agent_tick(&agent);
    }
    (void)edgeops_app_init(&app, reason, sizeof reason);
    edgeops_app_raw(&app, samples, NULL);
    if (edgeops_app_features(&app) == EDGEOPS_OK) {
        (void)edgeops_app_predict(&app, &cls);
        (void)edgeops_agent_predict(&agent, app.features, EDGEOPS_APP_N_FEATURES, &p);
    }
    edgeops_agent_stop(&agent);
#if !EDGEOPS_APP_MODEL_INLINE
    /* keep the model's bytes in the image even where no runner reads them here (a TFLite
     * model without TFLite Micro linked): they are in the firmware's flash either way */
    model_byte = edgeops_app_model[edgeops_app_model_len - 1u];
#endif
    return (int)cls + p.cls + model_byte;
}
