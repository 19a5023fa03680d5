/* edgeops firmware: SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), no allocation. */
#ifndef EDGEOPS_SHA256_H
#define EDGEOPS_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define EDGEOPS_SHA256_BYTES 32u

typedef struct {
    uint32_t state[8];
    uint64_t bytes;     /* message length so far */
    uint8_t block[64];
    uint32_t used;      /* bytes in block */
} edgeops_sha256_t;

typedef struct {
    edgeops_sha256_t inner;
    edgeops_sha256_t outer;
} edgeops_hmac_sha256_t;

void edgeops_sha256_init(edgeops_sha256_t *ctx);
void edgeops_sha256_update(edgeops_sha256_t *ctx, const void *data, size_t len);
void edgeops_sha256_final(edgeops_sha256_t *ctx, uint8_t out[EDGEOPS_SHA256_BYTES]);
void edgeops_sha256_digest(const void *data, size_t len, uint8_t out[EDGEOPS_SHA256_BYTES]);

void edgeops_hmac_sha256_init(edgeops_hmac_sha256_t *ctx, const uint8_t *key, size_t key_len);
void edgeops_hmac_sha256_update(edgeops_hmac_sha256_t *ctx, const void *data, size_t len);
void edgeops_hmac_sha256_final(edgeops_hmac_sha256_t *ctx, uint8_t out[EDGEOPS_SHA256_BYTES]);
void edgeops_hmac_sha256_digest(const uint8_t *key, size_t key_len, const void *data, size_t len,
                                uint8_t out[EDGEOPS_SHA256_BYTES]);

/* 1 when equal; the time taken does not depend on where they differ */
int edgeops_sha256_equal(const uint8_t *a, const uint8_t *b, size_t len);

#endif /* EDGEOPS_SHA256_H */
