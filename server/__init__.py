"""Coordinator side of the federation: the Flower ServerApp, aggregation checks and reports."""
