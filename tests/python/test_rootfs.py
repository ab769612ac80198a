"""The container images' root filesystems (scripts/rootfs.sh, docs/container.md).

The images are ``FROM scratch`` plus what scripts/rootfs.sh puts in a folder, so these tests
build that folder from the debug install tree (target/debug-dist, which ``make test-build``
lays out), hold it to the size limits (slim <= 150 MB, full <= 1.5 GB) and run the server out
of it with nothing from this machine: the rootfs's own dynamic loader, started by hand with
``--library-path`` naming only the rootfs's library folders, and ``/proc/<pid>/maps`` checked
to hold no shared object from outside it. For the python backend ``PYTHONHOME`` points at the
rootfs's Python, and a probe model reports where its modules came from.

Run by the loader, the server's executable is the loader, so a python model cannot be started
in its own process (the server re-executes itself for that); those models run in-process
(``ferrum.isolation: none``) there. Where the tests run as root, the full rootfs is also run
as the image runs it: chroot (with its own /proc, in a private mount namespace), as the
nonroot user, python models isolated as by default, and nothing but /tmp written.

The release tree dist/ (``make build``) is measured too when it is there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
import tritonclient.http as httpclient

from ferrum_harness import REPO_ROOT, FerrumServer, ServerError, start_server

ROOTFS_SH = REPO_ROOT / "scripts" / "rootfs.sh"
DEBUG_TREE = REPO_ROOT / "target" / "debug-dist"
RELEASE_TREE = REPO_ROOT / "dist"
MODELS = REPO_ROOT / "model_repository"
# The images' limits, uncompressed, in bytes (MB = 10^6 bytes, as docker shows sizes).
LIMITS = {"slim": 150_000_000, "full": 1_500_000_000}
NONROOT = 65532
TIMEOUT = 60.0
# The backends only a GPU machine builds; never in an image.
GPU_BACKENDS = {"tensorrt"}

PROBE_CONFIG = """
name: "probe"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "INFO" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

# Reports where the interpreter, its standard library and numpy come from, and uses the
# standard library's native modules that link system libraries (OpenSSL, libffi, zlib, ...).
PROBE_MODEL = '''
import bz2, ctypes, decimal, hashlib, json, lzma, os, ssl, sys, zlib

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        info = {
            "prefix": sys.prefix,
            "os": os.__file__,
            "ssl": ssl.__file__,
            "numpy": np.__file__,
            "openssl": ssl.OPENSSL_VERSION,
            "sha256": hashlib.sha256(b"ferrum").hexdigest(),
            "zlib": zlib.decompress(zlib.compress(b"ferrum")).decode(),
            "lzma": lzma.decompress(lzma.compress(b"ferrum")).decode(),
            "bz2": bz2.decompress(bz2.compress(b"ferrum")).decode(),
            "decimal": str(decimal.Decimal(1) / 8),
            "ctypes": ctypes.sizeof(ctypes.c_int64),
            "uid": os.getuid(),
            "sum": int(np.arange(10).sum()),
        }
        out = np.array([json.dumps(info).encode()], dtype=np.object_)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("INFO", out)])
            for _ in requests
        ]
'''

IN_PROCESS = '\nparameters [ { key: "ferrum.isolation" value: { string_value: "none" } } ]\n'


# ------------------------------------------------------------------------------- helpers


def tree_size(root: Path) -> int:
    """Bytes in a folder as ``du -sb`` counts them: every entry's apparent size, the folders'
    own included, a file with several links once."""
    total = root.lstat().st_size
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            info = os.lstat(os.path.join(dirpath, name))
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += info.st_size
    return total


