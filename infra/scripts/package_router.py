#!/usr/bin/env python3
"""Build the router's Cloud Functions source zip: main.py, requirements.txt and parascribe vendored.

Cloud Functions builds from a flat source tree, so the shared package is copied
in beside ``main.py`` rather than installed from the repository. The zip is
deterministic (sorted entries, fixed timestamps): the same sources give the same
bytes, so Terraform's content-addressed object name changes only when the code does.

    python infra/scripts/package_router.py            # writes build/router.zip
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_SKIP_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", "tests"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
_SKIP_NAMES = {"Dockerfile", "Dockerfile.dockerignore", "requirements.txt", ".dockerignore"}
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _canonical(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _lines(path: Path) -> list[str]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def requirements(repo: Path = REPO) -> str:
    """requirements.txt for the function: the router's own requirements, then parascribe's dependencies.

    The first mention of a package wins. A package the router does not pin is pinned
    to its version in the repository's ``constraints.txt``, so the cloud build installs
    what the tests ran against.
    """
    pyproject = tomllib.loads((repo / "shared" / "pyproject.toml").read_text())
    deps: list[str] = list(pyproject["project"]["dependencies"])
    wanted = _lines(repo / "services" / "router" / "requirements.txt") + deps
    pins = {_canonical(line): line for line in _lines(repo / "constraints.txt") if "==" in line}
    chosen: dict[str, str] = {}
    for req in wanted:
        name = _canonical(req)
        if name not in chosen:
            chosen[name] = req if "==" in req else pins.get(name, req)
    return "".join(f"{line}\n" for line in chosen.values())


def _sources(repo: Path) -> dict[str, Path]:
    """Archive name -> file, for the router folder and the vendored package."""
    router = repo / "services" / "router"
    if not (router / "main.py").is_file():
        raise FileNotFoundError(f"{router / 'main.py'} is missing: the router's entry point (handle_upload) lives there")
    files: dict[str, Path] = {}
    roots = ((router, ""), (repo / "shared" / "parascribe", "parascribe/"))
    for root, prefix in roots:
        for path in root.rglob("*"):
            rel = path.relative_to(root)
            if not path.is_file() or _SKIP_PARTS.intersection(rel.parts):
                continue
            if path.suffix in _SKIP_SUFFIXES or path.name in _SKIP_NAMES:
                continue
            files[prefix + rel.as_posix()] = path
    return files


def build(out: Path, repo: Path = REPO) -> Path:
    """Write the deterministic source zip to ``out`` and return it.

    Raises:
        FileNotFoundError: ``services/router/main.py`` does not exist yet.
    """
    entries = {name: path.read_bytes() for name, path in _sources(repo).items()}
    entries["requirements.txt"] = requirements(repo).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name])
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the router's Cloud Functions source zip.")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "router.zip")
    args = parser.parse_args(argv)
    try:
        path = build(args.out)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
