/* edgeops EOML runner: a loadable emlearn artifact run by the firmware's own loader.
 *
 *   edgeops-eoml-run MODEL          stdin: float32 rows of n_features (from the artifact);
 *                                   stdout: one int32 class per row
 *   edgeops-eoml-run MODEL time N   stdin: float32 rows (the first TIME_ROWS are used);
 *                                   runs WARMUP untimed, then N timed single-row
 *                                   predictions cycling through them; stdout: N int64 ns
 *
 * edgeops.firmware.runner.EomlRunner drives it: the pipeline measures the
 * emlearn-loadable variant with exactly the code a device runs
 * (core/edgeops_model.c, core/edgeops_model_emlearn.c).
 *
 * Exit codes: 0 ok, 2 bad arguments or input, 3 the model failed on a row,
 * 4 the artifact does not load (the reason on stderr).
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgeops_model.h"

#define WARMUP 5
#define TIME_ROWS 256

static union {
    uint8_t bytes[EDGEOPS_MODEL_MAX_BYTES];
    uint32_t align;
} artifact;
static edgeops_model_t model;
static float rows[TIME_ROWS * EDGEOPS_MAX_FEATURES];
static volatile int32_t sink;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
}

static int32_t predict_row(const float *row, unsigned long index)
{
    float scores[EDGEOPS_MAX_CLASSES];
    int32_t cls = -1;
    const edgeops_err_t err =
        edgeops_model_predict(&model, row, model.n_features, scores, EDGEOPS_MAX_CLASSES, &cls);
    if (err != EDGEOPS_OK) {
        fprintf(stderr, "the model failed on row %lu: %s\n", index, edgeops_err_str(err));
        exit(3);
    }
    return cls;
}

int main(int argc, char **argv)
{
    char reason[256];
    if (argc != 2 && !(argc == 4 && strcmp(argv[2], "time") == 0)) {
        fprintf(stderr, "usage: %s MODEL [time N] < rows.f32\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", argv[1]);
        return 2;
    }
    const size_t size = fread(artifact.bytes, 1, sizeof artifact.bytes, f);
    const int more = fgetc(f) != EOF;
    fclose(f);
    if (more) {
        fprintf(stderr, "the artifact is over %u bytes (EDGEOPS_MODEL_MAX_BYTES)\n",
                (unsigned)sizeof artifact.bytes);
        return 2;
    }
    if (edgeops_model_load(&model, "c-emlearn", artifact.bytes, (uint32_t)size, reason,
                           sizeof reason) != EDGEOPS_OK) {
        fprintf(stderr, "%s\n", reason);
        return 4;
    }
    const size_t row_floats = model.n_features;
    if (argc == 2) {
        unsigned long index = 0;
        while (fread(rows, sizeof(float), row_floats, stdin) == row_floats) {
            const int32_t cls = predict_row(rows, index++);
            fwrite(&cls, sizeof cls, 1, stdout);
        }
        return ferror(stdin) ? 2 : 0;
    }
    const long n = strtol(argv[3], NULL, 10);
    const size_t n_rows = fread(rows, sizeof(float) * row_floats, TIME_ROWS, stdin);
    if (n <= 0 || n_rows == 0) {
        fprintf(stderr, "usage: %s MODEL time N (N > 0, at least one row on stdin)\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < WARMUP; i++) {
        sink = predict_row(rows + (i % n_rows) * row_floats, (unsigned long)(i % n_rows));
    }
    for (long i = 0; i < n; i++) {
        const size_t r = (size_t)i % n_rows;
        const int64_t start = now_ns();
        sink = predict_row(rows + r * row_floats, (unsigned long)r);
        const int64_t took = now_ns() - start;
        fwrite(&took, sizeof took, 1, stdout);
    }
    return 0;
}
