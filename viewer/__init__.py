"""Not code: this file makes the viewer's folder the package `drimbox.viewer.static` (see pyproject.toml).

The wheel carries the folder's files under that name, and an editable install maps the name onto this folder;
both find them through importlib.resources (drimbox/viewer/routes.py). Only *.html, *.css and *.js are served.
"""
