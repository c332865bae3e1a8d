"""Where the model comes from: a Hub id (or a mirror via HF_ENDPOINT), a ModelScope id
("modelscope:Qwen/Qwen2.5-0.5B-Instruct", with the optional `modelscope` package), a local folder,
a .gguf file.

Every source ends as a local folder that transformers loads with no network access. A .gguf file is
de-quantized by transformers, which takes tens of seconds, so its conversion is cached on disk.
Each step reports to a LoadProgress (loading.py), which the page shows while the model loads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import shutil
import sys
import threading
from pathlib import Path

from . import memory
from ..errors import ModelLoadError
from .startup import LoadProgress

HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
MODELSCOPE = "modelscope:"
MB = 2**20


def folder_mb(folder: Path) -> float:
    """MB of the regular files under `folder` (links not followed): what a download wrote."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # renamed or removed while we looked
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total / MB


class _WatchDownload:
    """While a download writes into `folder`, report the MB it added to `progress`."""

    def __init__(self, folder: Path, progress: LoadProgress, total_mb: float | None):
        self.folder, self.progress = folder, progress
        self.base = folder_mb(folder) if folder.exists() else 0.0
        progress.begin("download", total_mb=total_mb)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="qwen-chat-download")

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self.folder.exists():
                self.progress.downloaded(max(0.0, folder_mb(self.folder) - self.base))

    def __enter__(self) -> "_WatchDownload":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def looks_like_path(source: str) -> bool:
    return (source.endswith(".gguf") or source.startswith((".", "/", "~", "\\"))
            or (len(source) > 1 and source[1] == ":") or Path(source).exists())


def check_source(source: str) -> None:
    """Refuse at once (ModelLoadError) a source that names a missing file or folder, or needs a
    package that is not installed: mistakes to fix before anything starts."""
    path = Path(source).expanduser()
    if source.startswith(MODELSCOPE):
        modelscope_module()
        if not source[len(MODELSCOPE):].strip("/"):
            raise ModelLoadError("`model: modelscope:` needs a model id after it, e.g. "
                                 "modelscope:Qwen/Qwen2.5-0.5B-Instruct.")
    elif source.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"Model file not found: {path}. Check `model:` in config.yaml.")
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: it is not a transformers model "
                                 "folder. Point `model:` in config.yaml at the folder that holds "
                                 "config.json and the .safetensors weights, or at a .gguf file.")
    elif looks_like_path(source):
        raise ModelLoadError(f"Model folder not found: {path}. Check `model:` in config.yaml.")


def resolve_model(source: str, *, cache_dir: Path, progress: LoadProgress | None = None) -> Path:
    """Return a local folder holding config, weights and tokenizer for `source`."""
    progress = progress or LoadProgress()
    check_source(source)
    path = Path(source).expanduser()
    if source.startswith(MODELSCOPE):
        return download_modelscope(source[len(MODELSCOPE):].strip("/"), cache_dir=cache_dir,
                                   progress=progress)
    if source.endswith(".gguf"):
        return convert_gguf(path, cache_dir=cache_dir, progress=progress)
    if path.is_dir():
        return path
    return download(source, progress=progress)


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def download(repo_id: str, progress: LoadProgress | None = None) -> Path:
    """Fetch a Hub model once (progress in MB); later starts use the cache with no network."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    progress = progress or LoadProgress()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache yet (any reason): download it below
        pass
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    print(f"Downloading {repo_id} from {endpoint} (about 1 GB, once) ...", flush=True)
    try:
        total_mb = None
        if "dry_run" in inspect.signature(snapshot_download).parameters:
            plan = snapshot_download(repo_id, allow_patterns=HUB_FILES, dry_run=True)
            total_mb = sum(f.file_size or 0 for f in plan if f.will_download) / MB
        folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
        with _WatchDownload(folder, progress, total_mb):
            return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:  # noqa: BLE001 - every failure gets the same advice, reason included
        reason = _reason(exc)
        raise ModelLoadError(
            f"Could not download the model '{repo_id}' from {endpoint}.\n"
            f"Reason: {reason}\n"
            "What you can do:\n"
            "  - check the internet connection and start again;\n"
            "  - use a mirror, e.g.  HF_ENDPOINT=https://hf-mirror.com ./start.sh\n"
            "    (Windows: set HF_ENDPOINT=https://hf-mirror.com, then start.bat);\n"
            "  - or copy the model from another computer and set `model:` in config.yaml to its\n"
            "    local folder or to a .gguf file.\n"
            "  - in China, ModelScope may be easier to reach: install it with\n"
            f"    {modelscope_install()}\n"
            f"    and set  model: modelscope:{repo_id}  in config.yaml."
        ) from exc


def modelscope_install() -> str:
    """The command that installs the optional `modelscope` package into this app's Python."""
    python = sys.executable
    quoted = f'"{python}"' if " " in python else python  # a folder such as "Program Files"
    return f"{quoted} -m pip install modelscope"


def modelscope_module():
    """The `modelscope` package, or a ModelLoadError that says how to install (or repair) it."""
    import importlib.util

    try:
        import modelscope
    except ImportError as exc:
        if importlib.util.find_spec("modelscope") is None:
            raise ModelLoadError(
                "`model:` in config.yaml names a ModelScope model, which needs the optional "
                "`modelscope` package. Install it with\n"
                f"    {modelscope_install()}\n"
                "then start again (or set `model:` to a Hugging Face id, a folder or a .gguf "
                "file).") from None
        raise ModelLoadError(
            f"The `modelscope` package is installed but cannot be used ({exc}). Repair it with\n"
            f"    {modelscope_install()} --upgrade --force-reinstall\n"
            "then start again.") from None
    return modelscope


