"""Block Kit for Slack messages: one section per event within Slack's limits, the rest folded."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

MAX_BLOCKS = 50
SECTION_TEXT = 3000
HEADER_TEXT = 150
CONTEXT_TEXT = 3000
MESSAGE_TEXT = 40000
RESOLVED_BLOCK = "alerter-resolved"
_RESOLVED = ":white_check_mark: Resolved: "

Block = dict[str, Any]

_EMOJI = {
    "opened": ":red_circle:",
    "changed": ":large_orange_diamond:",
    "reminder": ":alarm_clock:",
    "resolved": ":white_check_mark:",
}


def escape(text: str) -> str:
    """Slack's three control characters; everything user-supplied goes through this."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header(title: str) -> Block:
    return {"type": "header", "text": {"type": "plain_text", "text": cut(title, HEADER_TEXT), "emoji": True}}


def context(text: str, block_id: str | None = None) -> Block:
    block: Block = {"type": "context", "elements": [{"type": "mrkdwn", "text": cut(text, CONTEXT_TEXT)}]}
    if block_id:
        block["block_id"] = block_id
    return block


def section(text: str, block_id: str | None = None) -> Block:
    block: Block = {"type": "section", "text": {"type": "mrkdwn", "text": cut(text, SECTION_TEXT)}}
    if block_id:
        block["block_id"] = block_id
    return block


def escape_within(text: str, limit: int) -> str:
    """`escape(text)` in at most `limit` characters, cut between characters (never inside the
    entity a character became) and marked `…`."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    size = 0
    for i, ch in enumerate(text):
        size += len(escape(ch))
        if size > limit - 1:
            return escape(text[:i]) + "…"
    return escaped


DESCRIPTION_TEXT = 1900
"""A description's share of its event's section: the program and deadline lines after it stay."""


def event_section(e: Mapping[str, Any], index: int) -> Block:
    lines = [
        f"{_EMOJI.get(e['kind'], '')} *{escape_within(e['label'], 200)}* · {e['verb']}",
        f"*{escape_within(e['action_type'], 100)}* `{escape_within(e['action_code'], 100)}` "
        f"{escape_within(e['action_description'], DESCRIPTION_TEXT)}",
        f"Program {escape_within(e['program_identifier'], 100)} · {escape_within(e['delivery_period'], 100)}"
        f" · Deadline {escape(e['deadline_text'])}",
    ]
    if e["changes"]:
        lines.append("_Changed: " + escape_within("; ".join(e["changes"]), 300) + "_")
    block = section("\n".join(lines), f"ob-{e['key_id']}-{index}")
    block["accessory"] = {
        "type": "button",
        "text": {"type": "plain_text", "text": "Open in Leap"},
        "url": cut(e["portal_url"], 3000),
        "action_id": f"portal-{index}",
    }
    return block


def _more(labels: Sequence[str]) -> Block:
    names = ", ".join(escape(x) for x in labels[:50])
    extra = f" and {len(labels) - 50} others" if len(labels) > 50 else ""
    return context(f"+{len(labels)} more: {names}{extra}")


def event_blocks(ctx: Mapping[str, Any]) -> list[Block]:
    n = ctx["notification"]
    group = ", ".join(f"{k}={v}" for k, v in n["group"].items())
    blocks = [
        header(ctx["title"]),
        context(f"Rule *{escape(n['rule'])}*" + (f" · {escape(group)}" if group else "")),
    ]
    events: list[Mapping[str, Any]] = ctx["events"]
    room = MAX_BLOCKS - len(blocks)
    shown, rest = (events, []) if len(events) <= room else (events[: room - 1], events[room - 1 :])
    blocks += [event_section(e, i) for i, e in enumerate(shown)]
    if rest:
        blocks.append(_more([e["label"] for e in rest]))
    return blocks


def _counts(title: str, counts: Mapping[str, int]) -> Block:
    lines = [f"*{title}*"] + [f"• {escape(k)}: {v}" for k, v in counts.items()]
    return section("\n".join(lines))


def digest_blocks(ctx: Mapping[str, Any]) -> list[Block]:
    d = ctx["digest"]
    return [
        header(ctx["title"]),
        context("Initial sync: these actions were already open when alerter started watching."),
        _counts("By action type", d["by_action_type"]),
        _counts("By region", d["by_region"]),
        _counts("By deadline", d["by_deadline"]),
        _urgent(ctx) if ctx["meters"] else context("No meters."),
    ]


def _urgent(ctx: Mapping[str, Any]) -> Block:
    """A digest's meters, the most urgent first, and how many actions it does not list."""
    named = list(ctx["meters"])[:50]
    shown = set(named)
    more = ctx["digest"]["total"] - sum(1 for e in ctx["events"] if e["label"] in shown)
    return context(f"Most urgent: {', '.join(escape(x) for x in named)}" + (f" and {more} more" if more > 0 else ""))


