#include "edgeops_jsonw.h"

#include <stdio.h>
#include <string.h>

#include "edgeops_json.h"

void edgeops_jsonw_init(edgeops_jsonw_t *w, char *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->err = cap == 0 ? EDGEOPS_ERR_SPACE : EDGEOPS_OK;
    w->depth = 0;
    w->object[0] = 0;
    w->items[0] = 0;
}

static void put(edgeops_jsonw_t *w, const char *s, size_t n)
{
    if (w->err != EDGEOPS_OK) {
        return;
    }
    if (w->len + n + 1 > w->cap) { /* keep room for the NUL */
        w->err = EDGEOPS_ERR_SPACE;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

/* commas: in an array before every value but the first; in an object before every key
 * but the first (the value after a key takes none) */
static void before_value(edgeops_jsonw_t *w, int is_key)
{
    if (w->depth == 0 || (w->object[w->depth] && !is_key)) {
        return;
    }
    if (w->items[w->depth]) {
        put(w, ",", 1);
    }
    w->items[w->depth] = 1;
}

static void open_container(edgeops_jsonw_t *w, char c, int object)
{
    before_value(w, 0);
    put(w, &c, 1);
    if (w->depth + 1 >= EDGEOPS_JSONW_MAX_DEPTH) {
        w->err = EDGEOPS_ERR_SPACE;
        return;
    }
    w->depth++;
    w->object[w->depth] = (uint8_t)object;
    w->items[w->depth] = 0;
}

void edgeops_jsonw_object(edgeops_jsonw_t *w)
{
    open_container(w, '{', 1);
}

void edgeops_jsonw_array(edgeops_jsonw_t *w)
{
    open_container(w, '[', 0);
}

void edgeops_jsonw_end(edgeops_jsonw_t *w)
{
    if (w->depth == 0) {
        w->err = EDGEOPS_ERR_ARG;
        return;
    }
    const char c = w->object[w->depth] ? '}' : ']';
    w->depth--;
    put(w, &c, 1);
}

static void put_string(edgeops_jsonw_t *w, const char *s, size_t n)
{
    put(w, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        char esc[8];
        switch (c) {
        case '"': put(w, "\\\"", 2); break;
        case '\\': put(w, "\\\\", 2); break;
        case '\n': put(w, "\\n", 2); break;
        case '\r': put(w, "\\r", 2); break;
        case '\t': put(w, "\\t", 2); break;
        default:
            if (c < 0x20 || c >= 0x7f) { /* bytes, not code points: callers write ASCII */
                snprintf(esc, sizeof esc, "\\u%04x", (unsigned)c);
                put(w, esc, 6);
            } else {
                put(w, (const char *)&s[i], 1);
            }
        }
    }
    put(w, "\"", 1);
}

void edgeops_jsonw_string_n(edgeops_jsonw_t *w, const char *s, size_t n)
{
    before_value(w, 0);
    put_string(w, s, n);
}

void edgeops_jsonw_string(edgeops_jsonw_t *w, const char *s)
{
    edgeops_jsonw_string_n(w, s, strlen(s));
}

void edgeops_jsonw_key(edgeops_jsonw_t *w, const char *key)
{
    before_value(w, 1);
    put_string(w, key, strlen(key));
    put(w, ":", 1);
}

void edgeops_jsonw_int(edgeops_jsonw_t *w, int64_t v)
{
    char buf[24];
    before_value(w, 0);
    const int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    put(w, buf, (size_t)n);
}

void edgeops_jsonw_double(edgeops_jsonw_t *w, double v)
{
    char buf[40];
    const size_t n = edgeops_json_format_double(v, buf, sizeof buf);
    if (n == 0) {
        edgeops_jsonw_null(w);
        return;
    }
    before_value(w, 0);
    put(w, buf, n);
}

void edgeops_jsonw_bool(edgeops_jsonw_t *w, int v)
{
    before_value(w, 0);
    put(w, v ? "true" : "false", v ? 4u : 5u);
}

void edgeops_jsonw_null(edgeops_jsonw_t *w)
{
    before_value(w, 0);
    put(w, "null", 4);
}

edgeops_err_t edgeops_jsonw_finish(edgeops_jsonw_t *w, size_t *len)
{
    if (w->err == EDGEOPS_OK && w->depth != 0) {
        w->err = EDGEOPS_ERR_ARG;
    }
    if (w->err == EDGEOPS_OK) {
        w->buf[w->len] = '\0';
    }
    if (len != NULL) {
        *len = w->len;
    }
    return w->err;
}
