from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workers.compute.sae import registry


class Command(BaseCommand):
    help = (
        "List SAELens's SAE releases kept in the product (or one release's SAE ids), or refresh the table "
        "from a pretrained_saes.yaml given as a file, an sae-lens wheel or a URL."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("release", nargs="?", help="list this release's SAE ids")
        parser.add_argument("--refresh", metavar="FILE_OR_URL",
                            help="replace the table with this pretrained_saes.yaml (a path, an sae-lens .whl, "
                                 "or an http(s) URL when online)")
        parser.add_argument("--out", default=str(registry.TABLE), help="where --refresh writes (default: the table)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            if opts["refresh"]:
                self._refresh(opts["refresh"], Path(opts["out"]))
            elif opts["release"]:
                self._ids(opts["release"])
            else:
                self._releases()
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from None

    def _refresh(self, location: str, out: Path) -> None:
        table = registry.table_from_yaml(registry.read_yaml_source(location))
        out.write_text(registry.dump_table(table, f"pretrained_saes.yaml from {location}"))
        registry.load_table.cache_clear()
        count = sum(len(spec["saes"]) for spec in table.values())
        self.stdout.write(f"Wrote {len(table)} releases ({count} SAEs) to {out}.\n")

    def _ids(self, release: str) -> None:
        for sae_id in registry.sae_ids(release):
            entry = registry.lookup(release, sae_id)
            extra = f"  neuronpedia {entry.neuronpedia}" if entry.neuronpedia else ""
            self.stdout.write(f"{sae_id}  ({entry.repo_id}/{entry.path}){extra}\n")

    def _releases(self) -> None:
        table = registry.load_table()
        self.stdout.write(f"{len(table)} releases, from {registry.table_source()}\n")
        for release in sorted(table):
            spec = table[release]
            first = registry.lookup(release, spec["saes"][0][0])
            state = "transcoders" if first.is_transcoder else ("importable" if first.supported else
                                                               f"layout {spec['conversion_func']} not read yet")
            self.stdout.write(f"{release}  {spec['repo_id']}  model {spec['model']}  {len(spec['saes'])} SAEs  "
                              f"[{state}]\n")
