"""`edgeplug report OUT_DIR`: render report.html again from report.json (and open it)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import EdgeplugError


@click.command("report")
@click.argument("output_dir", type=click.Path(path_type=Path))
@click.option("--open", "open_it", is_flag=True, help="Open the page in the default browser.")
def report(output_dir: Path, open_it: bool) -> None:
    """Render OUTPUT_DIR/report.html from OUTPUT_DIR/report.json."""
    from . import report_html

    source = output_dir / "report.json" if output_dir.is_dir() else output_dir
    try:
        data = json.loads(source.read_text())
    except FileNotFoundError:
        raise EdgeplugError(f"{source} does not exist: pass the output folder of a run or search") from None
    except (OSError, ValueError) as exc:
        raise EdgeplugError(f"{source} is not a readable report.json: {exc}") from None
    if not isinstance(data, dict) or ("steps" not in data and "search" not in data):
        raise EdgeplugError(f"{source} is not an edgeplug report.json")
    data.setdefault("steps", [])
    page = report_html.write(data, source.with_name("report.html"))
    click.echo(f"wrote {page}")
    if open_it:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())
