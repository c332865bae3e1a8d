"""The page's server on a computer that is doing other things: an idle Gradio queue must not
keep a core's tenth busy (its default polls for events 1,000 times a second)."""

from __future__ import annotations

import gradio as gr

from qwen_chat.web import PROGRESS_POLL_S, QUEUE_POLL_S, _poll_less


def test_gradio_queue_polls_at_most_every_10_ms_once_served():
    with gr.Blocks() as demo:
        gr.Textbox()
    demo.queue()
    # The attributes Gradio polls with: if an upgrade renames them this fails, instead of the
    # app silently taking its CPU back from the model's threads.
    assert demo._queue.sleep_when_free < QUEUE_POLL_S  # Gradio's own default (1 ms)
    _poll_less(demo)
    assert demo._queue.sleep_when_free == QUEUE_POLL_S == 0.01
    assert demo._queue.progress_update_sleep_when_free == PROGRESS_POLL_S
