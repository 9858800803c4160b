"""Source maps (stored for the current source state; identical directions land together) and
feature families (a wider SAE whose features split each narrower one in two gets exactly those
parent-child pairs; the next layer's copy links feature to feature)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from browser.catalog.models import Sae, Unit
from browser.core.services import blob_write
from browser.search.models import FamilyLink, SourceMap
from browser.search.overview_selectors import source_map_current
from workers.compute.sae import files
from workers.compute.sae.model import SaeConfig, SparseAutoencoder
from workers.pipeline.maps import coords_close, layer_families, source_map, width_families
from workers.pipeline.saes import sae_register

D_IN = 384  # MiniLM's d_model: the SAEs read blocks.N.hook_resid_post


def sae_from(w_dec: torch.Tensor, layer: int) -> SparseAutoencoder:
    cfg = SaeConfig(architecture="relu", d_in=D_IN, d_sae=len(w_dec), hook_name=f"blocks.{layer}.hook_resid_post")
    return SparseAutoencoder(cfg, {"W_enc": w_dec.T.clone(), "b_enc": torch.zeros(len(w_dec)),
                                   "W_dec": w_dec.clone(), "b_dec": torch.zeros(D_IN)})


def split_pair(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A narrow dictionary [n, d] and a wide one [2n, d] whose rows 2i and 2i+1 split row i in two."""
    g = torch.Generator().manual_seed(seed)
    narrow = torch.nn.functional.normalize(torch.randn(n, D_IN, generator=g), dim=-1)
    offset = torch.nn.functional.normalize(torch.randn(n, D_IN, generator=g), dim=-1) * 0.4
    wide = torch.stack([narrow + offset, narrow - offset], dim=1).reshape(2 * n, D_IN)  # [n, 2, d] -> [2n, d]
    return narrow, wide


def _pairs(kind: str) -> set[tuple[str, int, str, int]]:
    return {(link.parent.source.name, link.parent.index, link.child.source.name, link.child.index)
            for link in FamilyLink.objects.filter(kind=kind).select_related("parent__source", "child__source")}


def test_a_split_wider_sae_gets_exactly_the_planted_parents(minilm: Any) -> None:
    narrow, wide = split_pair()
    sae_register(model=minilm, name="narrow", sae=sae_from(narrow, 2))
    sae_register(model=minilm, name="wide", sae=sae_from(wide, 2))
    width_families(minilm.pk)
    assert _pairs(FamilyLink.Kind.WIDTH) == {("narrow", i, "wide", c) for i in range(32) for c in (2 * i, 2 * i + 1)}


def test_coactivation_is_the_share_of_the_childs_top_contexts_held_by_the_parent(minilm: Any) -> None:
    from browser.examples.models import Example

    narrow, wide = split_pair(n=4)
    narrow_row = sae_register(model=minilm, name="narrow", sae=sae_from(narrow, 2))
    wide_row = sae_register(model=minilm, name="wide", sae=sae_from(wide, 2))
    parent = Unit.objects.get(source=narrow_row.source, index=1)
    child = Unit.objects.get(source=wide_row.source, index=3)  # a child of narrow/1
    contexts = {parent.pk: [1, 2, 3, 4, 5, 6, 7, 8], child.pk: [2, 4, 6, 100, 101]}  # 3 of the child's 5 shared
    Example.objects.bulk_create([Example(run_id=1, unit_id=u, kind=Example.Kind.TOP, rank=r, context_id=c,
                                         max_value=1.0, max_pos=0, values=b"") for u, cs in contexts.items()
                                 for r, c in enumerate(cs)])
    width_families(minilm.pk)
    links = {(x.parent_id, x.child_id): x.coactivation for x in FamilyLink.objects.all()}
    assert links[(parent.pk, child.pk)] == pytest.approx(3 / 5)
    assert sum(v is not None for v in links.values()) == 1  # the other children have no top examples


def test_the_next_layer_links_each_feature_to_its_copy(minilm: Any) -> None:
    narrow, _ = split_pair()
    g = torch.Generator().manual_seed(9)
    perm = torch.randperm(32, generator=g)
    sae_register(model=minilm, name="l2", sae=sae_from(narrow, 2))
    sae_register(model=minilm, name="l3", sae=sae_from(narrow[perm] + 0.05 * torch.randn(32, D_IN, generator=g), 3))
    layer_families(minilm.pk)
    assert _pairs(FamilyLink.Kind.LAYER) == {("l2", int(perm[j]), "l3", j) for j in range(32)}


