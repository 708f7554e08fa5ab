"""What one served model is: an entry of MODELS, or CLIP_MODEL and CLIP_PRETRAINED as the only entry.

No torch here: app.settings parses MODELS into these entries before anything is loaded.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LOCAL_DIR = "local-dir:"
Towers = Literal["both", "image", "text"]
MODALITIES: dict[str, tuple[str, ...]] = {"both": ("image", "text"), "image": ("image",), "text": ("text",)}
# Names are sent in requests and become metric labels: short, printable, no spaces or quotes.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,99}")


class ModelSpec(BaseModel):
    """One model of MODELS (docs/configuration.md#model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(
        min_length=1, description="An open_clip model name, or `local-dir:/path` (config, weights, tokenizer)"
    )
    pretrained: str | None = Field(
        None, description="With an open_clip name: a pretrained tag, a checkpoint file, or `none` (random weights)"
    )
    name: str | None = Field(None, description="The name requests use; unset: the open_clip name or the folder's name")
    alias: str | None = Field(None, description="Another name requests may use")
    towers: Towers = Field("both", description="Which towers to load: `image`, `text` or `both`")
    default: bool = Field(False, description="Serve requests that name no model (the first entry when none is)")
    lazy: bool = Field(False, description="Load on the first request instead of at start")
    idle_ttl_s: float | None = Field(None, gt=0, description="Unload after this many seconds without a request")
    matryoshka_dims: tuple[int, ...] | None = Field(
        None, description="Dimensions the model was trained to be truncated to (`dimensions` accepts only these)"
    )

    @field_validator("name", "alias")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(
                f"model names are 1-100 characters of A-Z a-z 0-9 . _ : @ / + - starting with a letter or digit, "
                f"not {value!r}"
            )
        return value

    @field_validator("matryoshka_dims")
    @classmethod
    def _positive_dims(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or any(d < 1 for d in value)):
            raise ValueError(f"matryoshka_dims lists positive dimensions, e.g. [64, 128, 256], not {list(value)}")
        return tuple(sorted(set(value))) if value is not None else None

    @model_validator(mode="after")
    def _weights_are_named(self) -> ModelSpec:
        if self.local_dir:
            if self.pretrained is not None:
                raise ValueError(
                    f"{self.model}: a local-dir: folder holds its own weights; drop pretrained from this entry"
                )
            if not self.model.removeprefix(LOCAL_DIR).strip():
                raise ValueError("local-dir: needs a folder, e.g. local-dir:/models/siglip2")
        elif self.pretrained is None:
            raise ValueError(
                f"{self.model}: give pretrained: an open_clip tag (e.g. laion2b_s34b_b79k), a checkpoint file, "
                "or none for random weights"
            )
        if self.default and (self.lazy or self.idle_ttl_s is not None):
            raise ValueError(
                f"{self.served_name}: the default model stays loaded; drop lazy and idle_ttl_s from it, or make "
                "another entry the default"
            )
        return self

    @property
    def local_dir(self) -> bool:
        """Say whether the model is an open_clip `local-dir:` folder."""
        return self.model.startswith(LOCAL_DIR)

    @property
    def served_name(self) -> str:
        """Return the name requests use for this model."""
        if self.name is not None:
            return self.name
        if self.local_dir:
            return PurePath(self.model.removeprefix(LOCAL_DIR).rstrip("/")).name or self.model
        return self.model

    @property
    def names(self) -> tuple[str, ...]:
        """Return every name that selects this model: its name, then its alias."""
        return (self.served_name,) if self.alias is None else (self.served_name, self.alias)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Return what the model embeds with the towers it loads: `image`, `text`, or both."""
        return MODALITIES[self.towers]

    @property
    def weights(self) -> str:
        """Return what open_clip loads as weights: the pretrained tag or file, or "" for a folder's own."""
        return self.pretrained or ""


def check_served(specs: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
    """Return the entries with exactly one default (the first, unless one says so); raise ValueError when unusable."""
    if not specs:
        raise ValueError("MODELS is an empty list: list at least one model, or unset MODELS to use CLIP_MODEL")
    seen: dict[str, str] = {}
    for spec in specs:
        for name in spec.names:
            if name in seen:
                raise ValueError(f"MODELS names {name!r} twice ({seen[name]} and {spec.model}): names must be unique")
            seen[name] = spec.model
    defaults = [spec for spec in specs if spec.default]
    if len(defaults) > 1:
        names = ", ".join(spec.served_name for spec in defaults)
        raise ValueError(f"MODELS marks {len(defaults)} defaults ({names}): mark one at most")
    if not defaults:
        first = specs[0]
        if first.lazy or first.idle_ttl_s is not None:
            raise ValueError(
                f"{first.served_name} is the default (the first entry, none says default) but lazy or idle_ttl_s "
                'is set: the default stays loaded; mark another entry "default": true'
            )
        specs = (first.model_copy(update={"default": True}), *specs[1:])
    return specs


def spoken_list(names: list[str]) -> str:
    """Return names quoted and joined as a sentence does: 'a', 'b' or 'c'."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
