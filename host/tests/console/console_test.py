#!/usr/bin/env python3
"""Drive the operator console (GET /admin/ui) in headless Chromium.

Run by host/tests/all/console.rs against a spawned host; runnable by hand:

    SKTARBUCKS_ADMIN_TOKEN=secret python3 host/tests/console/console_test.py \\
        --url http://127.0.0.1:9090 --screenshot target/console.png

Checks, each confirmed through the admin API with urllib as well:
  * the page asks for the token, then lists cafe, order, production, mypage
    with their digests and breakers;
  * a dead letter shown on the page disappears after its Replay click, and
    GET /admin/dead-letters no longer lists it;
  * a Rollback click changes the digest shown for the component to its
    rollback target, and GET /admin/components agrees; the swap is listed;
  * with --deploy NAME=FILE: the deploy form uploads FILE and the page shows
    its digest.
Then it saves a screenshot. Exit status 0 when every check passed, 1 when
one failed (a screenshot of that moment is saved next to the requested
one, as NAME.failed.png), 2 when the tooling is missing.
"""

import argparse
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    print(
        "console_test.py: the selenium package is missing "
        "(python3 -m pip install selenium, or `cargo xtask test`)",
        file=sys.stderr,
    )
    sys.exit(2)

CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
COMPONENTS = ("cafe", "order", "production", "mypage")


class CheckFailed(Exception):
    pass


def log(message):
    print(f"console_test: {message}", flush=True)


