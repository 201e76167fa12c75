"""Two fixes to every page's HTML context that keep the browser console clean.

- Jupyter Book 1 makes sphinx-thebe register its configuration script twice, and the second copy
  re-declares a ``const``, which browsers report as a JavaScript error on every page.
- Without an explicit ``default_mode`` the theme starts a fresh browser profile in mode "" and
  logs an error before falling back to "auto".
"""


def _drop_repeats(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {}) or {}
        filename = getattr(script, "filename", script) or ""  # inline scripts: None or ""
        key = (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"][:] = unique  # in place: handlers that run later still add to this list
    if not context.get("default_mode"):
        context["default_mode"] = "auto"


def setup(app):
    app.connect("html-page-context", _drop_repeats, priority=100)  # early: a handler that returns a template stops later ones
    return {"parallel_read_safe": True, "parallel_write_safe": True}
