"""Patients opening their own exams from Mon Espace Santé: login, access rules, viewer page, download, trace."""

from drimbox.patient.routes import setup

__all__ = ["setup"]
