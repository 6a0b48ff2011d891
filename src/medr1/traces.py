"""Reasoning traces, parsed once and rendered three ways: plain or coloured text (`medr1 ask`, `medr1 trace`),
markdown and HTML (the report). A trace is a samples.jsonl record (medr1.evaluate): its completion is split into
think / search / information / answer pieces (`trace_segments`), searches are paired with the titles the retriever
returned, and a method that retrieves into its prompt (rag) shows that retrieval first.

    from medr1.traces import render_trace
    print(render_trace(record, color=True))
"""

from __future__ import annotations

import html
import re
from typing import Any

from medr1.methods import METHODS

_SEGMENT_RE = re.compile(r"<(think|search|information|answer)>(.*?)(</\1>|\Z)", re.S)


def trace_segments(completion: str, with_closed: bool = False) -> list[tuple]:
    """(kind, text) pieces of a completion in order: think, search, information, answer, or text between tags.

    With `with_closed`, (kind, text, closed): closed is False for a tag left open at the end (budget ran out)."""
    segments: list[tuple] = []
    pos = 0
    for m in _SEGMENT_RE.finditer(completion):
        between = completion[pos: m.start()].strip()
        if between:
            segments.append(("text", between, True) if with_closed else ("text", between))
        piece = (m.group(1), m.group(2).strip())
        segments.append((*piece, bool(m.group(3))) if with_closed else piece)
        pos = m.end()
    rest = completion[pos:].strip()
    if rest:
        segments.append(("text", rest, True) if with_closed else ("text", rest))
    return segments


