"""report.html: one self-contained, escaped document; the attributed span and the shared
words are marked. Parsed with html.parser always; rendered by headless Chromium when one
is installed."""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from fasttda import html_report

ROWS = [
    {"query_id": "q0", "query": {"prompt": "the office opened in Rome", "response": "an office opens in China .",
                                 "target": "China"},
     "results": [{"rank": 1, "id": "train-7", "row": 7, "score": 0.912,
                  "prompt": "doc about Rome", "response": "an office has opened in China ."},
                 {"rank": 2, "id": "evil", "row": 3, "score": 0.5, "prompt": "<script>alert(1)</script>",
                  "response": "a & b </td></table><img src=x onerror=alert(1)>"}]},
    {"query_id": "q<1>", "query": {"prompt": "p", "response": "no target here"},
     "results": [{"rank": 1, "id": "t", "row": 0, "score": -1.5}]},  # no training text given
]


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.marks, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] == "mark":
            self.marks.append((dict(self.tags[-1][1]).get("class"), data))


VOID = {"meta", "br", "img", "link", "input", "hr"}


def parse(doc: str) -> Collect:
    class Strict(Collect):
        def handle_starttag(self, tag, attrs):
            if tag in VOID:
                self.tags.append((tag, dict(attrs)))
            else:
                super().handle_starttag(tag, attrs)

    p = Strict()
    p.feed(doc)
    p.close()
    assert p.stack == [], f"unclosed tags {p.stack}"
    return p


def test_structure_marks_and_escaping(tmp_path):
    path = html_report.write(tmp_path / "report.html", ROWS, title="top 50", top=10, meta={"mode": "dda"})
    doc = path.read_text()
    p = parse(doc)
    tags = [t for t, _ in p.tags]
    assert tags.count("section") == 2 and tags.count("table") == 2
    assert "script" not in tags and "img" not in tags and "link" not in tags  # nothing injected, nothing external
    assert all(not a.get("src") and not a.get("href") for _, a in p.tags)
    assert ("target", "China") in p.marks  # the attributed span in the query
    assert ("word strong", "China") in p.marks and ("word", "office") in p.marks  # shared words in the example
    text = "".join(p.text)
    assert "<script>alert(1)</script>" in text and "onerror=alert(1)>" in text  # shown as text
    assert "Query q<1>" in text and "(no text: pass the training data)" in text
    assert "0.912" in text and "train-7" in text


def test_top_limits_rows(tmp_path):
    rows = [{"query_id": "q", "query": {"response": "x"},
             "results": [{"rank": r + 1, "id": f"t{r}", "row": r, "score": 1.0 / (r + 1)} for r in range(30)]}]
    p = parse(html_report.render(rows, top=5))
    assert [t for t, _ in p.tags].count("tr") == 1 + 5


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install -y chromium)")
def test_renders_in_headless_chromium(tmp_path):
    path = html_report.write(tmp_path / "report.html", ROWS)
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           path.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<section") == 2 and '<mark class="target">China</mark>' in dom
    assert "<script>" not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
