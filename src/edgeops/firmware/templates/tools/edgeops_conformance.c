/* edgeops conformance tool: the firmware core's pure parts behind a line protocol,
 * so tests (tests/test_firmware_host.py) and `edgeops firmware test` can compare
 * them with the Python reference (edgeops_protocol) on the same inputs.
 *
 * One command per line on standard input, one answer per line on standard
 * output; binary arguments are lowercase hex:
 *
 *   sha256 DATA                    -> DIGEST
 *   hmac KEY DATA                  -> MAC
 *   b64 TEXT                       -> ok BYTES | error
 *   crc32 DATA                     -> decimal CRC-32
 *   repr DOUBLE (8 bytes LE)       -> Python's repr(float) | error
 *   parse JSON                     -> ok TOKENS | error REASON
 *   canon JSON                     -> ok CANONICAL | error
 *   manifest FLEET DEVICE HARDWARE KEY_ID KEY ACCEPTED_SEQ NOW ENVELOPE
 *                                  -> act | already | ignored | rejected REASON
 *   stats SPEC                     -> ok STATS_JSON | error
 *       SPEC: {"serving": {...}, "n_features": k, "n_outputs": m,
 *              "rows": [{"x": [...], "out": [...] or null, "latency": ms}]}
 *              (null in x or out stands for NaN)
 *   model FORMAT ARTIFACT ROWS (float32 LE)  -> ok CLASS,CLASS,... | error REASON
 *   state                          -> ok TORN_SEQ GOOD_SEQ  (two-copy state record)
 *
 * Built with the core only (edgeops.firmware.build.build_conformance).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeops_codec.h"
#include "edgeops_json.h"
#include "edgeops_jsonw.h"
#include "edgeops_manifest.h"
#include "edgeops_model.h"
#include "edgeops_sha256.h"
#include "edgeops_state.h"
#include "edgeops_stats.h"

#define LINE_BYTES (16u * 1024u * 1024u)
#define DATA_BYTES (8u * 1024u * 1024u)

static char line[LINE_BYTES];
static uint8_t data[DATA_BYTES];
static uint8_t data2[DATA_BYTES];
static char out[DATA_BYTES];
static edgeops_json_tok_t tokens[1u << 18];
static edgeops_serving_t serving;
static edgeops_stats_t window;
static edgeops_model_t model;
static union {
    uint8_t bytes[DATA_BYTES];
    uint32_t align;
} artifact;

static size_t unhex(const char *text, uint8_t *buf, size_t cap)
{
    const size_t n = strlen(text);
    if (n % 2 != 0 || n / 2 > cap || edgeops_codec_hex_decode(text, n, buf, n / 2) != EDGEOPS_OK) {
        return (size_t)-1;
    }
    return n / 2;
}

static void print_hex(const char *prefix, const uint8_t *buf, size_t n)
{
    fputs(prefix, stdout);
    for (size_t i = 0; i < n; i++) {
        printf("%02x", buf[i]);
    }
    putchar('\n');
}

/* --- canon --------------------------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t used;
    size_t cap;
    int overflow;
} sink_t;

static void to_buffer(void *ctx, const char *chunk, size_t len)
{
    sink_t *s = (sink_t *)ctx;
    if (s->used + len > s->cap) {
        s->overflow = 1;
        return;
    }
    memcpy(s->buf + s->used, chunk, len);
    s->used += len;
}

static void cmd_parse_or_canon(char *arg, int canon)
{
    edgeops_json_doc_t doc;
    const size_t n = unhex(arg, data, sizeof data);
    if (n == (size_t)-1) {
        puts("error bad hex");
        return;
    }
    if (edgeops_json_parse(&doc, (const char *)data, n, tokens,
                           sizeof tokens / sizeof tokens[0]) != EDGEOPS_OK) {
        printf("error %s\n", doc.error ? doc.error : "?");
        return;
    }
    if (!canon) {
        printf("ok %lu\n", (unsigned long)doc.count);
        return;
    }
    sink_t s = {out, 0, sizeof out, 0};
    if (edgeops_json_canonical(&doc, 0, to_buffer, &s) != EDGEOPS_OK || s.overflow) {
        puts("error");
        return;
    }
    print_hex("ok ", (const uint8_t *)out, s.used);
}

/* --- manifest ------------------------------------------------------------------------ */

