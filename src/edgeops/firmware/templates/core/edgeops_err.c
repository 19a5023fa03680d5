#include "edgeops_err.h"

const char *edgeops_err_str(edgeops_err_t err)
{
    switch (err) {
    case EDGEOPS_OK: return "ok";
    case EDGEOPS_ERR_ARG: return "bad argument";
    case EDGEOPS_ERR_SPACE: return "a static buffer is too small";
    case EDGEOPS_ERR_JSON: return "malformed JSON";
    case EDGEOPS_ERR_PROTOCOL: return "protocol violation";
    case EDGEOPS_ERR_SIGNATURE: return "bad signature";
    case EDGEOPS_ERR_REJECTED: return "rejected";
    case EDGEOPS_ERR_ALREADY: return "already handled";
    case EDGEOPS_ERR_STORAGE: return "storage error";
    case EDGEOPS_ERR_CORRUPT: return "corrupt data";
    case EDGEOPS_ERR_MODEL: return "model error";
    case EDGEOPS_ERR_UNSUPPORTED: return "unsupported";
    case EDGEOPS_ERR_IO: return "transport error";
    case EDGEOPS_ERR_NO_MODEL: return "no active model";
    }
    return "unknown error";
}
