#include "edgeops_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUMBER_MAX 64u /* longest number token converted (Python prints at most 24) */

/* --- parsing ------------------------------------------------------------------------- */

typedef struct {
    edgeops_json_doc_t *doc;
    size_t pos;
} parser_t;

static edgeops_err_t fail(parser_t *p, const char *why)
{
    p->doc->error = why;
    p->doc->error_at = p->pos;
    return EDGEOPS_ERR_JSON;
}

static void skip_ws(parser_t *p)
{
    const char *t = p->doc->text;
    while (p->pos < p->doc->len &&
           (t[p->pos] == ' ' || t[p->pos] == '\t' || t[p->pos] == '\n' || t[p->pos] == '\r')) {
        p->pos++;
    }
}

static int32_t new_token(parser_t *p, edgeops_json_type_t type, size_t start)
{
    edgeops_json_doc_t *d = p->doc;
    if (d->count >= d->cap) {
        return -1;
    }
    edgeops_json_tok_t *t = &d->toks[d->count];
    t->type = (uint8_t)type;
    t->is_int = 0;
    t->start = (uint32_t)start;
    t->end = (uint32_t)start;
    t->size = 0;
    t->next = d->count + 1;
    return (int32_t)d->count++;
}

static int hex4(const char *s, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        const char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= (uint32_t)(c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (uint32_t)(c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (uint32_t)(c - 'A' + 10);
        } else {
            return 0;
        }
    }
    *out = v;
    return 1;
}

/* length of the valid UTF-8 sequence at s (at most avail bytes), 0 if invalid */
static size_t utf8_length(const unsigned char *s, size_t avail, uint32_t *cp)
{
    const unsigned char c = s[0];
    size_t n;
    uint32_t v;
    uint32_t min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        v = c & 0x1fu;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        v = c & 0x0fu;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        v = c & 0x07u;
        min = 0x10000;
    } else {
        return 0;
    }
    if (avail < n) {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0u) != 0x80u) {
            return 0;
        }
        v = (v << 6) | (s[i] & 0x3fu);
    }
    if (v < min || v > 0x10ffffu || (v >= 0xd800u && v <= 0xdfffu)) {
        return 0;
    }
    *cp = v;
    return n;
}

static edgeops_err_t parse_string(parser_t *p, int32_t *out)
{
    const char *t = p->doc->text;
    const size_t len = p->doc->len;
    p->pos++; /* the opening quote */
    const int32_t tok = new_token(p, EDGEOPS_JSON_STRING, p->pos);
    if (tok < 0) {
        return EDGEOPS_ERR_SPACE;
    }
    while (p->pos < len) {
        const unsigned char c = (unsigned char)t[p->pos];
        if (c == '"') {
            p->doc->toks[tok].end = (uint32_t)p->pos;
            p->pos++;
            *out = tok;
            return EDGEOPS_OK;
        }
        if (c < 0x20) {
            return fail(p, "control character in a string");
        }
        if (c == '\\') {
            if (p->pos + 1 >= len) {
                break;
            }
            const char e = t[p->pos + 1];
            if (e == 'u') {
                uint32_t v;
                if (p->pos + 6 > len || !hex4(t + p->pos + 2, &v)) {
                    return fail(p, "bad \\u escape");
                }
                p->pos += 6;
            } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                       e == 'r' || e == 't') {
                p->pos += 2;
            } else {
                return fail(p, "bad escape");
            }
            continue;
        }
        uint32_t cp;
        const size_t n = utf8_length((const unsigned char *)t + p->pos, len - p->pos, &cp);
        if (n == 0) {
            return fail(p, "invalid UTF-8");
        }
        p->pos += n;
    }
    return fail(p, "unterminated string");
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static edgeops_err_t parse_number(parser_t *p, int32_t *out)
{
    const char *t = p->doc->text;
    const size_t len = p->doc->len;
    const size_t start = p->pos;
    int is_int = 1;
    if (p->pos < len && t[p->pos] == '-') {
        p->pos++;
    }
    if (p->pos >= len || !is_digit(t[p->pos])) {
        return fail(p, "bad number");
    }
    if (t[p->pos] == '0') {
        p->pos++;
    } else {
        while (p->pos < len && is_digit(t[p->pos])) {
            p->pos++;
        }
    }
    if (p->pos < len && t[p->pos] == '.') {
        is_int = 0;
        p->pos++;
        if (p->pos >= len || !is_digit(t[p->pos])) {
            return fail(p, "bad fraction");
        }
        while (p->pos < len && is_digit(t[p->pos])) {
            p->pos++;
        }
    }
    if (p->pos < len && (t[p->pos] == 'e' || t[p->pos] == 'E')) {
        is_int = 0;
        p->pos++;
        if (p->pos < len && (t[p->pos] == '+' || t[p->pos] == '-')) {
            p->pos++;
        }
        if (p->pos >= len || !is_digit(t[p->pos])) {
            return fail(p, "bad exponent");
        }
        while (p->pos < len && is_digit(t[p->pos])) {
            p->pos++;
        }
    }
    const int32_t tok = new_token(p, EDGEOPS_JSON_NUMBER, start);
    if (tok < 0) {
        return EDGEOPS_ERR_SPACE;
    }
    p->doc->toks[tok].end = (uint32_t)p->pos;
    p->doc->toks[tok].is_int = (uint8_t)is_int;
    *out = tok;
    return EDGEOPS_OK;
}

