"""``streamcascade onnx``: export an encoder to ONNX into the cache, and show what is there.

``export`` is run by ``make setup``; it needs torch and the weight package
(``streamcascade[models]``) and writes ``<cache_dir>/onnx/<model>/`` (never committed).
``show`` prints the manifest and checks the sha256 of every file it names.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from streamcascade.errors import ModelFileError
from streamcascade.onnx_exports.manifest import FILE_KINDS, load_manifest, model_specs
from streamcascade.settings import Settings


def _onnx_root(out: Path | None) -> Path:
    return out if out is not None else Path(Settings().cache_dir).expanduser() / "onnx"


_out_option = click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path),
    help="Parent folder of the export (default: <cache_dir>/onnx) [env STREAMCASCADE_CACHE_DIR].")
_model_option = click.option(
    "--model", default="minilm-l6", show_default=True,
    type=click.Choice(sorted(model_specs())), help="Which encoder (onnx_exports/models.json).")


@click.group("onnx")
def onnx() -> None:
    """Transformer encoders exported to ONNX for the cascade's middle stage."""


@onnx.command()
@_model_option
@click.option("--int8/--no-int8", default=True, show_default=True,
              help="Also write an int8 (dynamic quantisation) model.")
@_out_option
@click.option("--opset", default=17, show_default=True, help="ONNX opset.")
def export(model: str, int8: bool, out: Path | None, opset: int) -> None:
    """Export MODEL from its weight package to ONNX, check parity, write the manifest."""
    try:
        # The export imports torch and onnx where it uses them: a missing one shows here too.
        from streamcascade.onnx_exports.export import export_model

        manifest = export_model(model, _onnx_root(out), int8=int8, opset=opset,
                                progress=lambda line: click.echo(line, err=True))
    except ImportError as exc:
        raise click.ClickException(f"the export needs torch and onnx (pip install "
                                   f"'streamcascade[models]'): {exc}") from None
    except ModelFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(manifest.data, indent=2, sort_keys=True))


@onnx.command()
@_model_option
@_out_option
def show(model: str, out: Path | None) -> None:
    """Print MODEL's manifest and check the sha256 of each of its files."""
    try:
        manifest = load_manifest(_onnx_root(out) / model)
        for kind in FILE_KINDS:
            if manifest.has(kind):
                manifest.verified_path(kind)
    except ModelFileError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(manifest.data, indent=2, sort_keys=True))
    click.echo(f"{manifest.directory}: all files match their sha256", err=True)
