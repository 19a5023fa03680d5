"""C code for microcontrollers from scikit-learn trees and MLPs, with emlearn.

:func:`sklearn_to_emlearn_c` returns one C99 header that defines::

    int32_t <name>_predict(const float *features, int32_t n_features);

which returns the class index (the position in ``estimator.classes_``) or a
negative emlearn error code. :class:`EmlearnCRunner` compiles that header with a
small harness on the host and runs it, so the C is checked against
scikit-learn before it goes near a device.

What emlearn 0.23 supports, and what edgeops does about it:

- ``RandomForestClassifier``, ``ExtraTreesClassifier``, ``DecisionTreeClassifier``:
  ``method="inline"`` (one C function per tree, float thresholds). Forests use
  emlearn's soft voting over 8-bit leaf class proportions (``leaf_bits=8``),
  which is scikit-learn's averaging of leaf probabilities up to that rounding;
  a single tree returns its leaf's majority class (``leaf_bits=0``), as
  scikit-learn does. emlearn's ``loadable`` trees take int16 features and
  truncate the thresholds to integers, so they are refused.
- ``MLPClassifier``: ``method="loadable"`` (weights in arrays, run by
  ``eml_net.h``). emlearn 0.23's ``inline`` network generator fails on every
  network (it writes the activation function's name as an int), so it is refused.
- Split thresholds: scikit-learn goes left when ``x <= t``, emlearn's C when
  ``x < t``, and emlearn prints ``t`` with six decimals. Each threshold is
  replaced by the next float32 above the largest float32 not above ``t`` and
  printed exactly, so a float32 feature takes the same branch in C as in
  scikit-learn. Without this, a digits pixel equal to a threshold such as
  ``3.0`` takes the other branch. MLP weights are printed exactly as well
  (emlearn's ``%.6f`` turns a weight of 3e-7 into 0).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.errors import ConfigError, EdgeopsError, InvalidInput, MissingExtra

__all__ = ["METHODS", "EmlearnCRunner", "sklearn_to_emlearn_c", "validate_c_name"]

_TREES = ("RandomForestClassifier", "ExtraTreesClassifier", "DecisionTreeClassifier")
_NETS = ("MLPClassifier",)
METHODS = {**{kind: "inline" for kind in _TREES}, **{kind: "loadable" for kind in _NETS}}

# fmt: off
_C99_KEYWORDS = frozenset((
    "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
    "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
    "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch", "typedef",
    "union", "unsigned", "void", "volatile", "while", "_Bool", "_Complex", "_Imaginary",
))
# fmt: on
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CGEN_LOCK = threading.Lock()  # emlearn's number formatter is swapped while generating


def validate_c_name(name: str) -> str:
    """``name`` if it can prefix C identifiers, else :class:`InvalidInput`.

    >>> validate_c_name("digits_rf")
    'digits_rf'
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise InvalidInput(f"model name {name!r} is not a C identifier (letters, digits, _)")
    reserved_prefix = name.startswith("__") or (name[0] == "_" and name[1:2].isupper())
    if name in _C99_KEYWORDS or name == "main" or reserved_prefix:
        raise InvalidInput(f"model name {name!r} is reserved in C; pick another")
    return name


def _emlearn() -> Any:
    """The emlearn package, imported without its side effect on numpy.

    ``emlearn.bayes`` calls ``numpy.seterr(all="raise")`` when imported, which
    would make every later numpy underflow in the process an exception (an
    MLPClassifier fitted afterwards dies in its Adam update). The error state
    is put back as it was.
    """
    saved = np.geterr()
    try:
        import emlearn
    except ImportError as exc:
        raise MissingExtra("emlearn", "mcu") from exc
    finally:
        np.seterr(**saved)
    return emlearn


def _float_literal(value: float) -> str:
    """A C float literal that parses to exactly ``np.float32(value)``.

    ``str`` of a numpy float32 is the shortest decimal that rounds back to it.

    >>> _float_literal(8.500001), _float_literal(3.0), _float_literal(3e-7)
    ('8.500001f', '3.0f', '3e-07f')
    """
    v = np.float32(value)
    if not np.isfinite(v):
        raise InvalidInput(f"{value!r} does not fit a float32")
    text = str(v)
    return f"{text}f" if ("." in text or "e" in text) else f"{text}.0f"