def download_modelscope(model_id: str, *, cache_dir: Path,
                        progress: LoadProgress | None = None) -> Path:
    """Fetch a ModelScope model once into cache_dir/modelscope; later starts need no network."""
    modelscope_module()
    from modelscope import snapshot_download

    progress = progress or LoadProgress()
    target = Path(cache_dir) / "modelscope"
    try:
        return Path(snapshot_download(model_id, cache_dir=str(target), allow_patterns=HUB_FILES,
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - not downloaded yet: do it below
        pass
    print(f"Downloading {model_id} from ModelScope (about 1 GB, once) ...", flush=True)
    sizes: dict[str, int] = {}
    options = {}
    try:  # per-file sizes give a total, when this modelscope version reports them
        from modelscope.hub.callback import ProgressCallback

        class Sizes(ProgressCallback):
            def __init__(self, filename: str, file_size: int):
                super().__init__(filename, file_size)
                sizes[filename] = file_size or 0
                progress.downloaded(progress.snapshot().done_mb, sum(sizes.values()) / MB)

        if "progress_callbacks" in inspect.signature(snapshot_download).parameters:
            options["progress_callbacks"] = [Sizes]
    except ImportError:
        pass
    try:
        with _WatchDownload(target, progress, None):
            return Path(snapshot_download(model_id, cache_dir=str(target),
                                          allow_patterns=HUB_FILES, **options))
    except Exception as exc:  # noqa: BLE001 - the reason, and what to try
        raise ModelLoadError(
            f"Could not download the model '{model_id}' from ModelScope.\n"
            f"Reason: {_reason(exc)}\n"
            "What you can do: check the model id on https://modelscope.cn/models and the "
            "internet connection, then start again; or set `model:` in config.yaml to a local "
            "folder or a .gguf file.") from exc


@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers reads a .gguf three times for one load (config, tokenizer, weights), and each
    `gguf.GGUFReader` parses every vocabulary string and merge again (9 s each for SmolLM2's
    49,152 tokens on this machine); it also builds gguf's tensor-name map, the same for a given
    architecture and layer count, once per module (397 times, 11 s). During one conversion both
    are asked for the same thing each time: hand out the first answer again. Measured on
    SmolLM2-135M-Instruct.Q4_1.gguf, 2 cores of an Intel Xeon: 35.7 -> 14.6 s, the same files."""
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def convert_gguf(path: Path, *, cache_dir: Path, progress: LoadProgress | None = None) -> Path:
    """De-quantize a .gguf into a safetensors folder once; later starts load that folder."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = Path(cache_dir) / "gguf" / f"{path.stem}-{key.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {path.name} for faster starts (once, about half a minute) ...", flush=True)
    (progress or LoadProgress()).begin("convert", size_mb=stat.st_size / MB)
    try:
        with _gguf_parsed_once():
            gguf_model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - a broken or unsupported file: say which and why
        raise ModelLoadError(f"Could not read {path}: {exc}") from exc
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config.
    model = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def weights_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / MB


def load(source: str, *, cache_dir: Path, precision: str = "fp32",
         progress: LoadProgress | None = None, threads: int = 1):
    """Load (model, tokenizer) for CPU inference in `precision` (see precision.py).

    "auto" uses the kernels calibrate.py measured fastest on this CPU for this model with
    `threads` threads (measured at the first start, then cached); `model.calibration` says which.

    fp32 and bf16 load the checkpoint in that dtype. int8 and int4 come from a cache of quantized
    tensors in cache_dir (one file per precision), built on the first start, so later starts are
    fast and never hold float weights in memory.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import precision as precisions

    progress = progress or LoadProgress()
    folder = resolve_model(source, cache_dir=cache_dir, progress=progress)
    calibration = None
    if precision == "auto" and precisions.resolve("auto") in precisions.RECIPES:
        from transformers import AutoConfig

        from . import calibrate

        calibration = calibrate.cached_or_measured(
            AutoConfig.from_pretrained(folder, local_files_only=True), threads,
            Path(cache_dir) / "calibration.json",
            on_measure=lambda: progress.begin("calibrate", size_mb=1))
        used = calibration.precision
    else:
        used = precisions.resolve(precision)
    name = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    cache_file = Path(cache_dir) / "quantized" / f"{Path(folder).name}-{name}.pt"
    quantized = used in precisions.RECIPES
    cache_file = cache_file.with_name(f"{cache_file.stem}-{used}.pt") if quantized else cache_file
    size = (cache_file.stat().st_size / MB if quantized and cache_file.is_file()
            else weights_mb(folder))
    progress.begin("load", size_mb=size)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if quantized:
            model = precisions.load_quantized(
                folder, cache_file, used,
                on_quantize=lambda: progress.begin("quantize", size_mb=weights_mb(folder),
                                                   instead=True))
        else:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.bfloat16 if used == "bf16" else torch.float32,
                local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001 - the user needs the folder and the reason
        raise ModelLoadError(f"Could not load the model from {folder}: {exc}") from exc
    model.precision = used
    model.calibration = calibration
    if calibration is not None:
        precisions.set_prefill(model, calibration.plan())
    precisions.use_kernels(model, calibration.kernel if calibration is not None else "auto",
                           cache_file if quantized else None)
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"The model in {folder} has no chat template: use an instruct model.")
    memory.trim()  # loading's temporaries, freed in this thread's heap (see memory.py)
    return model, tokenizer
