#include "edgeops_storage.h"

edgeops_err_t edgeops_storage_check(const edgeops_storage_t *st)
{
    if (st == NULL || st->capacity == NULL || st->erase == NULL || st->write == NULL ||
        st->read == NULL || st->record_write == NULL || st->record_read == NULL) {
        return EDGEOPS_ERR_ARG;
    }
    return EDGEOPS_OK;
}
