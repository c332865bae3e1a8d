"""llama.cpp as a comparison peer for our own engine.

Ollama and LM Studio both run llama.cpp underneath, so llama.cpp's speed on
this machine and model is the fairest outside yardstick for our numbers.  We
build it from the source the `llama-cpp-python` sdist on PyPI ships (PyPI is
reachable where GitHub may not be), convert a Hugging Face model folder to GGUF
with that source's own converter, then time `llama-server` (OpenAI-compatible,
127.0.0.1 only) from the client side and run `llama-bench`.

Everything is cached and reused; the build takes about 9 minutes on 2 cores,
once.  It compiles for *this* CPU (-DGGML_NATIVE=ON), so its folder is keyed
by a hash of the CPU model and flags (and the build recipe).

    python bench/peer.py --model .cache/bench/qwen2.5-0.5b-random-bf16
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

VERSION = "0.3.36"  # llama-cpp-python; ships llama.cpp ggml-org/llama.cpp@0c1e57098
TARGETS = ("llama-server", "llama-bench", "llama-quantize")
DEFAULT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "bench" / "llama.cpp"
PIP_NAMES = {"google": "protobuf", "yaml": "pyyaml"}  # import name -> pip name where they differ
Log = Callable[[str], object]


def _tail(path: Path, n: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def _cpuinfo() -> list[str]:
    """The first "model name" and "flags" lines of /proc/cpuinfo."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return [next((l for l in lines if l.startswith(k)), "") for k in ("model name", "flags")]


def cmake_flags() -> list[str]:
    """Configure options. AMX is left out: its ggml kernel segfaults in this llama.cpp
    (ggml-org/llama.cpp#20824, fix pending in #26954); AVX-512 etc. stay native."""
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF",
             "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=ON",
             "-DLLAMA_USE_PREBUILT_UI=OFF"]  # else the build fetches the web UI from Hugging Face
    if "amx_tile" in _cpuinfo()[1].split():
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        flags += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    return flags


def build_key() -> str:
    """Short hash of CPU model name, CPU flags and build recipe (a native build only runs on its CPU)."""
    return hashlib.sha256("\n".join([*_cpuinfo(), VERSION, *cmake_flags()]).encode()).hexdigest()[:10]


def source(cache: Path, *, log: Log = print) -> Path | None:
    """Download and extract the llama-cpp-python sdist; return its vendor/llama.cpp."""
    src = cache / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (src / "CMakeLists.txt").exists():
        return src
    cache.mkdir(parents=True, exist_ok=True)
    tgz = cache / f"llama_cpp_python-{VERSION}.tar.gz"
    if not tgz.exists():
        log(f"downloading llama-cpp-python=={VERSION} sdist from PyPI")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", str(cache), f"llama-cpp-python=={VERSION}"]
        if subprocess.run(cmd, capture_output=True).returncode or not tgz.exists():
            log(f"download failed: could not fetch llama-cpp-python=={VERSION} from PyPI ({' '.join(cmd)}).")
            return None
    with tarfile.open(tgz) as tar:
        tar.extractall(cache, filter="data")
    return src


def build(cache: Path = DEFAULT_CACHE, *, log: Log = print) -> Path | None:
    """Build llama-server, llama-bench and llama-quantize; return the folder holding them."""
    out = cache / f"build-{build_key()}"
    bindir = out / "bin"
    if all((bindir / t).exists() for t in TARGETS):
        return bindir
    if not shutil.which("cmake"):
        log("cmake missing: install it (apt-get install cmake build-essential) to build llama.cpp.")
        return None
    src = source(cache, log=log)
    if src is None:
        return None
    logfile = cache / f"build-{build_key()}.log"
    configure = ["cmake", "-S", str(src), "-B", str(out), *cmake_flags()]
    compile_ = ["cmake", "--build", str(out), "--config", "Release", "-j", "2", "--target", *TARGETS]
    # vendor/llama.cpp carries a shallow .git that names the commit; never let git climb
    # past it into an enclosing repository (ours) and report that commit instead.
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(src.parent)}
    log(f"building llama.cpp (about 9 min, once) from llama-cpp-python {VERSION}; log: {logfile}")
    start = time.monotonic()
    with logfile.open("w") as fh:
        for cmd in (configure, compile_):
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode:
                log(f"build failed ({cmd[1]} step); last 20 lines of {logfile}:\n{_tail(logfile)}")
                return None
    log(f"built llama.cpp in {time.monotonic() - start:.0f} s")
    return bindir


