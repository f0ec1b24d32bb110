"""Fixtures of the fault suite (defined in harness.py with its helpers)."""

from tests.faults.harness import armed_box

__all__ = ["armed_box"]