def build_rootfs(variant: str, tree: Path, out: Path) -> int:
    """Runs scripts/rootfs.sh; returns the size it reports, checked against our own count."""
    assert (tree / "bin" / "ferrum").is_file(), (
        f"{tree} has no bin/ferrum: lay out the install tree first (make test-build)"
    )
    run = subprocess.run(
        ["bash", str(ROOTFS_SH), variant, str(tree), str(out)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, f"rootfs.sh {variant} failed:\n{run.stdout}\n{run.stderr}"
    found = re.search(rf"^rootfs {variant}: (\d+) bytes", run.stdout, re.MULTILINE)
    assert found, f"rootfs.sh printed no size:\n{run.stdout}"
    reported = int(found.group(1))
    measured = tree_size(out)
    assert reported == measured, f"rootfs.sh reports {reported} bytes, the folder holds {measured}"
    print(f"{variant} rootfs from {tree.relative_to(REPO_ROOT)}: {reported / 1e6:.1f} MB")
    return reported


def resolve_in_root(root: Path, path: str) -> Path:
    """``path`` resolved as a process chrooted into ``root`` would see it: every symbolic
    link, absolute ones included, is followed inside ``root``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            assert hops < 40, f"too many links resolving {path} in {root}"
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
        else:
            resolved.append(part)
    return root.joinpath(*resolved)


def elf_interpreter(binary: Path) -> str:
    """The program interpreter (PT_INTERP) an ELF64 executable names."""
    data = binary.read_bytes()[: 1 << 16]
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{binary} is not an ELF64 file"
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        base = phoff + i * phentsize
        p_type = struct.unpack_from("<I", data, base)[0]
        if p_type == 3:  # PT_INTERP
            offset, _vaddr, _paddr, size = struct.unpack_from("<QQQQ", data, base + 8)
            return binary.read_bytes()[offset : offset + size].rstrip(b"\0").decode()
    raise AssertionError(f"{binary} names no program interpreter")


def has_symbol_table(path: Path) -> bool:
    """Whether an ELF64 file has a SHT_SYMTAB section (what strip removes)."""
    with path.open("rb") as f:
        header = f.read(64)
        assert header[:4] == b"\x7fELF" and header[4] == 2, f"{path} is not an ELF64 file"
        shoff = struct.unpack_from("<Q", header, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", header, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
    return any(
        struct.unpack_from("<I", table, i * shentsize + 4)[0] == 2  # sh_type == SHT_SYMTAB
        for i in range(shnum)
    )


def library_dirs(root: Path) -> list[Path]:
    """The rootfs's shared-library folders (those holding lib*.so*), backends and Python's
    own modules left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] in (("opt",), ("proc",), ("models",)):
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith("python3")]
        if any(f.startswith("lib") and ".so" in f for f in filenames):
            found.append(Path(dirpath))
    return sorted(found)


