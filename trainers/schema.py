"""Trainer config schemas: typed options with ranges, groups, presets, and validation.

A trainer declares its options once; the CLI validates ``--set`` values against them, the
GUI builds its form from ``ConfigSchema.to_json()``, and presets give sensible starting points.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from trainers.protocol import SpecError

FieldType = Literal["int", "float", "bool", "select", "string"]
GROUPS = ("basics", "optimizer", "scheduler", "augmentation", "optimization", "validation")


@dataclass(frozen=True)
class OptionField:
    """One option: its type, default, allowed range or choices, and where the GUI shows it."""

    name: str
    type: FieldType
    default: Any
    description: str
    group: str = "basics"
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    advanced: bool = False
    nullable: bool = False

    def coerce(self, value: Any) -> Any:
        """Return ``value`` converted to this field's type, or raise SpecError naming the field."""
        if value is None and self.nullable:
            return None
        kind = self.type
        try:
            if kind == "bool":
                if isinstance(value, str):
                    lowered = value.strip().lower()
                    if lowered not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = lowered in ("true", "1", "yes")
                elif not isinstance(value, bool):
                    raise ValueError
            elif kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                value = int(value)
            elif kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            elif kind in ("select", "string"):
                value = str(value)
        except (TypeError, ValueError):
            raise SpecError(f"option {self.name!r} must be a {kind}, got {value!r}") from None
        if kind == "select" and value not in self.choices:
            raise SpecError(
                f"option {self.name!r} must be one of {', '.join(self.choices)}, got {value!r}"
            )
        if kind in ("int", "float"):
            low = self.minimum if self.minimum is not None else float("-inf")
            high = self.maximum if self.maximum is not None else float("inf")
            if not low <= value <= high:
                raise SpecError(
                    f"option {self.name!r} must be between {_fmt(low)} and {_fmt(high)}, got {value}"
                )
        return value


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


@dataclass(frozen=True)
class ConfigSchema:
    framework: str
    fields: tuple[OptionField, ...]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def field(self, name: str) -> OptionField:
        for f in self.fields:
            if f.name == name:
                return f
        known = ", ".join(sorted(f.name for f in self.fields))
        raise SpecError(f"{self.framework} has no option {name!r} (options: {known})")

    def defaults(self) -> dict[str, Any]:
        return {f.name: f.default for f in self.fields}

    def resolve(
        self, preset: str | None = None, values: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Defaults, then the preset, then explicit values — each validated against the schema."""
        if preset is not None and preset not in self.presets:
            raise SpecError(f"unknown preset {preset!r}; choose one of {', '.join(self.presets)}")
        merged = self.defaults()
        for source in (self.presets.get(preset or "", {}), values or {}):
            for name, value in source.items():
                merged[name] = self.field(name).coerce(value)
        return merged

    def to_json(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "groups": list(GROUPS),
            "fields": [
                {k: v for k, v in asdict(f).items() if v not in (None, ())} for f in self.fields
            ],
            "presets": self.presets,
        }
