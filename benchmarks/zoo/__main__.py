"""python -m benchmarks.zoo build [--cache DIR] [--only NAME ...] [--force] [--list]"""

from __future__ import annotations

import argparse
import sys

from edgeplug import EdgeplugError

from .cache import cache_dir, problems, read_manifest
from .entries import ENTRIES
from .registry import get, missing, recipe_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build every zoo entry (or --only some) into the cache")
    build.add_argument("--cache", help="cache folder (default: $EDGEPLUG_ZOO_CACHE, else <repo>/.cache/zoo)")
    build.add_argument("--only", nargs="+", action="extend", metavar="NAME", help=f"of: {', '.join(ENTRIES)}")
    build.add_argument("--force", action="store_true", help="rebuild the chosen entries even when valid")
    build.add_argument("--list", action="store_true", help="show each entry's state and build nothing")
    args = parser.parse_args(argv)
    try:
        chosen = args.only or list(ENTRIES)
        for name in chosen:
            recipe_of(name)
        if args.list:
            show(chosen, args.cache)
            return 0
        for name in chosen:
            entry = get(name, args.cache, force=args.force)
            size = sum(p.stat().st_size for p in entry.files.values()) / 1e6
            print(f"{name}: {entry.folder} ({size:.1f} MB, built in {entry.manifest['build_seconds']}s)")
    except (EdgeplugError, OSError) as err:  # OSError: a cache folder that cannot be written, a full disk
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2
    return 0


def show(chosen: list[str], cache: str | None) -> None:
    root = cache_dir(cache)
    print(f"cache: {root}")
    for name in chosen:
        recipe = ENTRIES[name]
        folder = root / name
        deps = {dep: root / dep for dep in recipe.depends}
        reasons = problems(recipe, folder, deps)
        if not reasons:
            manifest = read_manifest(folder) or {}
            size = sum(f["bytes"] for f in manifest.get("files", {}).values()) / 1e6
            state = f"built ({size:.1f} MB, {manifest.get('build_seconds')}s)"
        else:
            lacking = missing(name)
            state = f"cannot build: {lacking}" if lacking else f"to build: {reasons[0]}"
        print(f"  {name:16} metric={recipe.metric or '-':10} {state}")


if __name__ == "__main__":
    sys.exit(main())
