"""The exam list a doctor reads: French by default, searchable (DMP-side and free text), series page, targets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drimbox.config import ConfigError, load_settings
from tests.support.consumer import (
    INS,
    LAUNCH_FORM,
    FakeAuth,
    Pro,
    consumer_client,
    consumer_settings,
    publish,
    study_spec,
)

pytestmark = pytest.mark.sim


def _rows(page: str) -> list[str]:
    return re.findall(r"<tr><td><input[^>]*>.*?</tr>", page, re.S)


async def test_the_list_is_french_searchable_and_opens_series(dmp_url: str, tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    settings.consumer.local_pacs_others = ["COMPARE@127.0.0.1:4343"]
    kos_ct = await publish(dmp_url, settings, study_spec(study_description="Scanner cérébral sans injection"))
    kos_mr = await publish(dmp_url, settings, study_spec(4, modality="MR", date="20220301",
                                                         study_description="IRM du genou droit"))  # fmt: skip
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        resp = await client.post("/conso/launch", data=LAUNCH_FORM)
        page = await resp.text()
        assert resp.status == 200 and "img-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "Examens d&#x27;imagerie" in page and "né(e) le 28/03/1979" in page
        assert len(_rows(page)) == 2 and page.index("01/03/2022") < page.index("08/01/2021")  # newest first
        assert "Scanner cérébral sans injection" in page and "IRM du genou droit" in page
        assert "Première consultation" in page and page.count("nouveau depuis votre dernière consultation") == 0
        assert re.search(rf'<img src="/conso/dicom-web/studies/[0-9.]+/series/[0-9.]+/thumbnail\?kos={kos_ct}"', page)
        assert f'name="kos" value="{kos_mr}"' in page and "Importer les examens cochés" in page
        # Two local PACS: the import form asks which one.
        assert '<select name="target"><option value="0" selected>ORTHANC</option>' in page
        assert '<option value="1">COMPARE (127.0.0.1:4343)</option>' in page
        launch = re.search(r'name="launch" value="([^"]+)"', page)
        assert launch

        base = f"/conso/patients/{INS}/exams?launch={launch[1]}"
        # Free text: the box's own filter, accents and case ignored.
        text = await (await client.get(base + "&q=CEREBRAL")).text()
        assert len(_rows(text)) == 1 and "Scanner cérébral" in text and 'value="CEREBRAL"' in text
        assert "Tous les examens" in text
        # Modality and dates: sent to the DMP in the ITI-18 query, and shown selected in the form.
        mr = await (await client.get(base + "&modality=MR&from=2022-01-01&to=2022-12-31")).text()
        assert len(_rows(mr)) == 1 and "IRM du genou" in mr and '<option value="MR" selected>' in mr
        assert 'value="2022-01-01"' in mr
        none = await (await client.get(base + "&q=thorax")).text()
        assert not _rows(none) and "avec ces critères" in none

        # In English when the browser prefers it.
        english = await (await client.get(base, headers={"Accept-Language": "en-GB,en;q=0.9"})).text()
        assert "Imaging exams" in english and "2022-03-01" in english and "Import the selected exams" in english

        # The series page: each series, its View link on that series, its own import.
        series_link = re.search(r'href="(/conso/exams/[^"]+/series\?[^"]+)"', page)
        assert series_link
        series_page = await client.get(series_link[1].replace("&amp;", "&"))
        body = await series_page.text()
        assert series_page.status == 200 and "Séries de l&#x27;examen du" in body
        views = re.findall(r'href="/viewer/\?kos=[0-9.]+&amp;series=([0-9.]+)"', body)
        assert len(views) == 2 and len(set(views)) == 2
        assert body.count('name="series"') == 2 and "Importer cette série" in body
        assert "Retour à la liste des examens" in body


async def test_the_json_list_says_thumbnail_and_free_text(dmp_url: str, tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    await publish(dmp_url, settings, study_spec(study_description="Scanner cérébral"))
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200  # the patient's consent
        body = await (await client.get(f"/conso/api/patients/{INS}/exams?q=cerebral")).json()
        (exam,) = body["exams"]
        assert exam["description"] == "Scanner cérébral" and body["query"]["text"] == "cerebral"
        assert exam["thumbnail_url"].endswith(f"/thumbnail?kos={exam['kos_uid']}")
        empty = await (await client.get(f"/conso/api/patients/{INS}/exams?q=genou")).json()
        assert empty["exams"] == []


def test_other_local_pacs_are_checked(tmp_path: Path) -> None:
    config = tmp_path / "box.toml"
    config.write_text('[consumer]\nlocal_pacs_others = ["COMPARE@10.0.0.2:104"]\n')
    assert load_settings(config, env={}).consumer.local_pacs_others == ["COMPARE@10.0.0.2:104"]
    config.write_text('[consumer]\nlocal_pacs_others = ["no-port-here"]\n')
    with pytest.raises(ConfigError, match="local_pacs_others"):
        load_settings(config, env={})
