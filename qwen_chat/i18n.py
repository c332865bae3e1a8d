"""UI text in English and Chinese. Static labels go through gr.I18n (the browser picks the
language); text built on the server (status line, notices) follows the Accept-Language header."""

from __future__ import annotations

EN = {
    "title": "Qwen Chat",
    "subtitle": "Private chat with Qwen2.5 on this computer. Nothing leaves your machine.",
    "welcome": "### Hello! 👋\nAsk me anything: I answer in English, 中文 and more. "
               "Press **Enter** to send.",
    "conversations": "Conversations",
    "new_chat": "+ New chat",
    "rename_placeholder": "New title",
    "rename": "Rename",
    "delete": "Delete",
    "confirm_delete": "Delete this conversation?",
    "yes_delete": "Yes, delete",
    "cancel": "Cancel",
    "message_placeholder": "Type a message, Enter to send",
    "send": "Send",
    "stop": "Stop",
    "retry": "Retry",
    "thinking": "Thinking…",
    "status": "First token {ttft:.2f} s · {tps:.1f} tokens/s · {tokens} tokens",
    "status_short": "First token {ttft:.2f} s · {tokens} tokens",
    "stopped": "stopped",
    "interrupted": "interrupted",
    "error": "error",
    "restart_needed": "Saved config.yaml: restart the app to apply {keys}.",
    "config_invalid": "config.yaml was not applied: {error}",
    "deleted": "This conversation no longer exists (deleted in another tab).",
    "gone": "This conversation was deleted (in another tab): your message starts a new one.",
    "disk_full": "{detail} Your message is still shown in the chat, to copy.",
    "too_long": "This message is too long: the model reads at most {budget:,} tokens. Shorten it "
                "or split it into several messages. Your text is still in the box.",
    "dropped": "This conversation is longer than the model can read ({budget:,} tokens): its "
               "earliest messages are no longer seen. Start a new chat for a fresh topic.",
    "export_md": "Export .md",
    "export_json": "Export .json",
    "import_json": "Import…",
    "attach": "Attach a file",
    "phone_open": "Use on my phone",
    "phone_devices": "Paired devices",
    "phone_remove": "Remove",
    "phone_off": "Turn phone access off",
    "phone_seen": "last seen {when}",
    "phone_unavailable": "This app already listens beyond this computer (host in config.yaml): open it on the phone with its address and your sign-in.",
    "phone_failed": "Phone access could not start: {reason}.",
    "phone_scan": "Scan with the phone's camera (it must be on the same Wi-Fi). Only paired devices get in; turning phone access off closes it to the network.",
    "phone_code": "Or open the address and type the code:",
    "attached": "📎 {name}: {tokens} tokens, about {seconds} s to read on this computer",
    "attached_long": "📎 {name}: {total} tokens, long: each question reads the {tokens} that best match it, about {seconds} s on this computer",
    "attach_refused": "Could not attach this file: {reason}.",
    "export_all": "Export all",
    "imported": "Imported {count} conversation(s) from {source}.",
    "imported_before": "{skipped} of them were here already (imported before): not added twice.",
    "export_file": "Exported file",
    "nothing_to_export": "Open a conversation to export it.",
    "import_refused": "Could not import this file: {reason}.",
    "system": "System",
    "system_table": "**Model** {model}  \n**Precision** {precision}  \n"
                    "**CPU threads** {threads}  \n**Replies generated together** {max_batch}  \n"
                    "**Memory in use** {memory_mb:,.0f} MB (KV cache {kv_cache_mb:,.0f} MB)  \n"
                    "**History** {data_dir}: {disk}  \n"
                    "**Last reply** {last}",
    "disk_free": "{free:,.0f} MB free",
    "disk_low": "⚠️ only {free:,.0f} MB free: free some space, or new messages cannot be saved",
    "disk_unknown": "free space unknown",
    "history_busy": "⚠️ the history file is open in another program: waiting to save",
    "history_busy_banner": "The history file (chat.db) is open in another program, which keeps "
                           "it locked: waiting to save your message. Close that program (or end "
                           "its edit) and the reply follows; nothing is lost.",
    "last_reply": "first token {ttft:.2f} s · {tps:.1f} tokens/s",
    "none_yet": "none yet",
    "loading_start": "Loading the model…",
    "loading_download": "Downloading the model (once): {pct}% ({done} of {total} MB)",
    "loading_download_mb": "Downloading the model (once): {done} MB so far",
    "loading_convert": "Converting the model file for faster starts (once): {pct}%",
    "loading_quantize": "Preparing the model for this computer (once): {pct}%",
    "loading_calibrate": "Measuring which kernels are fastest on this computer (once): {pct}%",
    "loading_load": "Loading model {pct}%",
    "loading_hint": "You can type now: your message is answered as soon as the model is ready.",
    "loading_failed": "The model could not be loaded. {error}",
    "search_placeholder": "Search chats (Ctrl+K)",
    "group_pinned": "Pinned",
    "group_today": "Today",
    "group_yesterday": "Yesterday",
    "group_week": "Previous 7 days",
    "group_older": "Older",
    "results": "Found in {count} conversations",
    "no_results": "No conversation holds “{query}”.",
    "menu": "More actions",
    "pin": "Pin to top",
    "unpin": "Unpin",
    "chat_settings": "Settings for this chat",
    "start_from_preset": "Start a new chat from a preset",
    "system_prompt": "System prompt",
    "temperature": "Temperature (0 = always the same answer)",
    "reply_length": "Reply length (max new tokens)",
    "preset_name": "Preset name",
    "save_preset": "Save as preset",
    "remove_preset": "Remove preset",
    "use_defaults": "Use config.yaml's values",
    "preset_needs_name": "Give the preset a name first.",
    "preset_saved": "Preset “{name}” saved.",
}

