"""Conformance suite: outside validators and the ANS test data (DRIMBOX_ANS_DATA, default ../shared/ans-data)."""
