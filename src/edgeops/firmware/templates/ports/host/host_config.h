/* edgeops host firmware: the config file (a small subset of TOML).
 *
 *   device = "mcu-01"                 fleet = "lab"
 *   broker = "mqtt://127.0.0.1:1883"  hardware = "host-sim"   (or mqtts://host:8883: TLS)
 *   state_dir = "state"               (relative to the config file's folder)
 *   hmac_key_id = "k1"                hmac_key = "<base64, 16 to 64 bytes>"
 *   tags = ["lab", "mcu"]             window_count = 100    window_s = 60
 *   download_stall_s = 10             download_timeout_s = 300
 *   keepalive = 30                    max_artifact_bytes = 262144
 *   flash_bytes = 1048576             ram_bytes = 262144   (declared in the state; optional)
 *   samples_per_hour = 60             sample_bytes_per_hour = 0  (sampling; both 0: none)
 *   username = "mcu-01"               password = "..."     (the broker login; optional)
 *   ca_file = "ca.pem"                (mqtts://: the CA of the broker's certificate;
 *                                      absent: the system's CAs in /etc/ssl/certs)
 *   cert_file = "device.pem"          key_file = "device.key"  (a client certificate,
 *                                      mqtts:// only, both or neither)
 * Paths are relative to the config file's folder. `edgeops fleet provision
 * --host-firmware` writes this file.
 */
#ifndef EDGEOPS_HOST_CONFIG_H
#define EDGEOPS_HOST_CONFIG_H

#include <stddef.h>
#include <stdint.h>

struct mosquitto;

#define HOST_MAX_TAGS 8
#define HOST_STR 256
#define HOST_PATH 1024

typedef struct {
    char device[HOST_STR];
    char fleet[HOST_STR];
    char broker_host[HOST_STR];
    int broker_port;
    int tls; /* mqtts:// */
    char username[HOST_STR]; /* "": no login */
    char password[HOST_STR];
    char ca_file[HOST_PATH];   /* "": the system's CAs (with tls) */
    char cert_file[HOST_PATH]; /* "": no client certificate */
    char key_file[HOST_PATH];
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
    double samples_per_hour; /* a manifest's serving.sampling overrides each key it gives */
    double sample_bytes_per_hour;
} host_config_t;

/* 0 on success; else an error message in err */
int host_config_load(host_config_t *cfg, const char *path, char *err, size_t cap);

/* the login and TLS settings into a libmosquitto client (before connecting), and its
 * errors and warnings to standard error: 0 on success; else an error message in err */
int host_config_mqtt(const host_config_t *cfg, struct mosquitto *mosq, char *err, size_t cap);

#endif /* EDGEOPS_HOST_CONFIG_H */
