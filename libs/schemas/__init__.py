"""Shared pydantic models that cross service boundaries."""
