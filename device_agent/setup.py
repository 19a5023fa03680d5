"""Build of the optional C extensions (the statistics window's accumulator and the
agent's one-row prediction path). Everything else is in pyproject.toml.

Both are optional: without a C compiler (or Python's headers) the build warns and
installs the pure-Python package, which computes the same results more slowly
(``EDGEOPS_PURE_PYTHON=1`` forces that code at run time).
"""

import sys

from setuptools import Extension, setup

# Same floating-point results on every compiler: no fused multiply-adds.
ARGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]

setup(
    ext_modules=[
        Extension(
            "edgeops_protocol._faststats",
            ["src/edgeops_protocol/_faststats.c"],
            depends=["src/edgeops_protocol/_faststats.h", "src/edgeops_protocol/_npmirror.h"],
            extra_compile_args=ARGS,
            optional=True,
        ),
        Extension(
            "edgeops_agent._fastpath",
            ["src/edgeops_agent/_fastpath.c"],
            include_dirs=["src/edgeops_protocol"],
            depends=["src/edgeops_protocol/_faststats.h", "src/edgeops_protocol/_npmirror.h"],
            extra_compile_args=ARGS,
            optional=True,
        ),
    ],
)