static edgeops_err_t parse_literal(parser_t *p, const char *word, edgeops_json_type_t type,
                                   int32_t *out)
{
    const size_t n = strlen(word);
    if (p->pos + n > p->doc->len || memcmp(p->doc->text + p->pos, word, n) != 0) {
        return fail(p, "unexpected character");
    }
    const int32_t tok = new_token(p, type, p->pos);
    if (tok < 0) {
        return EDGEOPS_ERR_SPACE;
    }
    p->pos += n;
    p->doc->toks[tok].end = (uint32_t)p->pos;
    *out = tok;
    return EDGEOPS_OK;
}

static edgeops_err_t parse_value(parser_t *p, unsigned depth, int32_t *out);

static edgeops_err_t parse_container(parser_t *p, unsigned depth, int32_t *out)
{
    const char *t = p->doc->text;
    const int object = t[p->pos] == '{';
    const char close = object ? '}' : ']';
    if (depth >= EDGEOPS_JSON_MAX_DEPTH) {
        return fail(p, "nested too deeply");
    }
    const int32_t tok = new_token(p, object ? EDGEOPS_JSON_OBJECT : EDGEOPS_JSON_ARRAY, p->pos);
    if (tok < 0) {
        return EDGEOPS_ERR_SPACE;
    }
    p->pos++;
    skip_ws(p);
    uint32_t size = 0;
    if (p->pos < p->doc->len && t[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            int32_t child;
            edgeops_err_t err;
            skip_ws(p);
            if (object) {
                if (p->pos >= p->doc->len || t[p->pos] != '"') {
                    return fail(p, "expected a key");
                }
                err = parse_string(p, &child);
                if (err != EDGEOPS_OK) {
                    return err;
                }
                skip_ws(p);
                if (p->pos >= p->doc->len || t[p->pos] != ':') {
                    return fail(p, "expected ':'");
                }
                p->pos++;
            }
            err = parse_value(p, depth + 1, &child);
            if (err != EDGEOPS_OK) {
                return err;
            }
            size++;
            skip_ws(p);
            if (p->pos < p->doc->len && t[p->pos] == ',') {
                p->pos++;
                continue;
            }
            if (p->pos < p->doc->len && t[p->pos] == close) {
                p->pos++;
                break;
            }
            return fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    edgeops_json_tok_t *tk = &p->doc->toks[tok];
    tk->end = (uint32_t)p->pos;
    tk->size = size;
    tk->next = p->doc->count;
    *out = tok;
    return EDGEOPS_OK;
}

static edgeops_err_t parse_value(parser_t *p, unsigned depth, int32_t *out)
{
    skip_ws(p);
    if (p->pos >= p->doc->len) {
        return fail(p, "unexpected end");
    }
    const char c = p->doc->text[p->pos];
    switch (c) {
    case '{':
    case '[':
        return parse_container(p, depth, out);
    case '"':
        return parse_string(p, out);
    case 't':
        return parse_literal(p, "true", EDGEOPS_JSON_TRUE, out);
    case 'f':
        return parse_literal(p, "false", EDGEOPS_JSON_FALSE, out);
    case 'n':
        return parse_literal(p, "null", EDGEOPS_JSON_NULL, out);
    default:
        if (c == '-' || is_digit(c)) {
            return parse_number(p, out);
        }
        return fail(p, "unexpected character");
    }
}

edgeops_err_t edgeops_json_parse(edgeops_json_doc_t *doc, const char *text, size_t len,
                                 edgeops_json_tok_t *toks, uint32_t cap)
{
    parser_t p;
    int32_t root;
    doc->text = text;
    doc->len = len;
    doc->toks = toks;
    doc->cap = cap;
    doc->count = 0;
    doc->error = NULL;
    doc->error_at = 0;
    if (len > 0xfffffff0u) {
        doc->error = "document too large";
        return EDGEOPS_ERR_SPACE;
    }
    p.doc = doc;
    p.pos = 0;
    edgeops_err_t err = parse_value(&p, 0, &root);
    if (err == EDGEOPS_ERR_SPACE) {
        doc->error = "too many JSON tokens for EDGEOPS_JSON_MAX_TOKENS";
        return err;
    }
    if (err != EDGEOPS_OK) {
        return err;
    }
    skip_ws(&p);
    if (p.pos != len) {
        return fail(&p, "extra data after the value");
    }
    return EDGEOPS_OK;
}

/* --- reading ------------------------------------------------------------------------- */

int edgeops_json_is(const edgeops_json_doc_t *doc, int32_t tok, edgeops_json_type_t type)
{
    return tok >= 0 && (uint32_t)tok < doc->count && doc->toks[tok].type == (uint8_t)type;
}

int32_t edgeops_json_first(const edgeops_json_doc_t *doc, int32_t tok)
{
    if (tok < 0 || (uint32_t)tok >= doc->count || doc->toks[tok].size == 0) {
        return -1;
    }
    return tok + 1;
}

int32_t edgeops_json_after(const edgeops_json_doc_t *doc, int32_t tok)
{
    if (tok < 0 || (uint32_t)tok >= doc->count) {
        return -1;
    }
    return (int32_t)doc->toks[tok].next;
}

/* the next code point of the string token text[pos..end), as Python's json decodes it */
static uint32_t string_next(const char *text, size_t end, size_t *pos)
{
    const char *s = text + *pos;
    if (s[0] != '\\') {
        uint32_t cp = 0;
        const size_t n = utf8_length((const unsigned char *)s, end - *pos, &cp);
        *pos += n ? n : 1;
        return cp;
    }
    const char e = s[1];
    *pos += 2;
    switch (e) {
    case 'b': return 0x08;
    case 'f': return 0x0c;
    case 'n': return 0x0a;
    case 'r': return 0x0d;
    case 't': return 0x09;
    case 'u': {
        uint32_t v = 0;
        uint32_t lo = 0;
        (void)hex4(s + 2, &v);
        *pos += 4;
        if (v >= 0xd800u && v <= 0xdbffu && *pos + 6 <= end && text[*pos] == '\\' &&
            text[*pos + 1] == 'u' && hex4(text + *pos + 2, &lo) && lo >= 0xdc00u &&
            lo <= 0xdfffu) {
            *pos += 6;
            return 0x10000u + ((v - 0xd800u) << 10) + (lo - 0xdc00u);
        }
        return v;
    }
    default: return (uint32_t)(unsigned char)e; /* \" \\ \/ */
    }
}

static size_t utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

edgeops_err_t edgeops_json_string(const edgeops_json_doc_t *doc, int32_t tok, char *out,
                                  size_t cap, size_t *len)
{
    if (!edgeops_json_is(doc, tok, EDGEOPS_JSON_STRING) || cap == 0) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    const edgeops_json_tok_t *t = &doc->toks[tok];
    size_t pos = t->start;
    size_t n = 0;
    while (pos < t->end) {
        char buf[4];
        const size_t k = utf8_encode(string_next(doc->text, t->end, &pos), buf);
        if (n + k >= cap) {
            out[0] = '\0';
            return EDGEOPS_ERR_SPACE;
        }
        memcpy(out + n, buf, k);
        n += k;
    }
    out[n] = '\0';
    if (len != NULL) {
        *len = n;
    }
    return EDGEOPS_OK;
}

int edgeops_json_streq(const edgeops_json_doc_t *doc, int32_t tok, const char *s)
{
    if (!edgeops_json_is(doc, tok, EDGEOPS_JSON_STRING)) {
        return 0;
    }
    const edgeops_json_tok_t *t = &doc->toks[tok];
    size_t pos = t->start;
    size_t i = 0;
    const size_t n = strlen(s);
    while (pos < t->end) {
        uint32_t want = 0;
        if (i >= n) {
            return 0;
        }
        const size_t k = utf8_length((const unsigned char *)s + i, n - i, &want);
        if (k == 0 || string_next(doc->text, t->end, &pos) != want) {
            return 0;
        }
        i += k;
    }
    return i == n;
}

int32_t edgeops_json_get(const edgeops_json_doc_t *doc, int32_t obj, const char *key)
{
    if (!edgeops_json_is(doc, obj, EDGEOPS_JSON_OBJECT)) {
        return -1;
    }
    int32_t found = -1;
    int32_t k = edgeops_json_first(doc, obj);
    for (uint32_t i = 0; i < doc->toks[obj].size; i++) {
        const int32_t value = k + 1;
        if (edgeops_json_streq(doc, k, key)) {
            found = value;
        }
        k = (int32_t)doc->toks[value].next;
    }
    return found;
}

int32_t edgeops_json_at(const edgeops_json_doc_t *doc, int32_t arr, uint32_t i)
{
    if (!edgeops_json_is(doc, arr, EDGEOPS_JSON_ARRAY) || i >= doc->toks[arr].size) {
        return -1;
    }
    int32_t t = arr + 1;
    for (uint32_t j = 0; j < i; j++) {
        t = (int32_t)doc->toks[t].next;
    }
    return t;
}

static edgeops_err_t number_text(const edgeops_json_doc_t *doc, int32_t tok, char *buf)
{
    if (!edgeops_json_is(doc, tok, EDGEOPS_JSON_NUMBER)) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    const edgeops_json_tok_t *t = &doc->toks[tok];
    const size_t n = t->end - t->start;
    if (n >= NUMBER_MAX) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    memcpy(buf, doc->text + t->start, n);
    buf[n] = '\0';
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_json_number(const edgeops_json_doc_t *doc, int32_t tok, double *out)
{
    char buf[NUMBER_MAX];
    const edgeops_err_t err = number_text(doc, tok, buf);
    if (err != EDGEOPS_OK) {
        return err;
    }
    const double v = strtod(buf, NULL);
    if (!isfinite(v)) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    *out = v;
    return EDGEOPS_OK;
}

edgeops_err_t edgeops_json_integer(const edgeops_json_doc_t *doc, int32_t tok, int64_t *out)
{
    if (!edgeops_json_is(doc, tok, EDGEOPS_JSON_NUMBER) || !doc->toks[tok].is_int) {
        return EDGEOPS_ERR_PROTOCOL;
    }
    const edgeops_json_tok_t *t = &doc->toks[tok];
    size_t i = t->start;
    int negative = 0;
    uint64_t v = 0;
    if (doc->text[i] == '-') {
        negative = 1;
        i++;
    }
    for (; i < t->end; i++) {
        const uint64_t digit = (uint64_t)(doc->text[i] - '0');
        if (v > (UINT64_C(9223372036854775807) - digit) / 10u) {
            return EDGEOPS_ERR_PROTOCOL;
        }
        v = v * 10u + digit;
    }
    *out = negative ? -(int64_t)v : (int64_t)v;
    return EDGEOPS_OK;
}

/* --- Python's repr(float) ------------------------------------------------------------ */

size_t edgeops_json_format_double(double v, char *out, size_t cap)
{
    char tmp[40];
    char digits[20];
    size_t n = 0;
    int exp10 = 0;
    size_t o = 0;
    if (!isfinite(v) || cap < 32) {
        return 0;
    }
    if (v == 0.0) {
        const char *zero = signbit(v) ? "-0.0" : "0.0";
        strcpy(out, zero);
        return strlen(zero);
    }
    /* the shortest %e that reads back as v: repr's digits */
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(tmp, sizeof tmp, "%.*e", precision - 1, v);
        if (strtod(tmp, NULL) == v) {
            break;
        }
    }
    const char *s = tmp;
    if (*s == '-') {
        out[o++] = '-';
        s++;
    }
    for (; *s != 'e' && *s != '\0'; s++) {
        if (*s != '.') {
            digits[n++] = *s;
        }
    }
    if (*s == 'e') {
        exp10 = atoi(s + 1);
    }
    while (n > 1 && digits[n - 1] == '0') {
        n--;
    }
    const int decpt = exp10 + 1; /* digits[0] is at 10^(decpt - 1) */
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int i = 0; i < -decpt; i++) {
                out[o++] = '0';
            }
            memcpy(out + o, digits, n);
            o += n;
        } else if ((size_t)decpt >= n) {
            memcpy(out + o, digits, n);
            o += n;
            for (size_t i = n; i < (size_t)decpt; i++) {
                out[o++] = '0';
            }
            out[o++] = '.';
            out[o++] = '0';
        } else {
            memcpy(out + o, digits, (size_t)decpt);
            o += (size_t)decpt;
            out[o++] = '.';
            memcpy(out + o, digits + decpt, n - (size_t)decpt);
            o += n - (size_t)decpt;
        }
    } else {
        out[o++] = digits[0];
        if (n > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, n - 1);
            o += n - 1;
        }
        o += (size_t)snprintf(out + o, cap - o, "e%c%02d", decpt - 1 < 0 ? '-' : '+',
                              decpt - 1 < 0 ? 1 - decpt : decpt - 1);
    }
    out[o] = '\0';
    return o;
}

