"""FakeGitHub: a stand-in for GitHub (which cannot be reached from the test machine) on
loopback, answering the OAuth and REST endpoints that OAuthenticator's GitHub login calls,
at the paths of a GitHub Enterprise server (``/login/oauth/...`` and ``/api/v3/...``).

It checks what GitHub checks (the client's id and secret, the code, the access token) and
answers as GitHub's documentation says; it has no login page: whoever ``signed_in`` names
is the person who approves the hub at the authorize endpoint.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit


@dataclass
class GitHubUser:
    login: str
    orgs: set[str] = field(default_factory=set)
    # (org, team slug, team name)
    teams: list[tuple[str, str, str]] = field(default_factory=list)


class FakeGitHub:
    """The stand-in server; ``users`` by login, ``signed_in`` the one who approves."""

    def __init__(self, client_id: str, client_secret: str, users: list[GitHubUser]) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        # GitHub's logins are case-insensitive; the hub asks with its lowercased name.
        self.users = {user.login.lower(): user for user in users}
        self.signed_in = ""
        self.codes: dict[str, str] = {}
        self.tokens: dict[str, str] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeGitHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        if query.get("client_id") != self.client_id:
            return 404, {}, {"message": "unknown client"}
        code = secrets.token_hex(10)
        self.codes[code] = self.signed_in.lower()
        back = urlencode({"code": code, "state": query.get("state", "")})
        return 302, {"Location": f"{query['redirect_uri']}?{back}"}, None

    def access_token(self, form: dict[str, str], basic: tuple[str, str] | None) -> Any:
        client = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        if client != (self.client_id, self.client_secret):
            return {"error": "incorrect_client_credentials"}
        login = self.codes.pop(form.get("code", ""), None)
        if login is None:
            return {"error": "bad_verification_code"}
        token = "gho_" + secrets.token_hex(16)
        self.tokens[token] = login
        return {"access_token": token, "token_type": "bearer", "scope": "read:org"}

    def api(self, path: str, token: str) -> tuple[int, Any]:
        login = self.tokens.get(token)
        if login is None:
            return 401, {"message": "Bad credentials"}
        user = self.users[login]
        parts = path.strip("/").split("/")
        if parts == ["user"]:
            return 200, {"login": user.login, "id": abs(hash(user.login)), "email": None}
        if parts == ["user", "teams"]:
            return 200, [
                {"slug": slug, "name": name, "organization": {"login": org}}
                for org, slug, name in user.teams
            ]
        if len(parts) == 4 and parts[0] == "orgs" and parts[2] == "members":
            member = self.users.get(parts[3].lower())
            return (204, None) if member and parts[1] in member.orgs else (404, None)
        if len(parts) == 6 and parts[0] == "orgs" and parts[2] == "teams":
            member = self.users.get(parts[5].lower())
            teams = {(org, slug) for org, slug, _ in member.teams} if member else set()
            return (204, None) if (parts[1], parts[3]) in teams else (404, None)
        return 404, {"message": "Not Found"}


def _handler(github: FakeGitHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/login/oauth/authorize":
                self._answer(*github.authorize(query))
            elif url.path.startswith("/api/v3/"):
                token = self.headers.get("Authorization", "").partition(" ")[2]
                status, body = github.api(url.path.removeprefix("/api/v3"), token)
                self._answer(status, {}, body)
            else:
                self._answer(404, {}, {"message": "Not Found"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/login/oauth/access_token":
                self._answer(404, {}, {"message": "Not Found"})
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            form = {k: v[0] for k, v in parse_qs(body).items()}
            basic = None
            scheme, _, value = self.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "basic":
                client_id, _, secret = base64.b64decode(value).decode().partition(":")
                basic = (client_id, secret)
            self._answer(200, {}, github.access_token(form, basic))

        def _answer(self, status: int, headers: dict[str, str], body: Any) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the hub's log shows what it asked."""

    return Handler
