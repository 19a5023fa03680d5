/* One accepted manifest on its way to activation (docs/protocol.md, "Deployment on the
 * device"), as edgeops_agent.deploy does it:
 *
 *   accepted ── accepted_seq persisted ─┬─ artifact in the inactive slot ─────────── health
 *                                       ├─ artifact in the active slot: copied over ── health
 *                                       └─ inactive slot erased, manifest written,
 *                                          chunks (any order, repeats ignored) ── verify ─ health
 *   health ── activate (one state record write) ── probation ── (rolled back on failure)
 *
 * The active slot is never written. Any failing step publishes `failed` with the step
 * and the reason, and the model that was serving keeps serving. Before any of it, a
 * firmware built with EDGEOPS_FEATURES_SHA256 rejects a manifest whose serving.features
 * are not its compiled-in feature transforms.
 *
 * Download progress: each chunk is written, read back and hashed, then marked in the
 * state record's progress (artifact SHA-256, slot, chunk bitmap) with one record write,
 * so a reboot, a timeout or a retry with a new seq for the same artifact keeps the
 * chunks already stored: they are re-read and re-hashed against the manifest before
 * they count, and only the missing or damaged ones are downloaded. A chunk that does
 * not read back as written (NOR flash cannot rewrite a place without an erase) erases
 * the slot once and the download starts over.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "edgeops_agent.h"
#include "edgeops_codec.h"
#include "edgeops_sha256.h"

#define REASON(a, ...) snprintf((a)->reason, sizeof (a)->reason, __VA_ARGS__)

static edgeops_download_t *dl(edgeops_agent_t *a)
{
    return &a->download;
}

static const char *dl_rollout(const edgeops_download_t *d)
{
    return d->has_rollout ? d->rollout : NULL;
}

static uint64_t now_us(edgeops_agent_t *a)
{
    return a->port.monotonic_us(a->port.ctx);
}

static void chunk_filter(edgeops_agent_t *a, char *out)
{
    snprintf(out, EDGEOPS_TOPIC_MAX, "%.100s%.64s/+", a->artifacts_prefix, dl(a)->sha_hex);
}

static void subscribe_chunks(edgeops_agent_t *a)
{
    char filter[EDGEOPS_TOPIC_MAX];
    if (!a->connected) {
        return;
    }
    chunk_filter(a, filter);
    dl(a)->last_subscribe_us = now_us(a);
    (void)a->port.subscribe(a->port.ctx, filter);
}

static void unsubscribe_chunks(edgeops_agent_t *a)
{
    char filter[EDGEOPS_TOPIC_MAX];
    if (!a->connected) {
        return;
    }
    chunk_filter(a, filter);
    (void)a->port.unsubscribe(a->port.ctx, filter);
}

/* the deployment ends: forget it on storage, tell the server why */
static void fail(edgeops_agent_t *a, const char *step, const char *reason)
{
    edgeops_download_t *d = dl(a);
    char why[EDGEOPS_REASON_MAX + 1];
    snprintf(why, sizeof why, "%s", reason);
    if (d->phase == EDGEOPS_PHASE_DOWNLOADING) {
        unsubscribe_chunks(a);
    }
    d->phase = EDGEOPS_PHASE_IDLE;
    if (a->state.deploying_seq == d->seq) {
        a->state.deploying_seq = 0;
        a->state.deploying_slot = EDGEOPS_NO_SLOT;
        (void)edgeops_agent_save(a);
    }
    edgeops_agent_log(a, EDGEOPS_LOG_WARNING, "deployment seq %lld failed at %s: %s",
                      (long long)d->seq, step, why);
    edgeops_agent_event(a, "failed", d->seq, d->deployment, dl_rollout(d), -1.0, step, why);
    edgeops_agent_publish_state(a);
}

/* --- slots --------------------------------------------------------------------------- */

/* read size bytes of a slot's artifact into its model buffer; they must hash to sha256 */
static edgeops_err_t read_artifact(edgeops_agent_t *a, int slot, uint32_t size,
                                   const uint8_t sha256[32])
{
    edgeops_sha256_t ctx;
    uint8_t digest[32];
    uint8_t *buf = a->model_buf[slot].bytes;
    if (size > EDGEOPS_MODEL_MAX_BYTES) {
        REASON(a, "artifact of %lu bytes is over EDGEOPS_MODEL_MAX_BYTES", (unsigned long)size);
        return EDGEOPS_ERR_SPACE;
    }
    a->models[slot].kind = EDGEOPS_MODEL_NONE; /* its bytes are about to change */
    edgeops_sha256_init(&ctx);
    for (uint32_t off = 0; off < size; off += EDGEOPS_COPY_BUFFER_BYTES) {
        const uint32_t n = size - off < EDGEOPS_COPY_BUFFER_BYTES ? size - off
                                                                  : EDGEOPS_COPY_BUFFER_BYTES;
        if (a->storage.read(a->storage.ctx, slot, EDGEOPS_REGION_ARTIFACT, off, buf + off, n) !=
            EDGEOPS_OK) {
            a->counters.storage_errors++;
            REASON(a, "cannot read slot %d", slot);
            return EDGEOPS_ERR_STORAGE;
        }
        edgeops_sha256_update(&ctx, buf + off, n);
    }
    edgeops_sha256_final(&ctx, digest);
    if (!edgeops_sha256_equal(digest, sha256, 32)) {
        REASON(a, "the artifact in slot %d does not match its SHA-256", slot);
        return EDGEOPS_ERR_CORRUPT;
    }
    return EDGEOPS_OK;
}

