"""The sidebar's list of conversations: one gr.HTML whose value (built here, pure) the page
re-renders. Groups Pinned / Today / Yesterday / Previous 7 days / Older, or the results of a
search with the matching words; each row opens its conversation on a click and has a menu
(rename inline, pin, export, delete after a confirmation).

The row's events reach Python through the component's `trigger`: "select" ({id, index}) opens
a conversation (at the matching message of a search result), "click" ({action, id, title})
is a menu action ("submit" when it deletes the open conversation). Titles and snippets are user text: the template's {{ }} escapes them.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time

from .. import i18n
from ..search import Hit
from ..store import Conversation

GROUPS = ("group_pinned", "group_today", "group_yesterday", "group_week", "group_older")
MENU = ("rename", "pin", "unpin", "export_md", "export_json", "delete", "confirm_delete",
        "yes_delete", "cancel", "menu")

TEMPLATE = """
<nav class="chats">
{{#if value.empty}}<p class="empty">{{value.empty}}</p>{{/if}}
{{#each value.groups}}
<section class="group">
  <h4>{{this.label}}</h4>
  {{#each this.items}}
  <div class="row{{#if this.current}} selected{{/if}}" data-id="{{this.id}}"
       data-index="{{this.index}}" data-title="{{this.title}}">
    <div class="pick" role="button" tabindex="0">
      <span class="title">{{#if this.pinned}}📌 {{/if}}{{this.title}}</span>
      {{#if this.snippet}}<span class="snippet">{{this.snippet}}</span>{{/if}}
    </div>
    <button class="menu-toggle" aria-label="{{@root.value.labels.menu}}"
            title="{{@root.value.labels.menu}}">⋯</button>
    <div class="menu" role="menu">
      <button data-act="rename">{{@root.value.labels.rename}}</button>
      {{#if this.pinned}}<button data-act="unpin">{{@root.value.labels.unpin}}</button>
      {{else}}<button data-act="pin">{{@root.value.labels.pin}}</button>{{/if}}
      <button data-act="export_md">{{@root.value.labels.export_md}}</button>
      <button data-act="export_json">{{@root.value.labels.export_json}}</button>
      <button data-act="delete" class="danger">{{@root.value.labels.delete}}</button>
    </div>
    <div class="confirm" role="alertdialog">
      <span>{{@root.value.labels.confirm_delete}}</span>
      <button data-act="confirm_delete" class="danger">{{@root.value.labels.yes_delete}}</button>
      <button data-act="cancel">{{@root.value.labels.cancel}}</button>
    </div>
  </div>
  {{/each}}
</section>
{{/each}}
</nav>
"""

CSS = """
.chats { display: flex; flex-direction: column; gap: .6em; }
.group h4 { margin: .2em .4em; font-size: .75em; text-transform: uppercase; letter-spacing: .04em;
            opacity: .6; }
.row { position: relative; display: flex; flex-wrap: wrap; align-items: center;
       border-radius: 8px; }
.row:hover { background: var(--background-fill-secondary); }
.row.selected { background: var(--color-accent-soft); }
.pick { flex: 1; min-width: 0; padding: .45em .6em; cursor: pointer; }
.title { display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.snippet { display: block; font-size: .8em; opacity: .7; overflow: hidden;
           text-overflow: ellipsis; white-space: nowrap; }
.menu-toggle { background: none; border: 0; padding: .2em .5em; cursor: pointer; opacity: .5;
               font-size: 1.1em; color: inherit; }
.row:hover .menu-toggle, .row.selected .menu-toggle, .menu-toggle:focus { opacity: 1; }
.menu, .confirm { display: none; flex-basis: 100%; flex-wrap: wrap; gap: .3em; padding: .3em .6em .5em; }
.row.menu-open .menu, .row.confirming .confirm { display: flex; }
.row.confirming .menu { display: none; }
.menu button, .confirm button { border: 1px solid var(--border-color-primary); border-radius: 6px;
       background: var(--background-fill-primary); color: inherit; padding: .15em .5em;
       font-size: .85em; cursor: pointer; }
.danger { color: var(--button-cancel-text-color, #c00) !important; }
input.rename { width: 100%; font: inherit; padding: .1em .3em; }
.empty { opacity: .7; padding: .3em .6em; }
"""

JS = """
const rows = () => element.querySelectorAll('.row.menu-open, .row.confirming');
const close = () => rows().forEach(r => r.classList.remove('menu-open', 'confirming'));
const rename = (row) => {
  const title = row.querySelector('.title');
  const input = document.createElement('input');
  input.className = 'rename';
  input.value = row.dataset.title;
  title.replaceWith(input);
  input.focus();
  input.select();
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    const value = input.value.trim();
    input.replaceWith(title);
    if (save && value && value !== row.dataset.title) {
      title.textContent = value;
      trigger('click', {action: 'rename', id: row.dataset.id, title: value});
    }
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') { e.preventDefault(); finish(true); }
    if (e.key === 'Escape') { e.preventDefault(); finish(false); }
  });
  input.addEventListener('blur', () => finish(true));
};
const open = (row) => {
  close();
  const index = row.dataset.index === '' ? null : Number(row.dataset.index);
  trigger('select', {id: row.dataset.id, index: index});
};
element.addEventListener('click', (e) => {
  const row = e.target.closest('.row');
  if (!row || !element.contains(row) || e.target.closest('input.rename')) return;
  const within = (selector) => { const found = e.target.closest(selector); return found && row.contains(found) ? found : null; };
  if (within('.pick')) { open(row); return; }
  if (within('.menu-toggle')) {
    const was = row.classList.contains('menu-open');
    close();
    if (!was) row.classList.add('menu-open');
    return;
  }
  const act = within('[data-act]');
  if (!act) return;
  const action = act.dataset.act;
  if (action === 'rename') { close(); rename(row); return; }
  if (action === 'delete') { row.classList.add('confirming'); return; }
  if (action === 'cancel') { close(); return; }
  close();
  // Deleting the open conversation also ends its reply, if one streams ("submit" cancels it).
  const open_one = action === 'confirm_delete' && row.classList.contains('selected');
  trigger(open_one ? 'submit' : 'click', {action: action, id: row.dataset.id});
});
element.addEventListener('keydown', (e) => {
  const row = e.target.classList.contains('pick') && e.target.closest('.row');
  if (row && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); open(row); }
});
// A search result opened: scroll the chat to the matching message, and mark it a moment.
let jumped = null;
watch('value', () => {
  const jump = props.value && props.value.jump;
  if (!jump || jump.nonce === jumped) return;
  jumped = jump.nonce;
  const started = Date.now();
  const find = () => {
    const found = document.querySelectorAll('#chatbot .message-row')[jump.index];
    if (found) {
      found.scrollIntoView({block: 'center'});
      found.classList.add('found');
      setTimeout(() => found.classList.remove('found'), 2500);
    } else if (Date.now() - started < 5000) {
      setTimeout(find, 100);
    }
  };
  find();
});
"""


def group_of(updated_at: float, now: float) -> str:
    """Which date group a conversation last changed at `updated_at` falls in (local days)."""
    days = (dt.date.fromtimestamp(now) - dt.date.fromtimestamp(updated_at)).days
    if days <= 0:
        return "group_today"
    if days == 1:
        return "group_yesterday"
    return "group_week" if days <= 7 else "group_older"


def _labels(lang: str) -> dict:
    return {key: i18n.text(lang, key) for key in MENU}


def listing(conversations: list[Conversation], current: str | None, lang: str, *,
            now: float | None = None) -> dict:
    """The list's value: the conversations (pinned first, newest first) in date groups."""
    now = time.time() if now is None else now
    key = lambda c: "group_pinned" if c.pinned else group_of(c.updated_at, now)  # noqa: E731
    ordered = sorted(conversations, key=lambda c: (GROUPS.index(key(c)), -c.updated_at))
    groups = [{"label": i18n.text(lang, name),
               "items": [{"id": c.id, "title": c.title, "pinned": bool(c.pinned),
                          "current": c.id == current, "index": ""} for c in items]}
              for name, items in itertools.groupby(ordered, key=key)]
    return {"groups": groups, "labels": _labels(lang), "empty": ""}


def results(hits: list[Hit], query: str, pinned: set[str], current: str | None,
            lang: str) -> dict:
    """The list's value while searching: the conversations found, each with its match."""
    items = [{"id": h.conversation_id, "title": h.title, "pinned": h.conversation_id in pinned,
              "current": h.conversation_id == current, "snippet": h.snippet,
              "index": "" if h.message_index is None else h.message_index} for h in hits]
    groups = [{"label": i18n.text(lang, "results", count=len(items)), "items": items}] if items else []
    empty = "" if items else i18n.text(lang, "no_results", query=query)
    return {"groups": groups, "labels": _labels(lang), "empty": empty}
