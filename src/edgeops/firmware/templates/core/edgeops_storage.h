/* edgeops firmware: the storage a port provides — two model slots and a state record.
 *
 * Each slot (0 and 1) has two regions: the artifact (model bytes) and the
 * manifest (the signed envelope it came with). A region is erased before it is
 * written, and chunks go to multiples of chunk_size, so NOR flash with
 * erase-before-write fits, as does a file. The one write that may land on bytes
 * written before is a chunk downloaded again after a reboot (it was torn, or
 * damaged): the core reads every chunk back, and when it did not take (NOR flash)
 * erases the region and downloads every chunk again. The core never writes the
 * active slot's regions. The state record is small (at most
 * EDGEOPS_STATE_RECORD_MAX bytes, the download progress included) and kept in two
 * copies that the core writes alternately (edgeops_state.h), so a torn write
 * leaves the other copy whole: record_write must only touch the copy it is given.
 *
 * Every function returns EDGEOPS_OK or EDGEOPS_ERR_STORAGE. Ports: a file
 * per region on the host (ports/host/host_storage.c), flash partitions and NVS
 * on ESP-IDF, flash_area and the settings subsystem on Zephyr.
 */
#ifndef EDGEOPS_STORAGE_H
#define EDGEOPS_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_err.h"

typedef enum {
    EDGEOPS_REGION_ARTIFACT = 0,
    EDGEOPS_REGION_MANIFEST = 1
} edgeops_region_t;

typedef struct {
    void *ctx;
    /* bytes a region of a slot can hold */
    uint32_t (*capacity)(void *ctx, edgeops_region_t region);
    edgeops_err_t (*erase)(void *ctx, int slot, edgeops_region_t region);
    edgeops_err_t (*write)(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                           const uint8_t *data, uint32_t len);
    edgeops_err_t (*read)(void *ctx, int slot, edgeops_region_t region, uint32_t offset,
                          uint8_t *buf, uint32_t len);
    /* the record copy (0 or 1): write replaces it whole, durably, before returning */
    edgeops_err_t (*record_write)(void *ctx, int copy, const uint8_t *data, uint32_t len);
    /* *len = 0 when the copy was never written */
    edgeops_err_t (*record_read)(void *ctx, int copy, uint8_t *buf, uint32_t cap,
                                 uint32_t *len);
} edgeops_storage_t;

edgeops_err_t edgeops_storage_check(const edgeops_storage_t *st);

#endif /* EDGEOPS_STORAGE_H */
