/* edgeops test vectors: raw held-out samples through the C transforms and the model.
 *
 *   edgeops-vectors < vectors.txt
 *
 * vectors.txt (written by `edgeops firmware generate`): a line "edgeops-vectors 1 N",
 * then N samples, each the spec's inputs in order: a window as its samples, a numeric
 * input as one number (Python's repr: strtod reads it back exactly; nan and inf too),
 * a categorical one as "s:" and the UTF-8 hex of str(value), or "-" when missing.
 *
 * Output, one line per sample: the class (or "-" when this build cannot run the model,
 * e.g. TFLite without TFLite Micro) and the features, each printed with %.9g (a float
 * reads back exactly); or "error <code>" when the transforms refuse the sample.
 * `edgeops firmware test` compares them with the Python reference (expected.json).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeops_app.h"

#define TOKEN_MAX 4096
#define CATEGORY_MAX 512

static edgeops_app_t app;
static double samples[EDGEOPS_APP_RAW_DOUBLES + 1];
static char category_text[EDGEOPS_APP_N_INPUTS][CATEGORY_MAX];
static const char *categories[EDGEOPS_APP_N_INPUTS];
static char token[TOKEN_MAX];

static int next_token(void)
{
    return scanf("%4095s", token) == 1;
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

static int read_number(double *out)
{
    char *end = NULL;
    if (!next_token()) {
        return -1;
    }
    *out = strtod(token, &end);
    return end != token && *end == '\0' ? 0 : -1;
}

static int read_category(uint32_t i)
{
    if (!next_token()) {
        return -1;
    }
    if (strcmp(token, "-") == 0) {
        categories[i] = NULL;
        return 0;
    }
    const size_t n = strlen(token);
    if (n < 2 || token[0] != 's' || token[1] != ':' || (n - 2) % 2 != 0 ||
        (n - 2) / 2 >= CATEGORY_MAX) {
        return -1;
    }
    for (size_t j = 0; j < (n - 2) / 2; j++) {
        const int hi = hex_value(token[2 + 2 * j]);
        const int lo = hex_value(token[3 + 2 * j]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        category_text[i][j] = (char)(hi * 16 + lo);
    }
    category_text[i][(n - 2) / 2] = '\0';
    categories[i] = category_text[i];
    return 0;
}

static int read_sample(void)
{
    for (uint32_t i = 0; i < EDGEOPS_APP_N_INPUTS; i++) {
        const edgeops_feature_input_t *in = &edgeops_app_feature_spec.inputs[i];
        if (in->kind == EDGEOPS_FEATURE_INPUT_CATEGORICAL) {
            if (read_category(i) != 0) {
                return -1;
            }
            continue;
        }
        for (uint32_t j = 0; j < in->length; j++) {
            if (read_number(&samples[edgeops_app_raw_offsets[i] + j]) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

int main(void)
{
    char reason[256] = "";
    unsigned long n_rows = 0;
    if (scanf("edgeops-vectors 1 %lu", &n_rows) != 1) {
        fprintf(stderr, "not an edgeops-vectors 1 file\n");
        return 2;
    }
    const int runnable = edgeops_app_init(&app, reason, sizeof reason) == EDGEOPS_OK;
    if (!runnable) {
        fprintf(stderr, "the model does not run in this build: %s\n", reason);
    }
    for (unsigned long r = 0; r < n_rows; r++) {
        if (read_sample() != 0) {
            fprintf(stderr, "sample %lu: bad input near \"%.64s\"\n", r, token);
            return 2;
        }
        edgeops_app_raw(&app, samples, categories);
        const edgeops_err_t err = edgeops_app_features(&app);
        if (err != EDGEOPS_OK) {
            printf("error %s\n", edgeops_err_str(err));
            continue;
        }
        int32_t cls = -1;
        if (runnable) {
            const edgeops_err_t perr = edgeops_app_predict(&app, &cls);
            if (perr != EDGEOPS_OK) {
                printf("error %s\n", edgeops_err_str(perr));
                continue;
            }
            printf("%ld", (long)cls);
        } else {
            printf("-");
        }
        for (uint32_t j = 0; j < EDGEOPS_APP_N_FEATURES; j++) {
            printf(" %.9g", (double)app.features[j]);
        }
        printf("\n");
    }
    return 0;
}
