"""Reading and checking Neuronpedia upload batches (SAEDashboard's ``neuronpedia_runner`` output).

One batch is a JSON object ``{"model_id", "layer", "sae_id" | "sae_set", "features": [...]}``;
each feature has ``featureIndex``, ``activations`` (``tokens``, ``values``, ``maxValue``,
``binMin`` = -1 for top activations, ``binMax``, ``binContains``), ``pos_str``/``pos_values``,
``neg_str``/``neg_values``, ``frac_nonzero``, ``freq_hist_data_bar_values``/``_heights`` and
optionally ``explanations`` (``[{"description", "explanationModelName", "authorUsername"}]``) or
``explanation`` (a string). The snake_case spellings of newer SAEDashboard versions
(``feature_index``, ``bin_min``, ...) are read too.

Optional fields may be missing; whatever is present must have the right type. Every problem is
reported with its file, feature index and field, and nothing is imported while any remains.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.core.exceptions import ValidationError

from browser.corpora.services import MAX_CONTEXT_LENGTH
from browser.labels.services import clean_text

MAX_UNITS = 1 << 21  # the harvest's limit too (UNIT_OFFSET_STRIDE): at most 2M units a source
MAX_EXAMPLES_PER_FEATURE = 10_000  # ranks are smallints; real dashboards hold a few dozen
MAX_NAME = 200  # model_id, layer and sae_id end up in names and a 500-character location
MAX_COUNT = 2**31 - 1  # token counts and histogram counts (products stay within int64)
MAX_ERRORS = 50  # a broken file would otherwise repeat one mistake thousands of times
_MISSING = object()


class Bad(Exception):
    """One field of one feature (or of the batch) is malformed."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class NpActivation:
    tokens: list[str]
    values: list[float]
    max_value: float
    top: bool
    """True for a top activation (``binMin`` -1 or absent), False for an interval sample."""


@dataclass(frozen=True)
class NpExplanation:
    text: str
    model_name: str
    """The explainer model; empty when a person wrote it."""
    author: str


@dataclass(frozen=True)
class NpFeature:
    index: int
    activations: list[NpActivation]
    frac_nonzero: float | None
    hist_values: list[float]
    hist_heights: list[float]
    up: list[tuple[str, float]]
    down: list[tuple[str, float]]
    n_tokens_seen: int | None
    """Tokens the dashboard ran over (``n_prompts_total`` x ``n_tokens_in_prompt``), when given."""
    explanations: list[NpExplanation]


@dataclass(frozen=True)
class NpBatch:
    name: str
    model_id: str
    layer: str
    """The batch's ``layer`` as text: a Neuronpedia source id such as ``6-res-jb``, or a number."""
    sae_id: str
    features: list[NpFeature]


@dataclass
class Problems:
    errors: list[dict[str, Any]] = field(default_factory=list)

    def add(self, file: str, feature: int | None, field_name: str, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"file": file, "feature": feature, "field": field_name, "error": message})

    @property
    def full(self) -> bool:
        return len(self.errors) >= MAX_ERRORS


