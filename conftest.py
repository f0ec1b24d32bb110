"""Shared pytest set-up for tests/ and conformance/: fixture modules tests/support/fixtures_*.py load as plugins."""

from pathlib import Path

pytest_plugins = [
    f"tests.support.{p.stem}" for p in sorted((Path(__file__).parent / "tests" / "support").glob("fixtures_*.py"))
]
