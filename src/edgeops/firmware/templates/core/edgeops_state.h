/* edgeops firmware: what the device keeps across reboots (the state record).
 *
 * The equivalent of the Python agent's state.json: the highest manifest seq
 * ever accepted, the boot counter, which slot is active, what each slot holds,
 * the deployment in flight, and the download progress (which chunks of which
 * artifact the inactive slot holds). It is encoded little-endian with a format
 * number and a CRC-32 and written to the two record copies alternately, with
 * a generation number: loading takes the valid copy with the highest
 * generation, so a write torn by a power cut falls back to the state before it.
 *
 * Format 2 added the download progress; a format-1 record (written by an older
 * firmware) still loads, with no progress.
 */
#ifndef EDGEOPS_STATE_H
#define EDGEOPS_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_config.h"
#include "edgeops_err.h"
#include "edgeops_storage.h"

#define EDGEOPS_STATE_FORMAT 2u
#define EDGEOPS_NO_SLOT (-1)

typedef struct {
    uint8_t valid;        /* holds a verified, installed model */
    uint8_t rolled_back;  /* switched away from after failing probation */
    int64_t seq;          /* manifest seq it was installed with */
    int64_t version;
    uint32_t size;
    uint32_t manifest_len; /* bytes of the envelope in the slot's manifest region */
    double activated_at;
    uint8_t sha256[32];
    char name[EDGEOPS_NAME_MAX + 1];
    char variant[EDGEOPS_VARIANT_MAX + 1];
    char deployment[EDGEOPS_DEPLOYMENT_MAX + 1];
    char rollout[EDGEOPS_ROLLOUT_MAX + 1];
    uint8_t has_rollout;
} edgeops_slot_meta_t;

/* the chunks of one artifact stored in the inactive slot: written to storage first, then
 * marked here, so a marked chunk was whole when it was marked (a restarted download
 * still re-reads and re-hashes each one before trusting it) */
typedef struct {
    int8_t slot; /* EDGEOPS_NO_SLOT: nothing recorded */
    uint8_t sha256[32];
    uint32_t chunk_size;
    uint32_t n_chunks;
    uint8_t have[(EDGEOPS_MAX_CHUNKS + 7u) / 8u];
} edgeops_progress_t;

typedef struct {
    uint32_t generation;
    uint32_t boot;
    int64_t accepted_seq;
    int8_t active;          /* 0, 1 or EDGEOPS_NO_SLOT */
    int8_t deploying_slot;  /* slot the deployment in flight writes, or EDGEOPS_NO_SLOT */
    int64_t deploying_seq;  /* 0: none */
    uint32_t deploying_manifest_len;
    edgeops_slot_meta_t slots[2];
    edgeops_progress_t progress;
} edgeops_state_t;

void edgeops_state_reset(edgeops_state_t *s);
/* the newest valid copy, or a fresh state when neither copy is valid */
edgeops_err_t edgeops_state_load(edgeops_state_t *s, const edgeops_storage_t *st);
/* generation + 1, written to the copy that does not hold the current one */
edgeops_err_t edgeops_state_save(edgeops_state_t *s, const edgeops_storage_t *st);

size_t edgeops_state_encode(const edgeops_state_t *s, uint8_t *buf, size_t cap);
edgeops_err_t edgeops_state_decode(edgeops_state_t *s, const uint8_t *buf, size_t len);

#endif /* EDGEOPS_STATE_H */
