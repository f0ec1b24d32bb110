"""Regression tests for the findings of the outside security test (issue 10): each performs the real attack."""
