"""Retrieved text is data, never instructions: detect instruction-like text and keep it delimited.

The detector is a set of patterns for the common shapes of prompt injection (override earlier
instructions, change role, reveal the prompt, fake chat-role tags). It flags, it does not censor:
flagged chunks are shown to an LLM inside the data delimiters with ``flagged="true"``, and the
extractive answerer never copies sentences from them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

INJECTION_PATTERNS: dict[str, str] = {
    "override_instructions": r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(previous|prior|above|earlier|all|your|system)\b[^.\n]{0,30}\b(instructions?|prompts?|rules|directions)\b",
    "role_change": r"\byou are now\b|\bact as (an? )?(unrestricted|different|new)\b|\b(developer|god|jailbreak|DAN) mode\b",
    "prompt_exfiltration": r"\b(reveal|print|show|repeat|leak)\b[^.\n]{0,40}\b(system prompt|hidden instructions|instructions|prompt)\b",
    "fake_role_tag": r"</?\s*(system|assistant|user|instructions?)\s*>|^\s*(system|assistant)\s*:",
    "answer_hijack": r"\b(answer|respond|reply) (to )?every question with\b|\bfrom now on\b[^.\n]{0,40}\b(answer|respond|reply|say)\b",
    "secrecy": r"\bdo not (mention|reveal|tell)\b[^.\n]{0,30}\b(this|these) (notice|instructions?|message)\b",
}
_COMPILED = {name: re.compile(pattern, re.I | re.M) for name, pattern in INJECTION_PATTERNS.items()}


@dataclass(frozen=True)
class InjectionFlag:
    rule: str
    excerpt: str


def detect_injection(text: str) -> list[InjectionFlag]:
    """Instruction-like passages in ``text`` (empty list: nothing suspicious)."""
    flags = []
    for name, pattern in _COMPILED.items():
        match = pattern.search(text)
        if match:
            start, end = max(0, match.start() - 20), min(len(text), match.end() + 20)
            flags.append(InjectionFlag(name, text[start:end].replace("\n", " ")))
    return flags


def sentence_is_suspicious(sentence: str) -> bool:
    return bool(detect_injection(sentence))


def as_data_block(index: int, source: str, text: str, flagged: bool) -> str:
    """One retrieved chunk as a delimited, escaped data block for an LLM prompt.

    Angle brackets are escaped so a document cannot close its own ``<document>`` element or open
    a fake ``<system>`` one.
    """
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<document id="{index}" source="{source}" flagged="{str(flagged).lower()}">\n{escaped}\n</document>'