static void cmd_manifest(char *args)
{
    char *fleet = strtok(args, " ");
    char *device = strtok(NULL, " ");
    char *hardware = strtok(NULL, " ");
    char *key_id = strtok(NULL, " ");
    char *key_hex = strtok(NULL, " ");
    char *accepted = strtok(NULL, " ");
    char *now = strtok(NULL, " ");
    char *envelope = strtok(NULL, " ");
    uint8_t key[64];
    char reason[EDGEOPS_REASON_MAX + 1];
    const char *runtimes[] = {"emlearn"};
    edgeops_json_doc_t doc;
    edgeops_manifest_t m;
    int32_t tok;
    if (envelope == NULL) {
        puts("error usage");
        return;
    }
    const size_t key_len = unhex(key_hex, key, sizeof key);
    const size_t n = unhex(envelope, data, sizeof data);
    if (key_len == (size_t)-1 || n == (size_t)-1) {
        puts("error bad hex");
        return;
    }
    edgeops_device_t dev = {fleet, device, hardware, runtimes, 1, key_id, key, key_len,
                            1u << 20, 1u << 20, 0u, 0u};
    if (edgeops_json_parse(&doc, (const char *)data, n, tokens,
                           sizeof tokens / sizeof tokens[0]) != EDGEOPS_OK) {
        printf("rejected malformed desired state: malformed JSON: %s\n", doc.error);
        return;
    }
    if (edgeops_manifest_envelope(&doc, &tok, reason, sizeof reason) != EDGEOPS_OK) {
        printf("rejected malformed desired state: %s\n", reason);
        return;
    }
    if (!edgeops_manifest_addressed(&doc, tok, &dev)) {
        puts("ignored");
        return;
    }
    if (edgeops_manifest_verify(&doc, &dev, reason, sizeof reason) != EDGEOPS_OK ||
        edgeops_manifest_read(&doc, tok, &m, reason, sizeof reason) != EDGEOPS_OK) {
        printf("rejected %s\n", reason);
        return;
    }
    const edgeops_err_t err = edgeops_manifest_check(&doc, &m, &dev, strtoll(accepted, NULL, 10),
                                                     strtod(now, NULL), reason, sizeof reason);
    if (err == EDGEOPS_ERR_ALREADY) {
        puts("already");
    } else if (err != EDGEOPS_OK) {
        printf("rejected %s\n", reason);
    } else {
        puts("act");
    }
}

/* --- stats --------------------------------------------------------------------------- */

static float value_or_nan(const edgeops_json_doc_t *doc, int32_t tok)
{
    double d;
    if (edgeops_json_number(doc, tok, &d) == EDGEOPS_OK) {
        return (float)d;
    }
    return (float)strtod("nan", NULL);
}

