"""``bidsfm-atlas``: list, locate, pre-fetch and seed the atlases bidsfm uses."""

from __future__ import annotations

from pathlib import Path

import click

from bidsfm.errors import AtlasNotFoundError

from .base import template_id
from .registry import REGISTRY, available_atlases
from .store import cache_path, fetch_atlas, local_path, seed_cache, seed_folder
from .templateflow import find as tf_find


def status(name: str) -> str:
    """Where a registry atlas would come from, in one line (``bidsfm-atlas list``)."""
    record = REGISTRY[name]
    found = []
    missing = []
    for release in record.releases:
        sources = [local_path(f, name) for f in release.files]
        if all(s is not None for s in sources):
            kind = "bundled" if all(s[1] == "bundled" for s in sources) else "cached"
            found.append(f"{kind}: {sources[0][0]} ({release.template})")
        else:
            missing.append(release)
    if record.templateflow is not None:
        tpls = [t for t in record.templates if tf_find(t, *record.templateflow,
                                                       suffix=record.kind) is not None]
        if tpls:
            found.append(f"TemplateFlow ({', '.join(tpls)})")
    if found:
        return "; ".join(found)
    if missing:
        return (f"not cached (downloads on first use, or `bidsfm-atlas fetch {name}`): "
                f"{cache_path(missing[0].image)}")
    from .base import templateflow_home

    return f"not in TEMPLATEFLOW_HOME={templateflow_home()}"


@click.group(name="bidsfm-atlas", context_settings={"help_option_names": ["-h", "--help"]})
def atlas_cli() -> None:
    """Inspect, pre-fetch and seed the atlases bidsfm uses (offline-first)."""


@atlas_cli.command(name="list")
def list_cmd() -> None:
    """List the atlases the registry knows and where each one would come from."""
    for name in available_atlases():
        click.echo(f"{name}\t{status(name)}")


@atlas_cli.command(name="where")
@click.argument("name")
@click.option("--space", default=None, help="Run template space (prefers atlases in it).")
def where_cmd(name: str, space: str | None) -> None:
    """Resolve NAME and print the atlas image path (downloads once unless BIDSFM_OFFLINE=1)."""
    from .resolve import resolve_atlas

    try:
        atlas = resolve_atlas(name, space=space)
    except AtlasNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(atlas.image))


@atlas_cli.command(name="fetch")
@click.argument("names", nargs=-1)
@click.option("--space", default=None,
              help="Only the releases in this template (default: every release).")
@click.option("--all", "fetch_all", is_flag=True, help="Every atlas bidsfm can download.")
def fetch_cmd(names: tuple[str, ...], space: str | None, fetch_all: bool) -> None:
    """Download atlases into the cache ($BIDSFM_HOME/atlases), for offline compute nodes."""
    if fetch_all:
        names = tuple(n for n, r in REGISTRY.items() if r.releases)
    if not names:
        raise click.UsageError("give atlas names, or --all")
    try:
        for name in names:
            for path in fetch_atlas(name, space=template_id(space)):
                click.echo(str(path))
    except AtlasNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


@atlas_cli.command(name="seed")
@click.argument("name")
@click.argument("files", nargs=-1, required=True,
                type=click.Path(path_type=Path))
def seed_cmd(name: str, files: tuple[Path, ...]) -> None:
    """Verify FILES (or the files of NAME in a folder) by sha256 and copy them into the cache."""
    try:
        for file in files:
            if file.is_dir():
                for dest in seed_folder(name, file):
                    click.echo(str(dest))
            else:
                click.echo(str(seed_cache(name, file)))
    except AtlasNotFoundError as exc:
        raise click.ClickException(str(exc)) from None


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``bidsfm-atlas``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    atlas_cli.main(args=argv, prog_name="bidsfm-atlas")


__all__ = ["atlas_cli", "main", "status"]
