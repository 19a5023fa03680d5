#include "edgeops_state.h"

#include <string.h>

#include "edgeops_codec.h"

#define MAGIC 0x5453454fu /* "EOST" */
/* the largest record: header, two slots (each with its strings at their longest), the
 * download progress with every chunk, the CRC */
#define RECORD_BYTES_MAX                                                                       \
    (38u +                                                                                     \
     2u * (67u + 8u + EDGEOPS_NAME_MAX + EDGEOPS_VARIANT_MAX + EDGEOPS_DEPLOYMENT_MAX +        \
           EDGEOPS_ROLLOUT_MAX) +                                                              \
     41u + (EDGEOPS_MAX_CHUNKS + 7u) / 8u + 4u)

/* a build whose record cannot fit EDGEOPS_STATE_RECORD_MAX does not compile */
typedef char edgeops_state_record_fits[RECORD_BYTES_MAX <= EDGEOPS_STATE_RECORD_MAX ? 1 : -1];

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t pos;
    int ok;
} cursor_t;

static void put_bytes(cursor_t *c, const void *data, size_t n)
{
    if (!c->ok || c->pos + n > c->cap) {
        c->ok = 0;
        return;
    }
    memcpy(c->buf + c->pos, data, n);
    c->pos += n;
}

static void put_u64(cursor_t *c, uint64_t v)
{
    uint8_t b[8];
    for (unsigned i = 0; i < 8; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    put_bytes(c, b, 8);
}

static void put_u32(cursor_t *c, uint32_t v)
{
    uint8_t b[4];
    for (unsigned i = 0; i < 4; i++) {
        b[i] = (uint8_t)(v >> (8 * i));
    }
    put_bytes(c, b, 4);
}

static void put_u8(cursor_t *c, uint8_t v)
{
    put_bytes(c, &v, 1);
}

static void put_double(cursor_t *c, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    put_u64(c, bits);
}

static void put_str(cursor_t *c, const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max) {
        n = max;
    }
    put_u8(c, (uint8_t)(n & 0xffu));
    put_u8(c, (uint8_t)(n >> 8));
    put_bytes(c, s, n);
}

static void get_bytes(cursor_t *c, void *out, size_t n)
{
    if (!c->ok || c->pos + n > c->cap) {
        c->ok = 0;
        memset(out, 0, n);
        return;
    }
    memcpy(out, c->buf + c->pos, n);
    c->pos += n;
}

static void skip(cursor_t *c, size_t n)
{
    if (!c->ok || c->pos + n > c->cap) {
        c->ok = 0;
        return;
    }
    c->pos += n;
}

static uint64_t get_u64(cursor_t *c)
{
    uint8_t b[8];
    uint64_t v = 0;
    get_bytes(c, b, 8);
    for (unsigned i = 0; i < 8; i++) {
        v |= (uint64_t)b[i] << (8 * i);
    }
    return v;
}

static uint32_t get_u32(cursor_t *c)
{
    uint8_t b[4];
    uint32_t v = 0;
    get_bytes(c, b, 4);
    for (unsigned i = 0; i < 4; i++) {
        v |= (uint32_t)b[i] << (8 * i);
    }
    return v;
}

static uint8_t get_u8(cursor_t *c)
{
    uint8_t v;
    get_bytes(c, &v, 1);
    return v;
}

