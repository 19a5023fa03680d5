/* edgeops firmware: writing compact JSON messages into a fixed buffer.
 *
 * Calls never fail one by one: an overflow (or too deep nesting) sets err and
 * later calls do nothing, so a message is built straight through and checked
 * once with edgeops_jsonw_finish(). Strings are escaped as Python's
 * json.dumps(ensure_ascii=True) would; doubles are written as repr(float).
 */
#ifndef EDGEOPS_JSONW_H
#define EDGEOPS_JSONW_H

#include <stddef.h>
#include <stdint.h>

#include "edgeops_err.h"

#define EDGEOPS_JSONW_MAX_DEPTH 16u

typedef struct {
    char *buf;
    size_t cap;
    size_t len;
    edgeops_err_t err;
    unsigned depth;
    uint8_t object[EDGEOPS_JSONW_MAX_DEPTH]; /* 1: the level is an object, 0: an array */
    uint8_t items[EDGEOPS_JSONW_MAX_DEPTH];  /* 0 until the level has its first item */
} edgeops_jsonw_t;

void edgeops_jsonw_init(edgeops_jsonw_t *w, char *buf, size_t cap);
void edgeops_jsonw_object(edgeops_jsonw_t *w);
void edgeops_jsonw_array(edgeops_jsonw_t *w);
void edgeops_jsonw_end(edgeops_jsonw_t *w); /* closes the innermost object or array */
void edgeops_jsonw_key(edgeops_jsonw_t *w, const char *key);
void edgeops_jsonw_string(edgeops_jsonw_t *w, const char *s);
void edgeops_jsonw_string_n(edgeops_jsonw_t *w, const char *s, size_t n);
void edgeops_jsonw_int(edgeops_jsonw_t *w, int64_t v);
void edgeops_jsonw_double(edgeops_jsonw_t *w, double v); /* non-finite: null */
void edgeops_jsonw_bool(edgeops_jsonw_t *w, int v);
void edgeops_jsonw_null(edgeops_jsonw_t *w);
/* NUL-terminates; the length (without the NUL) in *len; EDGEOPS_ERR_SPACE on overflow */
edgeops_err_t edgeops_jsonw_finish(edgeops_jsonw_t *w, size_t *len);

#endif /* EDGEOPS_JSONW_H */
