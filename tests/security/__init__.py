"""Regression tests for the findings of the outside security test: each performs the real attack."""