# ---- scalar checks -----------------------------------------------------------------------------
def _get(raw: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in raw:
            return raw[name]
    return _MISSING


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Bad(name, f"must be a number (got {type(value).__name__})")
    if not math.isfinite(value):
        raise Bad(name, f"must be a finite number (got {value})")
    return float(value)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise Bad(name, f"must be a list (got {type(value).__name__})")
    return value


def _numbers(value: Any, name: str) -> list[float]:
    return [_number(v, f"{name}[{i}]") for i, v in enumerate(_list(value, name))]


def _text(value: Any, name: str, max_length: int | None = None) -> str:
    """A string PostgreSQL can store (no NUL, no lone surrogate), at most ``max_length`` long."""
    if not isinstance(value, str):
        raise Bad(name, f"must be a string (got {type(value).__name__})")
    if "\x00" in value:
        raise Bad(name, "contains the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Bad(name, "is not valid Unicode text") from None
    if max_length is not None and len(value) > max_length:
        raise Bad(name, f"is longer than {max_length} characters")
    return value


def _strings(value: Any, name: str) -> list[str]:
    return [_text(v, f"{name}[{i}]") for i, v in enumerate(_list(value, name))]


def _required(raw: Mapping[str, Any], key: str, parent: str) -> Any:
    if key not in raw:
        raise Bad(f"{parent}.{key}", "is missing")
    return raw[key]


def _pairs(raw: Mapping[str, Any], strings: str, numbers: str) -> list[tuple[str, float]]:
    tokens = _strings(raw.get(strings, []), strings)
    values = _numbers(raw.get(numbers, []), numbers)
    if len(tokens) != len(values):
        raise Bad(numbers, f"has {len(values)} values for {len(tokens)} tokens in {strings}")
    return list(zip(tokens, values, strict=True))


def _optional_int(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise Bad(name, f"must be an integer from 0 to {MAX_COUNT}")
    return value


# ---- one feature -------------------------------------------------------------------------------
def _index(raw: Any) -> int:
    if not isinstance(raw, dict):
        raise Bad("", f"a feature must be a JSON object (got {type(raw).__name__})")
    index = _get(raw, "featureIndex", "feature_index")
    if index is _MISSING:
        raise Bad("featureIndex", "is missing")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_UNITS:
        raise Bad("featureIndex", f"must be an integer from 0 to {MAX_UNITS - 1} (got {index!r})")
    return index


def _activation(raw: Any, name: str) -> NpActivation:
    if not isinstance(raw, dict):
        raise Bad(name, "must be a JSON object")
    tokens = _strings(_required(raw, "tokens", name), f"{name}.tokens")
    values = _numbers(_required(raw, "values", name), f"{name}.values")
    if len(tokens) != len(values):
        raise Bad(f"{name}.values", f"has {len(values)} values for {len(tokens)} tokens")
    if not 0 < len(tokens) <= MAX_CONTEXT_LENGTH:
        raise Bad(f"{name}.tokens", f"must hold 1 to {MAX_CONTEXT_LENGTH} tokens (got {len(tokens)})")
    max_value = _get(raw, "maxValue", "max_value")
    bin_min = _get(raw, "binMin", "bin_min")
    top = bin_min is _MISSING or _number(bin_min, f"{name}.binMin") == -1
    return NpActivation(tokens, values, max(values) if max_value is _MISSING else _number(max_value, f"{name}.maxValue"),
                        top)


def _explanations(raw: Mapping[str, Any]) -> list[NpExplanation]:
    if isinstance(raw.get("explanation"), str):
        items: list[Any] = [{"description": raw["explanation"]}]
    elif raw.get("explanation") is not None:
        raise Bad("explanation", "must be a string")
    else:
        items = _list(raw.get("explanations") or [], "explanations")
    out = []
    for i, item in enumerate(items):
        name = f"explanations[{i}]"
        if not isinstance(item, dict):
            raise Bad(name, "must be a JSON object")
        text = _get(item, "description", "text")
        if text is _MISSING or (isinstance(text, str) and not text.strip()):
            continue  # an empty explanation says nothing: skipped, not an error
        try:
            text = clean_text(text)
        except ValidationError as exc:
            raise Bad(f"{name}.description", "; ".join(exc.messages)) from None
        model_name = _text(item.get("explanationModelName") or "", f"{name}.explanationModelName", 150)
        author = _text(item.get("authorUsername") or "", f"{name}.authorUsername", 150)
        out.append(NpExplanation(text, model_name.strip(), author.strip()))
    return out


def parse_feature(raw: Any) -> NpFeature:
    index = _index(raw)
    activations = _list(raw.get("activations", []), "activations")
    if len(activations) > MAX_EXAMPLES_PER_FEATURE:
        raise Bad("activations", f"at most {MAX_EXAMPLES_PER_FEATURE} activations a feature")
    frac = raw.get("frac_nonzero")
    if frac is not None and not 0.0 <= _number(frac, "frac_nonzero") <= 1.0:
        raise Bad("frac_nonzero", f"must be between 0 and 1 (got {frac})")
    hist_values = _numbers(raw.get("freq_hist_data_bar_values", []), "freq_hist_data_bar_values")
    hist_heights = _numbers(raw.get("freq_hist_data_bar_heights", []), "freq_hist_data_bar_heights")
    if len(hist_values) != len(hist_heights) or not all(0 <= h <= MAX_COUNT for h in hist_heights):
        raise Bad("freq_hist_data_bar_heights", f"must hold one count (0 to {MAX_COUNT}) per bar value")
    prompts, per_prompt = _optional_int(raw, "n_prompts_total"), _optional_int(raw, "n_tokens_in_prompt")
    return NpFeature(
        index=index,
        activations=[_activation(a, f"activations[{i}]") for i, a in enumerate(activations)],
        frac_nonzero=None if frac is None else float(frac),
        hist_values=hist_values, hist_heights=hist_heights,
        up=_pairs(raw, "pos_str", "pos_values"), down=_pairs(raw, "neg_str", "neg_values"),
        n_tokens_seen=prompts * per_prompt if prompts and per_prompt else None,
        explanations=_explanations(raw),
    )


# ---- whole batches -----------------------------------------------------------------------------
def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


# One batch file: its bytes, a parsed document, a path, or an open binary file (an upload spooled to
# disk). Paths and files are read only when their turn comes, so one file is in memory at a time.
BatchFile = bytes | Mapping[str, Any] | Path | IO[bytes]


def _decode(raw: bytes | Path | IO[bytes]) -> Any:
    if isinstance(raw, bytes | bytearray):
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
    if isinstance(raw, Path):
        with raw.open("rb") as handle:
            return _decode(handle)
    raw.seek(0)
    # The text stream decodes as json reads it: no copy of the file's bytes next to its text.
    text = io.TextIOWrapper(raw, encoding="utf-8-sig")
    try:
        return json.load(text, parse_constant=_reject_constant)
    finally:
        text.detach()  # the caller owns the file: leave it open


def load_json(raw: BatchFile) -> Mapping[str, Any]:
    """The batch object of one file (bytes, a path, an open binary file) or of a parsed document."""
    if isinstance(raw, Mapping):
        data: Any = raw
    else:
        try:
            data = _decode(raw)
        except UnicodeDecodeError:
            raise Bad("", "the file is not UTF-8 text") from None
        except ValueError as exc:  # json.JSONDecodeError, and NaN / Infinity
            raise Bad("", f"not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise Bad("", f"a batch must be a JSON object (got {type(data).__name__})")
    return data


def _header(data: Mapping[str, Any]) -> tuple[str, str, str]:
    model_id = data.get("model_id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise Bad("model_id", "is missing (a non-empty string naming the model)")
    layer = data.get("layer", "")
    if isinstance(layer, bool) or not isinstance(layer, str | int):
        raise Bad("layer", "must be a string or an integer")
    sae_id = _get(data, "sae_id", "sae_set")
    sae_id = "" if sae_id is _MISSING or sae_id is None else sae_id
    return (_text(model_id, "model_id", MAX_NAME).strip(), _text(str(layer), "layer", MAX_NAME).strip(),
            _text(sae_id, "sae_id", MAX_NAME).strip())


def parse_batch(raw: BatchFile, name: str, problems: Problems) -> NpBatch | None:
    """One batch, or None with its problems recorded."""
    try:
        data = load_json(raw)
        model_id, layer, sae_id = _header(data)
        if "features" not in data:
            raise Bad("features", "is missing (a list of features)")
        items = _list(data["features"], "features")
    except Bad as exc:
        problems.add(name, None, exc.field, exc.message)
        return None
    features = []
    for position, item in enumerate(items):
        index: int | None = None
        try:
            index = _index(item)
            features.append(parse_feature(item))
        except Bad as exc:
            where = exc.field if index is not None else f"features[{position}]{'.' if exc.field else ''}{exc.field}"
            problems.add(name, index, where, exc.message)
            if problems.full:
                break
    return NpBatch(name, model_id, layer, sae_id, features)


def parse_batches(files: Sequence[BatchFile], names: Sequence[str],
                  problems: Problems) -> list[NpBatch]:
    """Every file's batch; they must describe one SAE and never repeat a feature."""
    batches = []
    for raw, name in zip(files, names, strict=True):
        batch = parse_batch(raw, name, problems)
        if batch is not None:
            batches.append(batch)
        if problems.full:
            return batches
    if not batches:
        return batches
    first = batches[0]
    seen: dict[int, str] = {}
    for batch in batches:
        if (batch.model_id, batch.layer, batch.sae_id) != (first.model_id, first.layer, first.sae_id):
            problems.add(batch.name, None, "model_id", f"describes {batch.model_id}/{batch.layer or batch.sae_id}, "
                         f"but {first.name} describes {first.model_id}/{first.layer or first.sae_id}: "
                         "import one SAE at a time")
        for feature in batch.features:
            if feature.index in seen:
                problems.add(batch.name, feature.index, "featureIndex", f"appears twice (also in {seen[feature.index]})")
            seen[feature.index] = batch.name
    return batches
