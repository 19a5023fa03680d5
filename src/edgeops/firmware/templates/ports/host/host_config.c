#include "host_config.h"

#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeops_codec.h"

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n')) {
        s[--n] = '\0';
    }
    return s;
}

/* a quoted string starting at *p; returns 0 on success and advances *p past it */
static int quoted(char **p, char *out, size_t cap)
{
    char *s = *p;
    size_t n = 0;
    if (*s != '"') {
        return -1;
    }
    s++;
    while (*s != '\0' && *s != '"') {
        if (*s == '\\' && (s[1] == '"' || s[1] == '\\')) {
            s++;
        }
        if (n + 1 >= cap) {
            return -1;
        }
        out[n++] = *s++;
    }
    if (*s != '"') {
        return -1;
    }
    out[n] = '\0';
    *p = s + 1;
    return 0;
}

/* nothing but blanks and perhaps a # comment after a value */
static int value_ends(const char *p)
{
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    return *p == '\0' || *p == '#';
}

static int set_string(char *value, char *out, size_t cap)
{
    char *p = value;
    return quoted(&p, out, cap) == 0 && value_ends(p) ? 0 : -1;
}

static int set_number(const char *value, double *out)
{
    char *end = NULL;
    *out = strtod(value, &end);
    return end != value && value_ends(end) ? 0 : -1;
}

/* mqtt://host[:port], mqtts://host[:port] (TLS), host[:port]; [v6 address] in brackets */
static int parse_broker(host_config_t *cfg, const char *url)
{
    const char *p = url;
    cfg->tls = 0;
    if (strncmp(p, "mqtt://", 7) == 0) {
        p += 7;
    } else if (strncmp(p, "mqtts://", 8) == 0) {
        p += 8;
        cfg->tls = 1;
    } else if (strstr(p, "://") != NULL) {
        return -1; /* ws:// is not in the host port */
    }
    const char *host = p;
    const char *end;
    const char *colon;
    if (*p == '[') {
        host = p + 1;
        end = strchr(host, ']');
        if (end == NULL || (end[1] != '\0' && end[1] != ':')) {
            return -1;
        }
        colon = end[1] == ':' ? end + 1 : NULL;
    } else {
        colon = strrchr(p, ':');
        end = colon ? colon : p + strlen(p);
    }
    const size_t n = (size_t)(end - host);
    if (n == 0 || n >= sizeof cfg->broker_host) {
        return -1;
    }
    memcpy(cfg->broker_host, host, n);
    cfg->broker_host[n] = '\0';
    cfg->broker_port = colon ? atoi(colon + 1) : (cfg->tls ? 8883 : 1883);
    return cfg->broker_port > 0 && cfg->broker_port < 65536 ? 0 : -1;
}

/* value as a path: absolute as it is, else relative to the config file's folder */
static int resolve(const char *config_path, const char *value, char *out, size_t cap)
{
    int n;
    if (value[0] == '/') {
        n = snprintf(out, cap, "%s", value);
    } else {
        const char *slash = strrchr(config_path, '/');
        const int base = slash ? (int)(slash - config_path) : 1;
        n = snprintf(out, cap, "%.*s/%s", base, slash ? config_path : ".", value);
    }
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int readable(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return 0;
    }
    fclose(f);
    return 1;
}

/* the TLS files named in the config: resolved, both cert and key or neither, readable */
static int tls_files(host_config_t *cfg, const char *path, const char files[3][HOST_STR],
                     char *err, size_t cap)
{
    static const char *names[3] = {"ca_file", "cert_file", "key_file"};
    char *outs[3] = {cfg->ca_file, cfg->cert_file, cfg->key_file};
    if ((files[1][0] == '\0') != (files[2][0] == '\0')) {
        snprintf(err, cap, "%s: give both cert_file and key_file (a client certificate and its "
                 "key)", path);
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        if (files[i][0] == '\0') {
            continue;
        }
        if (!cfg->tls) {
            snprintf(err, cap, "%s: %s needs an mqtts:// broker", path, names[i]);
            return -1;
        }
        if (resolve(path, files[i], outs[i], HOST_PATH) != 0) {
            snprintf(err, cap, "%s: %s is too long", path, names[i]);
            return -1;
        }
        if (!readable(outs[i])) {
            snprintf(err, cap, "%s: cannot read %s %.300s", path, names[i], outs[i]);
            return -1;
        }
    }
    return 0;
}

