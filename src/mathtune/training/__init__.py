"""Reusable training components; `mathtune.train` is the recipe that wires them."""
