"""Federations run on one machine with Flower's simulation engine."""
