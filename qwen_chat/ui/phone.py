"""The sidebar's "Use on my phone": a QR code to pair a phone, the paired devices, phone access off.

Opening it turns phone access on (lan.LanListener: the app also listens on the local network,
for paired devices only) and shows a QR code of a link with a fresh six-digit code (devices.py),
the code itself for typing, the devices paired so far with Remove, and a button that turns phone
access off again (the network listener closes). Nothing is on the network before it is opened.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from .. import i18n
from ..devices import COOKIE, Devices
from .common import Page, lang_of


@dataclass
class PhoneAccess:
    devices: Devices
    lan: object  # lan.LanListener
    port: int
    available: bool  # False when config.yaml's host already serves the network

    def owner_of(self, request: gr.Request | None) -> str | None:
        """The owner a paired device's request stands for (its cookie), else None."""
        cookies = getattr(request, "cookies", None) or {}
        return self.devices.owner_of(cookies.get(COOKIE)) if cookies else None


def render(page: Page, phone: PhoneAccess):
    t = page.t
    open_btn = gr.Button("📱 " + t("phone_open"), size="sm", elem_id="phone-open")
    with gr.Column(visible=False, elem_id="phone-panel") as panel:
        code_box = gr.HTML("", elem_id="phone-code")
        devices = gr.Dropdown([], label=t("phone_devices"), elem_id="phone-devices",
                              interactive=True, value=None)
        with gr.Row():
            remove_btn = gr.Button(t("phone_remove"), size="sm", elem_id="phone-remove")
            off_btn = gr.Button(t("phone_off"), size="sm", variant="stop", elem_id="phone-off")

    def device_choices(owner):
        return [(f"{d.name} · {i18n.text('en', 'phone_seen', when=_ago(d.last_seen))}", d.id)
                for d in phone.devices.of(owner)] if owner else []

    def start(owner, request: gr.Request):
        lang = lang_of(request)
        if not phone.available:
            gr.Warning(i18n.text(lang, "phone_unavailable"))
            return gr.skip(), gr.skip(), gr.skip()
        try:
            url = phone.lan.start(phone.port)
        except OSError as exc:
            gr.Warning(i18n.text(lang, "phone_failed", reason=exc))
            return gr.skip(), gr.skip(), gr.skip()
        code = phone.devices.new_code(owner)
        link = f"{url}pair?code={code}"
        import segno

        qr = segno.make(link, error="m").svg_data_uri(scale=5, border=2)
        shown = (f'<div class="phone-qr"><img src="{qr}" alt="QR code" width="200" height="200">'
                 f'<p>{html.escape(i18n.text(lang, "phone_scan"))}</p>'
                 f'<p class="phone-link"><code>{html.escape(link)}</code></p>'
                 f'<p>{html.escape(i18n.text(lang, "phone_code"))} <b class="phone-digits">{code}</b></p></div>')
        return gr.update(visible=True), shown, gr.update(choices=device_choices(owner), value=None)

    def remove(owner, device_id):
        if device_id is not None:
            phone.devices.revoke(owner, int(device_id))
        return gr.update(choices=device_choices(owner), value=None)

    def off():
        phone.lan.stop()
        phone.devices.end_codes()
        return gr.update(visible=False), ""

    open_btn.click(start, [page.owner], [panel, code_box, devices], **page.private)
    remove_btn.click(remove, [page.owner, devices], [devices], **page.private)
    off_btn.click(off, None, [panel, code_box], **page.private)
    return open_btn


def _ago(when: float | None) -> str:
    if not when:
        return "never"
    minutes = int((time.time() - when) // 60)
    return "just now" if minutes < 1 else f"{minutes} min ago" if minutes < 60 else \
        time.strftime("%Y-%m-%d %H:%M", time.localtime(when))
