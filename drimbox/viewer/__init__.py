"""The web viewer, served by both roles: its routes (`routes.py`) and its static files.

The files live in the repository's top-level `viewer/` folder (HTML, CSS, JavaScript modules, no build step);
the wheel carries them as the package data `drimbox.viewer.static` (pyproject.toml maps that name onto the folder),
so an installed box, an editable one and the Docker image all find them through `importlib.resources`.
"""