/* --- canonical form ------------------------------------------------------------------ */

typedef struct {
    edgeops_json_sink_t sink;
    void *ctx;
    char buf[128];
    size_t used;
} emitter_t;

static void emit(emitter_t *e, const char *data, size_t len)
{
    if (e->used + len > sizeof e->buf) {
        e->sink(e->ctx, e->buf, e->used);
        e->used = 0;
        if (len > sizeof e->buf) {
            e->sink(e->ctx, data, len);
            return;
        }
    }
    memcpy(e->buf + e->used, data, len);
    e->used += len;
}

static void emit_char(emitter_t *e, char c)
{
    emit(e, &c, 1);
}

static void emit_u4(emitter_t *e, uint32_t v)
{
    static const char hex[] = "0123456789abcdef";
    char buf[6];
    buf[0] = '\\';
    buf[1] = 'u';
    for (int i = 0; i < 4; i++) {
        buf[2 + i] = hex[(v >> (12 - 4 * i)) & 15u];
    }
    emit(e, buf, 6);
}

static void emit_string(emitter_t *e, const edgeops_json_doc_t *doc, int32_t tok)
{
    const edgeops_json_tok_t *t = &doc->toks[tok];
    size_t pos = t->start;
    emit_char(e, '"');
    while (pos < t->end) {
        const uint32_t cp = string_next(doc->text, t->end, &pos);
        switch (cp) {
        case '"': emit(e, "\\\"", 2); break;
        case '\\': emit(e, "\\\\", 2); break;
        case '\n': emit(e, "\\n", 2); break;
        case '\r': emit(e, "\\r", 2); break;
        case '\t': emit(e, "\\t", 2); break;
        case 0x08: emit(e, "\\b", 2); break;
        case 0x0c: emit(e, "\\f", 2); break;
        default:
            if (cp >= 0x20 && cp < 0x7f) {
                emit_char(e, (char)cp);
            } else if (cp < 0x10000) {
                emit_u4(e, cp);
            } else {
                const uint32_t v = cp - 0x10000u;
                emit_u4(e, 0xd800u | (v >> 10));
                emit_u4(e, 0xdc00u | (v & 0x3ffu));
            }
        }
    }
    emit_char(e, '"');
}

