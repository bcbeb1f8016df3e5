"""Which repository a user asked for, checked before anything touches the network.

A repository launch hands a user's URL and ref to ``git`` and a user's path to a browser
redirect, so both are refused here unless they are plainly harmless: a URL over an allowed
transport to an allowed host (never a local path, a remote helper, ssh or credentials), a ref
git cannot mistake for an option, and a path that stays inside the user's server (no open
redirect). Pure functions over the ``binder:`` config, so every refusal is unit tested.

Share links follow BinderHub's ``/v2/<provider>/<spec>`` form so existing links and badges
work against this hub after changing the host.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import quote, unquote

from hubstack.config.models import BinderSettings
from hubstack.untrusted import InvalidLaunch, choose, json_kind, quote_untrusted

PROVIDERS = ("gh", "gl", "git")
DEFAULT_REF = "HEAD"
# A full commit id, as git prints it: what a launch may pin and a mirror is asked for.
COMMIT = re.compile(r"[0-9a-f]{40}")
GITHUB = "github.com"
GITLAB = "gitlab.com"
DEFAULT_PORTS = {"https": 443, "http": 80, "git": 9418}

URL_MAX = 2000
SPEC_MAX = 4000
REF_MAX = 255
PATH_MAX = 2000
HASH_LENGTH = 6

_EXAMPLE = "https://github.com/org/repo"
_SCHEME_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(.*)", re.DOTALL)
_REMOTE_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
_SCP_LIKE = re.compile(r"[^/:]*@[^/:]*:")
_NETLOC = re.compile(r"([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Characters of one path segment of a repository URL: what forges use in names.
_SEGMENT = re.compile(r"[A-Za-z0-9._~+-]+")
_STARTS_WITH_SCHEME = re.compile(r"[^/?#]*:")
_REF_FORBIDDEN = ("..", "@{", "\\", ":", "?", "*", "[", "~", "^")


@dataclass(frozen=True)
class RepoSource:
    """A checked repository: ``url`` is canonical (lowercase scheme and host, no default
    port, no trailing ``/``; a ``.git`` suffix is kept as given) and allowed by the config."""

    provider: str  # "gh" | "gl" | "git"
    url: str
    ref: str

    @property
    def path(self) -> str:
        """The URL's path without its leading ``/`` (``org/repo`` on a forge)."""
        return self.url.split("://", 1)[1].split("/", 1)[1]

    @property
    def spec(self) -> str:
        """BinderHub's spec for this provider; the ref is %-escaped (``/`` kept), so the spec
        can be put in a URL path as is and read back by :func:`source_from_spec`."""
        ref = quote(self.ref, safe="/")
        if self.provider == "gh":
            return f"{self.path}/{ref}"
        if self.provider == "gl":
            return f"{quote(self.path, safe='')}/{ref}"
        return f"{quote(self.url, safe='')}/{ref}"

    @property
    def name(self) -> str:
        """The repository's last path component without ``.git``, usable as a directory name:
        only ``[A-Za-z0-9._-]``, never starting with ``.``, never empty."""
        last = self.path.rsplit("/", 1)[-1]
        last = last.removesuffix(".git")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", last).lstrip(".")
        return safe or "repo"


@dataclass(frozen=True)
class ShareLinks:
    """What the launch page offers to copy: the launch link and badge snippets."""

    url: str
    markdown: str
    rst: str


def repo_source(url: object, ref: object, binder: BinderSettings) -> RepoSource:
    """Check a clone URL and ref from the launch form or ``user_options``.

    The provider is ``gh`` for ``https://github.com/<org>/<repo>``, ``gl`` for
    ``https://gitlab.com/<namespace>``, else ``git``, so share links use BinderHub's short
    forms where they exist.
    """
    canonical = _check_url(url, binder)
    provider = _provider_for(canonical)
    if provider == "gl":
        # gitlab.com redirects a path without .git, and fetches follow no redirects.
        canonical = f"{canonical.removesuffix('.git')}.git"
    return RepoSource(provider, canonical, _ref_or_default(ref))


