"""The consumer box: contextual launch, the patient's exams from the DMP, their images (viewed, cached, imported)."""

from aiohttp import web

from drimbox.config import Settings
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.catalog import ExamCatalog, ExamList
from drimbox.consumer.exams import Exam, ExamSeries
from drimbox.consumer.images import setup_consumer_images
from drimbox.consumer.launch import Launch, parse_launch
from drimbox.consumer.lookup import ExamFilters, LookupFailed, PatientRef
from drimbox.consumer.routes import CONSUMER, ConsumerContext, consumer_routes, setup_consumer
from drimbox.consumer.store import ConsumerStore

__all__ = [
    "CONSUMER",
    "ConsumerAuth",
    "ConsumerContext",
    "ConsumerStore",
    "Exam",
    "ExamCatalog",
    "ExamFilters",
    "ExamList",
    "ExamSeries",
    "Launch",
    "LookupFailed",
    "PatientRef",
    "ProfessionalLike",
    "consumer_routes",
    "parse_launch",
    "setup",
    "setup_consumer",
]


def setup(app: web.Application, settings: Settings, auth: ConsumerAuth) -> None:
    """The consumer role on `app`: its pages and API, then its images (/conso/dicom-web, imports), which use the
    store and catalog the first opens; each part's resources open and close with the app (cleanup_ctx)."""
    setup_consumer(app, settings, auth)
    setup_consumer_images(app, settings, auth)
