"""Source maps and feature families, computed on a worker from decoder directions (SAE features)
or output directions (MLP neurons: what each adds to the residual stream)."""

from __future__ import annotations

import numpy as np
import torch

from browser.catalog.models import Model, Source
from browser.search.models import FamilyLink, SourceMap
from browser.search.overview_selectors import source_state, unit_ids_by_index
from browser.search.services import family_links_replace, source_map_store
from workers.compute.families import nearest, parents
from workers.compute.layout import layout_2d
from workers.pipeline.loader import model_on, source_sae

MIN_FAMILY_COSINE = 0.5  # a wider feature with no narrower one this close has no parent (a new feature)
MIN_LAYER_COSINE = 0.3


def source_directions(source: Source) -> torch.Tensor:
    """[n_units, d] directions of a source's units, in index order."""
    if source.kind == Source.Kind.SAE:
        return source_sae(source).W_dec.detach().float().cpu()
    if source.hook_point.endswith("mlp.hook_post") and source.model.kind in (Model.Kind.CAUSAL_LM, Model.Kind.ENCODER):
        torch_model, arch, _ = model_on(source.model, "cpu")
        return arch.neuron_directions(arch.layers(torch_model)[source.layer]).detach().float().cpu()
    raise ValueError(f"no directions for {source}: maps need SAE features or MLP neurons of a transformers model")


def source_map(source_id: int, *, seed: int = 0) -> SourceMap:
    """The map of the source's current state: the stored one, else computed and stored."""
    source = Source.objects.select_related("model").get(pk=source_id)
    state = source_state(source)
    existing = SourceMap.objects.filter(source=source, state=state).first()
    if existing is not None:
        return existing
    coords, method = layout_2d(source_directions(source).numpy(), seed=seed)
    return source_map_store(source=source, state=state, coords=coords, method=method)


def _sae_sources(model_id: int) -> list[Source]:
    return list(Source.objects.filter(model_id=model_id, kind=Source.Kind.SAE).select_related("model", "sae")
                .order_by("layer", "hook_point", "n_units", "name"))


def _site(hook_point: str) -> str:
    """The hook point without its layer (``blocks.3.hook_resid_post`` -> ``hook_resid_post``)."""
    return hook_point.split(".", 2)[-1] if hook_point.startswith("blocks.") else hook_point


def width_families(model_id: int) -> int:
    """Parent links between SAEs on the same hook point: each feature of a wider SAE to its nearest
    (decoder cosine) feature in every narrower one."""
    sources = _sae_sources(model_id)
    written = 0
    for wide in sources:
        narrower = [s for s in sources if s.hook_point == wide.hook_point and s.n_units < wide.n_units]
        links: list[tuple[int, int, float]] = []
        child_ids = unit_ids_by_index(wide)
        for narrow in narrower:
            parent_ids = unit_ids_by_index(narrow)
            links += [(parent_ids[p], child_ids[c], v) for p, c, v in
                      parents(source_directions(narrow), source_directions(wide), MIN_FAMILY_COSINE)]
        written += family_links_replace(unit_ids=child_ids.values(), kind=FamilyLink.Kind.WIDTH, links=links)
    return written


def layer_families(model_id: int) -> int:
    """Each feature's most similar feature in the next layer's SAE(s) at the same site and width."""
    sources = _sae_sources(model_id)
    written = 0
    for later in sources:
        earlier = [s for s in sources if s.layer == later.layer - 1 and _site(s.hook_point) == _site(later.hook_point)
                   and s.sae.d_in == later.sae.d_in]
        child_ids = unit_ids_by_index(later)
        links: list[tuple[int, int, float]] = []
        for prev in earlier:
            prev_ids = unit_ids_by_index(prev)
            index, cosine = nearest(source_directions(prev), source_directions(later))
            links += [(prev_ids[i], child_ids[int(j)], float(c)) for i, (j, c) in
                      enumerate(zip(index.tolist(), cosine.tolist(), strict=True)) if c >= MIN_LAYER_COSINE]
        written += family_links_replace(unit_ids=child_ids.values(), kind=FamilyLink.Kind.LAYER, links=links)
    return written


def coords_close(coords: np.ndarray, a: int, b: int) -> float:
    """Distance of two units on the map relative to the map's median pairwise distance (tests, checks)."""
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(coords), 2000), rng.integers(0, len(coords), 2000)
    median = float(np.median(np.linalg.norm(coords[i] - coords[j], axis=1)))
    return float(np.linalg.norm(coords[a] - coords[b])) / max(median, 1e-12)