def python_prefix(root: Path) -> Optional[str]:
    """The Python prefix inside the rootfs (where lib/python3.X/os.py lies), as an absolute
    path of the image, or None without Python."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.relative_to(root).parts[:1] in (("opt",), ("proc",), ("models",)):
            dirnames[:] = []
            continue
        if (
            "os.py" in filenames
            and here.name.startswith("python3")
            and here.parent.name == "lib"
        ):
            hits.append("/" + str(here.parent.parent.relative_to(root)))
            dirnames[:] = []
    assert len(hits) <= 1, f"several Python prefixes in {root}: {hits}"
    return hits[0] if hits else None


def mapped_objects(pid: int) -> set[str]:
    """Paths of the shared objects and executables a process has mapped."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            path = fields[5].removesuffix(" (deleted)")
            name = Path(path).name
            if ".so" in name or name == "ferrum":
                paths.add(path)
    return paths


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def copy_models(dest: Path, names: list[str], in_process: bool) -> Path:
    """Copies example models (and the probe model, as "probe") into ``dest``; with
    ``in_process`` python models run inside the server."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "probe":
            (dest / "probe" / "1").mkdir(parents=True)
            (dest / "probe" / "config.pbtxt").write_text(PROBE_CONFIG)
            (dest / "probe" / "1" / "model.py").write_text(PROBE_MODEL)
        else:
            shutil.copytree(MODELS / name, dest / name)
        config = dest / name / "config.pbtxt"
        if in_process and 'backend: "python"' in config.read_text():
            config.write_text(config.read_text() + IN_PROCESS)
    return dest


def full_models() -> list[str]:
    names = ["simple", "onnx_mlp", "openvino_mlp", "python_preprocess", "probe"]
    # Traced by `make test-build` (not in git); served when it is there.
    if (MODELS / "pytorch_mlp" / "1" / "model.pt").is_file():
        names.append("pytorch_mlp")
    return names


# ------------------------------------------------------------------- inference checks


def infer(client, model: str, inputs: dict[str, tuple[np.ndarray, str]]):
    request = []
    for name, (data, dtype) in inputs.items():
        tensor = httpclient.InferInput(name, list(data.shape), dtype)
        tensor.set_data_from_numpy(data)
        request.append(tensor)
    return client.infer(model, request)


def check_onnx_mlp(client) -> None:
    import onnxruntime

    x = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(2, 16)
    got = infer(client, "onnx_mlp", {"INPUT0": (x, "FP32")}).as_numpy("OUTPUT0")
    session = onnxruntime.InferenceSession(
        str(MODELS / "onnx_mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    want = session.run(None, {"INPUT0": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def check_simple(client) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    result = infer(client, "simple", {"INPUT0": (a, "INT32"), "INPUT1": (b, "INT32")})
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def check_python_preprocess(client) -> None:
    raw = np.arange(0, 256, 16, dtype=np.uint8).reshape(1, 16)
    got = infer(client, "python_preprocess", {"RAW": (raw, "UINT8")}).as_numpy("FEATURES")
    want = (raw.astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.25)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def check_openvino_mlp(client) -> None:
    import onnxruntime

    x = np.linspace(-2.0, 2.0, 16, dtype=np.float32).reshape(1, 16)
    got = infer(client, "openvino_mlp", {"INPUT0": (x, "FP32")}).as_numpy("OUTPUT0")
    # The same network as ONNX (test_openvino.py holds the two equal), run by onnxruntime.
    session = onnxruntime.InferenceSession(
        str(MODELS / "openvino_mlp_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    want = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def check_pytorch_mlp(client) -> None:
    import torch

    x = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(1, 32)
    got = infer(client, "pytorch_mlp", {"INPUT__0": (x, "FP32")}).as_numpy("OUTPUT__0")
    module = torch.jit.load(str(MODELS / "pytorch_mlp" / "1" / "model.pt")).eval()
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def probe(client) -> dict:
    result = infer(client, "probe", {"IN": (np.array([1], dtype=np.int32), "INT32")})
    return json.loads(result.as_numpy("INFO")[0])


def check_probe_runtime(info: dict) -> None:
    """What the probe reports about the runtime, wherever it ran."""
    import hashlib

    assert info["sha256"] == hashlib.sha256(b"ferrum").hexdigest()
    assert info["zlib"] == info["lzma"] == info["bz2"] == "ferrum"
    assert info["decimal"] == "0.125" and info["ctypes"] == 8 and info["sum"] == 45
    assert info["openssl"].startswith("OpenSSL"), info["openssl"]


def serve_and_check(server: FerrumServer, models: list[str]) -> dict:
    """Every model ready and answering right; returns the probe's report (if served)."""
    with httpclient.InferenceServerClient(server.http_url, network_timeout=TIMEOUT) as client:
        index = {m["name"]: m for m in client.get_model_repository_index()}
        for name in models:
            assert index.get(name, {}).get("state") == "READY", (
                f"{name} is not ready: {index.get(name)}\n{server.describe()}"
            )
        checks = {
            "simple": check_simple,
            "onnx_mlp": check_onnx_mlp,
            "python_preprocess": check_python_preprocess,
            "openvino_mlp": check_openvino_mlp,
            "pytorch_mlp": check_pytorch_mlp,
        }
        for name in models:
            if name in checks:
                checks[name](client)
        return probe(client) if "probe" in models else {}


# ------------------------------------------------------------------------------ running


