"""``edgeops firmware``: microcontroller firmware projects for a model, tested and sized."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import GateFailed
from ._common import JSON_HELP, console, kv_table, print_json, table, workspace

app = typer.Typer(
    help="Microcontroller firmware: generate a project for a model, test it against Python.",
    no_args_is_help=True,
)


@app.command("generate")
def generate(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="NAME@VERSION (or @ALIAS) trained by `edgeops train`.")
    ],
    target: Annotated[
        str, typer.Option("--target", "-t", help="host, cortex-m4 or esp32.")
    ] = "host",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the project.")] = Path(
        "firmware"
    ),
    variant: Annotated[
        str | None,
        typer.Option(
            help="emlearn-loadable, c-emlearn, tflm, c-tflm, tflite-int8 or tflite-f32 "
            "(default: the first of these the version has; tflm comes from "
            "`export: [tflite-int8, tflm]`)."
        ),
    ] = None,
    vectors: Annotated[
        int, typer.Option(min=1, help="Held-out samples to put in test/ (at most).")
    ] = 1000,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    footprint: Annotated[
        bool,
        typer.Option(
            "--footprint/--no-footprint",
            help="cortex-m4: cross-compile, size and record the footprint on the variant.",
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Write a buildable firmware project for a model: the core, the port, the model, its
    feature transforms in C, held-out test vectors; on cortex-m4 also its footprint.

    Example: `edgeops firmware generate wrist@3 --target cortex-m4 --out fw/wrist`
    """
    from ..firmware.project import generate as generate_project
    from .train import _quiet_frameworks, native_stderr_silenced

    ws = workspace(ctx)
    _quiet_frameworks()
    with native_stderr_silenced():
        result = generate_project(
            ws,
            ref,
            target,
            out,
            variant=variant,
            force=force,
            vectors=vectors,
            footprint=footprint,
        )
    if json_out:
        print_json(result.to_dict())
        return
    console.print(
        f"Wrote the {result.target} project for [bold]{result.model}[/] ({result.variant}, "
        f"{result.n_features} features, {result.vectors} test vectors) to {result.out}",
        highlight=False,
    )
    if result.footprint:
        fp = result.footprint
        console.print(
            kv_table(
                f"Footprint on {fp['target']} (recorded on {result.model} {result.variant})",
                {
                    "flash (text + data)": f"{fp['flash_bytes']} B",
                    "RAM (data + bss)": f"{fp['ram_bytes']} B",
                    "TFLM arena": f"{fp['arena_bytes']} B" if fp["arena_bytes"] else "-",
                    "model": f"{fp['model_bytes']} B",
                    "toolchain": fp["toolchain"],
                },
            )
        )
    for note in result.notes:
        console.print(note, highlight=False)
    console.print(f"Test it: edgeops firmware test {result.out}", highlight=False)


def _builds_rows(result: Any) -> list[list[Any]]:
    return [[b["what"], b["status"], b["detail"]] for b in result.builds]


@app.command("test")
def test(
    folder: Annotated[Path, typer.Argument(help="A project from `edgeops firmware generate`.")],
    json_out: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Build a project's test vectors with gcc, run the held-out samples through the C
    transforms and model, and compare with Python; exits 7 on a mismatch.

    Example: `edgeops firmware test fw/wrist`
    """
    from ..firmware.testing import run_vectors

    result = run_vectors(folder)
    if json_out:
        print_json(result.to_dict())
    else:
        console.print(table(f"Builds of {result.project}", ["build", "status", "detail"],
                            _builds_rows(result)))  # fmt: skip
        rows: list[list[Any]] = []
        f = result.features
        if f:
            tol = f["tolerance"]
            rows.append(
                [
                    "features",
                    f"{f['within_tolerance']} of {f['compared']} within |c-py| <= "
                    f"{tol['abs']:g} + {tol['rel']:g}|py| ({f['bit_exact']} bit for bit); "
                    f"max abs error {f['max_abs_error']:.3g}",
                    "pass" if f["passed"] else "FAIL",
                ]
            )
        p = result.predictions
        if p.get("status") == "compared":
            rows.append(
                [
                    "predictions",
                    f"{p['equal_to_reference']} of {p['rows']} equal to the reference "
                    f"({p['reference']}); agreement with the original "
                    f"{p['agreement_with_original']:.4f}, accuracy {p['accuracy']:.4f}",
                    "pass" if p["passed"] else "FAIL",
                ]
            )
        elif p:
            rows.append(["predictions", p.get("detail", ""), p.get("status", "")])
        for e in result.errors[:5]:
            rows.append(["error", e, "FAIL"])
        console.print(
            table(
                f"{result.model} {result.variant} ({result.form}), {result.rows} held-out samples",
                ["check", "result", "verdict"],
                rows,
            )
        )
    if not result.passed:
        reason = (result.errors or ["features or predictions differ from the Python reference"])[0]
        raise GateFailed(f"the firmware of {result.model} does not match Python: {reason}")
    if not json_out:
        console.print(f"The C firmware of {result.model} matches the Python reference")
