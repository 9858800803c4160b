"""Celery app, tasks and the compute core (``workers.compute``: plain torch, no Django).

Importing this package imports nothing else, so ``workers.compute`` loads without Django or
Celery. The Celery app lives in ``workers.celery``: Django loads it when it starts
(``WorkersConfig.ready``), and ``celery -A workers`` finds it there by itself.
"""
