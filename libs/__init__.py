"""xpumesh's shared kit: settings, bus, events, database, embedded runtime, schemas."""

__version__ = "0.1.0"
