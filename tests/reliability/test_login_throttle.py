"""Login throttling (issue 11, item 10): the site's login form and /admin/login/ had none, so 30 wrong
passwords in 7.6 s were followed by a successful login. Now failed logins are counted per username and per
client address (django-axes, database handler); past LOGIN_FAILURE_LIMIT the account, or the address, is
refused, even with the right password, with a clear 429 page, until LOGIN_LOCKOUT_TIME has passed.

Through the real server (uvicorn) with the limit at its default and a short lockout time, over HTTP like a
browser (CSRF token and cookie), one fresh server per test so no earlier failure counts."""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devkit.processes import AsgiServer

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

LOCKOUT_SECONDS = 15
LIMIT = 10  # the default LOGIN_FAILURE_LIMIT
MESSAGE = "Too many failed logins"


@dataclass
class Answer:
    status: int
    body: str
    logged_in: bool


class Browser:
    """One browser: its own cookies, logging in through a login form as a person would."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def log_in(self, path: str, username: str, password: str) -> Answer:
        for cookie in [c for c in self.jar if c.name == "sessionid"]:
            self.jar.clear(cookie.domain, cookie.path, cookie.name)
        page = self.opener.open(f"{self.base_url}{path}", timeout=30).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        form = {"username": username, "password": password, "csrfmiddlewaretoken": token}
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Referer": f"{self.base_url}{path}", "Origin": self.base_url},
        )
        try:
            with self.opener.open(request, timeout=30) as response:
                status, body = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read().decode()
        return Answer(status, body, any(c.name == "sessionid" for c in self.jar))


@pytest.fixture
def server(stack_env, process_log_dir) -> Iterator[AsgiServer]:  # type: ignore[no-untyped-def]
    server = AsgiServer(
        env={**stack_env, "LOGIN_LOCKOUT_TIME": f"{LOCKOUT_SECONDS}s"}, log_dir=process_log_dir
    )
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def hammer(browser: Browser, path: str, usernames: list[str]) -> list[Answer]:
    return [browser.log_in(path, name, "not-the-password") for name in usernames]


def wait_until_let_in(browser: Browser, path: str, username: str, password: str) -> tuple[Answer, float]:
    """Try the right password every second until it works; the lockout must end on its own."""
    locked_at = time.monotonic()
    deadline = locked_at + LOCKOUT_SECONDS + 120  # generous: the machine is shared
    while time.monotonic() < deadline:
        answer = browser.log_in(path, username, password)
        if answer.logged_in:
            return answer, time.monotonic() - locked_at
        assert answer.status == 429 and MESSAGE in answer.body
        time.sleep(1)
    raise AssertionError(f"{username} still locked out long after LOGIN_LOCKOUT_TIME")


def assert_locked(answer: Answer) -> None:
    assert answer.status == 429, answer.status
    assert not answer.logged_in
    assert MESSAGE in answer.body
    assert "Try again in" in answer.body


@pytest.mark.parametrize("path", ["/login/", "/admin/login/"])
def test_thirty_wrong_passwords_lock_the_account_until_the_lockout_ends(staff, server, path: str) -> None:
    attacker = Browser(server.url)
    answers = hammer(attacker, path, ["root"] * 30)
    assert all(not a.logged_in for a in answers)
    assert [a.status for a in answers[: LIMIT - 1]] == [200] * (LIMIT - 1)  # the form again, "wrong password"
    for answer in answers[LIMIT:]:
        assert_locked(answer)

    # The right password, from the attacker's browser or the owner's own: refused while locked.
    assert_locked(attacker.log_in(path, "root", "root-password"))
    owner = Browser(server.url)
    locked = owner.log_in(path, "root", "root-password")
    assert_locked(locked)

    answer, waited = wait_until_let_in(owner, path, "root", "root-password")
    assert answer.status == 200 and answer.logged_in
    assert waited >= LOCKOUT_SECONDS - 5  # ended by the lockout time (measured from the last counted failure)


def test_one_address_trying_many_accounts_is_locked_out_for_every_account(alice, bob, server) -> None:
    """Guessing across usernames from one address: the address is locked, whoever logs in from it."""
    browser = Browser(server.url)
    names = [f"user{n}" for n in range(30)]
    answers = hammer(browser, "/login/", names)
    for answer in answers[LIMIT:]:
        assert_locked(answer)
    # bob never failed, but this address did.
    assert_locked(browser.log_in("/login/", "bob", "bob-password"))
    answer, _ = wait_until_let_in(browser, "/login/", "bob", "bob-password")
    assert answer.logged_in


def test_failures_under_the_limit_do_not_lock_and_a_success_resets_them(alice, server) -> None:
    browser = Browser(server.url)
    for _ in range(2):
        answers = hammer(browser, "/login/", ["alice"] * (LIMIT - 1))
        assert [a.status for a in answers] == [200] * (LIMIT - 1)
        assert all(MESSAGE not in a.body for a in answers)
        assert browser.log_in("/login/", "alice", "alice-password").logged_in