/* a slot's stored envelope into a->text, parsed into a->doc and a->manifest */
static edgeops_err_t read_manifest(edgeops_agent_t *a, int slot, uint32_t len)
{
    int32_t m;
    if (len == 0 || len > sizeof a->text) {
        REASON(a, "slot %d has no stored manifest", slot);
        return EDGEOPS_ERR_CORRUPT;
    }
    if (a->storage.read(a->storage.ctx, slot, EDGEOPS_REGION_MANIFEST, 0, (uint8_t *)a->text,
                        len) != EDGEOPS_OK) {
        a->counters.storage_errors++;
        REASON(a, "cannot read the manifest of slot %d", slot);
        return EDGEOPS_ERR_STORAGE;
    }
    if (edgeops_json_parse(&a->doc, a->text, len, a->tokens, EDGEOPS_JSON_MAX_TOKENS) !=
            EDGEOPS_OK ||
        edgeops_manifest_envelope(&a->doc, &m, a->reason, sizeof a->reason) != EDGEOPS_OK) {
        REASON(a, "the manifest stored in slot %d does not parse", slot);
        return EDGEOPS_ERR_CORRUPT;
    }
    return edgeops_manifest_read(&a->doc, m, &a->manifest, a->reason, sizeof a->reason);
}

static edgeops_err_t load_model(edgeops_agent_t *a, int slot, uint32_t size)
{
    char why[EDGEOPS_REASON_MAX + 1];
    const edgeops_err_t err = edgeops_model_load(&a->models[slot], a->manifest.format,
                                                 a->model_buf[slot].bytes, size, why, sizeof why);
    if (err != EDGEOPS_OK) {
        a->models[slot].kind = EDGEOPS_MODEL_NONE;
        REASON(a, "model does not load: %.900s", why);
        return err;
    }
    snprintf(a->formats[slot], sizeof a->formats[slot], "%s", a->manifest.format);
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_deploy_load_slot(edgeops_agent_t *a, int slot)
{
    const edgeops_slot_meta_t *meta = &a->state.slots[slot];
    if (!meta->valid) {
        REASON(a, "slot %d is empty", slot);
        return EDGEOPS_ERR_CORRUPT;
    }
    edgeops_err_t err = read_manifest(a, slot, meta->manifest_len);
    if (err != EDGEOPS_OK) {
        return err;
    }
    if (memcmp(a->manifest.sha256, meta->sha256, 32) != 0 || a->manifest.size != meta->size) {
        REASON(a, "the manifest stored in slot %d is not the slot's", slot);
        return EDGEOPS_ERR_CORRUPT;
    }
    err = read_artifact(a, slot, meta->size, meta->sha256);
    if (err != EDGEOPS_OK) {
        return err;
    }
    return load_model(a, slot, meta->size);
}

static edgeops_err_t write_region(edgeops_agent_t *a, int slot, edgeops_region_t region,
                                  const uint8_t *data, uint32_t len)
{
    if (a->storage.erase(a->storage.ctx, slot, region) != EDGEOPS_OK ||
        (len > 0 && a->storage.write(a->storage.ctx, slot, region, 0, data, len) != EDGEOPS_OK)) {
        a->counters.storage_errors++;
        REASON(a, "cannot write slot %d", slot);
        return EDGEOPS_ERR_STORAGE;
    }
    return EDGEOPS_OK;
}

/* --- health check and activation ----------------------------------------------------- */

static double median_of(float *v, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++) {
        const float x = v[i];
        uint32_t j = i;
        while (j > 0 && v[j - 1] > x) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
    return n == 0 ? 0.0 : n % 2 ? (double)v[n / 2] : ((double)v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* docs/protocol.md step 4 on a->manifest's health section, with the model of slot */
static edgeops_err_t health_check(edgeops_agent_t *a, int slot)
{
    const edgeops_json_doc_t *doc = &a->doc;
    const edgeops_manifest_t *m = &a->manifest;
    edgeops_model_t *model = &a->models[slot];
    float x[EDGEOPS_MAX_FEATURES];
    float scores[EDGEOPS_MAX_CLASSES];
    float latencies[EDGEOPS_PROBATION_LATENCIES];
    uint32_t n_latencies = 0;
    double worst = 0.0;
    int32_t cls = -1;
    const uint32_t rows = doc->toks[m->health_inputs].size;
    int32_t row = edgeops_json_first(doc, m->health_inputs);
    int32_t want = edgeops_json_first(doc, m->health_outputs);
    if (rows == 0) { /* no probe: one inference on zeros must give finite outputs */
        memset(x, 0, sizeof x);
        if (edgeops_model_predict(model, x, model->n_features, scores, EDGEOPS_MAX_CLASSES,
                                  &cls) != EDGEOPS_OK) {
            REASON(a, "the model fails on an input of zeros");
            return EDGEOPS_ERR_MODEL;
        }
        for (uint32_t k = 0; k < model->n_outputs; k++) {
            if (!isfinite(scores[k])) {
                REASON(a, "outputs are not finite");
                return EDGEOPS_ERR_MODEL;
            }
        }
        return EDGEOPS_OK;
    }
    for (uint32_t i = 0; i < rows; i++, row = edgeops_json_after(doc, row),
                  want = edgeops_json_after(doc, want)) {
        const uint32_t n = edgeops_json_is(doc, row, EDGEOPS_JSON_ARRAY) ? doc->toks[row].size : 0;
        if (n != model->n_features) {
            REASON(a, "health input %lu has %lu values, the model takes %lu", (unsigned long)i,
                   (unsigned long)n, (unsigned long)model->n_features);
            return EDGEOPS_ERR_MODEL;
        }
        int32_t v = edgeops_json_first(doc, row);
        for (uint32_t j = 0; j < n; j++, v = edgeops_json_after(doc, v)) {
            double d;
            if (edgeops_json_number(doc, v, &d) != EDGEOPS_OK) {
                REASON(a, "health vectors are not numeric arrays");
                return EDGEOPS_ERR_MODEL;
            }
            x[j] = (float)d;
        }
        const uint64_t t0 = now_us(a);
        const edgeops_err_t err = edgeops_model_predict(model, x, n, scores, EDGEOPS_MAX_CLASSES,
                                                        &cls);
        const uint64_t t1 = now_us(a);
        if (err != EDGEOPS_OK) {
            REASON(a, "prediction on health input %lu failed: %s", (unsigned long)i,
                   edgeops_err_str(err));
            return EDGEOPS_ERR_MODEL;
        }
        if (n_latencies < EDGEOPS_PROBATION_LATENCIES) {
            latencies[n_latencies++] = (float)((double)(t1 - t0) / 1000.0);
        }
        for (uint32_t k = 0; k < model->n_outputs; k++) {
            if (!isfinite(scores[k])) {
                REASON(a, "outputs are not finite");
                return EDGEOPS_ERR_MODEL;
            }
        }
        double expected;
        if (edgeops_json_number(doc, want, &expected) == EDGEOPS_OK) {
            /* one number per row: the class index (what emlearn variants record) */
            const double diff = fabs((double)cls - (double)(float)expected);
            worst = diff > worst ? diff : worst;
        } else if (edgeops_json_is(doc, want, EDGEOPS_JSON_ARRAY) &&
                   doc->toks[want].size == model->n_outputs) {
            int32_t e = edgeops_json_first(doc, want);
            for (uint32_t k = 0; k < model->n_outputs; k++, e = edgeops_json_after(doc, e)) {
                if (edgeops_json_number(doc, e, &expected) != EDGEOPS_OK) {
                    REASON(a, "health vectors are not numeric arrays");
                    return EDGEOPS_ERR_MODEL;
                }
                const double diff = fabs((double)scores[k] - (double)(float)expected);
                worst = diff > worst ? diff : worst;
            }
        } else {
            REASON(a, "health output %lu does not have the model's %lu outputs", (unsigned long)i,
                   (unsigned long)model->n_outputs);
            return EDGEOPS_ERR_MODEL;
        }
    }
    if (worst > m->atol) {
        REASON(a, "outputs differ from the expected by %.4g (atol %g)", worst, m->atol);
        return EDGEOPS_ERR_MODEL;
    }
    const double p50 = median_of(latencies, n_latencies);
    if (m->latency_budget_ms > 0 && p50 > m->latency_budget_ms) {
        REASON(a, "median latency %.1f ms is over the budget of %g ms", p50, m->latency_budget_ms);
        return EDGEOPS_ERR_MODEL;
    }
    return EDGEOPS_OK;
}

/* a->doc / a->manifest hold the deployment's manifest and the artifact is in the
 * model buffer of slot (verified); write_manifest: the slot's manifest region still
 * holds another manifest (the artifact was found in a slot) */
static void health_and_activate(edgeops_agent_t *a, int slot, const uint8_t *envelope,
                                uint32_t envelope_len)
{
    edgeops_download_t *d = dl(a);
    if (load_model(a, slot, d->size) != EDGEOPS_OK || health_check(a, slot) != EDGEOPS_OK) {
        char why[EDGEOPS_REASON_MAX + 1];
        snprintf(why, sizeof why, "%s", a->reason);
        a->models[slot].kind = EDGEOPS_MODEL_NONE;
        fail(a, "health", why);
        return;
    }
    if (envelope != NULL &&
        write_region(a, slot, EDGEOPS_REGION_MANIFEST, envelope, envelope_len) != EDGEOPS_OK) {
        a->state.slots[slot].valid = 0; /* its manifest is gone */
        fail(a, "install", a->reason);
        return;
    }
    edgeops_slot_meta_t *meta = &a->state.slots[slot];
    const edgeops_state_t before = a->state;
    memset(meta, 0, sizeof *meta);
    meta->valid = 1;
    meta->seq = d->seq;
    meta->version = a->manifest.version;
    meta->size = d->size;
    meta->manifest_len = d->manifest_len;
    meta->activated_at = edgeops_agent_now(a);
    memcpy(meta->sha256, d->sha256, 32);
    snprintf(meta->name, sizeof meta->name, "%s", a->manifest.name);
    snprintf(meta->variant, sizeof meta->variant, "%s", a->manifest.variant);
    snprintf(meta->deployment, sizeof meta->deployment, "%s", d->deployment);
    snprintf(meta->rollout, sizeof meta->rollout, "%s", d->rollout);
    meta->has_rollout = d->has_rollout;
    a->state.active = (int8_t)slot;
    a->state.deploying_seq = 0;
    a->state.deploying_slot = EDGEOPS_NO_SLOT;
    if (a->state.progress.slot == slot) {
        a->state.progress.slot = EDGEOPS_NO_SLOT; /* the slot holds an installed model now */
    }
    if (edgeops_agent_save(a) != EDGEOPS_OK) {
        a->state = before;
        fail(a, "activate", "cannot write the state record");
        return;
    }
    d->phase = EDGEOPS_PHASE_IDLE;
    edgeops_agent_serve_active(a, 1);
    edgeops_agent_event(a, "activated", d->seq, d->deployment, dl_rollout(d), -1.0, NULL, NULL);
    edgeops_agent_log(a, EDGEOPS_LOG_INFO, "activated %s:%lld/%s (seq %lld) in slot %d",
                      meta->name, (long long)meta->version, meta->variant, (long long)d->seq,
                      slot);
    edgeops_agent_publish_state(a);
}

/* --- downloading --------------------------------------------------------------------- */

static uint8_t *have_bits(edgeops_agent_t *a)
{
    return a->state.progress.have;
}

static void report_progress(edgeops_agent_t *a, int force)
{
    edgeops_download_t *d = dl(a);
    const double p = d->n_chunks ? (double)d->received / (double)d->n_chunks : 1.0;
    const int decile = (int)(p * 10 + 1e-9);
    if (force || decile > d->reported_decile) {
        d->reported_decile = decile;
        edgeops_agent_download_event(a, "downloading", floor(p * 10000.0 + 0.5) / 10000.0);
    }
}

static int bit(const uint8_t *bits, uint32_t i)
{
    return (bits[i / 8] >> (i % 8)) & 1;
}

static void set_bit(uint8_t *bits, uint32_t i, int on)
{
    if (on) {
        bits[i / 8] = (uint8_t)(bits[i / 8] | (1u << (i % 8)));
    } else {
        bits[i / 8] = (uint8_t)(bits[i / 8] & ~(1u << (i % 8)));
    }
}

static uint32_t chunk_len(const edgeops_download_t *d, uint32_t i)
{
    return i + 1 < d->n_chunks ? d->chunk_size : d->size - (d->n_chunks - 1) * d->chunk_size;
}

/* the download progress now describes a->download's artifact in slot, with no chunk held */
static void progress_reset(edgeops_agent_t *a, int slot)
{
    edgeops_progress_t *pr = &a->state.progress;
    const edgeops_download_t *d = dl(a);
    memset(pr, 0, sizeof *pr);
    pr->slot = (int8_t)slot;
    memcpy(pr->sha256, d->sha256, 32);
    pr->chunk_size = d->chunk_size;
    pr->n_chunks = d->n_chunks;
}

/* whether the recorded progress is about a->download's artifact (same SHA-256, same
 * chunks) in slot, a slot that holds no installed model */
static int progress_matches(const edgeops_agent_t *a, int slot)
{
    const edgeops_progress_t *pr = &a->state.progress;
    const edgeops_download_t *d = &a->download;
    return slot != EDGEOPS_NO_SLOT && pr->slot == slot && slot != a->state.active &&
           !a->state.slots[slot].valid && memcmp(pr->sha256, d->sha256, 32) == 0 &&
           pr->chunk_size == d->chunk_size && pr->n_chunks == d->n_chunks;
}

/* chunk i as the slot holds it hashes to artifact.chunks[i] */
static int chunk_intact(edgeops_agent_t *a, uint32_t i)
{
    const edgeops_download_t *d = dl(a);
    const uint32_t len = chunk_len(d, i);
    const uint32_t base = i * d->chunk_size;
    edgeops_sha256_t ctx;
    uint8_t digest[32];
    edgeops_sha256_init(&ctx);
    for (uint32_t off = 0; off < len; off += EDGEOPS_COPY_BUFFER_BYTES) {
        const uint32_t n = len - off < EDGEOPS_COPY_BUFFER_BYTES ? len - off
                                                                 : EDGEOPS_COPY_BUFFER_BYTES;
        if (a->storage.read(a->storage.ctx, d->slot, EDGEOPS_REGION_ARTIFACT, base + off, a->copy,
                            n) != EDGEOPS_OK) {
            a->counters.storage_errors++;
            return 0;
        }
        edgeops_sha256_update(&ctx, a->copy, n);
    }
    edgeops_sha256_final(&ctx, digest);
    return edgeops_sha256_equal(digest, d->chunk_hashes[i], 32);
}

/* the chunks the progress records are read back and hashed: only the intact ones stay */
static void keep_stored_chunks(edgeops_agent_t *a)
{
    edgeops_download_t *d = dl(a);
    for (uint32_t i = 0; i < d->n_chunks; i++) {
        if (!bit(have_bits(a), i)) {
            continue;
        }
        if (chunk_intact(a, i)) {
            d->resumed++;
        } else {
            set_bit(have_bits(a), i, 0);
            d->damaged++;
        }
    }
    d->received = d->resumed;
    if (d->damaged > 0) {
        edgeops_agent_log(a, EDGEOPS_LOG_WARNING,
                          "%lu stored chunks of %.12s failed their SHA-256 check when read back; "
                          "downloading them again",
                          (unsigned long)d->damaged, d->sha_hex);
    }
}

static void finish_download(edgeops_agent_t *a)
{
    edgeops_download_t *d = dl(a);
    unsubscribe_chunks(a);
    d->phase = EDGEOPS_PHASE_IDLE;
    if (read_artifact(a, d->slot, d->size, d->sha256) != EDGEOPS_OK) {
        char why[EDGEOPS_REASON_MAX + 1];
        snprintf(why, sizeof why, "the assembled artifact does not match its size and SHA-256 "
                 "(%.900s)", a->reason);
        a->state.progress.slot = EDGEOPS_NO_SLOT; /* a retry starts over */
        fail(a, "verify", why);
        return;
    }
    edgeops_agent_download_event(a, "verified", -1.0);
    if (read_manifest(a, d->slot, d->manifest_len) != EDGEOPS_OK || a->manifest.seq != d->seq) {
        fail(a, "install", "the manifest written to the slot cannot be read back");
        return;
    }
    health_and_activate(a, d->slot, NULL, 0);
}

/* download a->download's artifact into its slot; keep: the slot was not erased and the
 * recorded progress is about this artifact (its chunks are re-verified and kept) */
static void start_download(edgeops_agent_t *a, int keep)
{
    edgeops_download_t *d = dl(a);
    memset(d->bad, 0, sizeof d->bad);
    d->received = d->resumed = d->damaged = d->written = 0;
    d->restarted = 0;
    if (keep) {
        keep_stored_chunks(a);
    } else {
        progress_reset(a, d->slot);
    }
    (void)edgeops_agent_save(a);
    d->reported_decile = -1;
    d->phase = EDGEOPS_PHASE_DOWNLOADING;
    d->last_chunk_us = d->last_subscribe_us = now_us(a);
    report_progress(a, 0);
    if (d->received == d->n_chunks) { /* every chunk was there already */
        finish_download(a);
        return;
    }
    subscribe_chunks(a);
}

/* chunk i did not read back as it was written: the storage cannot rewrite that place (NOR
 * flash without an erase). Erase the slot once and download every chunk again. */
static void restart_download(edgeops_agent_t *a, uint32_t index)
{
    edgeops_download_t *d = dl(a);
    char why[96];
    if (d->restarted ||
        write_region(a, d->slot, EDGEOPS_REGION_ARTIFACT, NULL, 0) != EDGEOPS_OK) {
        snprintf(why, sizeof why, "chunk %lu does not read back as written", (unsigned long)index);
        a->state.progress.slot = EDGEOPS_NO_SLOT;
        fail(a, "download", why);
        return;
    }
    edgeops_agent_log(a, EDGEOPS_LOG_WARNING,
                      "chunk %lu does not read back as written; the slot is erased and the "
                      "download starts over",
                      (unsigned long)index);
    d->restarted = 1;
    progress_reset(a, d->slot);
    (void)edgeops_agent_save(a);
    d->received = d->resumed = 0;
    d->last_chunk_us = now_us(a);
    subscribe_chunks(a); /* the broker sends the retained chunks again */
}

void edgeops_deploy_chunk(edgeops_agent_t *a, const char *topic, const uint8_t *payload,
                          size_t len)
{
    edgeops_download_t *d = dl(a);
    const char *rest = topic + strlen(a->artifacts_prefix);
    uint32_t index = 0;
    uint8_t digest[32];
    if (strlen(rest) < 66 || rest[64] != '/' || strlen(rest + 65) > 9) {
        a->counters.unknown_topic++;
        return;
    }
    for (const char *p = rest + 65; *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            a->counters.unknown_topic++;
            return;
        }
        index = index * 10u + (uint32_t)(*p - '0');
    }
    if (d->phase != EDGEOPS_PHASE_DOWNLOADING || strncmp(rest, d->sha_hex, 64) != 0 ||
        index >= d->n_chunks) {
        a->counters.chunks_unexpected++;
        return;
    }
    if (bit(have_bits(a), index)) {
        a->counters.chunks_duplicate++;
        return;
    }
    edgeops_sha256_digest(payload, len, digest);
    if (len != chunk_len(d, index) || !edgeops_sha256_equal(digest, d->chunk_hashes[index], 32)) {
        a->counters.chunks_bad++;
        set_bit(d->bad, index, 1);
        edgeops_agent_log(a, EDGEOPS_LOG_WARNING,
                          "chunk %lu of %.12s failed its SHA-256 check; dropped",
                          (unsigned long)index, d->sha_hex);
        return;
    }
    if (a->storage.write(a->storage.ctx, d->slot, EDGEOPS_REGION_ARTIFACT,
                         index * d->chunk_size, payload, (uint32_t)len) != EDGEOPS_OK) {
        char why[64];
        a->counters.storage_errors++;
        snprintf(why, sizeof why, "cannot store chunk %lu", (unsigned long)index);
        fail(a, "download", why);
        return;
    }
    /* read back before it counts: a place written before (a chunk torn by a reset, or
     * damaged) may not take new bytes without an erase */
    if (!chunk_intact(a, index)) {
        restart_download(a, index);
        return;
    }
    /* on storage first, then in the progress: a chunk marked there was whole */
    a->counters.chunks_stored++;
    set_bit(have_bits(a), index, 1);
    set_bit(d->bad, index, 0);
    (void)edgeops_agent_save(a);
    d->received++;
    d->written++;
    d->last_chunk_us = now_us(a);
    report_progress(a, 0);
    if (d->received == d->n_chunks) {
        finish_download(a);
    }
}

static void missing_text(const edgeops_download_t *d, const uint8_t *bits, int want, char *out,
                         size_t cap)
{
    size_t used = 0;
    unsigned listed = 0;
    out[0] = '\0';
    for (uint32_t i = 0; i < d->n_chunks && used + 16 < cap; i++) {
        if (bit(bits, i) != want) {
            continue;
        }
        if (listed == 8) {
            used += (size_t)snprintf(out + used, cap - used, " ...");
            break;
        }
        used += (size_t)snprintf(out + used, cap - used, "%s%lu", listed ? ", " : "",
                                 (unsigned long)i);
        listed++;
    }
}

void edgeops_deploy_tick(edgeops_agent_t *a)
{
    edgeops_download_t *d = dl(a);
    if (d->phase != EDGEOPS_PHASE_DOWNLOADING) {
        return;
    }
    const uint64_t now = now_us(a);
    const double since_chunk = (double)(now - d->last_chunk_us) / 1e6;
    const uint64_t last = d->last_chunk_us > d->last_subscribe_us ? d->last_chunk_us
                                                                  : d->last_subscribe_us;
    if (since_chunk >= a->options.download_timeout_s) {
        char missing[128];
        char bad[128];
        char why[EDGEOPS_REASON_MAX + 1];
        uint8_t bad_missing[(EDGEOPS_MAX_CHUNKS + 7) / 8];
        for (size_t i = 0; i < sizeof bad_missing; i++) {
            bad_missing[i] = (uint8_t)(d->bad[i] & ~have_bits(a)[i]);
        }
        missing_text(d, have_bits(a), 0, missing, sizeof missing);
        missing_text(d, bad_missing, 1, bad, sizeof bad);
        snprintf(why, sizeof why, "no new chunk for %g s; missing chunks %s%s%s%s",
                 a->options.download_timeout_s, missing, bad[0] ? "; chunks " : "", bad,
                 bad[0] ? " failed their SHA-256 check" : "");
        fail(a, "download", why);
    } else if ((double)(now - last) / 1e6 >= a->options.download_stall_s) {
        /* subscribing again makes the broker send the retained chunks again */
        subscribe_chunks(a);
    }
}

void edgeops_deploy_announce(edgeops_agent_t *a)
{
    if (dl(a)->phase == EDGEOPS_PHASE_DOWNLOADING) {
        report_progress(a, 1);
        subscribe_chunks(a);
    }
}

/* --- accepting a manifest ------------------------------------------------------------ */

/* the ids of a manifest not trusted yet: wrong types become 0 / null (report.event_fields) */
static void raw_ids(edgeops_agent_t *a, int32_t m, int64_t *seq, char *deployment,
                    const char **dep, char *rollout, const char **roll)
{
    *seq = 0;
    *dep = NULL;
    *roll = NULL;
    if (m < 0) {
        return;
    }
    if (edgeops_json_integer(&a->doc, edgeops_json_get(&a->doc, m, "seq"), seq) != EDGEOPS_OK ||
        *seq < 0) {
        *seq = 0;
    }
    if (edgeops_json_string(&a->doc, edgeops_json_get(&a->doc, m, "deployment"), deployment,
                            EDGEOPS_DEPLOYMENT_MAX + 1, NULL) == EDGEOPS_OK) {
        *dep = deployment;
    }
    if (edgeops_json_string(&a->doc, edgeops_json_get(&a->doc, m, "rollout"), rollout,
                            EDGEOPS_ROLLOUT_MAX + 1, NULL) == EDGEOPS_OK) {
        *roll = rollout;
    }
}

static void reject(edgeops_agent_t *a, int32_t m, const char *reason)
{
    char deployment[EDGEOPS_DEPLOYMENT_MAX + 1];
    char rollout[EDGEOPS_ROLLOUT_MAX + 1];
    char why[EDGEOPS_REASON_MAX + 1];
    const char *dep;
    const char *roll;
    int64_t seq;
    snprintf(why, sizeof why, "%s", reason);
    raw_ids(a, m, &seq, deployment, &dep, rollout, &roll);
    a->counters.rejected++;
    edgeops_agent_log(a, EDGEOPS_LOG_WARNING, "rejected manifest seq %lld: %s", (long long)seq,
                      why);
    edgeops_agent_event(a, "rejected", seq, dep, roll, -1.0, NULL, why);
}

/* fill a->download from the accepted a->manifest (its document is a->doc) */
static edgeops_err_t describe(edgeops_agent_t *a, int slot, uint32_t envelope_len)
{
    edgeops_download_t *d = dl(a);
    const edgeops_manifest_t *m = &a->manifest;
    d->phase = EDGEOPS_PHASE_IDLE;
    d->slot = slot;
    d->seq = m->seq;
    snprintf(d->deployment, sizeof d->deployment, "%s", m->deployment);
    snprintf(d->rollout, sizeof d->rollout, "%s", m->rollout);
    d->has_rollout = m->has_rollout;
    memcpy(d->sha256, m->sha256, 32);
    edgeops_codec_hex_encode(m->sha256, 32, d->sha_hex);
    d->size = m->size;
    d->chunk_size = m->chunk_size;
    d->n_chunks = m->n_chunks;
    d->manifest_len = envelope_len;
    for (uint32_t i = 0; i < m->n_chunks; i++) {
        if (edgeops_manifest_chunk_hash(&a->doc, m, i, d->chunk_hashes[i]) != EDGEOPS_OK) {
            return EDGEOPS_ERR_PROTOCOL;
        }
    }
    return EDGEOPS_OK;
}

/* begin the deployment of a->manifest (document a->doc over envelope[0..len)) */
static void begin(edgeops_agent_t *a, const uint8_t *envelope, uint32_t len)
{
    const int active = a->state.active;
    const int target = active == EDGEOPS_NO_SLOT ? 0 : 1 - active;
    const edgeops_slot_meta_t *in_active =
        active != EDGEOPS_NO_SLOT && a->state.slots[active].valid ? &a->state.slots[active] : NULL;
    const edgeops_slot_meta_t *in_target = a->state.slots[target].valid ? &a->state.slots[target]
                                                                        : NULL;
    const int have_target = in_target && memcmp(in_target->sha256, a->manifest.sha256, 32) == 0;
    const int have_active = !have_target && in_active &&
                            memcmp(in_active->sha256, a->manifest.sha256, 32) == 0;
    a->counters.deployments++;
    (void)describe(a, target, len);
    /* chunks of this very artifact already in the target slot (a download cut by a reboot
     * or a timeout, then a retry with a new seq) are kept, once re-verified */
    const int keep = !have_target && !have_active && progress_matches(a, target);
    /* docs/protocol.md step 1: accepted_seq is on storage before anything else */
    const edgeops_state_t before = a->state;
    if (a->manifest.seq > a->state.accepted_seq) {
        a->state.accepted_seq = a->manifest.seq;
    }
    a->state.deploying_seq = a->manifest.seq;
    a->state.deploying_slot = (int8_t)target;
    a->state.deploying_manifest_len = len;
    if (!have_target) {
        a->state.slots[target].valid = 0; /* about to be overwritten */
        a->models[target].kind = EDGEOPS_MODEL_NONE;
        if (!keep) {
            progress_reset(a, target); /* the slot is about to be erased */
        }
    }
    if (edgeops_agent_save(a) != EDGEOPS_OK) {
        a->state = before;
        a->models[target].kind = EDGEOPS_MODEL_NONE;
        edgeops_agent_event(a, "failed", a->manifest.seq, a->manifest.deployment,
                            a->manifest.has_rollout ? a->manifest.rollout : NULL, -1.0, "install",
                            "cannot write the state record");
        return;
    }
    edgeops_agent_publish_state(a);
    edgeops_download_t *d = dl(a);
    if (have_target) { /* e.g. a rollback to the previous model: no download */
        if (read_artifact(a, target, d->size, d->sha256) != EDGEOPS_OK) {
            a->state.slots[target].valid = 0;
            progress_reset(a, target);
        } else {
            edgeops_agent_event(a, "verified", d->seq, d->deployment, dl_rollout(d), -1.0, NULL,
                                NULL);
            health_and_activate(a, target, envelope, len);
            return;
        }
    }
    if ((!keep && write_region(a, target, EDGEOPS_REGION_ARTIFACT, NULL, 0) != EDGEOPS_OK) ||
        write_region(a, target, EDGEOPS_REGION_MANIFEST, envelope, len) != EDGEOPS_OK) {
        fail(a, "install", a->reason);
        return;
    }
    if (have_active) { /* the same artifact again (new seq): copy it, never touch the active */
        if (a->storage.write(a->storage.ctx, target, EDGEOPS_REGION_ARTIFACT, 0,
                             a->model_buf[active].bytes, d->size) != EDGEOPS_OK ||
            read_artifact(a, target, d->size, d->sha256) != EDGEOPS_OK) {
            fail(a, "install", "cannot copy the active slot's artifact");
            return;
        }
        edgeops_agent_event(a, "verified", d->seq, d->deployment, dl_rollout(d), -1.0, NULL, NULL);
        health_and_activate(a, target, NULL, 0);
        return;
    }
    if (keep) {
        edgeops_agent_log(a, EDGEOPS_LOG_INFO, "the slot holds chunks of %.12s already; "
                          "re-verifying them", d->sha_hex);
    }
    start_download(a, keep);
}

static void sha256_sink(void *ctx, const char *data, size_t len)
{
    edgeops_sha256_update((edgeops_sha256_t *)ctx, (const uint8_t *)data, len);
}

edgeops_err_t edgeops_deploy_features_sha256(const edgeops_json_doc_t *doc, int32_t serving,
                                             char hex[65])
{
    edgeops_sha256_t ctx;
    uint8_t digest[32];
    const int32_t features = serving >= 0 ? edgeops_json_get(doc, serving, "features") : -1;
    edgeops_sha256_init(&ctx);
    if (features < 0) {
        sha256_sink(&ctx, "null", 4); /* no serving.features: as null */
    } else if (edgeops_json_canonical(doc, features, sha256_sink, &ctx) != EDGEOPS_OK) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    edgeops_sha256_final(&ctx, digest);
    edgeops_codec_hex_encode(digest, 32, hex);
    return EDGEOPS_OK;
}

/* the model was trained on the feature transforms compiled into this firmware: the SHA-256
 * of the canonical JSON of serving.features is EDGEOPS_FEATURES_SHA256, which `edgeops
 * firmware generate` writes into app/edgeops_board_config.h (not defined: not checked) */
static edgeops_err_t features_check(edgeops_agent_t *a)
{
#ifdef EDGEOPS_FEATURES_SHA256
    static const char compiled[] = EDGEOPS_FEATURES_SHA256;
    char hex[65];
    if (edgeops_deploy_features_sha256(&a->doc, a->manifest.serving, hex) != EDGEOPS_OK) {
        REASON(a, "serving.features cannot be canonicalized");
        return EDGEOPS_ERR_REJECTED;
    }
    if (strlen(compiled) != 64 || strcmp(hex, compiled) != 0) {
        REASON(a, "feature transforms differ: the manifest's serving.features (sha256 %.16s) "
               "are not the ones compiled into this firmware (sha256 %.16s); generate and flash "
               "a firmware for this model's features",
               hex, compiled);
        return EDGEOPS_ERR_REJECTED;
    }
#else
    (void)a;
#endif
    return EDGEOPS_OK;
}

void edgeops_deploy_desired(edgeops_agent_t *a, const uint8_t *payload, size_t len)
{
    char why[EDGEOPS_REASON_MAX + 1];
    int32_t m = -1;
    edgeops_err_t err;
    if (len == 0) {
        return; /* a cleared desired state */
    }
    err = edgeops_json_parse(&a->doc, (const char *)payload, len, a->tokens,
                             EDGEOPS_JSON_MAX_TOKENS);
    if (err != EDGEOPS_OK) {
        snprintf(why, sizeof why, "malformed desired state: malformed JSON: %s at byte %lu",
                 a->doc.error ? a->doc.error : "?", (unsigned long)a->doc.error_at);
        reject(a, -1, why);
        return;
    }
    if (edgeops_manifest_envelope(&a->doc, &m, a->reason, sizeof a->reason) != EDGEOPS_OK) {
        snprintf(why, sizeof why, "malformed desired state: %.900s", a->reason);
        reject(a, -1, why);
        return;
    }
    if (!edgeops_manifest_addressed(&a->doc, m, &a->device)) {
        a->counters.other_device++;
        return;
    }
    if (edgeops_manifest_verify(&a->doc, &a->device, a->reason, sizeof a->reason) != EDGEOPS_OK ||
        edgeops_manifest_read(&a->doc, m, &a->manifest, a->reason, sizeof a->reason) !=
            EDGEOPS_OK) {
        reject(a, m, a->reason);
        return;
    }
    err = edgeops_manifest_check(&a->doc, &a->manifest, &a->device, a->state.accepted_seq,
                                 edgeops_agent_now(a), a->reason, sizeof a->reason);
    if (err == EDGEOPS_ERR_ALREADY) {
        a->counters.already_handled++;
        return;
    }
    if (err != EDGEOPS_OK) {
        reject(a, m, a->reason);
        return;
    }
    if (features_check(a) != EDGEOPS_OK) {
        reject(a, m, a->reason);
        return;
    }
    edgeops_download_t *d = dl(a);
    if (d->phase == EDGEOPS_PHASE_DOWNLOADING) { /* a newer manifest wins */
        snprintf(why, sizeof why, "superseded by manifest seq %lld", (long long)a->manifest.seq);
        unsubscribe_chunks(a);
        d->phase = EDGEOPS_PHASE_IDLE;
        edgeops_agent_event(a, "failed", d->seq, d->deployment, dl_rollout(d), -1.0, "superseded",
                            why);
    }
    begin(a, payload, (uint32_t)len);
}

void edgeops_deploy_resume(edgeops_agent_t *a)
{
    const int slot = a->state.deploying_slot;
    const int64_t seq = a->state.deploying_seq;
    if (seq == 0) {
        return;
    }
    /* only a download can resume: its manifest is in the target slot (the other paths end
     * within one message and are repeated by the rollout's retry). The chunks the progress
     * records are kept once re-verified; the others come from the broker again. */
    if (slot != EDGEOPS_NO_SLOT && slot != a->state.active && !a->state.slots[slot].valid &&
        seq == a->state.accepted_seq &&
        read_manifest(a, slot, a->state.deploying_manifest_len) == EDGEOPS_OK &&
        a->manifest.seq == seq && describe(a, slot, a->state.deploying_manifest_len) == EDGEOPS_OK) {
        const int keep = progress_matches(a, slot);
        if (keep || write_region(a, slot, EDGEOPS_REGION_ARTIFACT, NULL, 0) == EDGEOPS_OK) {
            edgeops_agent_log(a, EDGEOPS_LOG_INFO, "resuming the download of seq %lld",
                              (long long)seq);
            start_download(a, keep);
            return;
        }
    }
    a->state.deploying_seq = 0;
    a->state.deploying_slot = EDGEOPS_NO_SLOT;
    (void)edgeops_agent_save(a);
}

void edgeops_deploy_rollback(edgeops_agent_t *a, const char *reason)
{
    const int failed = a->state.active;
    char why[EDGEOPS_REASON_MAX + 1];
    if (failed == EDGEOPS_NO_SLOT) {
        return;
    }
    snprintf(why, sizeof why, "%s", reason);
    const edgeops_slot_meta_t meta = a->state.slots[failed];
    const int other = 1 - failed;
    edgeops_agent_close_window(a);
    a->state.slots[failed].rolled_back = 1;
    a->state.active = a->state.slots[other].valid ? (int8_t)other : EDGEOPS_NO_SLOT;
    if (edgeops_agent_save(a) != EDGEOPS_OK) {
        return;
    }
    a->counters.rollbacks++;
    edgeops_agent_log(a, EDGEOPS_LOG_WARNING, "rolled back from slot %d: %s", failed, why);
    edgeops_agent_event(a, "rolled_back", meta.seq, meta.deployment,
                        meta.has_rollout ? meta.rollout : NULL, -1.0, NULL, why);
    edgeops_agent_serve_active(a, 0);
    edgeops_agent_publish_state(a);
}