/* libmosquitto's errors and warnings (a TLS handshake that failed, and why) */
static void on_mqtt_log(struct mosquitto *mosq, void *obj, int level, const char *text)
{
    (void)mosq;
    (void)obj;
    if ((level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING)) != 0) {
        fprintf(stderr, "edgeops-firmware warning: mqtt: %s\n", text);
    }
}

int host_config_mqtt(const host_config_t *cfg, struct mosquitto *mosq, char *err, size_t cap)
{
    int rc;
    mosquitto_log_callback_set(mosq, on_mqtt_log);
    if (cfg->username[0] != '\0') {
        rc = mosquitto_username_pw_set(mosq, cfg->username,
                                       cfg->password[0] != '\0' ? cfg->password : NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            snprintf(err, cap, "cannot set the MQTT login: %s", mosquitto_strerror(rc));
            return -1;
        }
    }
    if (!cfg->tls) {
        return 0;
    }
    rc = mosquitto_tls_set(mosq, cfg->ca_file[0] != '\0' ? cfg->ca_file : NULL,
                           cfg->ca_file[0] != '\0' ? NULL : "/etc/ssl/certs",
                           cfg->cert_file[0] != '\0' ? cfg->cert_file : NULL,
                           cfg->key_file[0] != '\0' ? cfg->key_file : NULL, NULL);
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, cap, "cannot set up TLS (ca_file, cert_file, key_file): %s",
                 mosquitto_strerror(rc));
        return -1;
    }
    return 0;
}