def _left_of(threshold: float) -> np.float32:
    """The float32 ``u`` with ``x < u`` exactly when ``x <= threshold`` for every float32 ``x``."""
    below = np.float32(threshold)
    if float(below) > threshold:
        below = np.nextafter(below, np.float32(-np.inf))
    return np.nextafter(below, np.float32(np.inf))


@contextmanager
def _exact_float_literals(cgen: Any) -> Iterator[None]:
    """Make emlearn print float constants exactly instead of with six decimals."""
    original = cgen.constant

    def constant(val: Any, dtype: str = "float") -> str:
        return _float_literal(val) if dtype == "float" else original(val, dtype=dtype)

    with _CGEN_LOCK:
        cgen.constant = constant
        try:
            yield
        finally:
            cgen.constant = original


def _trees_c(emlearn: Any, estimator: Any, name: str) -> str:
    forest = hasattr(estimator, "estimators_")
    model = emlearn.convert(estimator, method="inline", dtype="float", leaf_bits=8 if forest else 0)
    nodes = model.forest_[0]  # [feature, threshold, left, right] per decision node
    for node in nodes:
        node[1] = _left_of(float(node[1]))
    with _exact_float_literals(emlearn.cgen):
        return model.save(name=name, include_proba=False)


def _mlp_c(emlearn: Any, estimator: Any, name: str) -> str:
    # emlearn.convert() would compile a test program in ./tmp; generate the code directly.
    weights = [np.asarray(w, dtype=np.float32) for w in estimator.coefs_]
    biases = [np.asarray(b, dtype=np.float32) for b in estimator.intercepts_]
    activations = [estimator.activation] * (len(weights) - 1) + [estimator.out_activation_]
    with _exact_float_literals(emlearn.cgen):  # emlearn would print weights with 6 decimals
        return emlearn.net.c_generate_net_loadable(activations, weights, biases, prefix=name)


def sklearn_to_emlearn_c(estimator: Any, name: str, method: str | None = None) -> str:
    """A C99 header defining ``int32_t <name>_predict(const float *, int32_t)`` for ``estimator``.

    ``method`` defaults to the one emlearn 0.23 gets right for the estimator
    (:data:`METHODS`: ``"inline"`` for trees, ``"loadable"`` for MLPs); any
    other value raises :class:`InvalidInput` saying why.
    """
    validate_c_name(name)
    kind = type(estimator).__name__
    if kind not in METHODS:
        supported = ", ".join(sorted(METHODS))
        raise InvalidInput(f"emlearn C is not available for {kind}; supported: {supported}")
    chosen = method or METHODS[kind]
    if chosen != METHODS[kind]:
        why = (
            "its loadable trees truncate features and thresholds to int16"
            if kind in _TREES
            else "its inline network generator fails on every network"
        )
        raise InvalidInput(
            f"method {chosen!r} is not usable for {kind} with emlearn 0.23 ({why}); "
            f"use method={METHODS[kind]!r}"
        )
    if not hasattr(estimator, "classes_"):
        raise InvalidInput(f"the {kind} is not fitted")
    emlearn = _emlearn()
    body = (
        _trees_c(emlearn, estimator, name) if kind in _TREES else _mlp_c(emlearn, estimator, name)
    )
    guard = f"EDGEOPS_MODEL_{name.upper()}_H"
    return (
        f"/* {name}: {kind} as C99, generated by edgeops with emlearn {emlearn.__version__}"
        f" (method={chosen}).\n"
        f" * int32_t {name}_predict(const float *features, int32_t n_features)\n"
        " * returns the class index (position in classes_), or a negative error code.\n */\n"
        f"#ifndef {guard}\n#define {guard}\n\n#include <stdint.h>\n\n"
        # emlearn's inline trees never read their features_length parameter
        "#if defined(__GNUC__)\n#pragma GCC diagnostic push\n"
        '#pragma GCC diagnostic ignored "-Wunused-parameter"\n#endif\n'
        f"{body}\n"
        "#if defined(__GNUC__)\n#pragma GCC diagnostic pop\n#endif\n\n"
        f"#endif /* {guard} */\n"
    )


