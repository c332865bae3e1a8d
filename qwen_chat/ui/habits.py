"""What the page does in the browser alone, with no server event: keys (Ctrl+K search, Esc
stop; Enter sends and Shift+Enter is a new line in the box by Gradio's own textbox; Enter held
back while a reply is written, the box open to write the next message), the dark
mode toggle (the system's choice until the user picks one, then theirs, kept in this browser),
the sidebar closed on a phone, and reading a reply aloud through the browser's speech synthesis (a Chinese voice for Chinese
text, an English one otherwise, where the browser has them)."""

from __future__ import annotations

JS = r"""
() => {
  const THEME = 'qwen_chat_theme';
  const body = document.body;
  const saved = localStorage.getItem(THEME);
  if (saved) body.classList.toggle('dark', saved === 'dark');

  const visible = (el) => el && el.offsetParent !== null;
  // On a phone the sidebar covers the chat: closed at first, and closed again once a
  // conversation is picked or a new one started.
  const narrow = () => window.matchMedia('(max-width: 768px)').matches;
  const collapse = () => {
    const sidebar = document.querySelector('.sidebar.open');
    if (sidebar) sidebar.querySelector('.toggle-button')?.click();
  };
  if (narrow()) {
    const started = Date.now();
    const wait = () => {
      if (document.querySelector('.sidebar')) collapse();
      else if (Date.now() - started < 10000) setTimeout(wait, 100);
    };
    wait();
  }
  document.addEventListener('keydown', (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === 'k') {
      e.preventDefault();
      const sidebar = document.querySelector('.sidebar');
      if (sidebar && !sidebar.classList.contains('open')) {
        const toggle = sidebar.querySelector('.toggle-button');
        if (toggle) toggle.click();
      }
      const box = document.querySelector('#search textarea, #search input');
      if (box) setTimeout(() => { box.focus(); box.select(); }, 50);
    } else if (e.key === 'Escape') {
      const stop = document.querySelector('#message .stop-button');
      const streaming = document.querySelector('#message textarea')?.disabled;
      if (visible(stop)) { e.preventDefault(); stop.click(); }
      else if (streaming) { e.preventDefault(); document.querySelector('#stop-reply')?.click(); }
    }
  });

  // The box stays open while a reply is written, to write the next message; Enter sends it
  // once the reply has ended (while Stop shows, Enter does nothing, as in ChatGPT).
  const holdEnter = (e) => {
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing) return;
    if (!e.target.closest || !e.target.closest('#message')) return;
    if (!visible(document.querySelector('#message .stop-button'))) return;
    e.preventDefault();
    e.stopImmediatePropagation();
  };
  document.addEventListener('keydown', holdEnter, true);
  document.addEventListener('keypress', holdEnter, true);

  document.addEventListener('click', (e) => {
    if (narrow() && e.target.closest('#conversations .pick, #new-chat')) setTimeout(collapse, 50);
    if (e.target.closest('#theme-toggle')) {
      const dark = !body.classList.contains('dark');
      body.classList.toggle('dark', dark);
      localStorage.setItem(THEME, dark ? 'dark' : 'light');
      return;
    }
    const read = e.target.closest('button.read-aloud');
    if (read) {
      const row = read.closest('.message-buttons')?.previousElementSibling;
      const text = row ? row.innerText.trim() : '';
      const synth = window.speechSynthesis;
      if (!synth || !text) return;
      if (synth.speaking) { synth.cancel(); return; }  // a second click stops it
      const zh = /[\u3400-\u9fff]/.test(text);
      const utterance = new SpeechSynthesisUtterance(text);
      utterance.lang = zh ? 'zh-CN' : 'en-US';
      const voice = synth.getVoices().find((v) => v.lang.toLowerCase().startsWith(zh ? 'zh' : 'en'));
      if (voice) utterance.voice = voice;
      synth.speak(utterance);
    }
  });

  // A "read aloud" button beside each reply's copy button (Gradio re-renders the chat: the
  // button is put back whenever a reply's buttons are drawn again).
  const label = (navigator.language || '').toLowerCase().startsWith('zh') ? '朗读' : 'Read aloud';
  const addButtons = () => {
    document.querySelectorAll('#chatbot .message-buttons-left .icon-button-wrapper').forEach((bar) => {
      if (bar.querySelector('.read-aloud')) return;
      const button = document.createElement('button');
      button.className = 'read-aloud icon-button';
      button.type = 'button';
      button.title = label;
      button.setAttribute('aria-label', label);
      button.textContent = '🔊';
      bar.appendChild(button);
    });
  };
  new MutationObserver(addButtons).observe(document.body, {childList: true, subtree: true});
  addButtons();
}
"""

CSS = """
#header { align-items: center; }
#theme-toggle { max-width: 3em; min-width: 3em; }
.hidden-control { display: none !important; }
button.read-aloud { background: none; border: 0; cursor: pointer; font-size: .85em;
                    padding: 0 .3em; opacity: .75; }
button.read-aloud:hover { opacity: 1; }
@media (max-width: 640px) {
  #title h1, #title p { font-size: 1.2em; }
  #subtitle { display: none; }
  #chatbot { height: calc(100dvh - 230px) !important; }
}
"""