int host_config_load(host_config_t *cfg, const char *path, char *err, size_t cap)
{
    char line[2048];
    char text[HOST_STR];
    char state_dir[512] = "";
    char key_b64[HOST_STR] = "";
    char files[3][HOST_STR] = {"", "", ""}; /* ca_file, cert_file, key_file as written */
    int lineno = 0;
    FILE *f = fopen(path, "r");
    memset(cfg, 0, sizeof *cfg);
    cfg->keepalive = 30;
    cfg->download_stall_s = 10;
    cfg->download_timeout_s = 300;
    cfg->window_s = 60;
    snprintf(cfg->hardware, sizeof cfg->hardware, "host-sim");
    if (f == NULL) {
        snprintf(err, cap, "cannot open %s", path);
        return -1;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        char *s = trim(line);
        if (*s == '\0' || *s == '#') {
            continue;
        }
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            snprintf(err, cap, "%s:%d: expected key = value", path, lineno);
            fclose(f);
            return -1;
        }
        *eq = '\0';
        char *key = trim(s);
        char *value = trim(eq + 1);
        int bad = 0;
        if (strcmp(key, "device") == 0) {
            bad = set_string(value, cfg->device, sizeof cfg->device);
        } else if (strcmp(key, "fleet") == 0) {
            bad = set_string(value, cfg->fleet, sizeof cfg->fleet);
        } else if (strcmp(key, "hardware") == 0) {
            bad = set_string(value, cfg->hardware, sizeof cfg->hardware);
        } else if (strcmp(key, "state_dir") == 0) {
            bad = set_string(value, state_dir, sizeof state_dir);
        } else if (strcmp(key, "hmac_key_id") == 0) {
            bad = set_string(value, cfg->hmac_key_id, sizeof cfg->hmac_key_id);
        } else if (strcmp(key, "hmac_key") == 0) {
            bad = set_string(value, key_b64, sizeof key_b64);
        } else if (strcmp(key, "broker") == 0) {
            bad = set_string(value, text, sizeof text) || parse_broker(cfg, text);
        } else if (strcmp(key, "username") == 0) {
            bad = set_string(value, cfg->username, sizeof cfg->username);
        } else if (strcmp(key, "password") == 0) {
            bad = set_string(value, cfg->password, sizeof cfg->password);
        } else if (strcmp(key, "ca_file") == 0) {
            bad = set_string(value, files[0], sizeof files[0]) || files[0][0] == '\0';
        } else if (strcmp(key, "cert_file") == 0) {
            bad = set_string(value, files[1], sizeof files[1]) || files[1][0] == '\0';
        } else if (strcmp(key, "key_file") == 0) {
            bad = set_string(value, files[2], sizeof files[2]) || files[2][0] == '\0';
        } else if (strcmp(key, "tags") == 0) {
            char *p = value;
            bad = *p++ != '[';
            while (!bad) {
                p = trim(p);
                if (*p == ']') {
                    break;
                }
                if (cfg->n_tags >= HOST_MAX_TAGS ||
                    quoted(&p, cfg->tags[cfg->n_tags], sizeof cfg->tags[0]) != 0) {
                    bad = 1;
                    break;
                }
                cfg->n_tags++;
                p = trim(p);
                if (*p == ',') {
                    p++;
                }
            }
        } else if (strcmp(key, "window_count") == 0) {
            bad = set_number(value, &cfg->window_count);
        } else if (strcmp(key, "window_s") == 0) {
            bad = set_number(value, &cfg->window_s);
        } else if (strcmp(key, "download_stall_s") == 0) {
            bad = set_number(value, &cfg->download_stall_s);
        } else if (strcmp(key, "download_timeout_s") == 0) {
            bad = set_number(value, &cfg->download_timeout_s);
        } else if (strcmp(key, "keepalive") == 0) {
            bad = set_number(value, &cfg->keepalive);
        } else if (strcmp(key, "max_artifact_bytes") == 0) {
            bad = set_number(value, &cfg->max_artifact_bytes);
        } else if (strcmp(key, "flash_bytes") == 0) {
            bad = set_number(value, &cfg->flash_bytes) ||
                  !(cfg->flash_bytes >= 0 && cfg->flash_bytes <= 4294967295.0);
        } else if (strcmp(key, "ram_bytes") == 0) {
            bad = set_number(value, &cfg->ram_bytes) ||
                  !(cfg->ram_bytes >= 0 && cfg->ram_bytes <= 4294967295.0);
        } else if (strcmp(key, "samples_per_hour") == 0) {
            bad = set_number(value, &cfg->samples_per_hour);
        } else if (strcmp(key, "sample_bytes_per_hour") == 0) {
            bad = set_number(value, &cfg->sample_bytes_per_hour);
        } else {
            snprintf(err, cap, "%s:%d: unknown key %.64s", path, lineno, key);
            fclose(f);
            return -1;
        }
        if (bad) {
            snprintf(err, cap, "%s:%d: bad value for %.64s", path, lineno, key);
            fclose(f);
            return -1;
        }
    }
    fclose(f);
    if (cfg->device[0] == '\0' || cfg->fleet[0] == '\0' || cfg->broker_host[0] == '\0' ||
        state_dir[0] == '\0' || cfg->hmac_key_id[0] == '\0' || key_b64[0] == '\0') {
        snprintf(err, cap, "%s: device, fleet, broker, state_dir, hmac_key_id and hmac_key are "
                 "required", path);
        return -1;
    }
    if (edgeops_codec_b64_decode(key_b64, strlen(key_b64), cfg->hmac_key, sizeof cfg->hmac_key,
                                 &cfg->hmac_key_len) != EDGEOPS_OK ||
        cfg->hmac_key_len < 16) {
        snprintf(err, cap, "%s: hmac_key must be base64 of 16 to 64 bytes", path);
        return -1;
    }
    if (cfg->password[0] != '\0' && cfg->username[0] == '\0') {
        snprintf(err, cap, "%s: a password needs a username", path);
        return -1;
    }
    if (tls_files(cfg, path, (const char(*)[HOST_STR])files, err, cap) != 0) {
        return -1;
    }
    if (resolve(path, state_dir, cfg->state_dir, sizeof cfg->state_dir) != 0) {
        snprintf(err, cap, "%s: state_dir is too long", path);
        return -1;
    }
    return 0;
}
