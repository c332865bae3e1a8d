"""A phone for tests/test_phone.py: run inside the test's network namespace (`ip netns exec`),
it opens a URL in Chromium at a phone's width, as a phone that scanned the QR code does, and
prints what it saw as JSON. Its cookies persist in `--state` between runs (one phone)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--shot", type=Path)
    p.add_argument("--expect-chat", help="text a user bubble must show")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        context = browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
            user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                       "(KHTML, like Gecko) Chrome/156.0 Mobile Safari/537.36",
            storage_state=str(args.state) if args.state.exists() else None)
        page = context.new_page()
        response = page.goto(args.url, timeout=60_000)
        seen = {"status": response.status if response else None, "url": page.url}
        if args.expect_chat:
            bubble = page.locator('#chatbot [data-testid="user"]').first
            bubble.wait_for(timeout=60_000)
            page.wait_for_function(
                "t => [...document.querySelectorAll('#chatbot [data-testid=\"user\"]')]"
                ".some(e => e.innerText.includes(t))", arg=args.expect_chat, timeout=60_000)
            seen["chat"] = bubble.inner_text()
            seen["scroll_width"] = page.evaluate("document.documentElement.scrollWidth")
        else:
            seen["text"] = page.locator("body").inner_text()
        if args.shot:
            page.screenshot(path=str(args.shot))
        context.storage_state(path=str(args.state))
        browser.close()
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