ZH = {
    "title": "Qwen Chat",
    "subtitle": "在本机与 Qwen2.5 私密聊天，数据不会离开你的电脑。",
    "welcome": "### 你好！👋\n有什么可以帮你？中文、English 都可以。按 **Enter** 发送。",
    "conversations": "对话",
    "new_chat": "+ 新对话",
    "rename_placeholder": "新标题",
    "rename": "重命名",
    "delete": "删除",
    "confirm_delete": "确定删除这个对话？",
    "yes_delete": "确定删除",
    "cancel": "取消",
    "message_placeholder": "输入消息，按 Enter 发送",
    "send": "发送",
    "stop": "停止",
    "retry": "重试",
    "thinking": "思考中…",
    "status": "首字 {ttft:.2f} 秒 · {tps:.1f} token/秒 · {tokens} 个 token",
    "status_short": "首字 {ttft:.2f} 秒 · {tokens} 个 token",
    "stopped": "已停止",
    "interrupted": "已中断",
    "error": "出错",
    "restart_needed": "已保存 config.yaml：{keys} 需要重启应用才能生效。",
    "config_invalid": "config.yaml 未生效：{error}",
    "deleted": "该对话已不存在（可能在其他标签页中被删除）。",
    "gone": "该对话已被删除（可能在其他标签页中）：你的消息已放入新对话。",
    "disk_full": "消息未能保存：磁盘已满。请释放一些空间后重新发送；消息仍显示在对话中，可复制。（{detail}）",
    "too_long": "消息太长：模型最多读取 {budget:,} 个 token。请缩短或分成几条发送。文字仍保留在输入框中。",
    "dropped": "对话已超过模型可读取的长度（{budget:,} 个 token）：最早的消息将不再被模型看到。"
               "换个话题请开始新对话。",
    "export_md": "导出 .md",
    "export_json": "导出 .json",
    "import_json": "导入…",
    "attach": "添加文件",
    "phone_open": "在手机上使用",
    "phone_devices": "已配对的设备",
    "phone_remove": "移除",
    "phone_off": "关闭手机访问",
    "phone_seen": "最近使用 {when}",
    "phone_unavailable": "本应用已在网络上监听（config.yaml 中的 host）：请在手机上用其地址和账号登录。",
    "phone_failed": "无法开启手机访问：{reason}。",
    "phone_scan": "用手机相机扫描（手机需连接同一 Wi-Fi）。只有配对的设备可以访问；关闭手机访问后网络上无法访问。",
    "phone_code": "或打开该地址并输入配对码：",
    "attached": "📎 {name}：{tokens} 个 token，本机读取约 {seconds} 秒",
    "attached_long": "📎 {name}：{total} 个 token，文件较长：每个问题只读取最相关的 {tokens} 个，本机约 {seconds} 秒",
    "attach_refused": "无法添加此文件：{reason}。",
    "export_all": "全部导出",
    "imported": "已从 {source} 导入 {count} 个对话。",
    "imported_before": "其中 {skipped} 个以前已导入，未重复添加。",
    "export_file": "导出的文件",
    "nothing_to_export": "请先打开一个对话再导出。",
    "import_refused": "无法导入此文件：{reason}。",
    "system": "系统",
    "system_table": "**模型** {model}  \n**精度** {precision}  \n"
                    "**CPU 线程** {threads}  \n**同时生成的回复数** {max_batch}  \n"
                    "**内存占用** {memory_mb:,.0f} MB（KV 缓存 {kv_cache_mb:,.0f} MB）  \n"
                    "**聊天记录** {data_dir}：{disk}  \n"
                    "**上一条回复** {last}",
    "disk_free": "剩余 {free:,.0f} MB",
    "disk_low": "⚠️ 仅剩 {free:,.0f} MB：请释放一些空间，否则新消息将无法保存",
    "disk_unknown": "剩余空间未知",
    "history_busy": "⚠️ 聊天记录文件正被其他程序打开：等待保存",
    "history_busy_banner": "聊天记录文件（chat.db）正被其他程序打开并锁定：正在等待保存您的消息。"
                           "关闭该程序（或结束其编辑）后即会回复，内容不会丢失。",
    "last_reply": "首字 {ttft:.2f} 秒 · {tps:.1f} token/秒",
    "none_yet": "暂无",
    "loading_start": "正在加载模型…",
    "loading_download": "正在下载模型（仅首次）：{pct}%（{done} / {total} MB）",
    "loading_download_mb": "正在下载模型（仅首次）：已下载 {done} MB",
    "loading_convert": "正在转换模型文件以加快以后的启动（仅首次）：{pct}%",
    "loading_quantize": "正在为本机优化模型（仅首次）：{pct}%",
    "loading_calibrate": "正在测量本机最快的计算方式（仅首次）：{pct}%",
    "loading_load": "正在加载模型 {pct}%",
    "loading_hint": "现在就可以输入：模型就绪后会立即回复你的消息。",
    "loading_failed": "模型无法加载。{error}",
    "search_placeholder": "搜索对话（Ctrl+K）",
    "group_pinned": "已置顶",
    "group_today": "今天",
    "group_yesterday": "昨天",
    "group_week": "过去 7 天",
    "group_older": "更早",
    "results": "在 {count} 个对话中找到",
    "no_results": "没有包含“{query}”的对话。",
    "menu": "更多操作",
    "pin": "置顶",
    "unpin": "取消置顶",
    "chat_settings": "本对话的设置",
    "start_from_preset": "用预设开始新对话",
    "system_prompt": "系统提示词",
    "temperature": "温度（0 = 每次回答相同）",
    "reply_length": "回复长度（最多新 token 数）",
    "preset_name": "预设名称",
    "save_preset": "保存为预设",
    "remove_preset": "删除预设",
    "use_defaults": "使用 config.yaml 的设置",
    "preset_needs_name": "请先给预设起个名字。",
    "preset_saved": "已保存预设“{name}”。",
}

