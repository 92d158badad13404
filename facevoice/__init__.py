"""facevoice: learning and serving associations between faces and voices."""

__version__ = "0.1.0"
