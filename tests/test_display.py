"""What the page shows of a message: HTML as text, no image fetched from another host."""

from __future__ import annotations

from qwen_chat.display import as_text, plain, shown, typed
from qwen_chat.store import Message


def test_an_image_from_another_host_becomes_a_link_naming_it():
    assert as_text("see ![cat](http://evil.example/x.png?q=chat) ok") == \
        "see [↗ cat · evil.example](http://evil.example/x.png?q=chat) ok"
    assert as_text('![](https://a.example:8080/i.png "title")') == \
        "[↗ a.example](https://a.example:8080/i.png)"
    assert as_text("![x](//cdn.example/p.png)") == "[↗ x · cdn.example](//cdn.example/p.png)"


def test_images_needing_no_other_host_stay_images():
    for kept in ("![local](/gradio_api/file=x.png)", "![d](data:image/png;base64,AAAA)"):
        assert as_text(kept) == kept


def test_nothing_else_starting_with_an_exclamation_bracket_is_an_image():
    # Reference-style images, other schemes, brackets in the alt: "![" escaped, shown as text.
    assert as_text("![r][ref]\n\n[ref]: http://evil.example/x.png").startswith("!\\[r][ref]")
    assert as_text("![f](file:///etc/passwd)") == "!\\[f](file:///etc/passwd)"
    assert as_text("![a [b]](http://evil.example/y.png)").startswith("!\\[a [b]]")


def test_code_is_verbatim_and_html_is_text():
    assert as_text("`![c](http://x.example/y.png)` a & <b>") == \
        "`![c](http://x.example/y.png)` a &amp; &lt;b>"
    assert as_text("```\n![c](http://x.example/y.png)\n") == "```\n![c](http://x.example/y.png)\n"


def test_allowed_remote_images_are_left_as_written():
    text = "![cat](http://evil.example/x.png)"
    assert as_text(text, remote_images=True) == text
    reply = Message(1, "c", "assistant", text, 0.0, status="complete")
    assert shown(reply, "en")["content"].startswith("[↗ cat · evil.example]")
    assert shown(reply, "en", remote_images=True)["content"] == text


def test_what_the_chat_shows_gives_back_what_was_typed():
    """An edit starts from the message as the chat shows it: as_text's escapes are undone."""
    for text in ("a & b <i>x</i> &lt; `<code> & ![c](http://x.example/y.png)`",
                 "![r][ref] and ![f](file:///etc/passwd)", "plain", "&amp;"):
        assert typed(as_text(text)) == text
    assert as_text(typed(as_text("see ![cat](http://e.example/x.png)"))) == \
        as_text("see ![cat](http://e.example/x.png)")  # a link stays the same link


def test_the_text_of_a_chat_message_in_any_of_gradios_shapes():
    assert plain("hi") == "hi"
    assert plain([{"type": "text", "text": "a"}, {"type": "file", "file": {}},
                  {"type": "text", "text": "b"}]) == "ab"
    assert plain({"type": "text", "text": "c"}) == "c" and plain(None) == ""
