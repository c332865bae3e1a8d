"""What app.py imports on its way to serving, imported once by tests/prestarted.py's fork
server (nothing else imports this module). The environment is set as app.py and
tests/server.py set it for the app, before the libraries that read it at import."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import fastapi  # noqa: E402,F401
import gradio  # noqa: E402,F401
import sqlite_utils  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
import uvicorn  # noqa: E402,F401
import yaml  # noqa: E402,F401

import qwen_chat.api  # noqa: E402,F401
import qwen_chat.chat  # noqa: E402,F401
import qwen_chat.cli  # noqa: E402,F401
import qwen_chat.engine.local  # noqa: E402,F401
import qwen_chat.engine.sources  # noqa: E402,F401
import qwen_chat.engine.startup  # noqa: E402,F401
import qwen_chat.engine.threads  # noqa: E402,F401
import qwen_chat.openai_api  # noqa: E402,F401
import qwen_chat.store  # noqa: E402,F401
import qwen_chat.ui  # noqa: E402,F401
import qwen_chat.web  # noqa: E402,F401
from transformers import (  # noqa: E402,F401 - loaded lazily by transformers otherwise
    AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Qwen2ForCausalLM)