static void cmd_stats(char *arg)
{
    edgeops_json_doc_t doc;
    edgeops_jsonw_t w;
    char problem[160];
    int64_t n_features = 0;
    int64_t n_outputs = 0;
    float x[EDGEOPS_MAX_FEATURES];
    float scores[EDGEOPS_MAX_CLASSES];
    size_t len = 0;
    const size_t n = unhex(arg, data, sizeof data);
    if (n == (size_t)-1 || edgeops_json_parse(&doc, (const char *)data, n, tokens,
                                              sizeof tokens / sizeof tokens[0]) != EDGEOPS_OK) {
        puts("error bad spec");
        return;
    }
    if (edgeops_json_integer(&doc, edgeops_json_get(&doc, 0, "n_features"), &n_features) !=
            EDGEOPS_OK ||
        edgeops_json_integer(&doc, edgeops_json_get(&doc, 0, "n_outputs"), &n_outputs) !=
            EDGEOPS_OK ||
        edgeops_serving_read(&serving, &doc, edgeops_json_get(&doc, 0, "serving"),
                             (uint32_t)n_features, (uint32_t)n_outputs, problem,
                             sizeof problem) != EDGEOPS_OK) {
        puts("error bad serving");
        return;
    }
    edgeops_stats_reset(&window, &serving);
    const int32_t rows = edgeops_json_get(&doc, 0, "rows");
    int32_t r = edgeops_json_first(&doc, rows);
    for (uint32_t i = 0; r >= 0 && i < doc.toks[rows].size; i++, r = edgeops_json_after(&doc, r)) {
        const int32_t xs = edgeops_json_get(&doc, r, "x");
        const int32_t outs = edgeops_json_get(&doc, r, "out");
        double latency = 0;
        (void)edgeops_json_number(&doc, edgeops_json_get(&doc, r, "latency"), &latency);
        const uint32_t nx = doc.toks[xs].size;
        int32_t v = edgeops_json_first(&doc, xs);
        for (uint32_t j = 0; j < nx; j++, v = edgeops_json_after(&doc, v)) {
            x[j] = value_or_nan(&doc, v);
        }
        uint32_t no = 0;
        if (edgeops_json_is(&doc, outs, EDGEOPS_JSON_ARRAY)) {
            no = doc.toks[outs].size;
            v = edgeops_json_first(&doc, outs);
            for (uint32_t j = 0; j < no; j++, v = edgeops_json_after(&doc, v)) {
                scores[j] = value_or_nan(&doc, v);
            }
        }
        const int error = !edgeops_json_is(&doc, outs, EDGEOPS_JSON_ARRAY);
        edgeops_stats_update(&window, x, nx, error ? NULL : scores, no, latency, error);
    }
    edgeops_jsonw_init(&w, out, sizeof out);
    edgeops_stats_write(&window, &w);
    if (edgeops_jsonw_finish(&w, &len) != EDGEOPS_OK) {
        puts("error too large");
        return;
    }
    printf("ok %s\n", out);
}

/* --- model --------------------------------------------------------------------------- */

static void cmd_model(char *args)
{
    char *format = strtok(args, " ");
    char *art = strtok(NULL, " ");
    char *rows = strtok(NULL, " ");
    char reason[EDGEOPS_REASON_MAX + 1];
    float scores[EDGEOPS_MAX_CLASSES];
    if (rows == NULL) {
        puts("error usage");
        return;
    }
    const size_t size = unhex(art, artifact.bytes, sizeof artifact.bytes);
    const size_t n = unhex(rows, data2, sizeof data2);
    if (size == (size_t)-1 || n == (size_t)-1) {
        puts("error bad hex");
        return;
    }
    if (edgeops_model_load(&model, format, artifact.bytes, (uint32_t)size, reason,
                           sizeof reason) != EDGEOPS_OK) {
        printf("error %s\n", reason);
        return;
    }
    const size_t row_bytes = 4u * model.n_features;
    if (n % row_bytes != 0) {
        puts("error rows are not whole");
        return;
    }
    fputs("ok ", stdout);
    for (size_t i = 0; i < n / row_bytes; i++) {
        float x[EDGEOPS_MAX_FEATURES];
        int32_t cls = -1;
        memcpy(x, data2 + i * row_bytes, row_bytes);
        if (edgeops_model_predict(&model, x, model.n_features, scores, EDGEOPS_MAX_CLASSES,
                                  &cls) != EDGEOPS_OK) {
            cls = -1;
        }
        printf(i ? ",%ld" : "%ld", (long)cls);
    }
    putchar('\n');
}

/* --- state record -------------------------------------------------------------------- */

static uint8_t records[2][EDGEOPS_STATE_RECORD_MAX];
static uint32_t record_len[2];
static int tear_next;

static uint32_t ram_capacity(void *ctx, edgeops_region_t region)
{
    (void)ctx;
    (void)region;
    return 0;
}

