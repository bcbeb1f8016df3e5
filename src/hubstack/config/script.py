"""The language of job script templates (``backend.slurm.script``): Jinja, sandboxed.

It is defined here, next to the schema, so that ``hubstack check`` refuses a template
that does not compile or names a variable the job script does not have, instead of the
first spawn failing; :mod:`hubstack.slurm.jobscript` renders with the same environment.
"""

from __future__ import annotations

import shlex

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

# What a job script template is given; see hubstack.slurm.jobscript for their meaning.
SCRIPT_VARIABLES = (
    "job_name",
    "output",
    "workdir",
    "sbatch",
    "prologue",
    "reporter",
    "command",
    "request",
    "shared",
)


def script_environment() -> SandboxedEnvironment:
    """Sandboxed (a template cannot reach Python internals), strict about undefined names,
    not HTML-escaped (the output is a shell script), block tags take their whole line;
    ``sh`` quotes a value for the shell."""
    environment = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["sh"] = shlex.quote
    return environment


def check_script(text: str) -> str:
    """Refuse a template that does not compile or uses a variable it is not given."""
    try:
        used = jinja2.meta.find_undeclared_variables(script_environment().parse(text))
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"not a valid template: {exc.message} (line {exc.lineno})") from None
    unknown = used - set(SCRIPT_VARIABLES)
    if unknown:
        raise ValueError(
            f"the template uses {', '.join(sorted(unknown))}, which a job script does not "
            f"have; it may use: {', '.join(SCRIPT_VARIABLES)}"
        )
    return text
