/* edgeops firmware: hex, base64 and CRC-32, the encodings the protocol and storage use. */
#ifndef EDGEOPS_CODEC_H
#define EDGEOPS_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_err.h"

/* lowercase hex of len bytes into out (2 * len + 1 bytes, NUL-terminated) */
void edgeops_codec_hex_encode(const uint8_t *data, size_t len, char *out);
/* exactly 2 * len lowercase hex digits into len bytes */
edgeops_err_t edgeops_codec_hex_decode(const char *text, size_t text_len, uint8_t *out, size_t len);
/* standard base64 with padding (as Python's b64decode(validate=True) accepts) */
edgeops_err_t edgeops_codec_b64_decode(const char *text, size_t text_len, uint8_t *out, size_t cap,
                                       size_t *out_len);
/* CRC-32 (IEEE 802.3, as zlib.crc32); pass 0 to start, the last value to continue */
uint32_t edgeops_codec_crc32(uint32_t crc, const uint8_t *data, size_t len);

#endif /* EDGEOPS_CODEC_H */
