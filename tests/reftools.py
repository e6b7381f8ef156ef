"""llama.cpp's own tools as references: its source from the llama-cpp-python sdist, its binaries built once.

The sdist of the llama-cpp-python version that is installed vendors llama.cpp's full source: its
converter (convert_hf_to_gguf.py, gguf-py) and the tools we compare against (llama-quantize,
llama-imatrix, llama-perplexity, llama-server). Both are kept in a per-machine cache outside the clone
(`MARCO_GGUF_CACHE`, default ~/.cache/marco-gguf) so CI and every test run build them only once;
a file lock keeps concurrent runs from building the same tree twice. The sdist comes from the
package registry through pip (the one download these tests may make, as `.ci/run` did before).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-server")
# CMake options for a CPU-only build of the tools alone; GGML_NATIVE matches llama-cpp-python's default build.
# llama-server (benchmarks/serve_slots.py's reference) without its web UI: no npm, no download of prebuilt assets
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_OPENMP=OFF",
)


def llama_cpp_python_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def cache_dir() -> Path:
    root = Path(os.environ.get("MARCO_GGUF_CACHE") or Path.home() / ".cache" / "marco-gguf")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def _locked(name: str) -> Iterator[None]:
    with open(cache_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sdist(version: str) -> Path:
    tarball = cache_dir() / f"llama_cpp_python-{version}.tar.gz"
    if not tarball.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                str(cache_dir()),
            ],
            check=True,
        )
    return tarball


def source_tree() -> Path:
    """llama.cpp's source as vendored by the installed llama-cpp-python's sdist (unpacked once)."""
    version = llama_cpp_python_version()
    root = cache_dir() / f"llama_cpp_python-{version}"
    src = root / "vendor" / "llama.cpp"
    with _locked(f"src-{version}"):
        if not (src / ".unpacked").is_file():
            with tarfile.open(_sdist(version)) as tar:
                tar.extractall(cache_dir(), filter="tar")
            (src / ".unpacked").touch()
    return src


def tool(name: str) -> Path:
    """Path to one of llama.cpp's tools (TOOLS), built from the vendored source on first use."""
    if name not in TOOLS:
        raise ValueError(f"{name} is not one of {TOOLS}")
    src = source_tree()
    build = src.parent.parent / "build-tools"
    binary = build / "bin" / name
    with _locked(f"build-{src.parent.parent.name}"):
        if not all((build / "bin" / t).is_file() for t in TOOLS):
            subprocess.run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_OPTIONS], check=True, capture_output=True)
            subprocess.run(
                ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
                check=True,
                capture_output=True,
            )
    return binary


def weight_buffers() -> list[str]:
    """The tools' flag for the weight buffers marco-gguf's loader uses: plain CPU buffers (`--no-repack`) where
    llama.cpp's AMX kernels are built in and crash, else llama.cpp's default (repacked for its CPU kernels,
    e.g. Q4_K on AVX2). The two layouts multiply in a different order, so a reference run on the other one
    differs in the last digits."""
    from marco_gguf.llama.loader import amx_kernels_built

    return ["--no-repack"] if amx_kernels_built() else []


if __name__ == "__main__":  # `python tests/reftools.py` builds everything ahead of a test run
    print(source_tree())
    for t in TOOLS:
        print(tool(t))