def _fingerprint(model_dir: Path) -> str:
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    text = "\n".join(f"{p.relative_to(model_dir)} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def convert(model_dir: Path, cache: Path = DEFAULT_CACHE, kinds: tuple[str, ...] = ("q8_0", "q4_0"),
            *, log: Log = print) -> dict[str, Path]:
    """HF folder -> 16-bit GGUF -> each quantization kind; return kind -> path ({} on failure)."""
    model_dir = Path(model_dir).resolve()
    out = cache / "models" / f"{model_dir.name}-{_fingerprint(model_dir)}"
    wanted = {k: out / f"model-{k}.gguf" for k in kinds}
    if all(p.exists() for p in wanted.values()):
        return wanted
    bindir, src = build(cache, log=log), source(cache, log=log)
    if bindir is None or src is None:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    dtype = str(config.get("torch_dtype") or config.get("dtype"))
    half = out / ("model-bf16.gguf" if "bfloat16" in dtype else "model-f16.gguf")
    if not half.exists():
        log(f"converting {model_dir.name} to {half.name}")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(src / "gguf-py"), *filter(None, [os.environ.get("PYTHONPATH")])])}
        cmd = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(model_dir),
               "--outtype", half.stem.split("-")[-1], "--outfile", str(half.with_suffix(".tmp"))]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            if missing := re.search(r"No module named '(\w+)", res.stderr):
                pkg = PIP_NAMES.get(missing.group(1), missing.group(1))
                log(f"conversion needs a module; install it: {sys.executable} -m pip install {pkg}")
            else:
                log("conversion failed:\n" + "\n".join(res.stderr.splitlines()[-20:]))
            return {}
        half.with_suffix(".tmp").rename(half)
    for kind, path in wanted.items():
        if not path.exists():
            log(f"quantizing to {kind}")
            res = subprocess.run([str(bindir / "llama-quantize"), str(half), str(path.with_suffix(".tmp")),
                                  kind.upper()], capture_output=True, text=True)
            if res.returncode:
                log(f"llama-quantize {kind} failed:\n" + "\n".join(res.stderr.splitlines()[-20:]))
                return {}
            path.with_suffix(".tmp").rename(path)
    return wanted


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`with LlamaServer(bindir, gguf) as srv:` runs llama-server on 127.0.0.1; srv.base_url is /v1."""

    def __init__(self, binary_dir: Path, gguf: Path, *, threads: int = 2, ctx: int = 4096,
                 port: int | None = None) -> None:
        self.binary, self.gguf = Path(binary_dir) / "llama-server", Path(gguf)
        self.threads, self.ctx, self.port = threads, ctx, port or _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(binary_dir).parent / f"server-{self.gguf.stem}.log"  # latest run only
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    def __enter__(self) -> LlamaServer:
        helptext = subprocess.run([str(self.binary), "--help"], capture_output=True, text=True).stdout
        cmd = [str(self.binary), "-m", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
               "-t", str(self.threads), "-tb", str(self.threads), "-c", str(self.ctx)]
        cmd += ["--no-webui"] if "--no-webui" in helptext else []
        with self.log_path.open("wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if opener.open(f"http://127.0.0.1:{self.port}/health", timeout=2).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"llama-server did not become healthy; {self.log_path}:\n{_tail(self.log_path)}")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM, then SIGKILL after 10 s
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_binary(binary_dir: Path, gguf: Path, threads: int = 2) -> dict[str, float]:
    """llama-bench prompt-processing (pp64) and generation (tg64) speed in tokens/s."""
    cmd = [str(Path(binary_dir) / "llama-bench"), "-m", str(gguf), "-t", str(threads),
           "-p", "64", "-n", "64", "-o", "json"]
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    pick = {"pp": lambda r: r["n_prompt"] > 0 and r["n_gen"] == 0,
            "tg": lambda r: r["n_gen"] > 0 and r["n_prompt"] == 0}
    return {k: float(next(r["avg_ts"] for r in rows if f(r))) for k, f in pick.items()}


def stream_once(base_url: str, max_tokens: int = 64) -> dict[str, float]:
    """One streaming chat completion; first-token time and tokens/s seen at the client."""
    import httpx
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="none", http_client=httpx.Client(trust_env=False))
    start = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    stream = client.chat.completions.create(
        model="peer", max_tokens=max_tokens, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Write a short story about a lighthouse keeper."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:  # skip the role-only chunk
            stamps.append(time.perf_counter())
        tokens = chunk.usage.completion_tokens if chunk.usage else tokens
    if not stamps:
        raise RuntimeError("the stream carried no tokens")
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"ttft_s": stamps[0] - start, "tok_s": rate, "chunks": len(stamps), "tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    bindir = build(args.cache)
    ggufs = convert(args.model, args.cache) if bindir else {}
    if not ggufs:
        return 1
    rows = []
    for kind, gguf in ggufs.items():
        with LlamaServer(bindir, gguf, threads=args.threads) as srv:
            print(f"{kind}: llama-server pid {srv.pid} at {srv.base_url}")
            s = stream_once(srv.base_url)
            print(f"{kind}: {s['chunks']} content chunks, {s['tokens']} completion tokens (server's count)")
        b = bench_binary(bindir, gguf, args.threads)
        rows.append((kind, gguf.stat().st_size / 2**20, s["ttft_s"] * 1000, s["tok_s"], b["pp"], b["tg"]))
    print(f"\nllama.cpp peer, {args.threads} threads, {args.model.name}")
    print(f"{'kind':6} {'MiB':>6} {'ttft ms':>8} {'srv tok/s':>10} {'pp64 t/s':>9} {'tg64 t/s':>9}")
    for kind, mib, ttft, tps, pp, tg in rows:
        print(f"{kind:6} {mib:6.0f} {ttft:8.0f} {tps:10.1f} {pp:9.1f} {tg:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