class AdminApi:
    """The admin JSON routes, called directly (what the page should show)."""

    def __init__(self, base, token):
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method, path):
        request = urllib.request.Request(
            self.base + path,
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def get(self, path):
        status, body = self.call("GET", path)
        if status != 200:
            raise CheckFailed(f"GET {path} answered {status}: {body}")
        return body

    def components(self):
        return {c["name"]: c for c in self.get("/admin/components")["components"]}

    def dead_letter_ids(self):
        return [d["id"] for d in self.get("/admin/dead-letters")]


def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def css_string(value):
    """`value` quoted for a CSS attribute selector."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Console:
    def __init__(self, driver, timeout):
        self.driver = driver
        self.timeout = timeout

    def wait(self, what, condition):
        try:
            return WebDriverWait(
                self.driver,
                self.timeout,
                poll_frequency=0.1,
                ignored_exceptions=(StaleElementReferenceException,),
            ).until(condition)
        except TimeoutException:
            message = self.driver.execute_script(
                "const m = document.getElementById('message');"
                "const c = document.getElementById('connection');"
                "return [m && !m.hidden ? m.textContent : '', c ? c.textContent : ''];"
            )
            raise CheckFailed(
                f"timed out after {self.timeout} s waiting for {what} "
                f"(page message: {message[0]!r}, connection: {message[1]!r})"
            ) from None

    def rows(self, selector):
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def component_row(self, name):
        return self.wait(
            f"the row of component {name}",
            EC.presence_of_element_located(
                (By.CSS_SELECTOR, f"#components tr[data-component={css_string(name)}]")
            ),
        )

    def shown_digest(self, name):
        """The digest the page shows for `name` now (None while no row)."""
        return self.driver.execute_script(
            "const row = document.querySelector(arguments[0]);"
            "return row ? row.dataset.digest : null;",
            f"#components tr[data-component={css_string(name)}]",
        )


def sign_in(page, url, token):
    page.driver.get(url.rstrip("/") + "/admin/ui")
    field = page.wait("the token field", EC.visibility_of_element_located((By.ID, "token")))
    field.send_keys(token)
    page.driver.find_element(By.ID, "token-submit").click()
    page.wait("the console", EC.visibility_of_element_located((By.ID, "console")))
    log("signed in with the admin token")


def check_components(page, api):
    listing = api.components()
    for name in COMPONENTS:
        if name not in listing:
            raise CheckFailed(f"GET /admin/components does not list {name}: {sorted(listing)}")
        want = listing[name]["digest"]
        page.wait(
            f"component {name} with digest {want[:12]}",
            lambda d, name=name, want=want: page.shown_digest(name) == want,
        )
        row = page.component_row(name)
        shown = row.find_element(By.CSS_SELECTOR, "td.digest").text
        if shown != want[:12]:
            raise CheckFailed(f"{name}: the version cell shows {shown!r}, not {want[:12]!r}")
        if not row.get_attribute("data-breaker"):
            raise CheckFailed(f"{name}: no breaker state shown")
    shown = [r.get_attribute("data-component") for r in page.rows("#components tbody tr")]
    log(f"components shown: {', '.join(shown)}")
    lagging = [r.get_attribute("data-lag-subscriber") for r in page.rows("#lag tbody tr")]
    if not lagging:
        raise CheckFailed("no subscriber in the event-lag table")
    log(f"event lag shown for: {', '.join(lagging)}")


def check_replay(page, api, wanted_id):
    ids = api.dead_letter_ids()
    if not ids:
        raise CheckFailed("GET /admin/dead-letters lists no dead letter to replay")
    letter_id = wanted_id or ids[0]
    if letter_id not in ids:
        raise CheckFailed(f"dead letter {letter_id} is not listed by the API: {ids}")
    selector = f"#dead-letters tr[data-dead-letter-id={css_string(letter_id)}]"
    row = page.wait(
        f"dead letter {letter_id} on the page",
        EC.visibility_of_element_located((By.CSS_SELECTOR, selector)),
    )
    error = row.find_element(By.CSS_SELECTOR, "td.error-text").text
    if not error:
        raise CheckFailed(f"dead letter {letter_id}: its error is not shown")
    log(f"dead letter {letter_id} shown with error {error!r}")
    row.find_element(By.CSS_SELECTOR, 'button[data-action="replay"]').click()
    page.wait(
        f"dead letter {letter_id} to leave the page after Replay",
        lambda d: not page.rows(selector),
    )
    remaining = api.dead_letter_ids()
    if letter_id in remaining:
        raise CheckFailed(f"dead letter {letter_id} is still listed by the API after Replay")
    status, body = api.call("POST", f"/admin/dead-letters/{letter_id}/replay")
    if status != 404:
        raise CheckFailed(f"replaying {letter_id} twice answered {status}, not 404: {body}")
    log(f"dead letter {letter_id} replayed (the API no longer lists it; a second replay is a 404)")


def check_rollback(page, api, name):
    before_api = api.components()[name]
    targets = before_api.get("rollback") or []
    if not targets:
        raise CheckFailed(f"{name} has no rollback target: deploy another version first")
    target = targets[0]
    before = page.shown_digest(name)
    if before != before_api["digest"]:
        raise CheckFailed(f"{name}: the page shows {before}, the API {before_api['digest']}")
    button = page.wait(
        f"an enabled Rollback button for {name}",
        EC.element_to_be_clickable(
            (By.CSS_SELECTOR, f"#components button[data-rollback={css_string(name)}]")
        ),
    )
    button.click()
    alert = page.wait("the rollback confirmation", EC.alert_is_present())
    alert.accept()
    page.wait(
        f"{name}'s digest to change after Rollback",
        lambda d: page.shown_digest(name) != before,
    )
    after = page.shown_digest(name)
    after_api = api.components()[name]["digest"]
    if after != target or after_api != target:
        raise CheckFailed(
            f"{name} after Rollback: page {after}, API {after_api}, expected the target {target}"
        )
    swap = f"#swaps tr[data-swap-component={css_string(name)}][data-swap-source=\"rollback\"]"
    page.wait(f"the rollback of {name} in the swap list", lambda d: page.rows(swap))
    log(f"{name} rolled back {before[:12]} -> {after[:12]} (page, API and swap list agree)")


def check_deploy(page, api, spec):
    name, _, path = spec.partition("=")
    if not name or not path:
        raise CheckFailed(f"--deploy wants NAME=FILE, not {spec!r}")
    path = os.path.abspath(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    before = page.shown_digest(name)
    Select(page.driver.find_element(By.ID, "deploy-component")).select_by_value(name)
    page.driver.find_element(By.ID, "deploy-file").send_keys(path)
    page.driver.find_element(By.ID, "deploy-submit").click()
    page.wait(
        f"{name} to show the deployed digest {digest[:12]}",
        lambda d: page.shown_digest(name) == digest,
    )
    if api.components()[name]["digest"] != digest:
        raise CheckFailed(f"{name}: the API does not report the deployed digest {digest}")
    log(f"{name} deployed from the form: {before[:12]} -> {digest[:12]}")


def screenshot(driver, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # The whole page in one picture: the window grows to the page's height
    # (plus the window's own frame), scrolled to the top.
    height, frame = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];"
    )
    driver.set_window_size(1280, min(int(height) + int(frame), 4000))
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
    driver.save_screenshot(path)
    log(f"screenshot saved to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SKTARBUCKS_ADMIN_URL"),
                        help="the admin listener, e.g. http://127.0.0.1:9090 (or SKTARBUCKS_ADMIN_URL)")
    parser.add_argument("--token", default=os.environ.get("SKTARBUCKS_ADMIN_TOKEN"),
                        help="the admin token (default: SKTARBUCKS_ADMIN_TOKEN)")
    parser.add_argument("--screenshot", required=True, help="where to save the PNG")
    parser.add_argument("--dead-letter", help="the dead letter to replay (default: the first listed)")
    parser.add_argument("--rollback", default="cafe", help="the component to roll back (default: cafe)")
    parser.add_argument("--deploy", metavar="NAME=FILE", help="also deploy FILE as NAME through the form")
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for each condition")
    args = parser.parse_args()
    if not args.url or not args.token:
        parser.error("--url and --token (or SKTARBUCKS_ADMIN_URL / SKTARBUCKS_ADMIN_TOKEN) are needed")
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(tool):
            print(f"console_test.py: {tool} is missing (apt-get install chromium chromium-driver, "
                  "or `cargo xtask test`)", file=sys.stderr)
            return 2

    api = AdminApi(args.url, args.token)
    driver = browser()
    try:
        page = Console(driver, args.timeout)
        sign_in(page, args.url, args.token)
        check_components(page, api)
        check_replay(page, api, args.dead_letter)
        check_rollback(page, api, args.rollback)
        if args.deploy:
            check_deploy(page, api, args.deploy)
        screenshot(driver, args.screenshot)
        log("all checks passed")
        return 0
    except CheckFailed as e:
        failed = os.path.splitext(args.screenshot)[0] + ".failed.png"
        try:
            screenshot(driver, failed)
        except Exception as shot_error:  # the report matters more than the picture
            log(f"no failure screenshot: {shot_error}")
        print(f"console_test: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