def source_from_spec(provider: object, spec: object, binder: BinderSettings) -> RepoSource:
    """Read BinderHub's ``/v2/<provider>/<spec>`` (and ``/build/...``) path rest.

    ``spec`` is still %-escaped as it came in the request path: ``gh`` is
    ``<org>/<repo>/<ref>`` (the ref may contain ``/``); ``gl`` is
    ``<escaped namespace>/<ref>``; ``git`` is ``<escaped clone URL>/<ref>``. A missing ref
    means ``HEAD``.
    """
    provider = choose("repository provider", provider, PROVIDERS)
    if not isinstance(spec, str):
        raise InvalidLaunch(f"The repository spec must be text, not {json_kind(spec)}.")
    if not spec or len(spec) > SPEC_MAX:
        raise InvalidLaunch(
            f"The repository spec must be 1 to {SPEC_MAX} characters; "
            f"e.g. {provider}/{_SPEC_FORMS[provider][1]}."
        )
    if provider == "gh":
        org, _, rest = spec.partition("/")
        repo, _, ref = rest.partition("/")
        if not (_SEGMENT.fullmatch(org) and _SEGMENT.fullmatch(repo)):
            raise _bad_spec(provider, spec)
        url = f"https://{GITHUB}/{org}/{repo}"
    else:
        escaped, _, ref = spec.partition("/")
        target = unquote(escaped)
        if provider == "gl":
            if "/" not in target.strip("/") or ":" in target:
                raise _bad_spec(provider, spec)
            url = f"https://{GITLAB}/{target.strip('/').removesuffix('.git')}.git"
        elif "://" in target or _looks_like_other_source(target):
            url = target  # checked below as any clone URL, with a reason when refused
        else:
            raise _bad_spec(provider, spec)
    canonical = _check_url(url, binder)
    return RepoSource(provider, canonical, _ref_or_default(unquote(ref)))


def _looks_like_other_source(target: str) -> bool:
    """A remote helper, ssh address or local path: worth a refusal that says so."""
    return bool(
        _REMOTE_HELPER.match(target)
        or _SCP_LIKE.match(target)
        or target.startswith(("/", ".", "~"))
    )


_SPEC_FORMS = {
    "gh": ("<org>/<repo>/<ref>", "jupyterhub/jupyterhub/main"),
    "gl": ("<url-escaped namespace>/<ref>", "group%2Fproject/main"),
    "git": ("<url-escaped clone URL>/<ref>", "https%3A%2F%2Fgit.example.org%2Frepo.git/main"),
}


def _bad_spec(provider: str, spec: str) -> InvalidLaunch:
    form, example = _SPEC_FORMS[provider]
    return InvalidLaunch(
        f"The {provider} spec {quote_untrusted(spec)} is not of the form {form}, "
        f"e.g. {provider}/{example}."
    )


def _ref_or_default(ref: object) -> str:
    if ref is None or ref == "":
        return DEFAULT_REF
    if not isinstance(ref, str):
        raise InvalidLaunch(
            f"The ref must be a branch, tag or commit given as text, not {json_kind(ref)}."
        )
    return check_ref(ref)


def _is_unprintable(char: str) -> bool:
    """Control, format (e.g. bidi overrides) and separator (space, line break) characters."""
    return unicodedata.category(char)[0] in "CZ"


def check_ref(ref: str) -> str:
    """Return ``ref`` if git would take it as a branch, tag or commit name and never as an
    option, a revision expression or a path; else refuse."""
    reason = _ref_problem(ref)
    if reason:
        raise InvalidLaunch(
            f"The ref {quote_untrusted(ref)} is not allowed: {reason}. Give a branch, tag "
            "or commit, e.g. main, v1.0 or a 40-character commit hash."
        )
    return ref


def _ref_problem(ref: str) -> str | None:
    if not ref:
        return "it is empty"
    if len(ref) > REF_MAX:
        return f"it is longer than {REF_MAX} characters"
    if ref.startswith("-"):
        return "it starts with '-'"
    if any(_is_unprintable(c) for c in ref):
        return "it contains spaces or control characters"
    for bad in _REF_FORBIDDEN:
        if bad in ref:
            return f"it contains {bad!r}"
    if ref == "@":
        return "'@' alone is not a name"
    if ref.endswith((".", "/")):
        return f"it ends with {ref[-1]!r}"
    for part in ref.split("/"):
        if not part:
            return "it has an empty part between slashes"
        if part.startswith("."):
            return "a part of it starts with '.'"
        if part.endswith(".lock"):
            return "a part of it ends with '.lock'"
    return None


def _allowed_schemes(binder: BinderSettings) -> str:
    return ", ".join(f"{scheme}://" for scheme in binder.allowed_schemes)