def text_blocks(title: str, text: str) -> list[Block]:
    """Blocks for a custom text template: the text in sections of at most 3000 characters."""
    blocks = [header(title)]
    chunk = ""
    for line in text.splitlines(keepends=True):
        while len(line) > SECTION_TEXT:
            line_head, line = line[:SECTION_TEXT], line[SECTION_TEXT:]
            chunk, blocks = _flush(chunk, blocks)
            blocks.append(section(line_head))
        if len(chunk) + len(line) > SECTION_TEXT:
            chunk, blocks = _flush(chunk, blocks)
        chunk += line
    _, blocks = _flush(chunk, blocks)
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], context(f"+{len(blocks) - MAX_BLOCKS + 1} more sections")]
    return blocks


def _flush(chunk: str, blocks: list[Block]) -> tuple[str, list[Block]]:
    if chunk.strip():
        blocks.append(section(chunk))
    return "", blocks


def mark_resolved(blocks: Sequence[Block], resolved: Mapping[str, str], when: str) -> list[Block]:
    """The original message with the sections of resolved obligations (key id -> label) ticked."""
    out = copy.deepcopy(list(blocks))
    unmatched = dict(resolved)
    for block in out:
        block_id = str(block.get("block_id", ""))
        for kid in resolved:
            if block_id.startswith(f"ob-{kid}-") and block.get("type") == "section":
                text = block["text"]["text"]
                first, _, rest = text.partition("\n")
                first = ":white_check_mark: ~" + first.split(" ", 1)[-1] + "~"
                block["text"]["text"] = cut(f"{first}\n{rest}\n_Resolved {when}_", SECTION_TEXT)
                unmatched.pop(kid, None)
    if unmatched:
        prior = next((b for b in out if b.get("block_id") == RESOLVED_BLOCK), None)
        # the note's block may also hold the "+N more" list it was given room in (below)
        beside, noted = [], _RESOLVED
        for element in prior["elements"] if prior else []:
            if element["text"].startswith(_RESOLVED):
                noted = element["text"] + ", "
            else:
                beside.append(element)
        text = noted + ", ".join(escape(x) for x in unmatched.values())
        note = {"type": "mrkdwn", "text": cut(text, CONTEXT_TEXT)}
        out = [b for b in out if b is not prior]
        if not beside and len(out) >= MAX_BLOCKS and out[-1].get("type") == "context":
            beside = out.pop()["elements"]  # full: the note joins the last context (the "+N more" list)
        out = [*out[: MAX_BLOCKS - 1], {"type": "context", "elements": [*beside, note], "block_id": RESOLVED_BLOCK}]
    return out


def limit_problems(text: str, blocks: Sequence[Block]) -> list[str]:
    """Slack limits a message breaks: block count, section/header/context text length."""
    problems = []
    if len(blocks) > MAX_BLOCKS:
        problems.append(f"{len(blocks)} blocks (Slack allows {MAX_BLOCKS})")
    if len(text) > MESSAGE_TEXT:
        problems.append(f"text of {len(text)} characters (Slack allows {MESSAGE_TEXT})")
    limits = {"section": SECTION_TEXT, "header": HEADER_TEXT}
    for i, block in enumerate(blocks):
        kind = block.get("type", "")
        if kind in limits and len(block["text"]["text"]) > limits[kind]:
            problems.append(f"block {i}: {kind} text over {limits[kind]} characters")
        for el in block.get("elements", []) if kind == "context" else []:
            if len(el.get("text", "")) > CONTEXT_TEXT:
                problems.append(f"block {i}: context text over {CONTEXT_TEXT} characters")
    return problems
