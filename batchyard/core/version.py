"""The package version, kept at the bottom so every layer can name it without importing the top."""

__version__ = "0.1.0"