/* compare the decoded keys a and b by code point: <0, 0, >0 */
static int key_cmp(const edgeops_json_doc_t *doc, int32_t a, int32_t b)
{
    size_t pa = doc->toks[a].start;
    size_t pb = doc->toks[b].start;
    const size_t ea = doc->toks[a].end;
    const size_t eb = doc->toks[b].end;
    while (pa < ea && pb < eb) {
        const uint32_t ca = string_next(doc->text, ea, &pa);
        const uint32_t cb = string_next(doc->text, eb, &pb);
        if (ca != cb) {
            return ca < cb ? -1 : 1;
        }
    }
    if (pa < ea) {
        return 1;
    }
    return pb < eb ? -1 : 0;
}

static edgeops_err_t emit_value(emitter_t *e, const edgeops_json_doc_t *doc, int32_t tok);

static edgeops_err_t emit_object(emitter_t *e, const edgeops_json_doc_t *doc, int32_t tok)
{
    const uint32_t n = doc->toks[tok].size;
    int32_t prev = -1;
    emit_char(e, '{');
    /* selection of the next-smallest key: no scratch memory, O(keys^2) comparisons */
    for (uint32_t i = 0; i < n; i++) {
        int32_t best = -1;
        int ties = 0;
        int32_t k = tok + 1;
        for (uint32_t j = 0; j < n; j++) {
            if (prev < 0 || key_cmp(doc, k, prev) > 0) {
                const int c = best < 0 ? -1 : key_cmp(doc, k, best);
                if (c < 0) {
                    best = k;
                    ties = 0;
                } else if (c == 0) {
                    ties++;
                }
            }
            k = (int32_t)doc->toks[k + 1].next;
        }
        if (best < 0 || ties > 0) {
            return EDGEOPS_ERR_JSON; /* a duplicate key */
        }
        if (i > 0) {
            emit_char(e, ',');
        }
        emit_string(e, doc, best);
        emit_char(e, ':');
        const edgeops_err_t err = emit_value(e, doc, best + 1);
        if (err != EDGEOPS_OK) {
            return err;
        }
        prev = best;
    }
    emit_char(e, '}');
    return EDGEOPS_OK;
}