static edgeops_err_t ram_none(void *ctx, int slot, edgeops_region_t region)
{
    (void)ctx;
    (void)slot;
    (void)region;
    return EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t ram_write(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                               const uint8_t *buf, uint32_t len)
{
    (void)ctx;
    (void)slot;
    (void)region;
    (void)offset;
    (void)buf;
    (void)len;
    return EDGEOPS_ERR_STORAGE;
}

static edgeops_err_t ram_read(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                              uint8_t *buf, uint32_t len)
{
    return ram_write(ctx, slot, region, offset, buf, len);
}

static edgeops_err_t record_write(void *ctx, int copy, const uint8_t *buf, uint32_t len)
{
    (void)ctx;
    /* a torn write: the first half of the new bytes over the old copy, then power is lost */
    const uint32_t n = tear_next ? len / 2 : len;
    memcpy(records[copy], buf, n);
    if (!tear_next) {
        record_len[copy] = len;
    }
    return EDGEOPS_OK;
}

static edgeops_err_t record_read(void *ctx, int copy, uint8_t *buf, uint32_t cap, uint32_t *len)
{
    (void)ctx;
    *len = record_len[copy] <= cap ? record_len[copy] : 0;
    memcpy(buf, records[copy], *len);
    return EDGEOPS_OK;
}

static void cmd_state(void)
{
    edgeops_storage_t st = {NULL,      ram_capacity, ram_none,   ram_write,
                            ram_read,  record_write, record_read};
    edgeops_state_t s;
    edgeops_state_t loaded;
    memset(records, 0, sizeof records);
    record_len[0] = record_len[1] = 0;
    edgeops_state_reset(&s);
    for (int64_t seq = 1; seq <= 3; seq++) {
        s.accepted_seq = seq;
        tear_next = 0;
        (void)edgeops_state_save(&s, &st);
    }
    s.accepted_seq = 4;
    tear_next = 1; /* generation 4 is torn: copy 0 holds half of it over generation 2 */
    (void)edgeops_state_save(&s, &st);
    (void)edgeops_state_load(&loaded, &st);
    const long long torn = (long long)loaded.accepted_seq;
    tear_next = 0;
    s = loaded;
    s.accepted_seq = 5;
    (void)edgeops_state_save(&s, &st);
    (void)edgeops_state_load(&loaded, &st);
    printf("ok %lld %lld\n", torn, (long long)loaded.accepted_seq);
}

int main(void)
{
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        char *arg = strchr(line, ' ');
        if (arg != NULL) {
            *arg++ = '\0';
        } else {
            arg = line + strlen(line);
        }
        if (strcmp(line, "sha256") == 0 || strcmp(line, "crc32") == 0) {
            const size_t n = unhex(arg, data, sizeof data);
            if (n == (size_t)-1) {
                puts("error bad hex");
            } else if (line[0] == 's') {
                uint8_t digest[32];
                edgeops_sha256_digest(data, n, digest);
                print_hex("", digest, 32);
            } else {
                printf("%lu\n", (unsigned long)edgeops_codec_crc32(0, data, n));
            }
        } else if (strcmp(line, "hmac") == 0) {
            char *data_hex = strchr(arg, ' ');
            uint8_t key[1024];
            uint8_t mac[32];
            if (data_hex == NULL) {
                puts("error usage");
                continue;
            }
            *data_hex++ = '\0';
            const size_t k = unhex(arg, key, sizeof key);
            const size_t n = unhex(data_hex, data, sizeof data);
            if (k == (size_t)-1 || n == (size_t)-1) {
                puts("error bad hex");
                continue;
            }
            edgeops_hmac_sha256_digest(key, k, data, n, mac);
            print_hex("", mac, 32);
        } else if (strcmp(line, "b64") == 0) {
            size_t n = 0;
            if (edgeops_codec_b64_decode(arg, strlen(arg), data, sizeof data, &n) != EDGEOPS_OK) {
                puts("error");
            } else {
                print_hex("ok ", data, n);
            }
        } else if (strcmp(line, "repr") == 0) {
            uint8_t raw[8];
            double v;
            char text[40];
            if (unhex(arg, raw, sizeof raw) != 8) {
                puts("error bad hex");
                continue;
            }
            memcpy(&v, raw, sizeof v);
            const size_t n = edgeops_json_format_double(v, text, sizeof text);
            if (n == 0) {
                puts("error");
            } else {
                puts(text);
            }
        } else if (strcmp(line, "parse") == 0 || strcmp(line, "canon") == 0) {
            cmd_parse_or_canon(arg, line[0] == 'c');
        } else if (strcmp(line, "manifest") == 0) {
            cmd_manifest(arg);
        } else if (strcmp(line, "stats") == 0) {
            cmd_stats(arg);
        } else if (strcmp(line, "model") == 0) {
            cmd_model(arg);
        } else if (strcmp(line, "state") == 0) {
            cmd_state();
        } else {
            puts("error unknown command");
        }
        fflush(stdout);
    }
    return 0;
}
