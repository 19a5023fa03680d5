#include "edgeops_manifest.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "edgeops_codec.h"
#include "edgeops_sha256.h"

static edgeops_err_t say(edgeops_err_t err, char *reason, size_t cap, const char *fmt, ...)
{
    va_list ap;
    if (reason != NULL && cap > 0) {
        va_start(ap, fmt);
        vsnprintf(reason, cap, fmt, ap);
        va_end(ap);
    }
    return err;
}

const char *edgeops_manifest_family(const char *runtime)
{
    if (strcmp(runtime, "tflite-micro") == 0) {
        return "tflm";
    }
    return runtime; /* "emlearn" is its own family */
}

static int valid_id(const char *s)
{
    const size_t n = strlen(s);
    if (n == 0 || n > EDGEOPS_ID_MAX) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        const char c = s[i];
        const int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-'))) {
            return 0;
        }
    }
    return 1;
}

edgeops_err_t edgeops_manifest_envelope(const edgeops_json_doc_t *doc, int32_t *manifest,
                                        char *reason, size_t cap)
{
    int64_t protocol = 0;
    const int32_t root = 0;
    if (!edgeops_json_is(doc, root, EDGEOPS_JSON_OBJECT)) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap, "message must be a JSON object");
    }
    const int32_t p = edgeops_json_get(doc, root, "protocol");
    if (edgeops_json_integer(doc, p, &protocol) != EDGEOPS_OK || protocol != EDGEOPS_PROTOCOL) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap, "unsupported protocol; this side speaks 1");
    }
    if (!edgeops_json_streq(doc, edgeops_json_get(doc, root, "type"), "desired")) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap, "expected a 'desired' message");
    }
    const int32_t m = edgeops_json_get(doc, root, "manifest");
    if (!edgeops_json_is(doc, m, EDGEOPS_JSON_OBJECT)) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap, "field 'manifest' must be an object");
    }
    const int32_t sig = edgeops_json_get(doc, root, "signature");
    if (!edgeops_json_is(doc, sig, EDGEOPS_JSON_OBJECT) ||
        !edgeops_json_is(doc, edgeops_json_get(doc, sig, "alg"), EDGEOPS_JSON_STRING) ||
        !edgeops_json_is(doc, edgeops_json_get(doc, sig, "key_id"), EDGEOPS_JSON_STRING) ||
        !edgeops_json_is(doc, edgeops_json_get(doc, sig, "value"), EDGEOPS_JSON_STRING)) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap,
                   "field 'signature' must hold alg, key_id and value strings");
    }
    *manifest = m;
    return EDGEOPS_OK;
}

int edgeops_manifest_addressed(const edgeops_json_doc_t *doc, int32_t manifest,
                               const edgeops_device_t *dev)
{
    return edgeops_json_streq(doc, edgeops_json_get(doc, manifest, "fleet"), dev->fleet) &&
           edgeops_json_streq(doc, edgeops_json_get(doc, manifest, "device"), dev->device);
}

static void hmac_sink(void *ctx, const char *data, size_t len)
{
    edgeops_hmac_sha256_update((edgeops_hmac_sha256_t *)ctx, data, len);
}