def _not_a_url(url: str, binder: BinderSettings, why: str) -> InvalidLaunch:
    return InvalidLaunch(
        f"{quote_untrusted(url)} is not allowed as a repository: {why}. Give a URL such as "
        f"{_EXAMPLE} (allowed: {_allowed_schemes(binder)})."
    )


def _check_url(url: object, binder: BinderSettings) -> str:
    """The canonical form of an allowed clone URL, or a refusal naming what is allowed."""
    if not isinstance(url, str):
        raise InvalidLaunch(f"The repository URL must be text, not {json_kind(url)}.")
    if not url:
        raise InvalidLaunch(f"Give the repository's URL, e.g. {_EXAMPLE}.")
    if len(url) > URL_MAX:
        raise InvalidLaunch(f"The repository URL is longer than {URL_MAX} characters.")
    if not all(33 <= ord(c) < 127 for c in url):
        raise _not_a_url(url, binder, "it contains spaces, control or non-ASCII characters")
    if url.startswith("-"):
        raise _not_a_url(url, binder, "it starts with '-'")
    match = _SCHEME_URL.fullmatch(url)
    if match is None:
        if _REMOTE_HELPER.match(url):
            raise _not_a_url(url, binder, "git remote helpers ('<transport>::') cannot be used")
        if url.startswith(("/", ".", "~")) or re.match(r"[A-Za-z]:[\\/]", url):
            raise _not_a_url(url, binder, "local paths cannot be used")
        if _SCP_LIKE.match(url):
            raise _not_a_url(url, binder, "ssh addresses (user@host:path) cannot be used")
        raise _not_a_url(url, binder, "it is not a URL of the form scheme://host/path")
    scheme, netloc, path, rest = match.groups()
    scheme = scheme.lower()
    if scheme not in binder.allowed_schemes:
        raise InvalidLaunch(
            f"Repository URLs starting with {quote_untrusted(scheme + '://')} are not allowed "
            f"here. Allowed: {_allowed_schemes(binder)}."
        )
    if "@" in netloc:
        raise _not_a_url(url, binder, "it contains a user name or password")
    host_port = _NETLOC.fullmatch(netloc)
    host = host_port.group(1).lower() if host_port else ""
    if not host_port or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise _not_a_url(url, binder, "it has no valid host name")
    port = int(host_port.group(2)) if host_port.group(2) else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise _not_a_url(url, binder, "its port is not between 1 and 65535")
    if rest:
        raise _not_a_url(url, binder, "it has a query ('?') or fragment ('#')")
    path = path.rstrip("/")
    segments = path.split("/")[1:]
    if not segments:
        raise _not_a_url(url, binder, "it names a host but no repository on it")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise _not_a_url(
                url,
                binder,
                "its path may only have letters, digits and . _ ~ + - between single "
                "slashes, and no '.' or '..' parts",
            )
    _check_host(host, port, scheme, binder)
    shown_port = "" if port == DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown_port}{path}"


def _check_host(host: str, port: int, scheme: str, binder: BinderSettings) -> None:
    """``host`` patterns match on the scheme's default port only; ``host:port`` patterns
    (``*`` and ``?`` allowed on both sides) match that port."""
    for pattern in binder.allowed_hosts:
        host_pattern, _, port_pattern = pattern.partition(":")
        if not fnmatchcase(host, host_pattern):
            continue
        if port_pattern and fnmatchcase(str(port), port_pattern):
            return
        if not port_pattern and port == DEFAULT_PORTS[scheme]:
            return
    shown = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
    allowed = ", ".join(binder.allowed_hosts)
    if not allowed:
        raise InvalidLaunch("Repository launches from any host are disabled on this hub.")
    raise InvalidLaunch(
        f"Repositories from host {quote_untrusted(shown)} are not allowed here. "
        f"Allowed hosts: {allowed}."
    )


def _provider_for(url: str) -> str:
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    if scheme == "https" and host == GITHUB and path.count("/") == 1:
        return "gh"
    if scheme == "https" and host == GITLAB and path.count("/") >= 1:
        return "gl"
    return "git"


