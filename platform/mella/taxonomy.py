"""The image taxonomy of paper 3.1.1 (4 major / 20 fine categories) as data: ``data/taxonomy.yaml``,
parsed once; used by the categorise and caption stages and by ``corpus_stats``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import yaml

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Category:
    key: str  # e.g. "screenshot_ui"
    major: str  # e.g. "information_technology"
    label: str  # e.g. "Screenshot & UI"
    description: str
    imagenet: tuple[int, ...]
    caption_aspects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Taxonomy:
    majors: dict[str, dict]  # key -> {label, description, caption_aspects}
    fine: dict[str, Category]  # insertion order = the numbering shown to the MLLM

    def major_of(self, key: str) -> str:
        return self.fine[key].major if key in self.fine else UNKNOWN


def _parse_indices(spec: str) -> tuple[int, ...]:
    out: list[int] = []
    for part in str(spec or "").split(","):
        part = part.strip()
        if part:
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b or a) + 1))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def load_taxonomy(path: str | None = None) -> Taxonomy:
    """Parse ``data/taxonomy.yaml`` (or ``path``).

    Raises ``ValueError`` when a fine category names an unknown major, or an ImageNet index is outside
    0..999 or mapped twice; ``KeyError`` for a missing field.
    """
    text = (
        open(path, encoding="utf-8").read()
        if path
        else resources.files("mella").joinpath("data/taxonomy.yaml").read_text("utf-8")
    )
    raw = yaml.safe_load(text)
    majors = {
        k: {"label": v["label"], "description": v["description"], "caption_aspects": tuple(v["caption_aspects"])}
        for k, v in raw["majors"].items()
    }
    fine: dict[str, Category] = {}
    seen: dict[int, str] = {}
    for key, v in raw["fine"].items():
        if v["major"] not in majors:
            raise ValueError(f"category {key!r}: unknown major {v['major']!r}")
        idx = _parse_indices(v.get("imagenet", ""))
        for i in idx:
            if not 0 <= i < 1000:
                raise ValueError(f"category {key!r}: ImageNet index {i} outside 0..999")
            if i in seen:
                raise ValueError(f"ImageNet index {i} mapped to both {seen[i]!r} and {key!r}")
            seen[i] = key
        fine[key] = Category(key, v["major"], v["label"], v["description"], idx, tuple(v.get("caption_aspects") or ()))
    return Taxonomy(majors, fine)
