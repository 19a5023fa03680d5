/* edgeops host firmware: edgeops_storage_t on files in the state directory.
 *
 *   slot-0.artifact  slot-0.manifest  slot-1.artifact  slot-1.manifest
 *   record-0  record-1     (written to a temporary file, fsynced, renamed)
 */
#ifndef EDGEOPS_HOST_STORAGE_H
#define EDGEOPS_HOST_STORAGE_H

#include <stdint.h>

#include "edgeops_storage.h"

typedef struct {
    char dir[1024];
    uint32_t artifact_capacity;
    uint32_t manifest_capacity;
} host_storage_t;

/* creates the directory; 0 on success */
int host_storage_open(host_storage_t *hs, edgeops_storage_t *st, const char *dir,
                      uint32_t artifact_capacity, uint32_t manifest_capacity);

#endif /* EDGEOPS_HOST_STORAGE_H */