def _replace_weights(sae_row: Sae, sae: SparseAutoencoder) -> None:
    blob = blob_write(key=f"replaced-{sae_row.pk}-{np.random.default_rng().integers(1 << 30)}", data=files.to_bytes(sae))
    Sae.objects.filter(pk=sae_row.pk).update(weights=blob)


def test_map_is_stored_for_the_current_state_and_identical_directions_land_together(minilm: Any) -> None:
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(8, D_IN, generator=g)  # features in 8 groups, as related features are
    w = torch.nn.functional.normalize(centres.repeat(12, 1) + 0.7 * torch.randn(96, D_IN, generator=g), dim=-1)
    w[40], w[71] = w[5], w[5]
    row = sae_register(model=minilm, name="mapped", sae=sae_from(w, 2))
    stored = source_map(row.source_id)
    current, coords = source_map_current(row.source)
    assert current is not None and current.pk == stored.pk and coords is not None and coords.shape == (96, 2)
    assert coords_close(coords, 5, 40) < 0.1 and coords_close(coords, 5, 71) < 0.1
    assert coords_close(coords, 5, 6) > coords_close(coords, 5, 40)

    w2 = w.clone()
    w2[10], w2[5] = w2[60], w[0]  # new weights: 10 and 60 identical now
    _replace_weights(row, sae_from(w2, 2))
    assert source_map_current(row.source) == (None, None)  # the old map is not shown for new weights
    fresh = source_map(row.source_id)
    assert fresh.pk != stored.pk and SourceMap.objects.filter(source=row.source).count() == 1
    _, coords = source_map_current(row.source)
    assert coords is not None and coords_close(coords, 10, 60) < 0.1


def test_a_second_call_reuses_the_stored_map(minilm: Any) -> None:
    w = torch.nn.functional.normalize(torch.randn(24, D_IN, generator=torch.Generator().manual_seed(1)), dim=-1)
    row = sae_register(model=minilm, name="again", sae=sae_from(w, 2))
    assert source_map(row.source_id).pk == source_map(row.source_id).pk
    assert Unit.objects.filter(source=row.source).count() == 24


@pytest.mark.parametrize("n", [3, 12])
def test_tiny_sources_get_a_pca_layout(minilm: Any, n: int) -> None:
    w = torch.nn.functional.normalize(torch.randn(n, D_IN, generator=torch.Generator().manual_seed(n)), dim=-1)
    row = sae_register(model=minilm, name=f"tiny{n}", sae=sae_from(w, 2))
    assert source_map(row.source_id).method == "pca"


def test_source_page_draws_the_map_and_the_tree_and_the_feature_page_its_family(minilm: Any, client: Any,
                                                                                cast: Any) -> None:
    from django.urls import reverse

    from browser.labels.services import label_save

    narrow, wide = split_pair(n=20)
    row = sae_register(model=minilm, name="narrow", sae=sae_from(narrow, 2))
    sae_register(model=minilm, name="wide", sae=sae_from(wide, 2))
    width_families(minilm.pk)
    label_save(unit=Unit.objects.get(source=row.source, index=4), user=cast.owner, text="semicolons & <tags>")
    page = client.get(reverse("source", args=["minilm-l6", "narrow"]))
    html = page.content.decode()
    assert page.status_code == 200 and "No map for this source" in html and "family-tree" in html
    assert "No map for this source" in client.get(reverse("source_map", args=["minilm-l6", "narrow"])).content.decode()
    source_map(row.source_id)
    html = client.get(reverse("source", args=["minilm-l6", "narrow"])).content.decode()
    assert 'href="/s/minilm-l6/narrow/map/"' in html and "<circle" not in html  # the list page draws no map
    html = client.get(reverse("source_map", args=["minilm-l6", "narrow"]), {"map_color": "labelled"}).content.decode()
    assert html.count("<circle") == 20
    assert '<a href="/u/minilm-l6/narrow/4/"><circle' in html and "<title>#4: semicolons &amp; &lt;tags&gt;</title>" in html
    assert 'fill="#fde725" data-unit="4"' in html and 'fill="#440154" data-unit="5"' in html  # labelled: yellow
    api = client.get(reverse("api-source-map", args=["minilm-l6", "narrow"])).json()
    _, coords = source_map_current(row.source)
    assert coords is not None and api["points"][7] == [7, round(float(coords[7, 0]), 4), round(float(coords[7, 1]), 4)]
    family = client.get(reverse("api-unit-family", args=["minilm-l6", "wide", 9])).json()
    assert [p["unit"] for p in family["parents"]] == ["minilm-l6/narrow/4"] and family["parents"][0]["cosine"] > 0.9
    assert client.get(reverse("api-source-map", args=["minilm-l6", "wide"])).status_code == 404
    html = client.get(reverse("unit", args=["minilm-l6", "wide", 9])).content.decode()
    assert 'href="/u/minilm-l6/narrow/4/">narrow/4</a>' in html
    html = client.get(reverse("unit", args=["minilm-l6", "narrow", 4])).content.decode()
    assert 'href="/u/minilm-l6/wide/8/">wide/8</a>' in html and 'href="/u/minilm-l6/wide/9/">wide/9</a>' in html


