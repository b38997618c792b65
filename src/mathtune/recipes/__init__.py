"""Recipes: each command's flow, read top to bottom (train, evaluate, run, augment, lm-eval).

Recipes wire the components (`data/`, `models/`, `methods/`, `training/`, `evaluate/`); no component
imports a recipe (tests/test_layout.py keeps it so). The CLI and the app call recipes.
"""
