from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from browser.catalog.models import Sae
from workers.compute.hub import HubFilesMissing
from workers.compute.loading import ModelLoadError
from workers.pipeline.models import model_get_or_register
from workers.pipeline.sae_hub import default_name, sae_import_files, sae_import_release, sae_import_repo


class Command(BaseCommand):
    help = (
        "Import an SAE and register its features as a source: from a directory (SAELens, sparsify or Gemma "
        "Scope params.npz), by SAELens release and id (--release R --id ID), or from a hub repo folder "
        "(--repo ORG/NAME --path SUBDIR). Transcoders (an SAELens transcoder directory, or circuit-tracer's "
        "layer_N.safetensors file, locally or as --path of a hub repo) become sources of kind transcoder. Hub files come from the local Hugging Face cache, or are downloaded "
        "when online."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", help="the SAE's directory (or a Gemma Scope params.npz)")
        parser.add_argument("--release", help="an SAELens release, e.g. gemma-scope-2b-pt-res (`sae_registry` lists them)")
        parser.add_argument("--id", dest="sae_id", help="the SAE's id in the release, e.g. layer_12/width_16k/average_l0_82")
        parser.add_argument("--repo", help="a hub repo id ORG/NAME holding SAE folders (sparsify, SAELens, Gemma Scope)")
        parser.add_argument("--path", dest="repo_path", default="", help="the SAE's folder inside --repo")
        parser.add_argument("--model", required=True, help="a registered model, packaged alias, path or hub id")
        parser.add_argument("--name", default="", help="the new source's name (unique per model; default: from "
                                                       "the release and id, the repo and path, or the directory)")
        parser.add_argument("--hook", default="",
                            help="hook point, e.g. blocks.3.mlp.hook_post (required for sparsify; "
                                 "overrides the hook the SAE's files or the release table name)")

    def handle(self, *args: Any, **opts: Any) -> None:
        chosen = [bool(opts["path"]), bool(opts["release"]), bool(opts["repo"])]
        if sum(chosen) != 1:
            raise CommandError("give exactly one of: a directory, --release R --id ID, or --repo ORG/NAME --path SUBDIR")
        if opts["release"] and not opts["sae_id"]:
            raise CommandError("--release needs --id (`manage.py sae_registry RELEASE` lists the ids)")
        try:
            model = model_get_or_register(opts["model"])
            row = self._import(model=model, opts=opts)
        except (ModelLoadError, ValueError, HubFilesMissing) as exc:
            raise CommandError(f"SAE not imported, nothing registered: {exc}") from None
        what = "transcoder" if row.source.kind == "transcoder" else "SAE"
        self.stdout.write(f"Imported {row.architecture} {what} {model.name}/{row.source.name}: {row.d_sae} features "
                          f"at {row.source.hook_point} (d_in {row.d_in}).\n")

    def _import(self, *, model: Any, opts: dict[str, Any]) -> Sae:
        name, hook = opts["name"], opts["hook"]
        if opts["release"]:
            return sae_import_release(model=model, release=opts["release"], sae_id=opts["sae_id"], name=name,
                                      hook=hook)
        if opts["repo"]:
            return sae_import_repo(model=model, repo_id=opts["repo"], path=opts["repo_path"], name=name, hook=hook)
        path = Path(opts["path"])
        folder_name = path.parent.name if path.is_file() else path.name
        return sae_import_files(model=model, path=path, name=name or default_name(folder_name), hook=hook)
