/* edgeops host firmware: edgeops_storage_t on files in the state directory.
 *
 *   slot-0.artifact  slot-0.manifest  slot-1.artifact  slot-1.manifest
 *   record-0  record-1     (written to a temporary file, fsynced, renamed)
 *
 * With EDGEOPS_HOST_FLASH=nor in the environment the slot files behave as NOR flash
 * does on the ESP-IDF and Zephyr ports: an erase sets every byte of the region to
 * 0xff, and a write can only clear bits (the bytes become old & new), so a place
 * written before does not take other bytes until the region is erased (tests run the
 * core's flash paths with it).
 */
#ifndef EDGEOPS_HOST_STORAGE_H
#define EDGEOPS_HOST_STORAGE_H

#include <stdint.h>

#include "edgeops_storage.h"

typedef struct {
    char dir[1024];
    uint32_t artifact_capacity;
    uint32_t manifest_capacity;
    int nor; /* NOR flash semantics (EDGEOPS_HOST_FLASH=nor) */
} host_storage_t;

/* creates the directory; 0 on success */
int host_storage_open(host_storage_t *hs, edgeops_storage_t *st, const char *dir,
                      uint32_t artifact_capacity, uint32_t manifest_capacity);

#endif /* EDGEOPS_HOST_STORAGE_H */