edgeops_err_t edgeops_manifest_verify(const edgeops_json_doc_t *doc, const edgeops_device_t *dev,
                                      char *reason, size_t cap)
{
    char text[96];
    uint8_t value[64];
    size_t value_len = 0;
    uint8_t mac[EDGEOPS_SHA256_BYTES];
    edgeops_hmac_sha256_t ctx;
    const int32_t sig = edgeops_json_get(doc, 0, "signature");
    const int32_t m = edgeops_json_get(doc, 0, "manifest");
    if (!edgeops_json_streq(doc, edgeops_json_get(doc, sig, "alg"), "hmac-sha256")) {
        if (edgeops_json_string(doc, edgeops_json_get(doc, sig, "alg"), text, 33, NULL) !=
            EDGEOPS_OK) {
            strcpy(text, "?");
        }
        return say(EDGEOPS_ERR_SIGNATURE, reason, cap,
                   "unsupported signature algorithm '%s' (this device verifies hmac-sha256)",
                   text);
    }
    const int32_t kid = edgeops_json_get(doc, sig, "key_id");
    if (dev->hmac_key == NULL || !edgeops_json_streq(doc, kid, dev->hmac_key_id)) {
        if (edgeops_json_string(doc, kid, text, 17, NULL) != EDGEOPS_OK) {
            strcpy(text, "?");
        }
        return say(EDGEOPS_ERR_SIGNATURE, reason, cap, "unknown HMAC key '%s'", text);
    }
    const int32_t v = edgeops_json_get(doc, sig, "value");
    if (edgeops_json_string(doc, v, text, sizeof text, NULL) != EDGEOPS_OK ||
        edgeops_codec_b64_decode(text, strlen(text), value, sizeof value, &value_len) !=
            EDGEOPS_OK) {
        return say(EDGEOPS_ERR_SIGNATURE, reason, cap, "signature is not base64");
    }
    edgeops_hmac_sha256_init(&ctx, dev->hmac_key, dev->hmac_key_len);
    const edgeops_err_t err = edgeops_json_canonical(doc, m, hmac_sink, &ctx);
    if (err != EDGEOPS_OK) {
        return say(EDGEOPS_ERR_SIGNATURE, reason, cap,
                   "manifest cannot be canonicalized (a duplicate key or a non-finite number)");
    }
    edgeops_hmac_sha256_final(&ctx, mac);
    if (value_len != sizeof mac || !edgeops_sha256_equal(mac, value, sizeof mac)) {
        return say(EDGEOPS_ERR_SIGNATURE, reason, cap, "bad signature");
    }
    return EDGEOPS_OK;
}

/* --- shape checks (validate_manifest) ------------------------------------------------ */

typedef struct {
    const edgeops_json_doc_t *doc;
    char *reason;
    size_t cap;
} reader_t;

static edgeops_err_t malformed(reader_t *r, const char *where, const char *key, const char *what)
{
    return say(EDGEOPS_ERR_PROTOCOL, r->reason, r->cap, "malformed manifest: %s.%s %s", where,
               key, what);
}

static edgeops_err_t need_string(reader_t *r, int32_t obj, const char *where, const char *key,
                                 char *out, size_t cap)
{
    const int32_t t = edgeops_json_get(r->doc, obj, key);
    if (!edgeops_json_is(r->doc, t, EDGEOPS_JSON_STRING)) {
        return malformed(r, where, key, "is missing or has the wrong type");
    }
    if (edgeops_json_string(r->doc, t, out, cap, NULL) != EDGEOPS_OK) {
        return malformed(r, where, key, "is longer than this device keeps");
    }
    return EDGEOPS_OK;
}

static edgeops_err_t need_int(reader_t *r, int32_t obj, const char *where, const char *key,
                              int64_t min, int64_t *out)
{
    const int32_t t = edgeops_json_get(r->doc, obj, key);
    if (edgeops_json_integer(r->doc, t, out) != EDGEOPS_OK) {
        return malformed(r, where, key, "is missing or has the wrong type");
    }
    if (*out < min) {
        return malformed(r, where, key, min == 0 ? "must be >= 0" : "must be >= 1");
    }
    return EDGEOPS_OK;
}

static edgeops_err_t need_number(reader_t *r, int32_t obj, const char *where, const char *key,
                                 double *out)
{
    const int32_t t = edgeops_json_get(r->doc, obj, key);
    if (edgeops_json_number(r->doc, t, out) != EDGEOPS_OK) {
        return malformed(r, where, key, "is missing, not a number, or not finite");
    }
    return EDGEOPS_OK;
}

static edgeops_err_t need(reader_t *r, int32_t obj, const char *where, const char *key,
                          edgeops_json_type_t type, int32_t *out)
{
    *out = edgeops_json_get(r->doc, obj, key);
    if (!edgeops_json_is(r->doc, *out, type)) {
        return malformed(r, where, key, "is missing or has the wrong type");
    }
    return EDGEOPS_OK;
}