# The harness reads raw float32 rows on stdin: binary avoids parsing text, and a
# float32 read back is bit-identical to what Python sent.
_HARNESS = r"""/* edgeops host harness for an emlearn model. Generated; do not edit.
 *
 *   ./model         stdin: float32 rows of N_FEATURES; stdout: one int32 class per row
 *   ./model time N  stdin: float32 rows; runs WARMUP untimed, then N timed single-row
 *                   inferences cycling through the rows; stdout: N int64 durations in ns
 *
 * Exit codes: 0 ok, 2 bad arguments or input, 3 the model returned an error, 4 no memory.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

#define N_FEATURES @N_FEATURES@
#define WARMUP 5

static volatile int32_t edgeops_sink;

static float *edgeops_read_rows(size_t *n_rows)
{
    size_t capacity = 4096, used = 0;
    unsigned char *data = malloc(capacity);
    while (data != NULL) {
        used += fread(data + used, 1, capacity - used, stdin);
        if (used < capacity) {
            break;
        }
        capacity *= 2;
        unsigned char *grown = realloc(data, capacity);
        if (grown == NULL) {
            free(data);
        }
        data = grown;
    }
    if (data == NULL) {
        fprintf(stderr, "out of memory reading the input\n");
        exit(4);
    }
    const size_t row_bytes = sizeof(float) * N_FEATURES;
    if (used % row_bytes != 0) {
        fprintf(stderr, "input is %lu bytes, not a whole number of %lu-byte rows\n",
                (unsigned long)used, (unsigned long)row_bytes);
        exit(2);
    }
    *n_rows = used / row_bytes;
    return (float *)data;
}

static int64_t edgeops_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
}

static int32_t edgeops_predict_row(const float *row, size_t index)
{
    const int32_t out = @NAME@_predict(row, N_FEATURES);
    if (out < 0) {
        fprintf(stderr, "the model returned error %ld on row %lu\n", (long)out,
                (unsigned long)index);
        exit(3);
    }
    return out;
}

int main(int argc, char **argv)
{
    size_t n_rows = 0;
    float *rows = edgeops_read_rows(&n_rows);
    if (argc == 1) {
        for (size_t i = 0; i < n_rows; i++) {
            const int32_t out = edgeops_predict_row(rows + i * N_FEATURES, i);
            fwrite(&out, sizeof out, 1, stdout);
        }
    } else if (argc == 3 && strcmp(argv[1], "time") == 0 && n_rows > 0) {
        const long n = strtol(argv[2], NULL, 10);
        int64_t *times = n > 0 ? malloc(sizeof(int64_t) * (size_t)n) : NULL;
        if (times == NULL) {
            fprintf(stderr, "usage: %s time N (N > 0)\n", argv[0]);
            return 2;
        }
        for (size_t i = 0; i < WARMUP; i++) {
            edgeops_sink = edgeops_predict_row(rows + (i % n_rows) * N_FEATURES, i % n_rows);
        }
        for (size_t i = 0; i < (size_t)n; i++) {
            const float *row = rows + (i % n_rows) * N_FEATURES;
            const int64_t start = edgeops_now_ns();
            edgeops_sink = edgeops_predict_row(row, i % n_rows);
            times[i] = edgeops_now_ns() - start;
        }
        fwrite(times, sizeof(int64_t), (size_t)n, stdout);
        free(times);
    } else {
        fprintf(stderr, "usage: %s [time N] < rows.f32\n", argv[0]);
        return 2;
    }
    free(rows);
    return 0;
}
"""

_C_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror")


