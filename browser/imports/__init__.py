"""Imports of results made elsewhere (no models of its own): Neuronpedia upload batches."""