static int is_hex64(const edgeops_json_doc_t *doc, int32_t tok)
{
    uint8_t tmp[32];
    if (!edgeops_json_is(doc, tok, EDGEOPS_JSON_STRING)) {
        return 0;
    }
    const edgeops_json_tok_t *t = &doc->toks[tok];
    return edgeops_codec_hex_decode(doc->text + t->start, t->end - t->start, tmp, 32) ==
           EDGEOPS_OK;
}

static edgeops_err_t string_list(reader_t *r, int32_t obj, const char *key, int32_t *out)
{
    edgeops_err_t err = need(r, obj, "manifest.target", key, EDGEOPS_JSON_ARRAY, out);
    if (err != EDGEOPS_OK) {
        return err;
    }
    int32_t e = edgeops_json_first(r->doc, *out);
    if (e < 0) {
        return malformed(r, "manifest.target", key, "must be a non-empty list of strings");
    }
    for (uint32_t i = 0; i < r->doc->toks[*out].size; i++, e = edgeops_json_after(r->doc, e)) {
        if (!edgeops_json_is(r->doc, e, EDGEOPS_JSON_STRING)) {
            return malformed(r, "manifest.target", key, "must be a non-empty list of strings");
        }
    }
    return EDGEOPS_OK;
}

#define TRY(expr)                                                                              \
    do {                                                                                       \
        const edgeops_err_t try_err_ = (expr);                                                 \
        if (try_err_ != EDGEOPS_OK) {                                                          \
            return try_err_;                                                                   \
        }                                                                                      \
    } while (0)

