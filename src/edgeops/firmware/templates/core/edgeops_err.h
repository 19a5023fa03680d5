/* edgeops firmware: the error codes every core function returns. */
#ifndef EDGEOPS_ERR_H
#define EDGEOPS_ERR_H

typedef enum {
    EDGEOPS_OK = 0,
    EDGEOPS_ERR_ARG,         /* a caller passed something impossible */
    EDGEOPS_ERR_SPACE,       /* a static buffer (edgeops_config.h) is too small */
    EDGEOPS_ERR_JSON,        /* not JSON, or not the JSON expected */
    EDGEOPS_ERR_PROTOCOL,    /* valid JSON that breaks docs/protocol.md */
    EDGEOPS_ERR_SIGNATURE,   /* the manifest's HMAC does not verify */
    EDGEOPS_ERR_REJECTED,    /* a manifest this device must not act on */
    EDGEOPS_ERR_ALREADY,     /* a manifest already handled (equal seq): ignore silently */
    EDGEOPS_ERR_STORAGE,     /* the storage port failed */
    EDGEOPS_ERR_CORRUPT,     /* stored or received bytes fail their check */
    EDGEOPS_ERR_MODEL,       /* the model does not load or does not run */
    EDGEOPS_ERR_UNSUPPORTED, /* a format or runtime this build does not have */
    EDGEOPS_ERR_IO,          /* the transport (MQTT) failed */
    EDGEOPS_ERR_NO_MODEL     /* a prediction with no active model */
} edgeops_err_t;

const char *edgeops_err_str(edgeops_err_t err);

#endif /* EDGEOPS_ERR_H */
