from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from browser.corpora.readers import CorpusInputError
from browser.corpora.services import corpus_import
from browser.runs.models import Job
from browser.runs.services import job_create
from workers.cli import submit
from workers.compute.loading import ModelLoadError
from workers.pipeline.models import model_get_or_register
from workers.tasks import tokenize_corpus, tokenize_work


class Command(BaseCommand):
    help = (
        "Import a corpus (a .txt file, a directory of text files, or JSONL with a 'text' field) and "
        "tokenize it into fixed-length contexts with a model's tokenizer."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="a .txt file, a directory of text files, or a .jsonl file")
        parser.add_argument("--name", required=True, help="the corpus's name (letters, digits, . _ -)")
        parser.add_argument("--tokenizer", default="minilm-l6", help="a registered model or packaged alias")
        parser.add_argument("--context-length", type=int, default=64, help="tokens per context, specials included")
        parser.add_argument("--no-wait", action="store_true", help="queue the tokenizing job and return")
        parser.add_argument("--inline", action="store_true", help="tokenize in this process, not on a worker")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            with transaction.atomic():  # a failed import registers no model either
                model = model_get_or_register(opts["tokenizer"])
                corpus = corpus_import(
                    name=opts["name"], path=opts["path"], tokenizer_model=model, context_length=opts["context_length"]
                )
        except (CorpusInputError, ModelLoadError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Read {corpus.n_documents:,} documents into corpus {corpus.name!r}.\n")
        job = job_create(kind=Job.Kind.TOKENIZE, title=f"tokenize {corpus.name}", params={"corpus_id": corpus.pk})
        submit(tokenize_corpus, tokenize_work, job, wait=not opts["no_wait"], inline=opts["inline"], stdout=self.stdout)
        if not opts["no_wait"]:
            corpus.refresh_from_db()
            self.stdout.write(
                f"Corpus {corpus.name!r}: {corpus.n_contexts:,} contexts, {corpus.n_tokens:,} tokens.\n"
            )
