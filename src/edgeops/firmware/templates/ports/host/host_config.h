/* edgeops host firmware: the config file (a small subset of TOML).
 *
 *   device = "mcu-01"                 fleet = "lab"
 *   broker = "mqtt://127.0.0.1:1883"  hardware = "host-sim"
 *   state_dir = "state"               (relative to the config file's folder)
 *   hmac_key_id = "k1"                hmac_key = "<base64, 16 to 64 bytes>"
 *   tags = ["lab", "mcu"]             window_count = 100    window_s = 60
 *   download_stall_s = 10             download_timeout_s = 300
 *   keepalive = 30                    max_artifact_bytes = 262144
 *   flash_bytes = 1048576             ram_bytes = 262144   (declared in the state; optional)
 */
#ifndef EDGEOPS_HOST_CONFIG_H
#define EDGEOPS_HOST_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define HOST_MAX_TAGS 8
#define HOST_STR 256

typedef struct {
    char device[HOST_STR];
    char fleet[HOST_STR];
    char broker_host[HOST_STR];
    int broker_port;
    char hardware[HOST_STR];
    char state_dir[1024];
    char hmac_key_id[HOST_STR];
    uint8_t hmac_key[64];
    size_t hmac_key_len;
    char tags[HOST_MAX_TAGS][64];
    int n_tags;
    double window_count;
    double window_s;
    double download_stall_s;
    double download_timeout_s;
    double keepalive;
    double max_artifact_bytes;
    double flash_bytes; /* 0: not declared */
    double ram_bytes;
} host_config_t;

/* 0 on success; else an error message in err */
int host_config_load(host_config_t *cfg, const char *path, char *err, size_t cap);

#endif /* EDGEOPS_HOST_CONFIG_H */