static double get_double(cursor_t *c)
{
    const uint64_t bits = get_u64(c);
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static void get_str(cursor_t *c, char *out, size_t max)
{
    const size_t n = (size_t)get_u8(c) | ((size_t)get_u8(c) << 8);
    if (n > max) {
        c->ok = 0;
        out[0] = '\0';
        return;
    }
    get_bytes(c, out, n);
    out[n] = '\0';
}

void edgeops_state_reset(edgeops_state_t *s)
{
    memset(s, 0, sizeof *s);
    s->active = EDGEOPS_NO_SLOT;
    s->deploying_slot = EDGEOPS_NO_SLOT;
    s->progress.slot = EDGEOPS_NO_SLOT;
}

static uint32_t bitmap_bytes(uint32_t n_chunks)
{
    return (n_chunks + 7u) / 8u;
}

size_t edgeops_state_encode(const edgeops_state_t *s, uint8_t *buf, size_t cap)
{
    cursor_t c = {buf, cap, 0, 1};
    put_u32(&c, MAGIC);
    put_u32(&c, EDGEOPS_STATE_FORMAT);
    put_u32(&c, s->generation);
    put_u32(&c, s->boot);
    put_u64(&c, (uint64_t)s->accepted_seq);
    put_u8(&c, (uint8_t)s->active);
    put_u8(&c, (uint8_t)s->deploying_slot);
    put_u64(&c, (uint64_t)s->deploying_seq);
    put_u32(&c, s->deploying_manifest_len);
    for (unsigned i = 0; i < 2; i++) {
        const edgeops_slot_meta_t *m = &s->slots[i];
        put_u8(&c, m->valid);
        put_u8(&c, m->rolled_back);
        put_u8(&c, m->has_rollout);
        put_u64(&c, (uint64_t)m->seq);
        put_u64(&c, (uint64_t)m->version);
        put_u32(&c, m->size);
        put_u32(&c, m->manifest_len);
        put_double(&c, m->activated_at);
        put_bytes(&c, m->sha256, sizeof m->sha256);
        put_str(&c, m->name, EDGEOPS_NAME_MAX);
        put_str(&c, m->variant, EDGEOPS_VARIANT_MAX);
        put_str(&c, m->deployment, EDGEOPS_DEPLOYMENT_MAX);
        put_str(&c, m->rollout, EDGEOPS_ROLLOUT_MAX);
    }
    /* format 2: the download progress */
    const edgeops_progress_t *pr = &s->progress;
    const int has_progress = pr->slot != EDGEOPS_NO_SLOT && pr->n_chunks <= EDGEOPS_MAX_CHUNKS;
    put_u8(&c, (uint8_t)(has_progress ? pr->slot : EDGEOPS_NO_SLOT));
    put_bytes(&c, pr->sha256, sizeof pr->sha256);
    put_u32(&c, has_progress ? pr->chunk_size : 0u);
    put_u32(&c, has_progress ? pr->n_chunks : 0u);
    put_bytes(&c, pr->have, has_progress ? bitmap_bytes(pr->n_chunks) : 0u);
    if (!c.ok) {
        return 0;
    }
    const uint32_t crc = edgeops_codec_crc32(0, buf, c.pos);
    put_u32(&c, crc);
    return c.ok ? c.pos : 0;
}

edgeops_err_t edgeops_state_decode(edgeops_state_t *s, const uint8_t *buf, size_t len)
{
    cursor_t c = {(uint8_t *)buf, len, 0, 1};
    edgeops_state_reset(s);
    if (len < 12 || get_u32(&c) != MAGIC) {
        return EDGEOPS_ERR_CORRUPT;
    }
    const uint32_t format = get_u32(&c);
    if (format != 1u && format != EDGEOPS_STATE_FORMAT) {
        return EDGEOPS_ERR_CORRUPT;
    }
    s->generation = get_u32(&c);
    s->boot = get_u32(&c);
    s->accepted_seq = (int64_t)get_u64(&c);
    s->active = (int8_t)get_u8(&c);
    s->deploying_slot = (int8_t)get_u8(&c);
    s->deploying_seq = (int64_t)get_u64(&c);
    s->deploying_manifest_len = get_u32(&c);
    for (unsigned i = 0; i < 2; i++) {
        edgeops_slot_meta_t *m = &s->slots[i];
        m->valid = get_u8(&c);
        m->rolled_back = get_u8(&c);
        m->has_rollout = get_u8(&c);
        m->seq = (int64_t)get_u64(&c);
        m->version = (int64_t)get_u64(&c);
        m->size = get_u32(&c);
        m->manifest_len = get_u32(&c);
        m->activated_at = get_double(&c);
        get_bytes(&c, m->sha256, sizeof m->sha256);
        get_str(&c, m->name, EDGEOPS_NAME_MAX);
        get_str(&c, m->variant, EDGEOPS_VARIANT_MAX);
        get_str(&c, m->deployment, EDGEOPS_DEPLOYMENT_MAX);
        get_str(&c, m->rollout, EDGEOPS_ROLLOUT_MAX);
    }
    if (format >= 2u) {
        edgeops_progress_t *pr = &s->progress;
        pr->slot = (int8_t)get_u8(&c);
        get_bytes(&c, pr->sha256, sizeof pr->sha256);
        pr->chunk_size = get_u32(&c);
        pr->n_chunks = get_u32(&c);
        if (pr->slot == EDGEOPS_NO_SLOT) {
            pr->n_chunks = 0;
        } else if (pr->n_chunks > EDGEOPS_MAX_CHUNKS || (pr->slot != 0 && pr->slot != 1)) {
            /* progress this build cannot hold (a build with more chunks wrote it): skipped,
             * the rest of the record (accepted_seq above all) still counts */
            skip(&c, bitmap_bytes(pr->n_chunks));
            memset(pr, 0, sizeof *pr);
            pr->slot = EDGEOPS_NO_SLOT;
        } else {
            get_bytes(&c, pr->have, bitmap_bytes(pr->n_chunks));
        }
    }
    const size_t body = c.pos;
    const uint32_t crc = get_u32(&c);
    if (!c.ok || c.pos != len || crc != edgeops_codec_crc32(0, buf, body)) {
        edgeops_state_reset(s);
        return EDGEOPS_ERR_CORRUPT;
    }
    if (s->active < EDGEOPS_NO_SLOT || s->active > 1 || s->deploying_slot < EDGEOPS_NO_SLOT ||
        s->deploying_slot > 1) {
        edgeops_state_reset(s);
        return EDGEOPS_ERR_CORRUPT;
    }
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_state_load(edgeops_state_t *s, const edgeops_storage_t *st)
{
    static uint8_t buf[EDGEOPS_STATE_RECORD_MAX];
    static edgeops_state_t copy;
    int found = 0;
    edgeops_state_reset(s);
    for (int i = 0; i < 2; i++) {
        uint32_t len = 0;
        if (st->record_read(st->ctx, i, buf, sizeof buf, &len) != EDGEOPS_OK || len == 0) {
            continue;
        }
        if (edgeops_state_decode(&copy, buf, len) != EDGEOPS_OK) {
            continue;
        }
        if (!found || copy.generation > s->generation) {
            *s = copy;
            found = 1;
        }
    }
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_state_save(edgeops_state_t *s, const edgeops_storage_t *st)
{
    static uint8_t buf[EDGEOPS_STATE_RECORD_MAX];
    s->generation++;
    const size_t n = edgeops_state_encode(s, buf, sizeof buf);
    if (n == 0) {
        s->generation--;
        return EDGEOPS_ERR_SPACE;
    }
    /* generation g lives in copy g % 2: the copy holding g - 1 is never touched */
    const edgeops_err_t err = st->record_write(st->ctx, (int)(s->generation & 1u), buf,
                                               (uint32_t)n);
    if (err != EDGEOPS_OK) {
        s->generation--;
    }
    return err;
}
