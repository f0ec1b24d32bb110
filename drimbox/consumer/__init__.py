"""The consumer box: contextual launch, the patient's exams from the DMP, their images (viewed, cached, imported)."""

from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.catalog import ExamCatalog, ExamList
from drimbox.consumer.exams import Exam, ExamSeries
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
    "setup_consumer",
]
