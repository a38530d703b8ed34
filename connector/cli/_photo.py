"""``mvsync photo convert``: bulk-convert photo files to AD thumbnails or Exchange photos.

Like the classic photo editors: files or folders in, ``<name> <size>x<size>.jpg`` out, one result
line per file (with ``--json`` one list of them: a script reads one document). A bad file is
reported and skipped; the others are still written, and the exit code (3, completed with errors)
tells a script that something needs a look.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from connector.cli._common import (
    EXIT_COMPLETED_ERRORS,
    EXIT_CONFIG,
    EXIT_SUCCESS,
    JsonOption,
    console,
    fail,
    print_json,
)
from connector.files import atomic_write
from connector.imaging import (
    AD_THUMBNAIL_MAX_BYTES,
    ImageError,
    InvalidSpecError,
    PhotoSpec,
    normalize,
)

__all__ = ["register"]

photo_app = typer.Typer(help="Photo tools: convert files to thumbnails.", no_args_is_help=True)

#: Show a progress bar from this many files on (fewer finish before a bar would be useful).
_PROGRESS_FROM = 10


@dataclass(slots=True)
class FileResult:
    """The outcome for one input file (one line of output)."""

    input: Path
    output: Path | None = None
    error: str = ""
    detail: str = ""
    width: int = 0
    height: int = 0
    size: int = 0
    quality: int = 0
    crop: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    def as_json(self) -> dict[str, Any]:
        common: dict[str, Any] = {"input": str(self.input), "status": "ok" if self.ok else "error"}
        if not self.ok:
            return {**common, "error": self.error, "detail": self.detail}
        return {
            **common,
            "output": str(self.output),
            "width": self.width,
            "height": self.height,
            "bytes": self.size,
            "quality": self.quality,
            "crop": self.crop,
            "notes": self.notes,
        }


def register(app: typer.Typer) -> None:
    """Add ``mvsync photo ...`` to ``app``."""
    app.add_typer(photo_app, name="photo")


@photo_app.command("convert")
def convert_command(
    inputs: Annotated[list[Path], typer.Argument(help="Photo files, or folders of photos.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the converted JPEGs (created if needed).")],
    size: Annotated[int, typer.Option(help="Square output size in pixels (96 for AD, 648 for Exchange).")] = 96,
    max_bytes: Annotated[
        str | None,
        typer.Option(
            help="Largest output, e.g. 10240 or '10 KB' (AD allows at most 102,400). "
            "Default: 10240 up to 96x96 (Microsoft's guidance for thumbnailPhoto), 102400 above.",
            show_default=False,
        ),
    ] = None,
    crop: Annotated[str, typer.Option(help="center, or face (needs the \\[face] extra).")] = "center",
    margin: Annotated[int, typer.Option(help="Face crop: space around the face, percent of its size (1-50).")] = 40,
    recursive: Annotated[bool, typer.Option(help="Also convert photos in sub-folders of folder inputs.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Convert photos to square JPEGs named '<name> <size>x<size>.jpg'."""
    if max_bytes is None:
        # a 648x648 photo does not fit AD's 10 KB thumbnail guidance: larger sizes get AD's hard limit
        max_bytes = "10240" if size <= 96 else str(AD_THUMBNAIL_MAX_BYTES)
    try:
        spec = PhotoSpec.from_params({"size": size, "max_bytes": max_bytes, "crop": crop, "margin": margin})
    except InvalidSpecError as exc:
        raise fail(f"--{exc.key.replace('_', '-')}: {exc.message}", EXIT_CONFIG) from None
    if spec.max_bytes > AD_THUMBNAIL_MAX_BYTES:
        raise fail(f"--max-bytes: {spec.max_bytes:,} is over AD's limit of {AD_THUMBNAIL_MAX_BYTES:,}", EXIT_CONFIG)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"--out: cannot create {out}: {exc.strerror}", EXIT_CONFIG) from None

    files = list(_expand(inputs, recursive))
    results = convert_files(files, out, spec, json_out=json_out)
    failed = sum(not r.ok for r in results)
    if json_out:  # one document, also when there was nothing to convert: []
        print_json([r.as_json() for r in results])
    else:
        style = "red" if failed else "green"
        console.print(f"[{style}]{len(results) - failed} converted, {failed} failed[/]", highlight=False)
    raise typer.Exit(EXIT_COMPLETED_ERRORS if failed else EXIT_SUCCESS)