def start_from_rootfs(root: Path, models: Path, work: Path, python: bool) -> FerrumServer:
    """Starts the rootfs's ferrum with the rootfs's loader and libraries only."""
    root = root.resolve()
    ferrum = root / "opt" / "ferrum" / "bin" / "ferrum"
    loader = resolve_in_root(root, elf_interpreter(ferrum))
    assert loader.is_file() and loader.is_relative_to(root), f"no loader in the rootfs: {loader}"
    search = ":".join(str(d) for d in library_dirs(root))
    launcher = write_script(
        work / "ferrum-from-rootfs",
        "#!/bin/sh\n"
        f"exec {shlex.quote(str(loader))} --inhibit-cache --library-path {shlex.quote(search)}"
        f' {shlex.quote(str(ferrum))} "$@"\n',
    )
    scratch = work / "server-tmp"
    scratch.mkdir(exist_ok=True)
    env = {"TMPDIR": str(scratch), "LD_LIBRARY_PATH": "", "PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}
    if python:
        prefix = python_prefix(root)
        assert prefix, f"no Python standard library in {root}"
        env["PYTHONHOME"] = str(root) + prefix
    return start_server(
        models,
        backend_directory=root / "opt" / "ferrum" / "backends",
        binary=launcher,
        log_dir=work / "logs",
        env=env,
    )


def check_only_rootfs_mapped(server: FerrumServer, root: Path, scratch: Path) -> None:
    """Every shared object the server mapped comes from the rootfs (or is the server's
    private copy of a backend library, which it makes in its TMPDIR, ``scratch``)."""
    mapped = mapped_objects(server.pid)
    allowed = (str(root.resolve()) + "/", str(scratch.resolve()) + "/")
    foreign = sorted(p for p in mapped if not p.startswith(allowed))
    assert not foreign, f"shared objects from outside the rootfs: {foreign}"
    names = {Path(p).name for p in mapped}
    assert {"ferrum", "libc.so.6"} <= names, f"not mapped: {sorted(names)}"
    assert any(n.startswith("libonnxruntime.so") for n in names), sorted(names)


# ------------------------------------------------------------------------------ fixtures


def _rootfs(variant: str, tmp_path_factory) -> Iterator[tuple[Path, int]]:
    out = tmp_path_factory.mktemp(f"rootfs-{variant}")
    try:
        yield out, build_rootfs(variant, DEBUG_TREE, out)
    finally:
        # Hundreds of MB: never left behind for pytest's kept temporary folders.
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def slim_rootfs(tmp_path_factory) -> Iterator[tuple[Path, int]]:
    yield from _rootfs("slim", tmp_path_factory)


@pytest.fixture(scope="module")
def full_rootfs(tmp_path_factory) -> Iterator[tuple[Path, int]]:
    yield from _rootfs("full", tmp_path_factory)


# --------------------------------------------------------------------------------- tests


def check_layout(root: Path, backends: set[str]) -> None:
    assert (root / "opt" / "ferrum" / "bin" / "ferrum").is_file()
    assert {p.name for p in (root / "opt" / "ferrum" / "backends").iterdir()} == backends
    assert (root / "models").is_dir()
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    passwd = (root / "etc" / "passwd").read_text()
    assert f"nonroot:x:{NONROOT}:{NONROOT}:" in passwd
    assert f"nonroot:x:{NONROOT}:" in (root / "etc" / "group").read_text()
    if Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        assert (root / "etc" / "ssl" / "certs" / "ca-certificates.crt").is_file()
    # Nothing writable by others but /tmp; no symbolic link leads out of the rootfs.
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            if path.is_symlink():
                target = resolve_in_root(root, "/" + str(path.relative_to(root)))
                assert target.exists(), f"{path} -> {os.readlink(path)} leads nowhere in the rootfs"
            elif path != root / "tmp":
                assert not info.st_mode & stat.S_IWOTH, f"{path} is writable by everyone"
    # Stripped: no symbol tables left in the server or the plugins.
    for binary in [root / "opt" / "ferrum" / "bin" / "ferrum"] + sorted(
        (root / "opt" / "ferrum" / "backends").glob("*/libferrum_*.so")
    ):
        assert not has_symbol_table(binary), f"{binary} is not stripped"


def test_slim_rootfs_fits_and_serves_onnx_from_its_own_libraries(slim_rootfs, tmp_path):
    root, size = slim_rootfs
    assert size <= LIMITS["slim"], f"slim rootfs is {size / 1e6:.1f} MB, over 150 MB"
    check_layout(root, {"onnxruntime"})
    assert python_prefix(root) is None, "the slim rootfs carries a Python"
    models = copy_models(tmp_path / "models", ["onnx_mlp"], in_process=True)
    server = start_from_rootfs(root, models, tmp_path, python=False)
    try:
        serve_and_check(server, ["onnx_mlp"])
        check_only_rootfs_mapped(server, root, tmp_path / "server-tmp")
    finally:
        server.stop_and_check()


def test_full_rootfs_fits_and_serves_every_backend_from_its_own_libraries(full_rootfs, tmp_path):
    root, size = full_rootfs
    assert size <= LIMITS["full"], f"full rootfs is {size / 1e6:.1f} MB, over 1.5 GB"
    backends = {p.name for p in (DEBUG_TREE / "backends").iterdir()} - GPU_BACKENDS
    assert {"onnxruntime", "openvino", "pytorch", "python", "fil", "identity"} <= backends
    check_layout(root, backends)
    names = full_models()
    models = copy_models(tmp_path / "models", names, in_process=True)
    server = start_from_rootfs(root, models, tmp_path, python=True)
    try:
        info = serve_and_check(server, names)
        check_only_rootfs_mapped(server, root, tmp_path / "server-tmp")
        mapped = mapped_objects(server.pid)
        for lib in ("libpython3", "_multiarray_umath", "libopenvino.so", "libferrum_python.so"):
            assert any(lib in Path(p).name for p in mapped), f"{lib} is not mapped"
    finally:
        server.stop_and_check()
    check_probe_runtime(info)
    prefix = str(root.resolve()) + python_prefix(root)
    for module in ("os", "ssl", "numpy"):
        assert info[module].startswith(str(root.resolve()) + "/"), (
            f"{module} came from {info[module]}, outside the rootfs"
        )
    assert info["prefix"] == prefix, info


def _can_chroot() -> Optional[str]:
    """Why the chroot check cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (chroot and a private mount namespace)"
    for tool in ("unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool} here"
    probe_run = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t proc proc /proc && chroot / true"],
        capture_output=True,
        timeout=30,
    )
    if probe_run.returncode != 0:
        return f"no private mount namespace or chroot here: {probe_run.stderr.decode().strip()}"
    return None


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Mode, size and modification time of everything in the rootfs but /tmp, /models and
    /proc (what a read-only image would refuse to change)."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts[:1] in (("tmp",), ("models",), ("proc",)):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            if dirpath == str(root) and name in ("tmp", "models", "proc"):
                continue
            info = (Path(dirpath) / name).lstat()
            seen[str(rel / name)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return seen


def test_full_rootfs_runs_as_the_image_does(full_rootfs, tmp_path):
    """chroot into the rootfs as uid 65532 with the image's entrypoint paths: python models
    in their own processes (the default), and nothing outside /tmp written."""
    why = _can_chroot()
    if why:
        pytest.skip(why)
    root, _ = full_rootfs
    names = ["simple", "onnx_mlp", "python_preprocess", "probe"]
    copy_models(root / "models", names, in_process=False)
    (root / "proc").mkdir(exist_ok=True)
    before = snapshot(root)
    inner = (
        f"mount -t proc proc {shlex.quote(str(root / 'proc'))}"
        f" && exec chroot --userspec={NONROOT}:{NONROOT} {shlex.quote(str(root))}"
        ' /opt/ferrum/bin/ferrum "$@"'
    )
    # env, unshare, sh and chroot exec one another (only mount is a child), so the server
    # keeps the pid the harness signals; its /proc goes away with its mount namespace.
    launcher = write_script(
        tmp_path / "ferrum-in-chroot",
        "#!/bin/sh\n"
        "exec env -u PYTHONHOME -u PYTHONPATH -u LD_LIBRARY_PATH TMPDIR=/tmp HOME=/home/nonroot"
        f" unshare --mount sh -c {shlex.quote(inner)} sh \"$@\"\n",
    )
    try:
        server = start_server(
            Path("/models"),
            backend_directory=Path("/opt/ferrum/backends"),
            binary=launcher,
            log_dir=tmp_path / "logs",
        )
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        status = Path(f"/proc/{server.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.MULTILINE)
        assert uids and uids.groups() == (str(NONROOT), str(NONROOT)), status
        info = serve_and_check(server, names)
        children = [
            p for p in Path("/proc").iterdir()
            if p.name.isdigit() and _parent(p) == server.pid
        ]
        assert children, "the python models run in no process of their own"
    finally:
        server.stop_and_check()
    check_probe_runtime(info)
    prefix = python_prefix(root)
    assert info["uid"] == NONROOT
    assert info["prefix"] == prefix and info["os"].startswith(prefix + "/lib/python3"), info
    assert info["numpy"].startswith("/opt/ferrum/backends/python/site-packages/numpy/"), info
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the server changed the rootfs outside /tmp: {changed}"


def _parent(proc: Path) -> int:
    try:
        text = (proc / "stat").read_text()
    except OSError:
        return -1
    return int(text.rsplit(")", 1)[1].split()[1])


def test_release_rootfs_sizes(tmp_path):
    """The sizes docs/container.md gives: both images from the release tree (make build)."""
    if not (RELEASE_TREE / "bin" / "ferrum").is_file():
        pytest.skip("no release tree dist/ (make build)")
    for variant in ("slim", "full"):
        out = tmp_path / variant
        try:
            size = build_rootfs(variant, RELEASE_TREE, out)
            assert size <= LIMITS[variant], f"release {variant} rootfs is {size / 1e6:.1f} MB"
        finally:
            shutil.rmtree(out, ignore_errors=True)


def test_rootfs_refuses_a_folder_that_is_not_a_rootfs(tmp_path):
    """The out folder is replaced; one holding anything else is left alone."""
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    run = subprocess.run(
        ["bash", str(ROOTFS_SH), "slim", str(DEBUG_TREE), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "not an earlier rootfs" in run.stderr
    assert keep.read_text() == "mine"
    run = subprocess.run(
        ["bash", str(ROOTFS_SH), "medium", str(DEBUG_TREE), str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "usage" in run.stderr
