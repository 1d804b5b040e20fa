"""parascribe: the library every service imports."""

__version__ = "0.1.0"
