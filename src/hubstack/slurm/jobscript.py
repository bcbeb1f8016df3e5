"""The batch script of a Slurm job, from the built-in template or the site's own.

sbatch reads the ``#SBATCH`` lines itself, before any shell: there a newline would start
another directive and a space another option, and no shell quoting helps. So every value
on such a line must be a safe token (what a config choice or a number already is) and
anything else is refused, not escaped. Values in the script's body are shell-quoted.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hubstack.config.models import SAFE_TOKEN, SBATCH_OPTION
from hubstack.config.script import script_environment
from hubstack.errors import Explained
from hubstack.launch.slurm_fields import SlurmRequest
from hubstack.untrusted import quote_untrusted

# The prologue runs under ``set -e`` but before ``set -u``: the shell functions of module
# systems (``module load``) read variables that may be unset.
DEFAULT_TEMPLATE = """\
#!/bin/bash
#SBATCH --job-name={{ job_name }}
#SBATCH --output={{ output }}
#SBATCH --export=ALL
{% for option in sbatch %}
#SBATCH {{ option }}
{% endfor %}
set -e
{{ prologue }}
set -u
{% if shared %}
{{ shared }}
{% endif %}
cd {{ workdir | sh }}
{{ reporter }}
exec {{ command }} --port="$port"
"""

_SAFE_TOKEN = re.compile(SAFE_TOKEN)
_SBATCH_OPTION = re.compile(SBATCH_OPTION)
_environment = script_environment()


class JobScriptError(Explained, ValueError):
    """The job script cannot be rendered; ``message`` names the value or template at fault."""


@dataclass(frozen=True)
class JobScript:
    """What goes into one job's script; the backend fills it."""

    job_name: str
    output: str  # the job log's path; sbatch expands %j
    workdir: str
    request: SlurmRequest
    prologue: str  # the site's lines (trusted), e.g. module load
    reporter: str  # trusted bash that sets $port and reports the server's address
    command: Sequence[str]  # argv of the server, container prefix included; not quoted
    shared: str = ""  # trusted bash that links ~/shared/<folder> (see shared_links)


def shared_links(base: Path, granted: Iterable[str]) -> str:
    """Bash that makes ``~/shared/<folder>`` a link to ``<base>/<folder>`` for each
    ``granted`` folder and removes links to ``base`` left from earlier jobs (membership ends).

    It runs in the job, as the user, so whatever the user keeps in ``~/shared`` can only
    mislead the user's own rights; root never touches it. What the user may read or write
    in a folder is its Unix permissions, on every node.
    """
    names = sorted(granted)
    lines = [
        'if [ -d "$HOME/shared" ]; then for link in "$HOME"/shared/*; do',
        f'  case "$(readlink -- "$link" || true)" in {shlex.quote(str(base))}/*) '
        'rm -f -- "$link" ;; esac',
        "done; fi",
    ]
    if names:
        lines.append('mkdir -p -- "$HOME/shared" 2>/dev/null || true')
    for name in names:
        target, link = shlex.quote(str(base / name)), shlex.quote(name)
        lines.append(
            f'ln -sT -- {target} "$HOME/shared/"{link} 2>/dev/null || '
            f'echo "hubstack: ~/shared/"{link}" is in the way of the shared folder" >&2'
        )
    return "\n".join(lines)


def _on_sbatch_line(what: str, value: str) -> str:
    if not _SAFE_TOKEN.fullmatch(value):
        raise JobScriptError(
            f"The {what} {quote_untrusted(value)} cannot go on an #SBATCH line: use only "
            "letters, digits and . _ : , = @ + / % -"
        )
    return value


def _in_body(what: str, value: str) -> str:
    """A value the template shell-quotes: quoting cannot make a line break or NUL inert
    for sbatch (it refuses NUL and DOS line breaks), so none may be there."""
    if not value or not value.isprintable():
        raise JobScriptError(
            f"The {what} {quote_untrusted(value)} is empty or has control characters or "
            "line breaks."
        )
    return value


def _sbatch(request: SlurmRequest) -> list[str]:
    lines = []
    for option, value in request.sbatch_options():
        if not _SBATCH_OPTION.fullmatch(option):
            raise JobScriptError(f"{quote_untrusted(option)} is not an sbatch long option.")
        lines.append(f"{option}={_on_sbatch_line(f'value of {option}', value)}")
    return lines


def render_job_script(template: str | None, job: JobScript) -> str:
    """The script for sbatch, from ``template`` (``backend.slurm.script``; None: built-in).

    Raises :class:`JobScriptError` for a value that cannot be put in a script safely, or a
    template that fails (an undefined name, something the sandbox forbids).
    """
    if not job.command:
        raise JobScriptError("The server command is empty.")
    context = {
        "job_name": _on_sbatch_line("job name", job.job_name),
        "output": _on_sbatch_line("output path", job.output),
        "workdir": _in_body("working directory", job.workdir),
        "sbatch": _sbatch(job.request),
        "prologue": job.prologue,
        "reporter": job.reporter,
        "command": shlex.join(_in_body("command argument", arg) for arg in job.command),
        "request": job.request,
        "shared": job.shared,
    }
    try:
        source = DEFAULT_TEMPLATE if template is None else template
        return _environment.from_string(source).render(context)
    except Exception as exc:  # a template is the site's code: say that it failed, and how
        raise JobScriptError(
            f"The job script template (backend.slurm.script) failed: {exc}"
        ) from None


# A copy job (``hubdata cp --job``): the hub's short-lived token for it comes in the job's
# environment, which sbatch keeps out of the script and ``scontrol show job``; the script
# hands it to hubdata on its standard input and drops it from the environment before hubdata
# starts (``exec``), so hubdata's process shows no token in ``ps e`` or /proc/*/environ.
COPY_TEMPLATE = """\
#!/bin/bash
#SBATCH --job-name={{ job_name }}
#SBATCH --output={{ output }}
#SBATCH --export=ALL
{% for option in sbatch %}
#SBATCH {{ option }}
{% endfor %}
set -e
{{ prologue }}
set -u
token=$HUBSTACK_COPY_TOKEN
unset HUBSTACK_COPY_TOKEN
exec {{ python | sh }} -m hubstack_data.cli run-job <<<"$token"
"""


def render_copy_script(
    job_name: str, output: str, request: SlurmRequest, prologue: str, python: str
) -> str:
    """The script of a copy job: hubdata runs the copy the hub recorded (it asks the hub
    what to copy, so no path a user typed is in the script)."""
    context = {
        "job_name": _on_sbatch_line("job name", job_name),
        "output": _on_sbatch_line("output path", output),
        "sbatch": _sbatch(request),
        "prologue": prologue,
        "python": _in_body("Python", python),
    }
    return _environment.from_string(COPY_TEMPLATE).render(context)
