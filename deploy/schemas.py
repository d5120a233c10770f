"""The service's response schemas and the words of its OpenAPI page (/docs, /redoc).

Kept apart from deploy/service.py so that what a client may rely on (field names, types, the
scale a score is on) is read in one place and is what /openapi.json publishes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The scale every score of one response is on (`score_scale`); one scale per response, so a
# client never compares a popularity count with a model score.
SCORE_SCALES = {
    "model": "the champion's own ranking score (a logit, dot product or similarity sum, "
    "depending on the model family): higher ranks first; comparable within one response only",
    "popularity": "the item's number of training interactions (the popularity fallback)",
    "cosine": "cosine similarity of the two items' vectors, from -1 to 1 (1: same direction)",
}
ScoreScale = Literal["model", "popularity", "cosine"]

DESCRIPTION = (
    "Recommendations from the champion model of the artifacts folder (`recsys promote`), "
    "scored with onnxruntime. Ids are the original ids of the data (as in the raw files). "
    "Items a user has already seen, or sent, are never recommended.\n\n"
    "**Scores.** Every response names the one scale all its scores are on, `score_scale`:\n"
    + "".join(f"- `{name}`: {meaning}\n" for name, meaning in SCORE_SCALES.items())
    + "\n**Fallbacks.** When the model cannot rank for a request (an unknown user, an empty "
    "history, a model that scores known users only) the answer is the most popular items "
    "instead, with `fallback: true`, the `reason`, and `score_scale: popularity`.\n\n"
    "A newly promoted champion is loaded and swapped in without dropping a request."
)

TAGS = [
    {"name": "recommend", "description": "Items for a user or a history; similar items."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
]


class Item(BaseModel):
    item_id: str = Field(description="the item's original id")
    score: float = Field(description="on the response's `score_scale`; higher ranks first")
    title: str = Field(description="the item's title (empty when the data has none)")
    genres: list[str] = Field(description="the item's genres (empty when the data has none)")


class Recommendations(BaseModel):
    model: str = Field(description="the served model's name (a registry family)")
    version: str = Field(description="the artifact version that answered")
    user_id: str | None = Field(None, description="the user asked for (GET only)")
    fallback: bool = Field(description="true: popular items, the model could not rank here")
    reason: str | None = Field(None, description="why the fallback was used (fallbacks only)")
    score_scale: ScoreScale = Field(description="the scale of every score in `items`")
    items: list[Item] = Field(description="at most k items, best first")


class SimilarItems(BaseModel):
    model: str = Field(description="the served model's name")
    version: str = Field(description="the artifact version that answered")
    item_id: str = Field(description="the item asked for (never in `items`)")
    score_scale: ScoreScale = Field(description="the scale of every score in `items`")
    similar_by: Literal["neighbours", "cosine", "one_item_history", "text"] = Field(
        description="how: item-kNN's neighbour lists, cosine of the model's item vectors, the "
        "model's scores for a history of that item alone, or item text embeddings (an item "
        "added after export by `recsys embed-items`, unknown to the model)"
    )
    items: list[Item] = Field(description="at most k items, most similar first")


class Health(BaseModel):
    status: Literal["ok"] = Field(description="always ok: the process answers")


class Readiness(BaseModel):
    """What is served; more fields of the model's summary may follow."""

    model_config = ConfigDict(extra="allow")

    ready: bool = Field(description="false (with status 503) until a model is loaded")
    model: str | None = Field(None, description="the served model")
    version: str | None = Field(None, description="the served artifact version")
    family: str | None = Field(None, description="the model family of the registry")
    scorer: str | None = Field(None, description="how a request becomes scores (manifest)")
    items: int | None = Field(None, description="items in the served catalogue")
    users: int | None = Field(None, description="users the model knows")
    item_embeddings: bool | None = Field(None, description="whether /similar can answer")
    fallback: bool | None = Field(
        None, description="true: the champion was refused, the newest valid version serves"
    )
    refused_champion: Any = Field(None, description="the refused champion pointer, if any")


class Problem(BaseModel):
    detail: Any = Field(description="what is wrong: a sentence, or the validation errors")


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses an endpoint can answer."""
    meaning = {
        400: "a request the model cannot take (unknown item ids, unknown genre, too many items)",
        404: "no such item, or the model has no item vectors",
        413: "the request body is over --max-body-bytes",
        503: "no model loaded yet, or over --limit-concurrency connections",
    }
    return {code: {"model": Problem, "description": meaning[code]} for code in codes}
