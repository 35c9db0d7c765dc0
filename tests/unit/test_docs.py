"""The README's settings table must name every setting, so the docs stay true."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from sandbox.config import Settings


def env_names(model: type[BaseModel], prefix: str = "SANDBOX_") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [n for n in env_names(Settings) if f"`{n}`" not in readme]
    assert missing == []
