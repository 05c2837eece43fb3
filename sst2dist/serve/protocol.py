"""The HTTP contract: the request models of both dialects (FastAPI validates bodies with them and generates the
OpenAPI schema from them), the answer and error shapes, and one readable message per validation failure."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from sst2dist.runtime import clean_text, softmax
from sst2dist.serve.limits import ServeLimits

JSON = "application/json"
FUNCTIONS = ("softmax", "sigmoid", "none")
# "Not empty or whitespace-only" as one regular expression, so that the OpenAPI schema (a `pattern`: some character
# outside Python's whitespace) states exactly the rule that check_text applies.
WHITESPACE = "".join(f"\\u{code:04x}" for code in range(0x10000) if chr(code).isspace())
NOT_BLANK = f"[^{WHITESPACE}]"
HAS_TEXT = re.compile(NOT_BLANK)


class ServeError(Exception):
    """An answer other than 200, always sent as {"error": message, "error_type": kind}."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.headers = status, error_type, message, headers or {}


def invalid(message: str) -> ServeError:
    return ServeError(422, "validation", message)


def json_response(content: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(content).encode(), status_code=status, media_type=JSON, headers=headers)


def error_response(status: int, error_type: str, message: str, headers: dict | None = None) -> Response:
    return json_response({"error": message, "error_type": error_type}, status, headers)


def json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# --- field checks: each raises ValueError with the message the client reads -----------------------------


def check_inputs(value: object, max_client_batch: int) -> str | list[str]:
    """One text, or a list of texts. TEI's batch form (a list of one-string lists) is flattened; pairs are refused.
    The count is checked before any text: an oversized list costs no per-text work."""
    if isinstance(value, str):
        return check_text(value, "inputs")
    if not isinstance(value, list):
        raise ValueError(f"inputs must be a string or a list of strings, got {json_type(value)}")
    if not value:
        raise ValueError("inputs is an empty list: send at least one text")
    if len(value) > max_client_batch:
        raise ValueError(
            f"inputs has {len(value)} texts, over this server's limit of {max_client_batch} per request "
            "(--max-client-batch): split it into smaller requests"
        )
    return [check_item(item, f"inputs[{index}]") for index, item in enumerate(value)]


def check_item(item: object, where: str) -> str:
    if isinstance(item, list) and len(item) == 1:
        item = item[0]
    elif isinstance(item, list) and not item:
        raise ValueError(f'{where} is an empty list: send a text, or TEI\'s ["text"]')
    elif isinstance(item, list):
        raise ValueError(f"{where} is a list of {len(item)}: sentence pairs are not supported")
    if not isinstance(item, str):
        raise ValueError(f"{where} must be a string, got {json_type(item)}")
    return check_text(item, where)


def check_text(text: str, where: str) -> str:
    """The documented rule: empty or whitespace-only texts are rejected (422); lone surrogates become U+FFFD."""
    if not HAS_TEXT.search(text):
        raise ValueError(f"{where} is empty or whitespace-only: send text to classify")
    return clean_text(text)


def flag(where: str, default: bool) -> BeforeValidator:
    """A strict boolean (pydantic would read "yes" or 1 as true); null means the default."""

    def check(value: object) -> object:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {json_type(value)}")
        return value

    return BeforeValidator(check)


def positive(where: str) -> BeforeValidator:
    """A whole number >= 1; as in JSON Schema, 3.0 is the integer 3."""

    def check(value: object) -> object:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{where} must be a positive integer, got {json.dumps(value)}")
        return value

    return BeforeValidator(check)


def one_of(where: str, choices: Sequence[str], default: str, hint: str = "") -> BeforeValidator:
    def check(value: object) -> object:
        value = default if value is None else value
        if value not in choices:
            raise ValueError(hint or f"{where} must be one of {', '.join(choices)}, got {json.dumps(value)}")
        return value

    return BeforeValidator(check)


# --- requests -------------------------------------------------------------------------------------------

Text = Annotated[str, Field(min_length=1, pattern=NOT_BLANK)]
BatchItem = Text | Annotated[list[Text], Field(min_length=1, max_length=1)]  # "a" or TEI's ["a"]


def inputs_field(max_client_batch: int) -> Any:
    """The `inputs` type of a server that takes at most `max_client_batch` texts per request (schema: maxItems)."""
    return Annotated[
        Text | Annotated[list[BatchItem], Field(min_length=1, max_length=max_client_batch)],
        BeforeValidator(lambda value: check_inputs(value, max_client_batch)),
        Field(
            description="One text, or a list of texts: a batch (unlike TEI, a two-string list is NOT a sentence "
            'pair; TEI\'s [["a"], ["b"]] batch form works too). Empty or whitespace-only texts are refused.'
        ),
    ]


Inputs = inputs_field(ServeLimits().max_client_batch)  # the default; create_app builds models for its own limit
TopK = Annotated[int, Field(ge=1)] | None


@dataclass
class Query:
    """One validated request, whichever dialect: the texts and how to present their scores."""

    texts: list[str]
    single: bool  # `inputs` was one string, not a list
    truncate: bool = True
    top_k: int | None = None
    function: str = "softmax"
    truncate_hint: str = 'send "truncate": true'  # how this dialect asks for truncation


class ClassifyRequest(BaseModel):
    """A body with `inputs`; the dialects add their own options."""

    model_config = ConfigDict(extra="forbid")

    inputs: Inputs

    @model_validator(mode="before")
    @classmethod
    def _object_with_inputs(cls, data: object) -> object:
        if not isinstance(data, dict):
            raise ValueError(f"the body must be a JSON object with an inputs field, got {json_type(data)}")
        if "inputs" not in data:
            raise ValueError('inputs is missing: send {"inputs": "some text"}')
        # clean_text: a name with a lone surrogate ("\\ud800") would make pydantic fail on the message (a 500)
        unknown = sorted(clean_text(name) for name in set(data) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"{unknown[0]} is not a known field: known fields are {', '.join(cls.model_fields)}")
        return data

    @property
    def texts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs

    def query(self) -> Query:
        raise NotImplementedError


