"""A self-contained HTML page: inline CSS, figures embedded as data URIs, no script or network.

The page must open from an e-mail attachment or an air-gapped cluster, so nothing is fetched:
every PNG is embedded (base64) and also written beside the page for reuse in papers.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:1.5em}
header p{margin:2px 0;color:#c9d1e0;font-size:.9em}
nav{position:sticky;top:0;background:#eef1f6;padding:8px 32px;border-bottom:1px solid #d5dbe6;z-index:1}
nav a{margin-right:14px;color:#2456a6;text-decoration:none;font-size:.92em}
main{padding:8px 32px 48px;max-width:1500px}
section{margin:26px 0;padding-top:4px;border-top:1px solid #e3e7ee}
h2{font-size:1.25em;margin:.6em 0 .3em}h3{font-size:1.05em;margin:1em 0 .3em}
p.intro{color:#4a5466;max-width:70em}p.note{color:#8a5a00;background:#fff6e0;padding:6px 10px;border-radius:4px;max-width:70em}
figure{display:inline-block;margin:8px 18px 8px 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #e3e7ee;background:#fff}
figcaption{font-size:.85em;color:#4a5466;max-width:60em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em;background:#fff}
th,td{border:1px solid #d5dbe6;padding:4px 9px;text-align:right}th{background:#eef1f6}
td:first-child,th:first-child{text-align:left}
code{background:#eef1f6;padding:1px 4px;border-radius:3px}
"""


@dataclass
class Section:
    """One ``<section>`` of the page; ``parts`` are already-rendered HTML fragments."""

    id: str
    title: str
    intro: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> Section:
        self.parts.append(f"<h3>{html.escape(text)}</h3>")
        return self

    def text(self, text: str) -> Section:
        self.parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def note(self, text: str) -> Section:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')
        return self

    def figure(self, path: str | Path, caption: str = "", *, rel: str | None = None, width: int | None = None) -> Section:
        """Embed the PNG at ``path``; ``rel`` (its path beside the page) is shown as the source."""
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        style = f' style="width:{int(width)}px"' if width else ""
        name = html.escape(rel or Path(path).name)
        cap = html.escape(caption)
        self.parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{name}" data-file="{name}"{style}>'
            f"<figcaption>{cap}{' ' if cap else ''}<code>{name}</code></figcaption></figure>"
        )
        return self

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str = "") -> Section:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def render(self) -> str:
        intro = f'<p class="intro">{html.escape(self.intro)}</p>' if self.intro else ""
        return (f'<section id="{html.escape(self.id)}"><h2>{html.escape(self.title)}</h2>{intro}'
                + "".join(self.parts) + "</section>")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@dataclass
class Page:
    """Title, a few header lines, then sections in order, with a navigation bar."""

    title: str
    subtitle: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def section(self, id: str, title: str, intro: str = "") -> Section:
        sec = Section(id, title, intro)
        self.sections.append(sec)
        return sec

    def render(self) -> str:
        nav = "".join(f'<a href="#{html.escape(s.id)}">{html.escape(s.title)}</a>' for s in self.sections)
        sub = "".join(f"<p>{html.escape(line)}</p>" for line in self.subtitle)
        body = "".join(s.render() for s in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>"
            f"<body><header><h1>{html.escape(self.title)}</h1>{sub}</header><nav>{nav}</nav>"
            f"<main>{body}</main></body></html>\n"
        )