edgeops_err_t edgeops_manifest_read(const edgeops_json_doc_t *doc, int32_t manifest,
                                    edgeops_manifest_t *m, char *reason, size_t cap)
{
    reader_t r = {doc, reason, cap};
    char id[EDGEOPS_ID_MAX + 2];
    int32_t t;
    int32_t model;
    int32_t art;
    int32_t health;
    int64_t v;
    memset(m, 0, sizeof *m);
    m->tok = manifest;
    TRY(need_string(&r, manifest, "manifest", "fleet", id, sizeof id));
    if (!valid_id(id)) {
        return malformed(&r, "manifest", "fleet", "is not a valid id");
    }
    TRY(need_string(&r, manifest, "manifest", "device", id, sizeof id));
    if (!valid_id(id)) {
        return malformed(&r, "manifest", "device", "is not a valid id");
    }
    TRY(need_int(&r, manifest, "manifest", "seq", 1, &m->seq));
    if (!edgeops_json_streq(doc, edgeops_json_get(doc, manifest, "action"), "deploy")) {
        return malformed(&r, "manifest", "action", "must be 'deploy'");
    }
    TRY(need_string(&r, manifest, "manifest", "deployment", m->deployment,
                    sizeof m->deployment));
    t = edgeops_json_get(doc, manifest, "rollout");
    if (t >= 0 && !edgeops_json_is(doc, t, EDGEOPS_JSON_NULL)) {
        TRY(need_string(&r, manifest, "manifest", "rollout", m->rollout, sizeof m->rollout));
        m->has_rollout = 1;
    }
    TRY(need_number(&r, manifest, "manifest", "issued_at", &m->issued_at));
    TRY(need_number(&r, manifest, "manifest", "expires_at", &m->expires_at));
    if (m->expires_at <= m->issued_at) {
        return malformed(&r, "manifest", "expires_at", "must be after issued_at");
    }
    TRY(need(&r, manifest, "manifest", "target", EDGEOPS_JSON_OBJECT, &t));
    TRY(string_list(&r, t, "hardware", &m->target_hardware));
    TRY(string_list(&r, t, "runtime", &m->target_runtime));
    TRY(need(&r, manifest, "manifest", "model", EDGEOPS_JSON_OBJECT, &model));
    TRY(need_string(&r, model, "manifest.model", "name", m->name, sizeof m->name));
    TRY(need_int(&r, model, "manifest.model", "version", 1, &m->version));
    TRY(need_string(&r, model, "manifest.model", "variant", m->variant, sizeof m->variant));
    if (need_string(&r, model, "manifest.model", "format", m->format, sizeof m->format) !=
            EDGEOPS_OK ||
        (strcmp(m->format, "tflite") != 0 && strcmp(m->format, "onnx") != 0 &&
         strcmp(m->format, "c-tflm") != 0 && strcmp(m->format, "c-emlearn") != 0)) {
        return malformed(&r, "manifest.model", "format",
                         "must be one of tflite, onnx, c-tflm, c-emlearn");
    }
    if (need_string(&r, model, "manifest.model", "runtime", m->runtime, sizeof m->runtime) !=
            EDGEOPS_OK ||
        (strcmp(m->runtime, "tflite") != 0 && strcmp(m->runtime, "onnx") != 0 &&
         strcmp(m->runtime, "tflm") != 0 && strcmp(m->runtime, "emlearn") != 0)) {
        return malformed(&r, "manifest.model", "runtime",
                         "must be one of tflite, onnx, tflm, emlearn");
    }
    TRY(need(&r, manifest, "manifest", "artifact", EDGEOPS_JSON_OBJECT, &art));
    t = edgeops_json_get(doc, art, "sha256");
    if (!is_hex64(doc, t)) {
        return malformed(&r, "manifest.artifact", "sha256", "must be a SHA-256 hex digest");
    }
    (void)edgeops_codec_hex_decode(doc->text + doc->toks[t].start, 64, m->sha256, 32);
    TRY(need_int(&r, art, "manifest.artifact", "size", 1, &v));
    if (v > (int64_t)0xffffffffu) {
        return malformed(&r, "manifest.artifact", "size", "is too large");
    }
    m->size = (uint32_t)v;
    TRY(need_int(&r, art, "manifest.artifact", "chunk_size", 1, &v));
    if (v > (int64_t)0xffffffffu) {
        return malformed(&r, "manifest.artifact", "chunk_size", "is too large");
    }
    m->chunk_size = (uint32_t)v;
    TRY(need(&r, art, "manifest.artifact", "chunks", EDGEOPS_JSON_ARRAY, &m->chunks));
    m->n_chunks = doc->toks[m->chunks].size;
    if (m->n_chunks != (m->size + m->chunk_size - 1) / m->chunk_size) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap,
                   "malformed manifest: manifest.artifact size, chunk_size and chunks do not "
                   "agree");
    }
    t = edgeops_json_first(doc, m->chunks);
    for (uint32_t i = 0; i < m->n_chunks; i++, t = edgeops_json_after(doc, t)) {
        if (!is_hex64(doc, t)) {
            return malformed(&r, "manifest.artifact", "chunks", "must be SHA-256 hex digests");
        }
    }
    TRY(need(&r, manifest, "manifest", "health", EDGEOPS_JSON_OBJECT, &health));
    TRY(need(&r, health, "manifest.health", "inputs", EDGEOPS_JSON_ARRAY, &m->health_inputs));
    TRY(need(&r, health, "manifest.health", "outputs", EDGEOPS_JSON_ARRAY, &m->health_outputs));
    if (doc->toks[m->health_inputs].size != doc->toks[m->health_outputs].size) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap,
                   "malformed manifest: manifest.health inputs and outputs differ in length");
    }
    TRY(need_number(&r, health, "manifest.health", "atol", &m->atol));
    TRY(need_number(&r, health, "manifest.health", "latency_budget_ms", &m->latency_budget_ms));
    TRY(need_number(&r, health, "manifest.health", "probation_s", &m->probation_s));
    TRY(need_number(&r, health, "manifest.health", "max_error_rate", &m->max_error_rate));
    if (m->atol < 0 || m->latency_budget_ms < 0 || m->probation_s < 0 || m->max_error_rate < 0) {
        return say(EDGEOPS_ERR_PROTOCOL, reason, cap,
                   "malformed manifest: manifest.health values must be >= 0");
    }
    TRY(need(&r, manifest, "manifest", "serving", EDGEOPS_JSON_OBJECT, &m->serving));
    return EDGEOPS_OK;
}