def render_trace(rec: dict, color: bool = False, max_chars: int = 600) -> str:
    """A sample record as readable text: the case, thinking, each search with its evidence titles, the answer."""
    import typer

    def paint(text: str, **style: Any) -> str:
        return typer.style(text, **style) if color else text

    def clip(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= max_chars else text[: max_chars - 3] + "..."

    lines = [paint("Case: ", bold=True) + clip(rec["question"])]
    for letter, text in sorted((rec.get("options") or {}).items()):
        lines.append(f"  {letter}. {text}")
    titles = rec.get("retrieved_titles") or []
    executed = len(rec.get("queries") or [])
    n_search = 0
    for kind, text, closed in trace_segments(rec.get("completion") or "", with_closed=True):
        note = "" if closed else paint(" (unfinished: budget)", dim=True)
        if kind == "think":
            lines.append(paint("thinking: ", fg="cyan") + clip(text) + note)
        elif kind == "search":
            n_search += 1
            if closed and n_search > executed:
                note = paint(" (not run: turn limit)", dim=True)
            lines.append(paint(f"search {n_search}: ", fg="yellow", bold=True) + clip(text) + note)
        elif kind == "information":
            found = titles[n_search - 1] if 0 < n_search <= len(titles) else []
            evidence = " | ".join(found) if found else clip(text)
            lines.append(paint("  evidence: ", fg="blue") + evidence)
        elif kind == "answer":
            lines.append(paint("answer: ", bold=True) + text + note)
        else:
            lines.append(paint("text: ", dim=True) + clip(text))
    pred = rec.get("prediction")
    chosen = (rec.get("options") or {}).get(pred, "") if pred else ""
    verdict = ""
    if rec.get("correct") is not None and rec.get("gold"):
        ok = bool(rec.get("correct"))
        verdict = paint(f"  [gold {rec['gold']}: {'right' if ok else 'wrong'}]", fg="green" if ok else "red", bold=True)
    answer = f"{pred}. {chosen}" if chosen else (pred or "unparseable")
    lines.append(paint("diagnosis: ", bold=True) + paint(answer, fg="green" if pred else "red", bold=True) + verdict)
    lines.append(paint(
        f"({rec.get('finish_reason')}; {len(rec.get('queries') or [])} searches; {rec.get('n_generated', 0)} tokens; "
        f"{float(rec.get('seconds') or 0):.1f} s)", dim=True))
    return "\n".join(lines)


def trace_pieces(rec: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(kind, text, retrieved titles) in order: think/search/information/answer/text; rag's up-front retrieval first."""
    titles = rec.get("retrieved_titles") or []
    pieces: list[tuple[str, str, list[str]]] = []
    segments = trace_segments(rec.get("completion") or "")
    searches_in_text = sum(1 for kind, _ in segments if kind == "search")
    queries = rec.get("queries") or []
    method = METHODS.get(str(rec.get("method")))
    if queries and searches_in_text == 0 and method is not None and method.llm and method.retrieval == "prompt":
        for i, q in enumerate(queries):  # rag: retrieval happened before generation, with the question as query
            pieces.append(("search", q, list(titles[i]) if i < len(titles) else []))
    n = 0
    for kind, text in segments:
        if kind == "search":
            n += 1
            pieces.append(("search", text, list(titles[n - 1]) if n - 1 < len(titles) else []))
        else:
            pieces.append((kind, text, []))
    return pieces


def _clip(text: str, n: int = 700) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _option(rec: dict[str, Any], letter: str | None) -> str:
    if not letter:
        return "unparseable"
    text = (rec.get("options") or {}).get(letter)
    return f"{letter}. {text}" if text else str(letter)


def trace_markdown(rec: dict[str, Any], source: str) -> str:
    ok = bool(rec.get("correct"))
    lines = [f"**{rec.get('id')}** ({source}) — {'✅ correct' if ok else '❌ wrong'}", "",
             f"> {_clip(rec.get('question', ''), 900)}", ""]
    for letter, text in sorted((rec.get("options") or {}).items()):
        lines.append(f"- {letter}. {text}")
    lines.append("")
    for kind, text, titles in trace_pieces(rec):
        if kind == "think":
            lines.append(f"- 💭 thinking: {_clip(text)}")
        elif kind == "search":
            lines.append(f"- 🔎 search: `{_clip(text, 200)}`" + (f" → {'; '.join(titles)}" if titles else ""))
        elif kind == "information":
            lines.append(f"- 📄 information: {_clip(text, 300)}")
        elif kind == "answer":
            lines.append(f"- answer: `{_clip(text, 100)}`")
        else:
            lines.append(f"- text: {_clip(text)}")
    lines.append(f"- **prediction {_option(rec, rec.get('prediction'))}; gold {_option(rec, rec.get('gold'))}** "
                 f"({'✅' if ok else '❌'})")
    return "\n".join(lines)


def trace_html(rec: dict[str, Any], source: str) -> str:
    e = html.escape
    ok = bool(rec.get("correct"))
    verdict = "correct" if ok else "wrong"
    out = [f'<div class="trace {verdict}">',
           f'<div class="trace-head"><b>{e(str(rec.get("id")))}</b> <span class="src">{e(source)}</span> '
           f'<span class="badge {verdict}">{verdict}</span></div>',
           f'<div class="case">{e(_clip(rec.get("question", ""), 1200))}</div><ul class="options">']
    for letter, text in sorted((rec.get("options") or {}).items()):
        cls = " gold" if letter == rec.get("gold") else ""
        out.append(f'<li class="opt{cls}">{e(letter)}. {e(str(text))}</li>')
    out.append("</ul>")
    for kind, text, titles in trace_pieces(rec):
        if kind == "think":
            out.append(f'<div class="seg think"><span class="tag">thinking</span> {e(_clip(text))}</div>')
        elif kind == "search":
            found = "".join(f"<li>{e(t)}</li>" for t in titles) or "<li><i>no results</i></li>"
            out.append(f'<div class="seg search"><span class="tag">search</span> {e(_clip(text, 300))}</div>'
                       f'<div class="seg info"><span class="tag">retrieved</span><ol>{found}</ol></div>')
        elif kind == "information":
            out.append(f'<details class="seg info"><summary>information (inserted by the retriever)</summary>'
                       f"{e(_clip(text, 1500))}</details>")
        elif kind == "answer":
            out.append(f'<div class="seg answer {verdict}"><span class="tag">answer</span> {e(_clip(text, 200))}</div>')
        else:
            out.append(f'<div class="seg text">{e(_clip(text))}</div>')
    out.append(f'<div class="final {verdict}">prediction <b>{e(_option(rec, rec.get("prediction")))}</b> · gold '
               f'<b>{e(_option(rec, rec.get("gold")))}</b></div></div>')
    return "\n".join(out)
