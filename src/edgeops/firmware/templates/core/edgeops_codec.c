#include "edgeops_codec.h"

void edgeops_codec_hex_encode(const uint8_t *data, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[data[i] >> 4];
        out[2 * i + 1] = digits[data[i] & 15u];
    }
    out[2 * len] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return -1;
}

edgeops_err_t edgeops_codec_hex_decode(const char *text, size_t text_len, uint8_t *out, size_t len)
{
    if (text_len != 2 * len) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    for (size_t i = 0; i < len; i++) {
        const int hi = hex_value(text[2 * i]);
        const int lo = hex_value(text[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return EDGEOPS_ERR_PROTOCOL;
        }
        out[i] = (uint8_t)((hi << 4) | lo);
    }
    return EDGEOPS_OK;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

edgeops_err_t edgeops_codec_b64_decode(const char *text, size_t text_len, uint8_t *out, size_t cap,
                                       size_t *out_len)
{
    size_t n = 0;
    if (text_len % 4 != 0) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    for (size_t i = 0; i < text_len; i += 4) {
        int v[4];
        size_t pads = 0;
        for (size_t j = 0; j < 4; j++) {
            const char c = text[i + j];
            if (c == '=' && i + 4 == text_len && j >= 2) {
                v[j] = 0;
                pads++;
                continue;
            }
            if (pads > 0) {
                return EDGEOPS_ERR_PROTOCOL; /* data after padding */
            }
            v[j] = b64_value(c);
            if (v[j] < 0) {
                return EDGEOPS_ERR_PROTOCOL;
            }
        }
        const uint32_t triple = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) |
                                ((uint32_t)v[2] << 6) | (uint32_t)v[3];
        const size_t produce = 3 - pads;
        if (n + produce > cap) {
            return EDGEOPS_ERR_SPACE;
        }
        out[n++] = (uint8_t)(triple >> 16);
        if (produce > 1) {
            out[n++] = (uint8_t)(triple >> 8);
        }
        if (produce > 2) {
            out[n++] = (uint8_t)triple;
        }
    }
    *out_len = n;
    return EDGEOPS_OK;
}

uint32_t edgeops_codec_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (unsigned k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}
