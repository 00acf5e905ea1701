"""Clinic side of the federation: the Flower ClientApp and what it runs locally."""
