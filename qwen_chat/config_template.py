"""The config.yaml written when none exists: every key with its default, explained in English
and Chinese (config.py reads it; tests/test_config.py checks every key is here)."""

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
DEFAULT_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

DEFAULT_CONFIG_TEXT = f"""\
# Qwen Chat settings. Save this file: sampling and history settings apply to the next message.
# Qwen Chat 设置。保存后，采样与历史设置从下一条消息起生效。
# Keys marked (restart) need the app to be restarted. 标有 (restart) 的项需重启应用。

# Model: a Hugging Face Hub id (mirror: set HF_ENDPOINT), a ModelScope id written
# modelscope:Qwen/Qwen2.5-0.5B-Instruct (needs `pip install modelscope`), a local folder, or a
# .gguf file. (restart)
# 模型：Hugging Face Hub 名称（镜像：设置 HF_ENDPOINT）、ModelScope 模型（写作
# modelscope:Qwen/Qwen2.5-0.5B-Instruct，需先 pip install modelscope）、本地文件夹或 .gguf 文件。（需重启）
model: {DEFAULT_MODEL}

# Engine: local (this computer's CPU) or openai (any OpenAI-compatible server: vLLM, llama.cpp
# server, Ollama, another Qwen Chat). For openai, set base_url (and api_key if the server needs
# one); model is then the server's model name. (restart)
# 推理引擎：local（本机 CPU）或 openai（任何 OpenAI 兼容服务，如 vLLM、llama.cpp、Ollama）。
# 选 openai 时请设置 base_url（需要时设置 api_key），model 为该服务上的模型名。（需重启）
engine: local
base_url: ""
api_key: ""

# Randomness of replies, 0 to 2 (0 = always the most likely word).
# 回复的随机程度，0 到 2（0 = 总是选最可能的词）。
temperature: 0.7

# Nucleus sampling: keep the most likely words up to this total probability, 0.01 to 1.
# 核采样：只从累计概率达到该值的候选词中选择，0.01 到 1。
top_p: 0.8

# Longest reply, in tokens (1 to 8192). 单次回复的最大 token 数（1 到 8192）。
max_new_tokens: 512

# Penalty for repeating words, 1.0 (none) to 2.0. 重复惩罚，1.0（无）到 2.0。
repetition_penalty: 1.05

# true: the model sees earlier messages of the conversation; false: each message alone.
# true：模型能看到本对话之前的消息；false：每条消息单独回答（历史仍会保存和显示）。
enable_history: true

# Most tokens of a conversation the model reads for one reply (256 to 32768). Beyond it the
# oldest messages are left out (you are told once); a longer single message is refused.
# 模型每次回复最多读取的 token 数（256 到 32768）。超出时最早的消息不再被读取（会提示一次）；
# 单条消息超出则会被拒绝。
max_input_tokens: 4096

# Instructions given to the model before every conversation. 每个对话开始前给模型的指令。
system_prompt: "{DEFAULT_SYSTEM_PROMPT}"

# Address to listen on. 127.0.0.1 = this computer only. (restart)
# 监听地址。127.0.0.1 = 仅本机可访问。（需重启）
host: 127.0.0.1

# Sign-in for the page and the API. Required when host is not this computer only (e.g. 0.0.0.0);
# the environment variables QWEN_CHAT_USERNAME and QWEN_CHAT_PASSWORD override these. (restart)
# 页面与 API 的登录账号。host 不是仅本机（如 0.0.0.0）时必须设置；
# 环境变量 QWEN_CHAT_USERNAME 与 QWEN_CHAT_PASSWORD 优先。（需重启）
username: ""
password: ""

# Key that clients of this app's OpenAI-compatible API (/v1) must send as
# "Authorization: Bearer <key>"; "" = none. Required to use /v1 when host is not this computer
# only. QWEN_CHAT_API_KEY overrides it. (restart)
# 本应用 OpenAI 兼容 API（/v1）的密钥；"" = 不需要。host 不是仅本机时必须设置。QWEN_CHAT_API_KEY 优先。（需重启）
server_api_key: ""

# Most messages waiting for the model at once; beyond it a sender is asked to try again. (restart)
# 同时排队等待模型的消息上限；超出时提示稍后再试。（需重启）
queue_size: 32

# Replies generated together (1 = one at a time). Together they share each pass over the
# weights: 4 give about twice the total speed of 4 in a row, each a little slower. (restart)
# 同时生成的回复数（1 = 逐个生成）。4 个一起生成的总速度约为逐个生成的两倍，单个稍慢。（需重启）
max_batch: 4

# Port of the web page (1 to 65535). (restart) 网页端口（1 到 65535）。（需重启）
port: 8080

# Open the browser when the app starts. 启动时自动打开浏览器。
open_browser: true

# false: an image in a message from another host (![x](https://...)) shows as a link, loaded
# only when clicked, so nothing is fetched from the internet by itself. true: shown at once.
# false：消息中来自其他网站的图片显示为链接，点击才加载，页面不会自行访问外网。true：直接显示。
allow_remote_images: false

# Folder for conversations and caches, relative to this file. (restart)
# 对话与缓存的存放文件夹，相对于本文件。（需重启）
data_dir: data

# CPU threads for the model: auto (physical cores, fewer while other programs keep cores busy)
# or a number (fixed). (restart)
# 模型使用的 CPU 线程数：auto（物理核心数）或一个数字。（需重启）
threads: auto

# Memory for keeping recent conversations' model state between turns, so that a reply starts
# without re-reading the whole history (MB, 0 = off). (restart)
# 为最近的对话保留模型状态所用的内存（MB，0 = 关闭），使回复无需重新读取整个历史即可开始。（需重启）
kv_cache_mb: 256

# Weight precision: auto (int8, with the prompt kernels measured fastest on this computer at the
# first start: about 2x faster replies than fp32, near-identical answers), int8, int4 (faster
# replies, noticeably less accurate), fp32 (exact, slowest) or bf16. (restart)
# 权重精度：auto（int8，并在首次启动时测出本机最快的计算方式：回复约快 2 倍，答案几乎相同）、int8、
# int4（更快，但准确度明显下降）、fp32（精确但最慢）或 bf16。（需重启）
precision: auto
"""
