"""Retrieved text is data, never instructions: detect instruction-like text and keep it delimited.

The detector is a heuristic: patterns for the common shapes of prompt injection (override earlier
instructions, change role, reveal the prompt, fake chat-role tags), matched on whitespace-squashed
text with common look-alike letters folded to Latin, so hard-wrapped lines and homoglyphs do not
hide them. It will miss novel phrasings; the structural defence is that retrieved text always sits
inside escaped data delimiters under a system prompt that says it is data. It flags, it does not
censor: flagged chunks are shown to an LLM with ``flagged="true"``, and the extractive answerer
never copies a flagged paragraph (the clean paragraphs of a flagged chunk may still answer).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

INJECTION_PATTERNS: dict[str, str] = {
    "override_instructions": r"\b(ignore|disregard|forget|override)\b[^.\n]{0,60}\b(previous|prior|above|earlier|all|your|system)\b[^.\n]{0,40}\b(instructions?|prompts?|rules|directions|guidelines)\b"
    r"|\b(ignore|disregard|forget)\b (the|these|those) (instructions?|rules|prompts?|directions) (above|before|you were given)"
    r"|\b(ignore|disregard|forget)\b (everything|anything|all) (you were|you have been|you've been|above|before|said)",
    "role_change": r"\byou are now\b|\bact as (an? )?(unrestricted|different|new)\b|\b(developer|god|jailbreak|DAN) mode\b",
    "prompt_exfiltration": r"\b(reveal|print|show|repeat|leak|output)\b[^.\n]{0,40}\b(system prompt|hidden (instructions|prompt|rules)|your (instructions|prompt|rules)|(initial|original) (instructions|prompt))\b",
    "fake_role_tag": r"</?\s*(system|assistant|user|instructions?)\s*>|^\s*(system|assistant)\s*:|<\|im_(start|end)\|>|^\s*#{2,}\s*(instructions?|system)\s*(:|$)|\[/?INST\]",
    "answer_hijack": r"\b(answer|respond|reply) (to )?every question with\b|\bfrom now on\b[^.\n]{0,40}\b(answer|respond|reply|say)\b",
    "secrecy": r"\bdo not (mention|reveal|tell)\b[^.\n]{0,30}\b(this|these) (notice|instructions?|message)\b",
}
_COMPILED = {name: re.compile(pattern, re.I | re.M) for name, pattern in INJECTION_PATTERNS.items()}


@dataclass(frozen=True)
class InjectionFlag:
    rule: str
    excerpt: str


# Cyrillic and Greek letters that look like Latin ones (NFKC does not fold them).
_CONFUSABLES = str.maketrans(
    "АВЕКМНОРСТХаеорсухіІјЈѕЅԁΑΒΕΗΙΚΜΝΟΡΤΧΥΖοι",
    "ABEKMHOPCTXaeopcyxiIjJsSdABEHIKMNOPTXYZoi",
)


def _normalised(text: str) -> str:
    """Look-alike letters folded to Latin and runs of whitespace (line wraps included) squashed."""
    return re.sub(r"\s+", " ", text.translate(_CONFUSABLES))


def detect_injection(text: str) -> list[InjectionFlag]:
    """Instruction-like passages in ``text`` (empty list: nothing suspicious)."""
    flags = []
    folded = text.translate(_CONFUSABLES)
    squashed = _normalised(text)
    for name, pattern in _COMPILED.items():
        # squashed text catches phrases split by line wraps; folded keeps lines for ^-anchored tags
        for candidate in (squashed, folded):
            match = pattern.search(candidate)
            if match:
                start, end = max(0, match.start() - 20), min(len(candidate), match.end() + 20)
                flags.append(InjectionFlag(name, candidate[start:end].replace("\n", " ")))
                break
    return flags


def sentence_is_suspicious(sentence: str) -> bool:
    return bool(detect_injection(sentence))


def as_data_block(index: int, source: str, text: str, flagged: bool) -> str:
    """One retrieved chunk as a delimited, escaped data block for an LLM prompt.

    Angle brackets are escaped so a document cannot close its own ``<document>`` element or open
    a fake ``<system>`` one.
    """
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    source = html.escape(source, quote=True)  # a file name cannot add attributes or elements either
    return f'<document id="{index}" source="{source}" flagged="{str(flagged).lower()}">\n{escaped}\n</document>'
