"""Which package index pip uses, whether it answers in time, and what to say when it does not.

Part of the bootstrap (bootstrap.py): it runs with the system Python before anything is
installed, so it imports nothing outside the standard library. A slow or unreachable index
(common in mainland China) gets a mirror suggested as the PIP_INDEX_URL to set, in English and
Chinese; PIP_INDEX_URL and pip's own config are honoured as they are.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

DEFAULT_INDEX = "https://pypi.org/simple"
MIRRORS = ("https://pypi.tuna.tsinghua.edu.cn/simple", "https://mirrors.aliyun.com/pypi/simple")
SLOW_SECONDS = 3.0   # an index that takes longer than this for one small page is "slow"
PROBE_TIMEOUT = 8.0


@dataclass(frozen=True)
class IndexProblem:
    en: str
    zh: str
    unreachable: bool = False


def index_from_pip_config(text: str) -> str | None:
    """`global.index-url='https://…'` (or install.index-url) from `pip config list` output."""
    found = None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().endswith(".index-url"):
            found = value.strip().strip("'\"")
            if key.strip().startswith("install."):
                return found   # the install command's own setting wins over global
    return found


def probe_index(url: str, *, timeout: float = PROBE_TIMEOUT, slow: float = SLOW_SECONDS) -> IndexProblem | None:
    """Ask the index for one small page (pip's own); None when it answers in time."""
    if not url.startswith(("http://", "https://")):
        return None   # a local folder or file:// index: nothing to wait for
    page = url.rstrip("/") + "/pip/"
    start = time.monotonic()
    try:
        with urllib.request.urlopen(urllib.request.Request(page, headers={"Accept": "text/html"}),
                                    timeout=timeout) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            return IndexProblem(f"is not working (HTTP {exc.code})", f"无法正常使用（HTTP {exc.code}）")
    except (OSError, ValueError) as exc:   # URLError, refused, DNS failure, timeout
        reason = getattr(exc, "reason", exc)
        return IndexProblem(f"is unreachable ({reason})", f"无法访问（{reason}）", unreachable=True)
    took = time.monotonic() - start
    if took > slow:
        return IndexProblem(f"is slow (it took {took:.1f} s to answer)", f"响应很慢（用时 {took:.1f} 秒）")
    return None


def mirror_hint(index: str, problem: IndexProblem, *, windows: bool = os.name == "nt") -> str:
    mirror = next(m for m in MIRRORS if m.rstrip("/") != index.rstrip("/"))
    if windows:
        how = (f"    set PIP_INDEX_URL={mirror}          (cmd)\n"
               f"    $env:PIP_INDEX_URL=\"{mirror}\"     (PowerShell)")
        again = "start.bat"
    else:
        how = f"    export PIP_INDEX_URL={mirror}"
        again = "./start.sh"
    return (f"The package index {index} {problem.en}.\n"
            "A mirror is usually much faster (for example in mainland China). Set it, then run "
            f"{again} again:\n{how}\n"
            f"软件包索引 {index} {problem.zh}。\n"
            f"使用镜像通常快得多（例如在中国大陆）。请设置后重新运行 {again}：\n{how}")


def install_failed(index: str, problem: IndexProblem | None) -> str:
    hint = problem or IndexProblem("may be unreachable or slow from here", "可能无法访问或很慢")
    return ("Installing the dependencies failed; see the messages above. Check the internet connection.\n"
            "安装依赖失败，请查看上面的信息并检查网络连接。\n" + mirror_hint(index, hint))
