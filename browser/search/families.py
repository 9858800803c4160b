"""Reads of feature families for the feature page (parents, children, next/previous layer) and the
source page (the tree of this source's features with their children in wider SAEs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from browser.catalog.models import Source, Unit
from browser.search.models import FamilyLink

TREE_PARENTS = 50


@dataclass
class UnitFamily:
    parents: list[FamilyLink] = field(default_factory=list)
    children: list[FamilyLink] = field(default_factory=list)
    previous_layer: list[FamilyLink] = field(default_factory=list)
    next_layer: list[FamilyLink] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.parents or self.children or self.previous_layer or self.next_layer)


def _links() -> object:
    return FamilyLink.objects.select_related("parent__source__model", "child__source__model").defer(
        "parent__search", "child__search", "parent__logit_effects", "child__logit_effects")


def unit_family(unit: Unit) -> UnitFamily:
    links = _links()
    return UnitFamily(
        parents=list(links.filter(child=unit, kind=FamilyLink.Kind.WIDTH).order_by("parent__source__n_units")),  # type: ignore[attr-defined]
        children=list(links.filter(parent=unit, kind=FamilyLink.Kind.WIDTH).order_by(  # type: ignore[attr-defined]
            "child__source__n_units", "-cosine")),
        previous_layer=list(links.filter(child=unit, kind=FamilyLink.Kind.LAYER)),  # type: ignore[attr-defined]
        next_layer=list(links.filter(parent=unit, kind=FamilyLink.Kind.LAYER).order_by("-cosine")[:5]),  # type: ignore[attr-defined]
    )


@dataclass
class TreeNode:
    unit: Unit
    children: list[FamilyLink]


def source_tree(source: Source, *, limit: int = TREE_PARENTS) -> tuple[list[TreeNode], int]:
    """This source's features that have children in wider SAEs (lowest index first, at most ``limit``),
    each with its children; and how many such features there are in all."""
    parent_ids = (FamilyLink.objects.filter(parent__source=source, kind=FamilyLink.Kind.WIDTH)
                  .values_list("parent_id", flat=True).distinct())
    total = parent_ids.count()
    chosen = list(Unit.objects.filter(pk__in=parent_ids).select_related("source__model")
                  .defer("search", "logit_effects").order_by("index")[:limit])
    by_parent: dict[int, list[FamilyLink]] = {}
    for link in _links().filter(parent__in=chosen, kind=FamilyLink.Kind.WIDTH).order_by(  # type: ignore[attr-defined]
            "child__source__n_units", "-cosine"):
        by_parent.setdefault(link.parent_id, []).append(link)
    return [TreeNode(u, by_parent.get(u.pk, [])) for u in chosen], total
