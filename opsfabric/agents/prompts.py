"""The agent's versioned prompt (``configs/prompts/agent.v<N>.yaml``): system text, JSON instructions, examples.

Its sha256 and version label every trace made with a language model, with the hash of the tool
descriptions and schemas the model saw (:func:`tools_digest`), so two runs are comparable only when
they name the same prompt and tools.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsfabric.agents.errors import AgentError


@dataclass(frozen=True)
class FewShotExample:
    request: str
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    result: str | None = None
    answer: str | None = None


@dataclass(frozen=True)
class AgentPrompt:
    name: str
    version: str
    system: str
    json_schema_instructions: str
    examples: tuple[FewShotExample, ...]
    sha256: str
    path: str

    @property
    def label(self) -> str:
        return f"{self.name}.v{self.version}"

    @classmethod
    def load(cls, path: Path) -> "AgentPrompt":
        """Raises AgentError naming the file and the field at fault."""
        from opsfabric.files import read_prompt_file

        data, sha256 = read_prompt_file(path, ("name", "version", "system", "json_schema_instructions"), what="agent prompt",
                                        error=AgentError, hint="agents.model.prompt names the file")
        if "{tools}" not in data["json_schema_instructions"]:
            raise AgentError(f"agent prompt {path}: field 'json_schema_instructions' lacks the placeholder {{tools}}")
        examples = []
        for i, ex in enumerate(data.get("examples") or []):
            if not isinstance(ex, dict) or "request" not in ex or not (ex.get("tool") or ex.get("answer")):
                raise AgentError(f"agent prompt {path}: examples[{i}] needs 'request' and a 'tool' or an 'answer'")
            unknown = set(ex) - {"request", "tool", "arguments", "result", "answer"}
            if unknown:
                raise AgentError(f"agent prompt {path}: examples[{i}] has unknown field(s) {sorted(unknown)}")
            examples.append(FewShotExample(ex["request"], ex.get("tool"), dict(ex.get("arguments") or {}), ex.get("result"), ex.get("answer")))
        return cls(data["name"], str(data["version"]), data["system"].strip(), data["json_schema_instructions"].strip(), tuple(examples),
                   sha256, str(path))


def tools_digest(tool_specs: list[dict[str, Any]]) -> str:
    """sha256 (16 hex) of the tool names, descriptions and argument schemas as the model sees them."""
    text = json.dumps(sorted(tool_specs, key=lambda s: s["name"]), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
