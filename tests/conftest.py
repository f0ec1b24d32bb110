"""Shared pytest set-up: fixture modules under tests/support named fixtures_*.py are loaded as plugins."""

from pathlib import Path

pytest_plugins = [
    f"tests.support.{p.stem}" for p in sorted((Path(__file__).parent / "support").glob("fixtures_*.py"))
]
