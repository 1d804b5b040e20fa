"""Prepare the GPU validation kit here: the wheels a bare GPU machine lacks, pinned, in ``bench/gpu/wheels``.

Run: ``.venv/bin/python bench/gpu/prepare.py [--check]``. Prints one JSON object on stdout.

The GPU machine has no network and its image already holds Python 3.12, torch 2.11 with CUDA 13 and
most of the scientific stack (``bench/gpu/image.txt``). What it lacks for NeMo's ASR inference path and
for this project's worker batch path is pinned in ``bench/gpu/requirements.txt``; this script

1. downloads each pin as a CPython 3.12 manylinux x86-64 wheel (``pip download --only-binary=:all:
   --no-deps``: never torch or CUDA, which the machine has), builds the few that the registry has only as
   source (pure Python, marked ``sdist only`` in the requirements), and builds this project's wheel from
   ``shared/``;
2. removes any other file from the folder, so one version of each package travels;
3. proves every pin resolves from the folder alone for CPython 3.12 (``pip install --dry-run --no-index
   --no-deps --only-binary=:all: --python-version 3.12 ...``) and reports the total size, which must stay
   under ``--max-mb`` (the device tool carries at most 64 MiB, the working tree included).

``--check`` then proves the set installs into a clean environment: a fresh virtualenv (``--check-python``,
this interpreter by default), a torch (``--check-torch``: the CPU wheel on this machine's disk by default), the
image's packages that the pins depend on (at the image's versions, or the newest below them), then
``pip install --no-index --no-deps --find-links <wheels> -r requirements.txt`` (the pins fetched for that
interpreter when it is not 3.12), ``import nemo.collections.asr`` and this kit's own quick worker check.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
IMAGE = HERE / "image.txt"
WHEELS = HERE / "wheels"
PROJECT = "parascribe"
FORBIDDEN = re.compile(r"^(torch|torchaudio|torchvision|triton|nvidia-.*|cuda-.*|cupy.*|jax.*)$")
"""Names the kit must never carry: the machine's own accelerator stack."""
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]
LOCAL_TORCH = "torch==2.13.0"
"""The CPU torch wheel on this machine's disk: the closest to the GPU machine's 2.11 that installs here
(the registry's torch 2.11 for Linux is the CUDA build, several GB with its CUDA packages)."""
CHECK_TIMEOUT_S = 1800


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = REQUIREMENTS) -> dict[str, str]:
    """``{normalized name: version}`` of a requirements file that pins every line exactly.

    Raises:
        ValueError: a line is not ``name==version``, a name repeats, or a name is the machine's own stack.
    """
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if m is None:
            raise ValueError(f"{path.name}:{n}: not an exact pin: {line!r}")
        name = normalize(m.group(1))
        if name in pins:
            raise ValueError(f"{path.name}:{n}: {name} pinned twice")
        if FORBIDDEN.match(name):
            raise ValueError(f"{path.name}:{n}: {name} is the GPU machine's own; the kit must not carry it")
        pins[name] = m.group(2)
    return pins


def source_only(path: Path = REQUIREMENTS) -> set[str]:
    """Pins whose line is marked ``sdist only``: built into a wheel here."""
    names = set()
    for raw in path.read_text().splitlines():
        if "sdist only" in raw and "==" in raw:
            names.add(normalize(raw.split("==", 1)[0].strip()))
    return names


def read_image(path: Path = IMAGE) -> dict[str, str | None]:
    """The GPU image's packages: ``{normalized name: version or None}``."""
    out: dict[str, str | None] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[normalize(name)] = version or None
    return out


def wheel_name(filename: str) -> str:
    """The normalized distribution name of a wheel file."""
    return normalize(filename.split("-", 1)[0])