class PredictRequest(ClassifyRequest):
    """`POST /predict`, in text-embeddings-inference's form."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"inputs": "a gripping, funny film"}]})

    truncate: Annotated[
        bool | None, flag("truncate", True), Field(description="false: 422 for a text over the limit")
    ] = True
    raw_scores: Annotated[bool | None, flag("raw_scores", False), Field(description="true: logits, not softmax")] = (
        False
    )
    top_k: Annotated[TopK, positive("top_k"), Field(description="keep the k best labels (default: all)")] = None
    truncation_direction: Annotated[
        Literal["right", "Right"] | None,
        one_of(
            "truncation_direction",
            ("right", "Right"),
            "right",
            "truncation_direction must be 'right': this server only truncates on the right",
        ),
    ] = "right"

    def query(self) -> Query:
        function = "none" if self.raw_scores else "softmax"
        return Query(self.texts, isinstance(self.inputs, str), self.truncate, self.top_k, function)


class InferenceParameters(BaseModel):
    """The Hugging Face Inference API's text-classification `parameters`."""

    model_config = ConfigDict(extra="forbid")

    top_k: Annotated[TopK, positive("parameters.top_k"), Field(description="keep the k best labels")] = None
    function_to_apply: Annotated[
        Literal["softmax", "sigmoid", "none"] | None,
        one_of("parameters.function_to_apply", FUNCTIONS, "softmax"),
    ] = "softmax"
    truncation: Annotated[
        bool | None, flag("parameters.truncation", True), Field(description="false: 422 over the limit")
    ] = True

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: object) -> object:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"parameters must be an object, got {json_type(data)}")
        unknown = sorted(clean_text(name) for name in set(data) - set(cls.model_fields))  # as in ClassifyRequest
        if unknown:
            raise ValueError(f"parameters.{unknown[0]} is not supported: use {', '.join(cls.model_fields)}")
        return data


class InferenceRequest(ClassifyRequest):
    """`POST /`, in the Hugging Face Inference API's text-classification form."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "a gripping, funny film", "parameters": {"top_k": 1}}]},
    )

    parameters: Annotated[InferenceParameters | None, BeforeValidator(lambda value: {} if value is None else value)] = (
        Field(default_factory=InferenceParameters)
    )
    options: dict[str, Any] | None = Field(default=None, description="accepted and ignored (use_cache, wait_for_model)")

    def query(self) -> Query:
        given = self.parameters
        single = isinstance(self.inputs, str)
        hint = 'send "parameters": {"truncation": true}'
        return Query(self.texts, single, given.truncation, given.top_k, given.function_to_apply, hint)


def request_models(max_client_batch: int) -> tuple[type[PredictRequest], type[InferenceRequest]]:
    """Both dialects' request models for a server's --max-client-batch, so that the schema states the limit."""
    inputs = (inputs_field(max_client_batch), ...)
    predict = create_model("PredictRequest", __base__=PredictRequest, __module__=__name__, inputs=inputs)
    inference = create_model("InferenceRequest", __base__=InferenceRequest, __module__=__name__, inputs=inputs)
    return predict, inference


# --- answers ---------------------------------------------------------------------------------------------


class LabelScore(BaseModel):
    label: str
    score: float


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong and how to fix it")
    error_type: str


PredictAnswer = list[LabelScore] | list[list[LabelScore]]
InferenceAnswer = list[list[LabelScore]]
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [
        (400, "malformed JSON or a non-UTF-8 body"),
        (413, "body over --max-payload"),
        (422, "invalid inputs or parameters"),
        (429, "queue full; see Retry-After"),
        (500, "inference failed"),
        (503, "warming up or shutting down"),
    ]
}
TIMING_HEADERS = {  # on every 200 of the classify routes (text-embeddings-inference's names)
    name: {"description": description, "required": True, "schema": {"type": "string"}}
    for name, description in [
        ("x-queue-time", "ms the request waited for its batch"),
        ("x-tokenization-time", "ms its batch spent tokenizing"),
        ("x-inference-time", "ms its batch spent in the engine"),
        ("x-batch-size", "texts in its batch"),
    ]
}
CLASSIFY_RESPONSES = {200: {"headers": TIMING_HEADERS}, **ERROR_RESPONSES}


def present(scores: np.ndarray, labels: Sequence[str], top_k: int | None) -> list[dict]:
    """One text's scores as [{"label", "score"}], best first, the first `top_k` of them."""
    order = np.argsort(-scores, kind="stable")[: top_k or len(labels)]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    if function == "softmax":
        return softmax(logits)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


# --- validation failures ---------------------------------------------------------------------------------


def validation_failure(errors: Sequence[dict]) -> ServeError:
    """FastAPI's validation errors as one ServeError: 400 for a body that is not JSON, else 422 naming each field."""
    first = errors[0]
    if first["type"] == "json_invalid":
        reason = f"{first['ctx']['error']} at character {first['loc'][-1]}"
        return ServeError(400, "bad_request", f"the body is not valid JSON ({reason}): send a JSON object")
    return invalid("; ".join(describe(error) for error in errors))


def describe(error: dict) -> str:
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):  # raised by the checks above, worded for the client
        return str(cause)
    loc = tuple(error["loc"])
    where = ".".join(str(part) for part in (loc[1:] if loc[:1] == ("body",) else loc))
    if not where:
        return f"the body must be a JSON object with an inputs field, got {json_type(error.get('input'))}"
    return f"{where}: {error['msg']}"