static edgeops_err_t emit_number(emitter_t *e, const edgeops_json_doc_t *doc, int32_t tok)
{
    const edgeops_json_tok_t *t = &doc->toks[tok];
    if (t->is_int) {
        const char *s = doc->text + t->start;
        const size_t n = t->end - t->start;
        if (n == 2 && s[0] == '-' && s[1] == '0') {
            emit_char(e, '0'); /* int("-0") is 0 */
        } else {
            emit(e, s, n);
        }
        return EDGEOPS_OK;
    }
    double v;
    char buf[40];
    if (edgeops_json_number(doc, tok, &v) != EDGEOPS_OK) {
        return EDGEOPS_ERR_PROTOCOL; /* too long, or not finite: Python refuses NaN/inf too */
    }
    const size_t n = edgeops_json_format_double(v, buf, sizeof buf);
    emit(e, buf, n);
    return EDGEOPS_OK;
}

static edgeops_err_t emit_value(emitter_t *e, const edgeops_json_doc_t *doc, int32_t tok)
{
    const edgeops_json_tok_t *t = &doc->toks[tok];
    switch ((edgeops_json_type_t)t->type) {
    case EDGEOPS_JSON_OBJECT:
        return emit_object(e, doc, tok);
    case EDGEOPS_JSON_ARRAY: {
        int32_t child = tok + 1;
        emit_char(e, '[');
        for (uint32_t i = 0; i < t->size; i++) {
            if (i > 0) {
                emit_char(e, ',');
            }
            const edgeops_err_t err = emit_value(e, doc, child);
            if (err != EDGEOPS_OK) {
                return err;
            }
            child = (int32_t)doc->toks[child].next;
        }
        emit_char(e, ']');
        return EDGEOPS_OK;
    }
    case EDGEOPS_JSON_STRING:
        emit_string(e, doc, tok);
        return EDGEOPS_OK;
    case EDGEOPS_JSON_NUMBER:
        return emit_number(e, doc, tok);
    case EDGEOPS_JSON_TRUE:
        emit(e, "true", 4);
        return EDGEOPS_OK;
    case EDGEOPS_JSON_FALSE:
        emit(e, "false", 5);
        return EDGEOPS_OK;
    case EDGEOPS_JSON_NULL:
        emit(e, "null", 4);
        return EDGEOPS_OK;
    }
    return EDGEOPS_ERR_JSON;
}

edgeops_err_t edgeops_json_canonical(const edgeops_json_doc_t *doc, int32_t tok,
                                     edgeops_json_sink_t sink, void *ctx)
{
    emitter_t e;
    if (tok < 0 || (uint32_t)tok >= doc->count) {
        return EDGEOPS_ERR_ARG;
    }
    e.sink = sink;
    e.ctx = ctx;
    e.used = 0;
    const edgeops_err_t err = emit_value(&e, doc, tok);
    if (e.used > 0) {
        sink(ctx, e.buf, e.used);
    }
    return err;
}