def pip(*args: str, python: str = sys.executable, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    cmd = [python, "-m", "pip", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def target_args(python_version: str) -> list[str]:
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for p in PLATFORMS:
        args += ["--platform", p]
    return args


def download(pins: dict[str, str], built: set[str], dest: Path, python_version: str) -> None:
    """Fetch every pin that is not built here as a wheel for ``python_version``, into ``dest``."""
    specs = [f"{n}=={v}" for n, v in pins.items() if n not in built and n != PROJECT]
    pip("download", "--no-deps", "-q", *target_args(python_version), "-d", str(dest), *specs)


def build(pins: dict[str, str], names: set[str], dest: Path) -> None:
    """Build the source-only pins (pure Python) and this project's wheel into ``dest``."""
    for name in sorted(names):
        pip("wheel", "--no-deps", "-q", "-w", str(dest), f"{name}=={pins[name]}")
        made = [f for f in dest.glob("*.whl") if wheel_name(f.name) == name]
        if not made or not all(f.name.endswith("-none-any.whl") for f in made):
            raise RuntimeError(f"{name} did not build as a pure-Python wheel: {[f.name for f in made]}")
    if PROJECT in pins:
        with tempfile.TemporaryDirectory() as tmp:  # build outside shared/, so no build/ is left there
            src = Path(tmp) / "src"
            shutil.copytree(ROOT / "shared", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "build"))
            pip("wheel", "--no-deps", "-q", "--no-build-isolation", "-w", str(dest), str(src))


def prune(dest: Path, pins: dict[str, str]) -> list[str]:
    """Remove every file that is not the pinned version of a pinned package; the names removed."""
    removed = []
    for f in sorted(dest.iterdir()):
        name = wheel_name(f.name)
        version = f.name.split("-")[1] if f.name.endswith(".whl") and f.name.count("-") >= 2 else None
        if name not in pins or version is None or normalize(version) != normalize(pins[name]):
            f.unlink() if f.is_file() else shutil.rmtree(f)
            removed.append(f.name)
    return removed


def verify(dest: Path, python_version: str) -> int:
    """Every pin resolves from ``dest`` alone for CPython ``python_version``; returns how many would install."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "--dry-run", "--no-index", "--no-deps", "--ignore-installed", "--find-links", str(dest),
            *target_args(python_version), "--target", str(Path(tmp) / "t"), "--report", str(report), "-q",
            "-r", str(REQUIREMENTS))
        return len(json.loads(report.read_text())["install"])


def prepare(dest: Path, python_version: str, max_mb: float) -> dict[str, object]:
    pins = read_pins()
    built = source_only()
    dest.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    download(pins, built, dest, python_version)
    build(pins, built, dest)
    removed = prune(dest, pins)
    missing = sorted(set(pins) - {wheel_name(f.name) for f in dest.glob("*.whl")})
    if missing:
        raise RuntimeError(f"no wheel for {missing}")
    installable = verify(dest, python_version)
    files = sorted(dest.glob("*.whl"), key=lambda f: -f.stat().st_size)
    total = sum(f.stat().st_size for f in files)
    result: dict[str, object] = {
        "wheels_dir": str(dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest),
        "python_version": python_version,
        "pins": len(pins),
        "wheels": len(files),
        "installable_for_cp" + python_version.replace(".", ""): installable,
        "built_here": sorted(built | {PROJECT}),
        "removed_stale": removed,
        "total_bytes": total,
        "total_mb": round(total / 1e6, 1),
        "total_mib": round(total / 2**20, 1),
        "largest": [[f.name, round(f.stat().st_size / 1e6, 1)] for f in files[:6]],
        "seconds": round(time.perf_counter() - start, 1),
    }
    if total / 1e6 > max_mb:
        raise RuntimeError(f"the wheels take {total / 1e6:.1f} MB, over --max-mb {max_mb}: {result}")
    return result


def find_python312() -> str | None:
    """A Python 3.12 that runs (a pyenv shim for a version that is not installed does not)."""
    for candidate in ("python3.12", "/usr/bin/python3.12", "/usr/local/bin/python3.12",
                      *sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))):
        found = shutil.which(candidate)
        if found and subprocess.run([found, "-c", "import venv"], capture_output=True).returncode == 0:
            return found
    return None


def image_deps(wheels: Path, image: dict[str, str | None]) -> list[str]:
    """The image's packages that the carried wheels require (their own Requires-Dist), as pip specs."""
    import zipfile

    needed: set[str] = set()
    for whl in wheels.glob("*.whl"):
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode().splitlines():
                if line.startswith("Requires-Dist:") and "extra ==" not in line:
                    name = normalize(re.split(r"[ ;<>=!~(\[]", line.split(":", 1)[1].strip(), maxsplit=1)[0])
                    if name in image and not FORBIDDEN.match(name):
                        needed.add(name)
    # NeMo's ASR path imports these without declaring them in its core requirements.
    needed |= {"scipy", "numba", "pandas", "sentencepiece", "torchmetrics", "transformers", "pytorch-lightning",
               "lightning-utilities", "onnxruntime", "einops", "jiwer", "sacrebleu"} & set(image)
    # The image's version, or the newest the registry has below it (the image can be newer than the registry).
    return sorted(f"{n}<={image[n]}" if image[n] else n for n in needed)


def check(dest: Path, workdir: Path, python: str, torch_spec: str) -> dict[str, object]:
    """Install the kit into a clean virtualenv that stands in for the GPU machine, then import and run it."""
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    env = workdir / "venv"
    if env.exists():
        shutil.rmtree(env)
    start = time.perf_counter()
    subprocess.run([python, "-m", "venv", str(env)], check=True)
    py = str(env / "bin" / "python")
    image = read_image()
    base = [torch_spec, *image_deps(dest, image)]
    pip("install", "-q", *base, python=py, timeout=CHECK_TIMEOUT_S)
    base_s = time.perf_counter() - start
    wheels = dest
    if version != "3.12":  # the kit's compiled wheels are for 3.12: fetch the same pins for this interpreter
        wheels = workdir / f"wheels-cp{version.replace('.', '')}"
        if wheels.exists():
            shutil.rmtree(wheels)
        shutil.copytree(dest, wheels, ignore=lambda d, names: [n for n in names if "-cp3" in n or "abi3" in n])
        pins = read_pins()
        built = source_only() | {PROJECT}
        download({n: v for n, v in pins.items() if n not in built}, set(), wheels, version)
    start = time.perf_counter()
    pip("install", "-q", "--no-index", "--no-deps", "--find-links", str(wheels), "-r", str(REQUIREMENTS),
        python=py, timeout=CHECK_TIMEOUT_S)
    install_s = time.perf_counter() - start
    probe = ("import time; t = time.perf_counter(); import nemo.collections.asr, torch, parascribe.asr.batch, "
             "parascribe.engines.parakeet.runner; print(round(time.perf_counter() - t, 1), torch.__version__)")
    done = subprocess.run([py, "-c", probe], capture_output=True, text=True, cwd=workdir, timeout=600)
    result: dict[str, object] = {
        "python": version,
        "python_312_here": find_python312(),
        "torch_in_clean_env": subprocess.run([py, "-c", "import torch; print(torch.__version__)"],
                                             capture_output=True, text=True).stdout.strip(),
        "image_packages_installed_first": len(base) - 1,
        "base_install_seconds": round(base_s, 1),
        "kit_install_seconds": round(install_s, 1),
        "import_ok": done.returncode == 0,
        "import": (done.stdout.strip() or done.stderr.strip()[-1500:]),
        "pip_check": subprocess.run([py, "-m", "pip", "check"], capture_output=True, text=True).stdout[-2000:],
    }
    if done.returncode == 0:
        out = workdir / "check.json"
        run = subprocess.run([py, str(HERE / "run.py"), "--device", "cpu", "--quick", "--only", "env,matmul,worker",
                              "--out", str(out)], capture_output=True, text=True, cwd=workdir, timeout=900)
        report = json.loads(out.read_text()) if out.exists() else {}
        result["run_ok"] = run.returncode == 0
        result["run_modes"] = {k: v.get("status") for k, v in report.get("modes", {}).items()}
        result["run_errors"] = {k: v.get("error") for k, v in report.get("modes", {}).items() if v.get("error")}
        if run.returncode != 0:
            result["run_stderr"] = run.stderr[-2000:]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, default=WHEELS)
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    parser.add_argument("--max-mb", type=float, default=60.0)
    parser.add_argument("--check", action="store_true", help="then install into a clean virtualenv and import")
    parser.add_argument("--check-dir", type=Path, default=Path(tempfile.gettempdir()) / "parascribe-gpu-kit-check")
    parser.add_argument("--check-python", default=sys.executable,
                        help="the clean venv's interpreter (default: this one; the GPU machine runs 3.12)")
    parser.add_argument("--check-torch", default=LOCAL_TORCH,
                        help="the torch to put in it first (default: the CPU wheel on this machine's disk; "
                             "torch==2.11.0 from the registry is the GPU machine's own CUDA build, several GB)")
    args = parser.parse_args(argv)
    result = prepare(args.dest.resolve(), args.python_version, args.max_mb)
    if args.check:
        args.check_dir.mkdir(parents=True, exist_ok=True)
        result["clean_env"] = check(args.dest.resolve(), args.check_dir, args.check_python, args.check_torch)
    print(json.dumps(result, indent=2))
    ok = not args.check or (result["clean_env"].get("import_ok") and result["clean_env"].get("run_ok"))  # type: ignore[union-attr]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