def server_path(urlpath: object, labpath: object, filepath: object) -> str:
    """The path to open in the launched server, relative to its base URL ('' for its
    default page), with BinderHub's meaning of the three parameters.

    ``urlpath`` is used as given (%-escaping spaces and the like), ``labpath`` opens
    JupyterLab at that file (``lab/tree/<labpath>``), ``filepath`` the classic file view
    (``tree/<filepath>``); ``urlpath`` wins over both, ``labpath`` over ``filepath``. Every
    given value is checked, used or not: nothing may leave the server (an absolute URL, a
    ``//host`` or ``/`` path, ``..``, a backslash that a browser reads as ``/``).
    """
    given = {
        name: _check_path(name, value)
        for name, value in (("urlpath", urlpath), ("labpath", labpath), ("filepath", filepath))
        if value is not None and value != ""
    }
    if "urlpath" in given:
        return quote(given["urlpath"], safe="/?#&=%+:;@!$'()*,~")
    for name, prefix in (("labpath", "lab/tree/"), ("filepath", "tree/")):
        if name in given:
            return prefix + quote(given[name].rstrip("/"), safe="/")
    return ""


def _check_path(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidLaunch(f"The {name} must be text, not {json_kind(value)}.")
    forms = [value]
    if name == "urlpath":
        # A browser or the server decodes %-escapes before acting on them.
        forms.append(unquote(value))
    for form in forms:
        reason = _path_problem(form, whole_url=name == "urlpath")
        if reason:
            raise InvalidLaunch(
                f"The {name} {quote_untrusted(value)} is not allowed: {reason}. Give a path "
                "inside the repository, e.g. notebooks/intro.ipynb"
                + (" or lab/tree/notebooks/intro.ipynb." if name == "urlpath" else ".")
            )
    return value


def _path_problem(value: str, *, whole_url: bool) -> str | None:
    if len(value) > PATH_MAX:
        return f"it is longer than {PATH_MAX} characters"
    if any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in value):
        return "it contains control characters"
    if "\\" in value:
        return "it contains a backslash"
    if value.startswith("/"):
        return "it starts with '/'"
    if _STARTS_WITH_SCHEME.match(value):
        return "it is an absolute URL (a ':' before the first '/')"
    path = re.split(r"[?#]", value, maxsplit=1)[0] if whole_url else value
    if any(part.strip() == ".." for part in path.split("/")):
        return "it contains '..'"
    return None


def server_name(source: RepoSource, max_length: int) -> str:
    """The named server for this repository: the same for the same URL (any ref), different
    for different URLs, valid under ``launch.policy.NAME_RE``, at most ``max_length`` long.

    A readable slug of the repository's name plus a short hash of its URL; when
    ``max_length`` leaves no room for the slug (under 8), ``r`` and as much hash as fits.
    """
    if max_length < 1:
        raise ValueError("max_length must be at least 1")
    digest = _base36(int.from_bytes(hashlib.sha256(source.url.encode()).digest(), "big"))
    room = max_length - 1 - HASH_LENGTH
    if room < 1:
        return "r" + digest[: max_length - 1]
    slug = re.sub(r"[^a-z0-9]+", "-", source.name.lower())
    slug = re.sub(r"^[^a-z]+", "", slug)[:room].strip("-") or "repo"[:room]
    return f"{slug}-{digest[:HASH_LENGTH]}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    while number:
        number, rest = divmod(number, 36)
        out.append(digits[rest])
    return "".join(out) or "0"


def share_links(base_url: str, source: RepoSource, urlpath: str | None) -> ShareLinks:
    """The launch link for ``source`` under ``base_url`` (the service's public URL) and the
    Markdown and reStructuredText badges pointing at it (image ``<base_url>badge_logo.svg``).

    ``urlpath`` is checked like :func:`server_path` does and fully %-escaped in the query,
    so the link and badge text cannot be broken out of.
    """
    if not re.fullmatch(r"https?://[!#-&*-;=?-\[\]-~]+", base_url):
        raise InvalidLaunch(
            f"The hub's public URL {quote_untrusted(base_url)} cannot be used in a share link; "
            "it must be an http:// or https:// URL without spaces, quotes or parentheses."
        )
    base = base_url if base_url.endswith("/") else base_url + "/"
    url = f"{base}v2/{source.provider}/{source.spec}"
    if urlpath:
        _check_path("urlpath", urlpath)
        url += "?urlpath=" + quote(urlpath, safe="")
    badge = f"{base}badge_logo.svg"
    return ShareLinks(
        url=url,
        markdown=f"[![Binder]({badge})]({url})",
        rst=f".. image:: {badge}\n   :target: {url}",
    )
