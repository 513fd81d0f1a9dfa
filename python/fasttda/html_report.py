"""A readable, self-contained ``report.html`` next to an attribution's JSONL.

One section per query: the query's prompt and response with the attributed span (its
``target``, e.g. the hallucinated entity) highlighted, then its top training examples
with rank, score, id and text, where the words they share with the query's response are
marked (and the target's words more strongly): the lexical overlap a reader checks first.

The file is one HTML document with inline CSS, no script and no external resource; every
piece of user text is escaped, so a training set holding markup cannot inject any.
"""
from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Iterable

_WORD = re.compile(r"\w+", re.UNICODE)
# Words too common to count as a match.
_STOP = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was
were will with""".split())

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:72rem;
  padding:0 1rem;color:#1b1b1b;background:#fff}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin:2.2rem 0 .4rem;border-top:1px solid #ddd;padding-top:1rem}
.meta{color:#555;font-size:.9rem} .query{background:#f6f8fa;border-left:4px solid #0072B2;padding:.6rem .9rem}
.label{font-weight:600;color:#444;margin-right:.4rem}
mark.target{background:#ffb3a7;padding:0 .15rem;border-radius:3px;font-weight:600}
mark.word{background:#fff1a8;padding:0 .1rem;border-radius:2px}
mark.word.strong{background:#ffb3a7}
table{border-collapse:collapse;width:100%;margin-top:.6rem} th,td{border-bottom:1px solid #e5e5e5;
  padding:.45rem .5rem;vertical-align:top;text-align:left} th{background:#fafafa;font-size:.85rem}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} td.id{white-space:nowrap}
.prompt{color:#555} .matched{color:#555;font-size:.85rem}
"""


def words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if w.lower() not in _STOP}


def highlight_span(text: str, target: str | None) -> str:
    """``text`` escaped, with the first occurrence of ``target`` in a ``mark.target``."""
    if not target or target not in text:
        return html.escape(text)
    start = text.find(target)
    end = start + len(target)
    return (html.escape(text[:start]) + '<mark class="target">' + html.escape(text[start:end]) + "</mark>" +
            html.escape(text[end:]))


def highlight_words(text: str, shared: set[str], strong: set[str]) -> str:
    """``text`` escaped, with each word in ``shared`` marked (``strong`` ones more so)."""
    out, last = [], 0
    for m in _WORD.finditer(text):
        word = m.group(0).lower()
        if word in shared:
            out.append(html.escape(text[last:m.start()]))
            cls = "word strong" if word in strong else "word"
            out.append(f'<mark class="{cls}">{html.escape(m.group(0))}</mark>')
            last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def render(rows: Iterable[dict], *, title: str = "fasttda attribution", top: int = 20,
           meta: dict | None = None) -> str:
    """The HTML document for attribution rows as written to ``results.jsonl``: each row
    ``{"query_id", "query": {"prompt", "response", "target"?}, "results": [{"rank", "id",
    "score", "prompt"?, "response"?}, ...]}``."""
    rows = list(rows)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    info = [f"{len(rows)} queries; the top {top} training examples of each."]
    for key, value in (meta or {}).items():
        info.append(f"{html.escape(str(key))}: {html.escape(str(value))}.")
    parts.append(f'<p class="meta">{" ".join(info)} Marked: words a training example shares with the '
                 'query\'s response; <mark class="word strong">red</mark> ones are in the attributed span.</p>')
    for n, row in enumerate(rows):
        query = row.get("query") or {}
        target = query.get("target")
        response = query.get("response", "")
        shared = words(response)
        strong = words(target) if target else set()
        parts.append(f'<section class="q" id="q{n}"><h2>Query {html.escape(str(row.get("query_id", n)))}</h2>')
        parts.append('<div class="query">')
        if query.get("prompt") is not None:
            parts.append(f'<div class="prompt"><span class="label">prompt</span>{html.escape(query["prompt"])}</div>')
        parts.append(f'<div><span class="label">response</span>{highlight_span(response, target)}</div>')
        if target:
            parts.append(f'<div class="meta">attributed span: <mark class="target">{html.escape(target)}</mark></div>')
        parts.append("</div>")
        parts.append('<table><thead><tr><th>rank</th><th>score</th><th>id</th><th>training example</th>'
                     '<th>matched</th></tr></thead><tbody>')
        for hit in row.get("results", [])[:top]:
            text_prompt, text_response = hit.get("prompt"), hit.get("response")
            if text_prompt is None and text_response is None:
                body, matched = '<span class="meta">(no text: pass the training data)</span>', set()
            else:
                both = f"{text_prompt or ''} {text_response or ''}"
                matched = words(both) & shared
                body = (f'<div class="prompt">{highlight_words(text_prompt or "", shared, strong)}</div>'
                        f'<div>{highlight_words(text_response or "", shared, strong)}</div>')
            listed = ", ".join(sorted(matched & strong) + sorted(matched - strong))
            parts.append(f'<tr><td class="num">{int(hit["rank"])}</td><td class="num">{float(hit["score"]):.4g}</td>'
                         f'<td class="id">{html.escape(str(hit["id"]))}</td><td>{body}</td>'
                         f'<td class="matched">{html.escape(listed)}</td></tr>')
        parts.append("</tbody></table></section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(path: str | os.PathLike, rows: Iterable[dict], **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(rows, **kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path
