"""The patient's download of an exam: one ZIP a DICOM viewer and an XDM importer both open.

- `IHE_XDM/SUBSET01/…`: the source's XDM export of the live KOS (drimbox.source.xdm_export: METADATA.XML, the KOS,
  the submission's signature), as another DRIMbox imports it;
- `DICOMDIR` and `PT000000/…`: the images the KOS references, written by pydicom's FileSet (a DICOM viewer opens the
  DICOMDIR, the files are Part 10);
- `APERCUS/IMGnnnn.jpg`: a JPEG of each image (first frame, the image's own window) for a person without a viewer;
- `COMPTE-RENDU/`: the report's CDA, and its PDF when the CDA carries one;
- `LISEZMOI.TXT`: what the package holds, in French.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import zipfile
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

from drimbox.config import Settings
from drimbox.dicomweb.backend import DicomwebBackend
from drimbox.dicomweb.render import RenderOptions, render
from drimbox.dicomweb.scope import serving
from drimbox.hl7.cda import CdaError
from drimbox.hl7.cda_body import read_body
from drimbox.patient.access import OpenExam
from drimbox.source.outbox import Outbox
from drimbox.source.xdm_export import ExportError, export_study

# Past this many images the previews stop (the images themselves are all there): a download stays bounded.
MAX_PREVIEWS = 2000
_README = """Examen d'imagerie — copie pour le patient

Ce dossier contient votre examen, à remettre à un autre médecin (clé USB, messagerie sécurisée…).
- DICOMDIR et PT000000/ : les images, lisibles par tout logiciel de visualisation DICOM ;
- APERCUS/ : un aperçu JPEG de chaque image (non diagnostique) ;
- COMPTE-RENDU/ : le compte rendu de l'examen, quand il est disponible ;
- IHE_XDM/ : le même examen au format d'échange IHE XDM (importable par une DRIMbox).
Ces copies ne remplacent pas l'examen original conservé par le centre d'imagerie.
"""


async def exam_package(settings: Settings, outbox: Outbox, backend: DicomwebBackend, exam: OpenExam) -> bytes:
    """The ZIP of one open exam (ExportError when the XDM part cannot be made, e.g. its KOS file is gone)."""
    study = exam.scope.study
    xdm = await export_study(settings, outbox, study)
    images: list[bytes] = []
    with serving(exam.scope):
        async for instance in backend.iter_instances(study):
            images.append(await instance.body.read())
    cda = exam.message.cda if exam.message is not None else None
    return await asyncio.to_thread(_assemble, xdm, images, cda)


def _assemble(xdm: bytes, images: list[bytes], cda: bytes | None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as package:
        with zipfile.ZipFile(io.BytesIO(xdm)) as exported:
            for info in exported.infolist():
                package.writestr(info.filename, exported.read(info))
        package.writestr("LISEZMOI.TXT", _README.encode("utf-8"))
        datasets = []
        for data in images:
            try:
                datasets.append(pydicom.dcmread(io.BytesIO(data)))
            except (InvalidDicomError, ValueError, EOFError):
                continue  # an instance the backend cannot give whole is left out, not the package
        with tempfile.TemporaryDirectory(prefix="drimbox-patient-") as tmp:
            fs = FileSet()
            for ds in datasets:
                fs.add(ds)
            fs.write(tmp)
            root = Path(tmp)
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                name = path.relative_to(root).as_posix()
                package.write(path, name)  # where the DICOMDIR's records say, from the package's root
        for number, ds in enumerate(datasets[:MAX_PREVIEWS], start=1):
            try:
                package.writestr(f"APERCUS/IMG{number:04d}.jpg", render(ds, 1, "image/jpeg", RenderOptions()))
            except Exception:  # a preview that cannot be made (no pixels, odd format) is left out
                continue
        if cda is not None:
            package.writestr("COMPTE-RENDU/compte-rendu.xml", cda)
            try:
                pdf = read_body(cda).pdf
            except CdaError:
                pdf = None
            if pdf:
                package.writestr("COMPTE-RENDU/compte-rendu.pdf", pdf)
    return out.getvalue()


__all__ = ["ExportError", "exam_package"]
