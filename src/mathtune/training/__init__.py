"""Reusable training components; `mathtune.recipes.train` is the recipe that wires them."""
