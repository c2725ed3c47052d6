"""The service's limits and its request and response bodies (they make the OpenAPI schema).

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints


@dataclass
class Limits:
    """What one request may ask for. Everything beyond is refused with a 4xx and a message."""

    max_body_bytes: int = 1 << 20  # JSON requests
    max_image_bytes: int = 8 << 20  # /caption uploads
    max_image_pixels: int = 40_000_000
    max_sentences: int = 64  # per /translate request
    max_chars: int = 1000  # per sentence
    max_beam: int = 8
    max_attention_sentences: int = 8  # sentences with attention per request
    max_src_tokens: int = 256  # longer inputs are truncated (reported in the response)
    # sum over sentences of source tokens x beam x max target length, checked before any work
    max_work: int = 4_000_000
    max_response_mb: float = 2.0  # answers that would be larger are refused (413), with how to ask for less
    # micro-batching and the queue
    max_batch: int = 32  # sentences per decoding call (1 = no batching)
    batch_wait_ms: float = 5.0
    max_queue: int = 2048  # sentences waiting for the model before 503
    interactive_work: int = 50_000  # jobs up to this much work take the interactive lane (batcher.py)
    request_timeout_s: float = 120.0  # then 504

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value <= 0:
                raise ValueError(f"limit {name} must be positive, got {value}")

    @property
    def max_response_bytes(self) -> int:
        return int(self.max_response_mb * 1_000_000)


def _one_or_many(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"'text' must be a string or a list of strings, not {type(value).__name__}")
    return value


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer; strict pydantic would not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Whole = Annotated[int, BeforeValidator(_whole_number)]


def _json_schema_bounds(schema: dict[str, Any]) -> None:
    """pydantic writes the bounds of a nullable validated integer as "ge"/"le": JSON Schema's names."""
    for variant in schema.get("anyOf", []):
        for ours, theirs in (("ge", "minimum"), ("le", "maximum")):
            if ours in variant:
                variant[theirs] = variant.pop(ours)


class CrossAttention(BaseModel):
    """Cross-attention of one translation: weights[layer][head][target][source] for the selected
    layers and heads (one "head" when they are averaged); each row sums to 1."""

    source_tokens: list[str] = Field(description="source subwords as the model saw them, ending with </s>")
    target_tokens: list[str] = Field(description="output subwords, ending with </s>; row t is the attention "
                                                 "while producing target_tokens[t]")
    layers: int = Field(description="the model's decoder layers")
    heads: int = Field(description="the model's attention heads")
    layer_index: list[int] = Field(description="the layers in `weights`, in order")
    head_index: list[int] | None = Field(description="the heads in `weights`; null: one mean over all heads")
    shape: list[int] = Field(description="[layers, heads, target, source] of the weights")
    weights: list[list[list[list[float]]]] | None = Field(None, description='format "json": rounded to 4 decimals')
    weights_f16: str | None = Field(None, description='format "f16": base64 of little-endian float16, row-major')


class TranslateResponse(BaseModel):
    translations: list[str] = Field(description="one per input sentence, in order; blank inputs give ''")
    beam: int
    attention: list[CrossAttention | None] | None = Field(
        None, description="when asked for: one per sentence (null for blank or unselected ones)")
    truncated: list[int] = Field(default_factory=list, description="indices of inputs cut to the source token limit")
    elapsed_ms: float


class CaptionResponse(BaseModel):
    caption: str
    words: list[str]
    attention: list[list[float]] | None = Field(
        description="per word, the weight of each image region (row-major grid); null when not asked for")
    grid: list[int] = Field(description="[rows, columns] of the attention grid")
    width: int
    height: int
    elapsed_ms: float


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    uptime_s: float
    model_loaded: bool
    queue: dict[str, Any] = Field(description="places waiting for the model, the limit, and whether it is full")
    capabilities: dict[str, bool]
    api_key_required: bool = Field(description="requests other than /health, /ready and the page need a Bearer key")
    model: dict[str, Any]
    limits: dict[str, Any]
    batching: dict[str, Any]


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, in one line")
    detail: Any = None


ERRORS = {code: {"model": ErrorBody, "description": text} for code, text in {
    400: "malformed JSON or an unreadable upload", 401: "an API key is required (Bearer)",
    404: "the loaded model cannot do this", 413: "request body, image, work or answer over the limit",
    415: "an image format that is not accepted", 422: "a field has the wrong type or is out of range",
    500: "the model failed on this request (others go on)", 503: "too busy: retry later",
    504: "no answer within the request timeout"}.items()}


def request_model(limits: Limits, n_layers: int, n_heads: int) -> type[BaseModel]:
    """The /translate body, with this server's limits and its model's layer and head counts in the schema."""
    Sentence = Annotated[str, StringConstraints(max_length=limits.max_chars)]
    Sentences = Annotated[list[Sentence], Field(min_length=1, max_length=limits.max_sentences)]
    Layer = Annotated[Whole, Field(ge=0, le=max(n_layers - 1, 0))]
    Head = Annotated[Whole, Field(ge=0, le=max(n_heads - 1, 0))]
    Index = Annotated[Whole, Field(ge=0, le=limits.max_sentences - 1)]

    class AttentionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)

        layers: Literal["all", "last"] | Annotated[list[Layer], Field(min_length=1, max_length=max(n_layers, 1))] = (
            Field("all", description="decoder layers to return"))
        heads: Literal["all", "mean"] | Annotated[list[Head], Field(min_length=1, max_length=max(n_heads, 1))] = (
            Field("all", description='heads to return, or "mean": their average'))
        sentences: Annotated[list[Index], Field(min_length=1, max_length=limits.max_attention_sentences)] | None = (
            Field(None, description="indices into `text` (default: all)"))
        format: Literal["json", "f16"] = Field("json", description='"f16": base64 float16, 3x smaller')

    class TranslateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
            "examples": [{"text": "April 1, 2038"},
                         {"text": ["July 13, 1914", "June 23, 2083"], "beam": 4,
                          "attention": {"layers": "last", "heads": "mean", "format": "f16"}}]})

        text: Annotated[
            Sentences,
            BeforeValidator(_one_or_many, json_schema_input_type=Union[Sentence, Sentences]),
            Field(description=f"a sentence, or a list of at most {limits.max_sentences}, "
                              f"each at most {limits.max_chars} characters"),
        ]
        beam: Annotated[Whole, Ge(1), Le(limits.max_beam)] | None = Field(
            None, description="beam size (1 = greedy); default: the model's own (chosen on validation when attnlab "
                              "trained it, or a Marian model's num_beams)", json_schema_extra=_json_schema_bounds)
        attention: bool | AttentionRequest = Field(
            False, description=f"cross-attention weights: true for all layers and heads, or a selection (at most "
                               f"{limits.max_attention_sentences} sentences; answers over "
                               f"{limits.max_response_mb:g} MB are refused)")

    return TranslateRequest
