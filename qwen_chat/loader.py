"""Where the model comes from: a Hub id (or a mirror via HF_ENDPOINT), a local folder, a .gguf file.

Every source ends as a local folder that transformers loads with no network access. A .gguf file is
de-quantized by transformers, which takes tens of seconds, so its conversion is cached on disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .errors import ModelLoadError

HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def looks_like_path(source: str) -> bool:
    return (source.endswith(".gguf") or source.startswith((".", "/", "~", "\\"))
            or (len(source) > 1 and source[1] == ":") or Path(source).exists())


def resolve_model(source: str, *, cache_dir: Path) -> Path:
    """Return a local folder holding config, weights and tokenizer for `source`."""
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"Model file not found: {path}. Check `model:` in config.yaml.")
        return convert_gguf(path, cache_dir=cache_dir)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: it is not a transformers model "
                                 "folder. Point `model:` in config.yaml at the folder that holds "
                                 "config.json and the .safetensors weights, or at a .gguf file.")
        return path
    if looks_like_path(source):
        raise ModelLoadError(f"Model folder not found: {path}. Check `model:` in config.yaml.")
    return download(source)


def download(repo_id: str) -> Path:
    """Fetch a Hub model once (with a progress bar); later starts use the cache with no network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache yet (any reason): download it below
        pass
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    print(f"Downloading {repo_id} from {endpoint} (about 1 GB, once) ...", flush=True)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as exc:  # noqa: BLE001 - every failure gets the same advice, reason included
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"Could not download the model '{repo_id}' from {endpoint}.\n"
            f"Reason: {reason}\n"
            "What you can do:\n"
            "  - check the internet connection and start again;\n"
            "  - use a mirror, e.g.  HF_ENDPOINT=https://hf-mirror.com ./start.sh\n"
            "    (Windows: set HF_ENDPOINT=https://hf-mirror.com, then start.bat);\n"
            "  - or copy the model from another computer and set `model:` in config.yaml to its\n"
            "    local folder or to a .gguf file."
        ) from exc


def convert_gguf(path: Path, *, cache_dir: Path) -> Path:
    """De-quantize a .gguf into a safetensors folder once; later starts load that folder."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    target = Path(cache_dir) / "gguf" / f"{path.stem}-{key.hexdigest()[:12]}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {path.name} for faster starts (once, about half a minute) ...", flush=True)
    try:
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


def load(source: str, *, cache_dir: Path, precision: str = "fp32"):
    """Load (model, tokenizer) for CPU inference in `precision` (see precision.py).

    fp32 and bf16 load the checkpoint in that dtype. int8 ("auto" on CPU) comes from a cache of
    quantized tensors in cache_dir, built on the first start, so later starts are fast and never
    hold float weights in memory.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import precision as precisions

    folder = resolve_model(source, cache_dir=cache_dir)
    used = precisions.resolve(precision)
    name = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if used == "int8":
            model = precisions.load_int8(
                folder, Path(cache_dir) / "quantized" / f"{Path(folder).name}-{name}.pt")
        else:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.bfloat16 if used == "bf16" else torch.float32,
                local_files_only=True).eval()
    except Exception as exc:  # noqa: BLE001 - the user needs the folder and the reason
        raise ModelLoadError(f"Could not load the model from {folder}: {exc}") from exc
    model.precision = used
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"The model in {folder} has no chat template: use an instruct model.")
    return model, tokenizer
