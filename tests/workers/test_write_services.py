"""The services issue 15 added for writes the workers used to make themselves: what each changes,
and what it leaves alone."""

from __future__ import annotations

from browser.catalog.models import Model
from browser.corpora.models import Context, Corpus, Document
from browser.corpora.services import corpus_delete
from browser.runs.models import Job, Run
from browser.runs.services import job_create, job_update, run_start
from workers.compute.config import HarvestConfig
from workers.pipeline.harvest import harvest_create, neuron_sources


def test_corpus_delete_takes_the_named_corpus_with_its_rows_only(corpus: Corpus) -> None:
    assert Document.objects.filter(corpus=corpus).exists() and Context.objects.filter(corpus=corpus).exists()
    corpus_delete(name="no such corpus")
    assert Corpus.objects.filter(pk=corpus.pk).exists()
    corpus_delete(name=corpus.name)
    assert not Corpus.objects.filter(pk=corpus.pk).exists()
    assert not Document.objects.filter(corpus_id=corpus.pk).exists()
    assert not Context.objects.filter(corpus_id=corpus.pk).exists()


def test_run_start_moves_only_a_queued_run(tiny: Model, corpus: Corpus) -> None:
    run, _ = harvest_create(model=tiny, corpus=corpus, config=HarvestConfig(sources=neuron_sources(["blocks.0.mlp.hook_post"])))
    assert run.status == Run.Status.QUEUED
    assert run_start(run_id=run.pk) is True
    assert Run.objects.get(pk=run.pk).status == Run.Status.HARVESTING
    assert run_start(run_id=run.pk) is False  # a second shard worker changes nothing
    Run.objects.filter(pk=run.pk).update(status=Run.Status.DONE)
    assert run_start(run_id=run.pk) is False
    assert Run.objects.get(pk=run.pk).status == Run.Status.DONE


def test_job_update_writes_what_it_is_given(db: None) -> None:
    job = job_create(kind=Job.Kind.HARVEST, title="t", params={"a": 1})
    other = job_create(kind=Job.Kind.HARVEST, title="u", params={"a": 1})
    job_update(job=job, total=7)
    row = Job.objects.get(pk=job.pk)
    assert (row.params, row.total) == ({"a": 1}, 7)
    job_update(job=job, params={**job.params, "run_id": 3})
    row = Job.objects.get(pk=job.pk)
    assert (row.params, row.total) == ({"a": 1, "run_id": 3}, 7) and (job.params, job.total) == (row.params, 7)
    other_row = Job.objects.get(pk=other.pk)
    assert (other_row.params, other_row.total) == ({"a": 1}, 0)