def test_neuron_directions_are_the_down_projection_columns(minilm: Any) -> None:
    """MLP neurons are mapped by what each writes to the residual stream: for BERT (no norm between
    the down projection and the residual add) the columns of ``output.dense``, read here from the
    Hugging Face module itself."""
    from transformers import AutoModel

    from browser.catalog.services import source_get_or_create, units_ensure
    from browser.search.encoder import model_dir
    from workers.pipeline.maps import source_directions

    source = source_get_or_create(model=minilm, name="L2.mlp", hook_point="blocks.2.mlp.hook_post", layer=2,
                                  kind="neurons", n_units=1536)
    units_ensure(source=source)
    hf = AutoModel.from_pretrained(model_dir())
    expected = hf.encoder.layer[2].output.dense.weight.detach().T  # [d_model, d_mlp] -> [d_mlp, d_model]
    assert torch.allclose(source_directions(source), expected, atol=1e-6)


def test_unit_family_reads_every_list_in_one_query_and_none_for_a_neuron(minilm: Any, django_assert_num_queries: Any) -> None:
    """Three widths on one hook point and a next layer: each feature's parents, children and layer
    links equal the links filtered one list at a time (the old four queries); a neuron costs none."""
    from browser.catalog.models import Source
    from browser.search.families import source_tree, unit_family

    narrow, wide = split_pair(n=8)
    g = torch.Generator().manual_seed(4)
    wider = torch.nn.functional.normalize(wide.repeat_interleave(2, dim=0) + 0.05 * torch.randn(32, D_IN, generator=g), dim=-1)
    for name, w, layer in (("n8", narrow, 2), ("w16", wide, 2), ("w32", wider, 2), ("l3", wide, 3)):
        sae_register(model=minilm, name=name, sae=sae_from(w, layer))
    width_families(minilm.pk)
    layer_families(minilm.pk)
    links = FamilyLink.objects.all()
    for unit in Unit.objects.filter(source__name__in=["n8", "w16", "w32", "l3"]).select_related("source"):
        with django_assert_num_queries(1):
            family = unit_family(unit)
        expect_parents = sorted(links.filter(child=unit, kind="width"), key=lambda x: x.parent.source.n_units)
        expect_children = sorted(links.filter(parent=unit, kind="width"), key=lambda x: (x.child.source.n_units, -x.cosine))
        expect_next = sorted(links.filter(parent=unit, kind="layer"), key=lambda x: -x.cosine)[:5]
        assert [x.pk for x in family.parents] == [x.pk for x in expect_parents]
        assert [x.pk for x in family.children] == [x.pk for x in expect_children]
        assert {x.pk for x in family.previous_layer} == {x.pk for x in links.filter(child=unit, kind="layer")}
        assert [x.pk for x in family.next_layer] == [x.pk for x in expect_next]
    assert any(unit_family(u).children for u in Unit.objects.filter(source__name="w16").select_related("source"))
    from browser.catalog.services import source_get_or_create, units_ensure
    source = source_get_or_create(model=minilm, name="blocks.2.mlp.hook_post", hook_point="blocks.2.mlp.hook_post",
                                  layer=2, kind=Source.Kind.NEURONS, n_units=4)
    units_ensure(source=source)
    neuron = Unit.objects.filter(source=source).select_related("source").first()
    with django_assert_num_queries(0):
        assert not unit_family(neuron)
        assert source_tree(neuron.source) == ([], 0)
