"""Command-line interface of mmsparse (thin wrappers over the library)."""
