"""``edgeops train`` and ``edgeops quantize``: build models and their device variants."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import GateFailed
from ._common import JSON_HELP, console, print_json, table, workspace


class RichReporter:
    """Prints each step as it finishes, with a progress bar while a model trains."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.quiet = quiet
        self.steps: list[dict[str, Any]] = []
        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=quiet,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def step(self, name: str, detail: str = "", cached: bool = False) -> None:
        self.steps.append({"step": name, "detail": detail, "cached": cached})
        if name in self._tasks:
            self._progress.remove_task(self._tasks.pop(name))
        if not self.quiet:
            note = " [dim](cached: inputs unchanged)[/]" if cached else ""
            self._progress.console.print(f"[green]✓[/] {name:<18} {detail}{note}")

    def progress(self, name: str, done: int, total: int) -> None:
        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(f"  {name}", total=total)
        self._progress.update(self._tasks[name], completed=done, total=total)


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Hide what TensorFlow's and onnxruntime's C++ code prints on file descriptor 2.

    The converters print progress lines there that Python cannot switch off; our own
    errors are exceptions, reported after the descriptor is restored.
    """
    if not enabled or os.environ.get("EDGEOPS_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def variants_summary(
    title: str, original: dict[str, Any], variants: dict[str, dict[str, Any]]
) -> Any:
    """The original and each variant: accuracy, agreement, bytes, median latency."""
    rows = [
        ["original", original["accuracy"], "", original["size_bytes"], original["latency_ms_p50"]]
    ]
    rows += [
        [name, m["accuracy"], m["agreement"], m["size_bytes"], m["latency_ms_p50"]]
        for name, m in variants.items()
    ]
    return table(title, ["variant", "accuracy", "agreement", "bytes", "p50 ms"], rows)


def _quiet_frameworks() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "tf2onnx", "absl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ModuleNotFoundError:
        pass


def train(
    ctx: typer.Context,
    pipeline: Annotated[Path, typer.Argument(help="Pipeline file (YAML).")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Run a training pipeline: data → features → split → train → evaluate → export → gates →
    register. Unchanged steps are reused from cache.

    Example: `edgeops train pipelines/wrist.yaml`
    """
    from ..pipeline import load_pipeline
    from ..pipeline.run import run_pipeline

    spec = load_pipeline(pipeline)
    ws = workspace(ctx)
    _quiet_frameworks()
    with RichReporter(quiet=json_out) as rep, native_stderr_silenced():
        result = run_pipeline(ws, spec, rep, git_folder=pipeline.resolve().parent)
    if json_out:
        print_json(
            {
                "run": result.run_id,
                "status": result.status,
                "model": result.model_ref,
                "metrics": result.metrics,
                "variants": result.variants,
                "gate_failures": result.gate_failures,
                "steps": rep.steps,
            }
        )
    else:
        console.print(variants_summary(f"Run {result.run_id}", result.metrics, result.variants))
    if result.status == "gated":
        raise GateFailed(
            f"run {result.run_id} did not pass its gates, nothing registered: "
            + "; ".join(result.gate_failures)
        )
    if not json_out:
        verb = "Registered" if result.status == "registered" else "Unchanged, already"
        console.print(f"{verb} [bold]{result.model_ref}[/]")


def quantize(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME@VERSION trained by `edgeops train`.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="tflite-f32, tflite-int8, tflm, c-tflm, onnx-f32, onnx-int8 or c-emlearn.",
        ),
    ],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Convert a registered version to a device variant, measured on its held-out split.

    Example: `edgeops quantize wrist@3 --format tflite-int8`
    """
    from ..pipeline.quantize import quantize_version

    ws = workspace(ctx)
    _quiet_frameworks()
    with RichReporter(quiet=json_out) as rep, native_stderr_silenced():
        v = quantize_version(ws, ref, fmt, rep)
    if json_out:
        print_json(
            {
                "variant": v.name,
                "format": v.format,
                "size": v.size,
                "sha256": v.sha256,
                "metrics": v.metrics,
            }
        )
    else:
        console.print(
            f"Added variant [bold]{v.name}[/] to {ref}: {v.size} bytes, accuracy "
            f"{v.metrics['accuracy']:.4f}, agreement {v.metrics['agreement']:.4f}"
        )


def check(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="NAME@VERSION (or @ALIAS) trained by `edgeops train`.")
    ],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Run a version's tests for CI: every variant in its runtime on the held-out split,
    against the pipeline's gates; exits 7 when a check fails.

    Example: `edgeops check wrist@production`
    """
    from ..pipeline.check import check_version

    ws = workspace(ctx)
    _quiet_frameworks()
    with RichReporter(quiet=json_out) as rep, native_stderr_silenced():
        result = check_version(ws, ref, rep)
    if json_out:
        print_json(
            {
                "ref": result.ref,
                "passed": result.passed,
                "checks": [c.to_dict() for c in result.checks],
            }
        )
    else:
        console.print(
            table(
                f"Checks of {result.ref}",
                ["subject", "check", "value", "limit", "result"],
                [
                    [
                        c.subject,
                        c.name,
                        c.value,
                        f"{c.op} {c.limit:g}",
                        "pass" if c.passed else "FAIL",
                    ]
                    for c in result.checks
                ],
            )
        )
    failed = [c for c in result.checks if not c.passed]
    if failed:
        raise GateFailed(
            f"{len(failed)} of {len(result.checks)} checks of {result.ref} failed: "
            + "; ".join(
                f"{c.subject} {c.name} {c.value:.4g} (limit {c.op} {c.limit:g})" for c in failed[:3]
            )
        )
    if not json_out:
        console.print(f"All {len(result.checks)} checks of {result.ref} passed")
