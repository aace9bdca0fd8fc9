"""The parts of ``model.yaml`` that say which versions serve and how traffic reaches them.

``versions:`` is Triton's version policy (``{latest: N}``, ``all`` or ``{specific: [..]}``);
``routing:`` splits a model's traffic between variants (a version number or a label) by weight,
optionally sticky by a key, copies a fraction of it to shadow variants, and guards a canary.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ExperimentConfig",
    "GuardrailConfig",
    "LatestVersions",
    "RoutingConfig",
    "SpecificVersions",
    "VersionPolicy",
    "select_versions",
]

_SELECTOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_STICKY = re.compile(r"^(parameters\.[A-Za-z0-9_.-]+|header:[A-Za-z0-9-]+)$")


class LatestVersions(BaseModel):
    """Serve the ``latest`` highest-numbered versions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latest: int = Field(ge=1, description="How many of the newest versions to serve.")


class SpecificVersions(BaseModel):
    """Serve exactly the listed versions (those that exist on disk)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specific: list[int] = Field(min_length=1, description="Version numbers to serve.")


VersionPolicy = LatestVersions | SpecificVersions | Literal["all"]


def select_versions(policy: VersionPolicy, on_disk: list[int]) -> list[int]:
    """The versions of ``on_disk`` (ascending) that ``policy`` serves, ascending."""
    if policy == "all":
        return list(on_disk)
    if isinstance(policy, LatestVersions):
        return list(on_disk[-policy.latest :])
    return [v for v in on_disk if v in set(policy.specific)]


class GuardrailConfig(BaseModel):
    """When to roll a canary back on its own: it is worse than the primary over a window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_error_rate_increase: float = Field(
        default=0.05, ge=0, le=1, description="Roll back when canary error rate − primary error rate exceeds this."
    )
    max_p99_increase_ms: float | None = Field(
        default=None, gt=0, description="Roll back when canary p99 − primary p99 exceeds this many ms (None: off)."
    )
    window_s: float = Field(default=60.0, gt=0, description="Seconds of recent requests compared.")
    min_requests: int = Field(default=50, ge=1, description="Requests each side needs in the window before judging.")


class ExperimentConfig(BaseModel):
    """How ``sluice ab report`` judges the experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outcome: Literal["binary", "continuous"] = Field(
        default="binary", description="binary: rewards are 0/1 (z-test); continuous: any number (Welch's t-test)."
    )
    min_effect: float = Field(default=0.02, gt=0, description="Smallest difference in mean outcome worth detecting.")
    alpha: float = Field(default=0.05, gt=0, lt=1, description="Significance level (two-sided).")
    power: float = Field(default=0.8, gt=0, lt=1, description="Power to detect min_effect.")


class RoutingConfig(BaseModel):
    """``routing:`` in model.yaml: how requests that name no version are split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[str, float] = Field(
        description="Variant (version number or label) → weight; the first listed is the primary (control)."
    )
    sticky_key: str | None = Field(
        default=None, description="'parameters.NAME' (a request parameter) or 'header:NAME' (an HTTP header)."
    )
    shadow: dict[str, float] = Field(
        default_factory=dict, description="Variant → fraction of requests copied to it; callers never see its answer."
    )
    mode: Literal["weighted", "thompson"] = Field(
        default="weighted", description="thompson: move weight toward the variant with the better outcomes."
    )
    floor_weight: float = Field(
        default=0.05, ge=0, lt=0.5, description="In thompson mode, the least share any variant keeps."
    )
    max_shadow_in_flight: int = Field(
        default=8, ge=1, description="Shadow copies running at once per model; more are dropped, not queued."
    )
    guardrail: GuardrailConfig | None = Field(default=None, description="Automatic rollback of a failing canary.")
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)

    @field_validator("weights", "shadow", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads `{1: 90}` with integer keys; a variant is a version number or a label, as text
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("weights")
    @classmethod
    def _weights_valid(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights:
            raise ValueError("needs at least one variant")
        for variant, weight in weights.items():
            _check_selector(variant)
            if weight < 0:
                raise ValueError(f"weight of '{variant}' must be >= 0, got {weight:g}")
        if sum(weights.values()) <= 0:
            raise ValueError("at least one weight must be positive")
        return weights

    @field_validator("shadow")
    @classmethod
    def _shadow_valid(cls, shadow: dict[str, float]) -> dict[str, float]:
        for variant, fraction in shadow.items():
            _check_selector(variant)
            if not 0 <= fraction <= 1:
                raise ValueError(f"shadow fraction of '{variant}' must be between 0 and 1, got {fraction:g}")
        return shadow

    @field_validator("sticky_key")
    @classmethod
    def _sticky_valid(cls, key: str | None) -> str | None:
        if key is not None and not _STICKY.match(key):
            raise ValueError(f"must be 'parameters.NAME' or 'header:NAME', got {key!r}")
        return key

    @model_validator(mode="after")
    def _shadow_not_routed(self) -> RoutingConfig:
        both = sorted(set(self.shadow) & {v for v, w in self.weights.items() if w > 0})
        if both:
            raise ValueError(f"variant(s) {', '.join(both)} cannot both take traffic and shadow it")
        return self

    @property
    def primary(self) -> str:
        """The control variant: the first one listed under ``weights``."""
        return next(iter(self.weights))


def _check_selector(variant: str) -> None:
    if not _SELECTOR.match(variant):
        raise ValueError(f"variant {variant!r} must be a version number or a label")
