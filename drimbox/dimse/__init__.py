"""DIMSE side of the box (pynetdicom): SCUs towards the PACS, TCP_NODELAY sockets, per-operation time-outs."""

from drimbox.dimse.network import DimseFailure, DimseUnavailable, NoDelayAE, make_ae, set_nodelay
from drimbox.dimse.study_instances import (
    InstanceRef,
    StudyInstances,
    afind_study_instances,
    echo,
    find_study_instances,
)

__all__ = [
    "DimseFailure",
    "DimseUnavailable",
    "InstanceRef",
    "NoDelayAE",
    "StudyInstances",
    "afind_study_instances",
    "echo",
    "find_study_instances",
    "make_ae",
    "set_nodelay",
]