static int list_has(const edgeops_json_doc_t *doc, int32_t list, const char *s)
{
    int32_t e = edgeops_json_first(doc, list);
    for (uint32_t i = 0; e >= 0 && i < doc->toks[list].size; i++, e = edgeops_json_after(doc, e)) {
        if (edgeops_json_streq(doc, e, s)) {
            return 1;
        }
    }
    return 0;
}

static int runs_format(const char *format, const char *runtime)
{
    if (strcmp(format, "c-emlearn") == 0) {
        return strcmp(runtime, "emlearn") == 0;
    }
#if EDGEOPS_WITH_TFLM
    /* the tflm variant: the .tflite flatbuffer for TFLite Micro (c-tflm is C source) */
    if (strcmp(format, "tflite") == 0) {
        return strcmp(runtime, "tflm") == 0;
    }
#endif
    return 0;
}

edgeops_err_t edgeops_manifest_check(const edgeops_json_doc_t *doc, const edgeops_manifest_t *m,
                                     const edgeops_device_t *dev, int64_t accepted_seq,
                                     double now, char *reason, size_t cap)
{
    char families[64];
    int has_family = 0;
    if (!edgeops_manifest_addressed(doc, m->tok, dev)) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap, "manifest is not for this device");
    }
    if (m->seq == accepted_seq) {
        return EDGEOPS_ERR_ALREADY;
    }
    if (m->seq < accepted_seq) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap,
                   "replayed manifest: seq %lld is below the accepted %lld", (long long)m->seq,
                   (long long)accepted_seq);
    }
    if (m->expires_at <= now) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap, "manifest expired at %.0f (now %.0f)",
                   m->expires_at, now);
    }
    if (!list_has(doc, m->target_hardware, "*") &&
        !list_has(doc, m->target_hardware, dev->hardware)) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap,
                   "manifest targets other hardware, this is %s", dev->hardware);
    }
    families[0] = '\0';
    for (uint32_t i = 0; i < dev->n_runtimes; i++) {
        const char *family = edgeops_manifest_family(dev->runtimes[i]);
        if (strcmp(family, m->runtime) == 0) {
            has_family = 1;
        }
        if (strlen(families) + strlen(family) + 3 < sizeof families) {
            if (families[0] != '\0') {
                strcat(families, ", ");
            }
            strcat(families, family);
        }
    }
    if (!list_has(doc, m->target_runtime, m->runtime) || !has_family) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap,
                   "manifest needs runtime %s; this device has %s", m->runtime,
                   families[0] ? families : "none");
    }
    if (m->size > dev->max_artifact_bytes) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap,
                   "artifact of %lu bytes is over this device's limit of %lu",
                   (unsigned long)m->size, (unsigned long)dev->max_artifact_bytes);
    }
    if (!runs_format(m->format, m->runtime)) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap,
                   "model format %s with runtime %s does not run on this device", m->format,
                   m->runtime);
    }
    if (m->chunk_size > EDGEOPS_CHUNK_MAX_BYTES || m->n_chunks > EDGEOPS_MAX_CHUNKS) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap,
                   "artifact in %lu chunks of %lu bytes is over this device's limits (%u chunks "
                   "of at most %u bytes)",
                   (unsigned long)m->n_chunks, (unsigned long)m->chunk_size,
                   (unsigned)EDGEOPS_MAX_CHUNKS, (unsigned)EDGEOPS_CHUNK_MAX_BYTES);
    }
    if (doc->len > dev->max_manifest_bytes) {
        return say(EDGEOPS_ERR_REJECTED, reason, cap,
                   "manifest of %lu bytes is over this device's limit of %lu",
                   (unsigned long)doc->len, (unsigned long)dev->max_manifest_bytes);
    }
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_manifest_chunk_hash(const edgeops_json_doc_t *doc,
                                          const edgeops_manifest_t *m, uint32_t i,
                                          uint8_t out[32])
{
    const int32_t t = edgeops_json_at(doc, m->chunks, i);
    if (!is_hex64(doc, t)) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    return edgeops_codec_hex_decode(doc->text + doc->toks[t].start, 64, out, 32);
}