# gr.I18n locales: browsers report zh-CN, zh-TW, ... and gradio also falls back to "zh".
TRANSLATIONS = {"en": EN, "zh": ZH, "zh-CN": ZH, "zh-TW": ZH, "zh-HK": ZH}


def language(accept_language: str | None) -> str:
    """'zh' when the browser's first preferred language is Chinese, else 'en'."""
    first = (accept_language or "").split(",")[0].strip().lower()
    return "zh" if first.startswith("zh") else "en"


def text(lang: str, key: str, **values) -> str:
    table = ZH if lang == "zh" else EN
    return table[key].format(**values) if values else table[key]


def megabytes(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def loading(lang: str, snapshot) -> str:
    """One line for a loading.Snapshot: the phase and how far it is."""
    pct = snapshot.percent
    if snapshot.phase == "failed":
        return text(lang, "loading_failed", error=snapshot.error or "")
    if snapshot.phase == "download":
        if snapshot.total_mb:
            return text(lang, "loading_download", pct=pct, done=megabytes(snapshot.done_mb),
                        total=megabytes(snapshot.total_mb))
        return text(lang, "loading_download_mb", done=megabytes(snapshot.done_mb))
    if snapshot.phase in ("convert", "quantize", "calibrate", "load"):
        return text(lang, f"loading_{snapshot.phase}", pct=pct if pct is not None else 0)
    return text(lang, "loading_start")