def _first_error(stderr: str) -> str:
    """The compiler's first error line, else its first line of output."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error" in line:
            return line
    return lines[0] if lines else "no output"


def latency_summary(raw_ns: bytes) -> dict[str, float]:
    """Median and p95 in milliseconds of the int64 nanosecond timings a C runner printed."""
    ms = np.frombuffer(raw_ns, dtype=np.int64).astype(np.float64) / 1e6
    return {
        "latency_ms_p50": float(np.median(ms)),
        "latency_ms_p95": float(np.quantile(ms, 0.95)),
    }


class EmlearnCRunner:
    """A header from :func:`sklearn_to_emlearn_c`, compiled with gcc and run on the host.

    The build happens in ``workdir`` (a temporary directory, removed by
    :meth:`close`, when not given): ``model.h``, ``main.c`` and the ``model``
    binary, compiled with ``-std=c99 -O2 -Wall -Wextra -Werror``. emlearn's own
    headers are included with ``-isystem``: ``eml_common.h`` and
    ``eml_net_common.h`` define unused static functions and variables, which
    ``-Wextra -Werror`` rejects. The generated model code is held to all the
    flags except ``-Wunused-parameter``, which the header switches off around
    emlearn's code (see :func:`sklearn_to_emlearn_c`). The compiler is
    ``compiler``, else ``$CC``, else ``gcc``.
    """

    runtime = "emlearn-c"

    def __init__(
        self,
        c_code: str,
        name: str,
        n_features: int,
        workdir: str | Path | None = None,
        compiler: str | None = None,
    ) -> None:
        validate_c_name(name)
        if int(n_features) < 1:
            raise InvalidInput(f"n_features must be at least 1, got {n_features}")
        self.name, self.n_features = name, int(n_features)
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="edgeops-emlearn-")
        self.workdir = Path(workdir) if workdir else Path(self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "model.h").write_text(c_code)
        harness = _HARNESS.replace("@N_FEATURES@", str(self.n_features)).replace("@NAME@", name)
        (self.workdir / "main.c").write_text(harness)
        self.binary = self.workdir / "model"
        self._compile(compiler)

    def _compile(self, compiler: str | None) -> None:
        cc = compiler or os.environ.get("CC", "gcc")
        if shutil.which(cc) is None:
            raise ConfigError(f"C compiler {cc!r} not found; install gcc or set CC")
        command = [
            cc,
            *_C_FLAGS,
            "-I",
            str(self.workdir),
            "-isystem",
            str(_emlearn().includedir),
            str(self.workdir / "main.c"),
            "-o",
            str(self.binary),
            "-lm",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            error = InvalidInput(f"C compile of {self.name} failed: {_first_error(done.stderr)}")
            error.compiler_output = done.stderr  # type: ignore[attr-defined]
            raise error

    def _run(self, args: list[str], X: np.ndarray) -> bytes:
        rows = np.ascontiguousarray(X, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.n_features:
            raise InvalidInput(f"expected rows of {self.n_features} features, got {rows.shape}")
        done = subprocess.run(
            [str(self.binary), *args], input=rows.tobytes(), capture_output=True, check=False
        )
        if done.returncode != 0:
            message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise EdgeopsError(f"the compiled {self.name} model failed: {message}")
        return done.stdout

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class indices (positions in ``classes_``) for the rows of ``X``, one process run."""
        out = np.frombuffer(self._run([], X), dtype=np.int32).astype(np.int64)
        if len(out) != len(X):
            raise EdgeopsError(f"the compiled model returned {len(out)} labels for {len(X)} rows")
        return out

    def latency_ms(self, X: np.ndarray, samples: int = 200) -> dict[str, float]:
        """Median and p95 of single-inference latency in C, in milliseconds.

        Same keys and statistics as :func:`edgeops.convert.measure.latency_ms`:
        one timed inference per row of ``X[:samples]`` after five untimed ones,
        each timed in C with ``clock_gettime(CLOCK_MONOTONIC)`` (the clock's own
        cost, tens of nanoseconds, is included).
        """
        rows = np.asarray(X)[: max(1, int(samples))]
        return latency_summary(self._run(["time", str(len(rows))], rows))

    def close(self) -> None:
        """Remove the temporary build directory, if this runner made one."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmlearnCRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
