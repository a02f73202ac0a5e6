"""Request types for the inference routes, in OpenAI's shapes.

An allow-list: OpenAI's chat and text completion parameters and a few of vLLM's sampling extras
(`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`), each within OpenAI's ranges. Anything
else is refused with a 400 naming the field, never passed on: vLLM would accept its own extras
from any key (`priority`, `kv_transfer_params`, `chat_template`, `prompt_logprobs`, which with a
LoRA adapter killed vLLM 0.32's CPU engine), and the request is stored with its interaction.
Tools and `response_format` are not served. The caps that depend on the host are settings
(`limits`), checked by `check_caps`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lifelong.daemon.gateway.errors import ApiError
from lifelong.daemon.settings import LimitsSettings

INT64 = 2**63


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    # No tool messages: tools are not served.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(default=None, max_length=64)


class StreamOptions(_Strict):
    include_usage: bool | None = None


Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class _Sampling(_Strict):
    """What both completion kinds accept, besides their prompt."""

    model: str = Field(description="`lifelong` (the champion), an adapter version, or `base`.")
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    n: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    user: str | None = Field(default=None, max_length=256)
    # vLLM's sampling extras that clients send (lm-eval's gen_kwargs, bench/gateway_overhead.py);
    # each costs no more than max_tokens already allows.
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    ignore_eos: bool | None = None


class ChatCompletionRequest(_Sampling):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "lifelong",
                    "messages": [{"role": "user", "content": "What is 12 + 34?"}],
                    "max_tokens": 16,
                }
            ]
        },
    )

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)


class CompletionRequest(_Sampling):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "lifelong", "prompt": "12 + 34 =", "max_tokens": 8}]},
    )

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0)
    logprobs: int | None = Field(default=None, ge=0)
    echo: bool | None = None

    @model_validator(mode="after")
    def _no_prompt_logprobs(self) -> CompletionRequest:
        # vLLM answers echo with logprobs by computing the prompt's logprobs: the path that
        # killed vLLM 0.32's CPU engine with a LoRA adapter.
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs (the prompt's log-probabilities) is not served")
        return self


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    owned_by: str = "lifelong"
    root: str | None = Field(default=None, description="What the name serves now.")


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


def _over(field: str, asked: str, cap: int, setting: str) -> ApiError:
    return ApiError(
        400, f"{field}: {asked} asked, at most {cap} allowed (limits.{setting}).",
        param=field, code="over_limit",
    )


def check_caps(request: ChatCompletionRequest | CompletionRequest, limits: LimitsSettings) -> None:
    """Raises ApiError(400) naming the first field over its cap in `limits`."""
    for field in ("max_tokens", "max_completion_tokens"):
        asked = getattr(request, field, None)
        if asked is not None and asked > limits.max_tokens:
            raise _over(field, f"{asked} tokens", limits.max_tokens, "max_tokens")
    prompts = 1
    if isinstance(request, CompletionRequest) and isinstance(request.prompt, list) \
            and request.prompt and not isinstance(request.prompt[0], int):
        prompts = len(request.prompt)  # a batch: list[str] or list[list[int]]
    if (choices := (request.n or 1) * prompts) > limits.max_choices:
        raise _over("n" if prompts == 1 else "prompt", f"{choices} answers (n times the prompts)",
                    limits.max_choices, "max_choices")
    field, logprobs = (("top_logprobs", request.top_logprobs)
                       if isinstance(request, ChatCompletionRequest)
                       else ("logprobs", request.logprobs))
    if logprobs is not None and logprobs > limits.max_logprobs:
        raise _over(field, str(logprobs), limits.max_logprobs, "max_logprobs")
    stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if len(stops) > limits.max_stop:
        raise _over("stop", f"{len(stops)} sequences", limits.max_stop, "max_stop")
    if (longest := max(map(len, stops), default=0)) > limits.max_stop_chars:
        raise _over("stop", f"a sequence of {longest} characters", limits.max_stop_chars,
                    "max_stop_chars")
    if request.logit_bias is not None and len(request.logit_bias) > limits.max_logit_bias:
        raise _over("logit_bias", f"{len(request.logit_bias)} entries", limits.max_logit_bias,
                    "max_logit_bias")
