"""mathtune: fine-tune small language models on math word problems and measure them honestly."""

__version__ = "0.1.0"
