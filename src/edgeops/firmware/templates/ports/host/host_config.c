#include "host_config.h"

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

static int set_string(char *value, char *out, size_t cap)
{
    char *p = value;
    return quoted(&p, out, cap) == 0 && *trim(p) == '\0' ? 0 : -1;
}

static int set_number(const char *value, double *out)
{
    char *end = NULL;
    *out = strtod(value, &end);
    return end != value && *end == '\0' ? 0 : -1;
}

static int parse_broker(host_config_t *cfg, const char *url)
{
    const char *p = url;
    if (strncmp(p, "mqtt://", 7) == 0) {
        p += 7;
    } else if (strstr(p, "://") != NULL) {
        return -1; /* mqtts:// and ws:// are not in the host port */
    }
    const char *colon = strrchr(p, ':');
    size_t n = colon ? (size_t)(colon - p) : strlen(p);
    if (n == 0 || n >= sizeof cfg->broker_host) {
        return -1;
    }
    memcpy(cfg->broker_host, p, n);
    cfg->broker_host[n] = '\0';
    cfg->broker_port = colon ? atoi(colon + 1) : 1883;
    return cfg->broker_port > 0 && cfg->broker_port < 65536 ? 0 : -1;
}

int host_config_load(host_config_t *cfg, const char *path, char *err, size_t cap)
{
    char line[2048];
    char text[HOST_STR];
    char state_dir[512] = "";
    char key_b64[HOST_STR] = "";
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
    if (state_dir[0] == '/') {
        snprintf(cfg->state_dir, sizeof cfg->state_dir, "%s", state_dir);
    } else {
        const char *slash = strrchr(path, '/');
        const int base = slash ? (int)(slash - path) : 1;
        snprintf(cfg->state_dir, sizeof cfg->state_dir, "%.*s/%s", base, slash ? path : ".",
                 state_dir);
    }
    return 0;
}
