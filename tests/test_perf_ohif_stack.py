"""perf.viewer_stack --ohif puts an "OHIF + Orthanc" line under every figure OHIF has: the labels of both agree."""

from __future__ import annotations

from typing import Any

from perf.ohif_stack import figures, side_by_side
from perf.viewer_stack import summary


class _Figures(dict[str, Any]):
    """A result with every figure at 1.0: the summaries' wording is what is checked, not the numbers."""

    def __missing__(self, key: str) -> Any:
        return 1.0


def test_every_ohif_figure_sits_under_ours() -> None:
    ours = _Figures(cold=_Figures(), warm=_Figures())
    ohif = _Figures(cold=_Figures(accepts={"frames: multipart/related; transfer-syntax=*": 1},
                                  answered={"frames: 200 multipart/related": 1}, first_image_parts=_Figures()),
                    warm=_Figures(first_image_parts=_Figures()), ohif_version="4.12.51")  # fmt: skip
    lines = side_by_side(summary(ours), ohif).splitlines()
    placed = [lines[i - 1].strip().split(":", 1)[0] for i, line in enumerate(lines) if "OHIF + Orthanc:" in line]
    # A label renamed in perf.viewer_stack's summary would drop OHIF's figure from the comparison without a word.
    assert placed == list(figures(ohif))
    assert (
        lines[-1]
        == "  OHIF 4.12.51: asked multipart/related; transfer-syntax=*; Orthanc answered 200 multipart/related"
    )
