/* edgeops firmware: a JSON reader that never allocates, and the canonical form of a value.
 *
 * edgeops_json_parse() checks a whole document against RFC 8259 (strict UTF-8,
 * no NaN/Infinity, nesting bounded by EDGEOPS_JSON_MAX_DEPTH) and fills a
 * caller's token array in document order, like jsmn. Tokens point into the
 * text, which must stay alive and unchanged while they are used. Every token
 * knows the index just past its subtree (next), so skipping a value is O(1).
 *
 * edgeops_json_canonical() writes a value the way the server signs it:
 * Python's json.dumps(v, sort_keys=True, separators=(",", ":"),
 * ensure_ascii=True) of json.loads(text) — keys sorted by code point, strings
 * re-escaped, numbers re-formatted as Python would print them (integers as
 * written, floats as repr(float)). A duplicate key is an error (Python would
 * keep the last one silently; a signed manifest has none).
 */
#ifndef EDGEOPS_JSON_H
#define EDGEOPS_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_config.h"
#include "edgeops_err.h"

typedef enum {
    EDGEOPS_JSON_OBJECT = 1,
    EDGEOPS_JSON_ARRAY,
    EDGEOPS_JSON_STRING,
    EDGEOPS_JSON_NUMBER,
    EDGEOPS_JSON_TRUE,
    EDGEOPS_JSON_FALSE,
    EDGEOPS_JSON_NULL
} edgeops_json_type_t;

typedef struct {
    uint8_t type;    /* edgeops_json_type_t */
    uint8_t is_int;  /* numbers: no fraction and no exponent (Python parses an int) */
    uint32_t start;  /* strings: first byte after the quote; others: first byte */
    uint32_t end;    /* strings: the closing quote; others: one past the last byte */
    uint32_t size;   /* objects: keys; arrays: elements */
    uint32_t next;   /* index of the first token after this value's subtree */
} edgeops_json_tok_t;

typedef struct {
    const char *text;
    size_t len;
    edgeops_json_tok_t *toks;
    uint32_t cap;
    uint32_t count;
    const char *error; /* why parsing failed (a static string) */
    size_t error_at;   /* byte offset of the failure */
} edgeops_json_doc_t;

typedef void (*edgeops_json_sink_t)(void *ctx, const char *data, size_t len);

edgeops_err_t edgeops_json_parse(edgeops_json_doc_t *doc, const char *text, size_t len,
                                 edgeops_json_tok_t *toks, uint32_t cap);

/* the value of key in object obj (the last one if repeated), or -1 */
int32_t edgeops_json_get(const edgeops_json_doc_t *doc, int32_t obj, const char *key);
/* element i of array arr, or -1 */
int32_t edgeops_json_at(const edgeops_json_doc_t *doc, int32_t arr, uint32_t i);
/* first child of a container and the sibling after a value; -1 at the end */
int32_t edgeops_json_first(const edgeops_json_doc_t *doc, int32_t tok);
int32_t edgeops_json_after(const edgeops_json_doc_t *doc, int32_t tok);

int edgeops_json_is(const edgeops_json_doc_t *doc, int32_t tok, edgeops_json_type_t type);
/* any JSON number (not true/false) as a double; EDGEOPS_ERR_PROTOCOL if not finite */
edgeops_err_t edgeops_json_number(const edgeops_json_doc_t *doc, int32_t tok, double *out);
/* an integer token (no fraction or exponent) that fits int64 */
edgeops_err_t edgeops_json_integer(const edgeops_json_doc_t *doc, int32_t tok, int64_t *out);
/* a string, decoded to UTF-8 and NUL-terminated; EDGEOPS_ERR_SPACE if over cap - 1 bytes */
edgeops_err_t edgeops_json_string(const edgeops_json_doc_t *doc, int32_t tok, char *out,
                                  size_t cap, size_t *len);
/* 1 if tok is a string equal to s (decoded) */
int edgeops_json_streq(const edgeops_json_doc_t *doc, int32_t tok, const char *s);

edgeops_err_t edgeops_json_canonical(const edgeops_json_doc_t *doc, int32_t tok,
                                     edgeops_json_sink_t sink, void *ctx);

/* v as Python's repr(float(v)) ("0.1", "1e-05", "100.0"); its length, 0 if v is not
 * finite or cap is too small (32 bytes always suffice) */
size_t edgeops_json_format_double(double v, char *out, size_t cap);

#endif /* EDGEOPS_JSON_H */
