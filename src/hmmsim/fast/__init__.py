"""The fast layer: bulk NumPy forms of reference loops (docs/design.md)."""
