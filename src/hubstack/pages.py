"""HTML from a package's Jinja templates, the one way hubstack renders pages.

Every value is HTML-escaped (much of what pages show came from users: names, repository
URLs, refs), and a name the template uses but the caller did not pass is an error rather
than an empty string.
"""

from __future__ import annotations

import jinja2


def html_templates(package: str) -> jinja2.Environment:
    """The templates in ``package``'s ``templates`` folder."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