def convert_files(files: list[Path], out: Path, spec: PhotoSpec, *, json_out: bool = False) -> list[FileResult]:
    """Convert each file, printing its result line as it completes (not with ``json_out``: the caller
    prints them all as one document); returns all results."""
    results: list[FileResult] = []
    written: dict[Path, Path] = {}
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=json_out or len(files) < _PROGRESS_FROM,
    )
    with progress:
        task = progress.add_task("converting", total=len(files))
        for path in files:
            result = convert_file(path, out, spec, written)
            results.append(result)
            if not json_out:
                progress.console.print(_line(result), highlight=False, soft_wrap=True)
            progress.advance(task)
    return results


def convert_file(path: Path, out: Path, spec: PhotoSpec, written: dict[Path, Path]) -> FileResult:
    """Convert one file into ``out``; never raises for a bad file. ``written`` maps outputs to inputs."""
    result = FileResult(path)
    target = out / f"{path.stem} {spec.size}x{spec.size}.jpg"
    if target in written:
        result.error, result.detail = (
            "duplicate-output",
            f"{target.name} was already written from {written[target]}",
        )
        return result
    try:
        if not path.is_file():
            result.error, result.detail = (
                "not-a-file",
                "no such file" if not path.exists() else "not a regular file",
            )
            return result
        if path.stat().st_size > spec.limits.max_input_bytes:  # do not read a huge file just to refuse it
            result.error = "image-input-too-large"
            result.detail = f"{path.stat().st_size:,} bytes is over the limit of {spec.limits.max_input_bytes:,}"
            return result
        photo = normalize(path.read_bytes(), spec)
        atomic_write(target, photo.data)
    except ImageError as exc:
        result.error, result.detail = exc.name, exc.detail
        return result
    except OSError as exc:
        result.error, result.detail = "io-error", f"{exc.strerror or exc}"
        return result
    except Exception as exc:  # anything a decoder does on hostile input is this file's error, not the run's
        result.error, result.detail = "image-undecodable", f"{type(exc).__name__}: {exc}"
        return result
    written[target] = path
    result.output, result.width, result.height = target, photo.width, photo.height
    result.size, result.quality, result.crop, result.notes = (
        len(photo.data),
        photo.quality,
        photo.crop,
        list(photo.notes),
    )
    return result


def _expand(inputs: list[Path], recursive: bool) -> Iterator[Path]:
    """Files as given; every visible file of a folder, in name order, whatever its extension.

    Each of them gets a result line: a ``.psd`` or ``.txt`` in the folder is refused by name
    ("Photoshop (PSD) files are not supported") rather than skipped in silence, and a format on
    the accepted list (``connector.imaging.PHOTO_FORMATS``, WebP included) is converted.
    Hidden files (``.DS_Store``, the temporaries of ``atomic_write``) are not photos anyone put there.
    """
    for item in inputs:
        if not item.is_dir():
            yield item
            continue
        for root, dirs, names in os.walk(item):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
            yield from (Path(root) / name for name in sorted(names) if not name.startswith("."))


def _line(result: FileResult) -> str:
    name = escape(str(result.input))
    if not result.ok:
        return f"[red]✗[/] {name}: [red]{result.error}[/]: {escape(result.detail)}"
    assert result.output is not None
    text = (
        f"[green]✓[/] {name} → {escape(result.output.name)} "
        f"({result.width}x{result.height}, {result.size:,} bytes, q{result.quality}, {result.crop} crop)"
    )
    return text + "".join(f"\n    [yellow]note:[/] {escape(n)}" for n in result.notes)
