"""The console in real headless Chromium, over a store filled by the real agents.

Exchange Online comes from the Graph emulator (real HTTPS, MSAL), the HR folder from the
photo-folder agent reading real JPEG files, and AD from the in-memory connector (a Samba DC would
add a minute for nothing the console looks at differently); the AD export flow runs the real
``thumbnail`` transform. The tests look at what a person sees: photos decode in the browser
(``naturalWidth > 0``), links lead where they say, search finds people, and no request is refused
by the page's own security policy. Screenshots land in ``test-artifacts/test_browser/``.
"""

from __future__ import annotations

import contextlib
import html
import http.server
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from connector.config import config_from_dict
from connector.emulator import EmulatorConfig, GraphEmulator, exo_agent_settings
from connector.engine import Engine
from connector.sdk import ExportStatus
from connector.web import AccessPolicy, create_app, serve_in_background
from tests.engine.memory import DIRECTORIES, directory
from tests.web.conftest import PhotoWorld
from tests.web.images import image_bytes

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MEMORY = "tests.engine.memory:MemoryConnector"


@dataclass
class Console:
    url: str
    engine: Engine
    users: list[dict[str, Any]]
    folder_accounts: list[str]


def _config(emu: GraphEmulator, tmp: Path, ad_directory: str) -> dict[str, Any]:
    info = emu.info
    return {
        "store": {"url": f"sqlite:///{tmp / 'store.db'}"},
        "data_dir": str(tmp / "data"),
        "metaverse": {"schema": "person", "precedence": {"photo": ["exo", "hr"]}},
        "agents": {
            "exo": {
                "type": "exchange-online-photos",
                "settings": exo_agent_settings(
                    info,
                    refresh_token={"env": "MVSYNC_TEST_EXO_REFRESH_TOKEN"},
                    backoff_initial_s=0.05,
                    photo_size="240x240",
                ),
                "projection": [{"object_class": "EXOUser"}],
                "import_flow": [
                    {"object_class": "EXOUser", "cs": "mailNickname", "mv": "accountName"},
                    {"object_class": "EXOUser", "cs": "userPrincipalName", "mv": "userPrincipalName"},
                    {"object_class": "EXOUser", "cs": "mail", "mv": "mail"},
                    {"object_class": "EXOUser", "cs": "displayName", "mv": "displayName"},
                    {"object_class": "EXOUser", "cs": "EXOPhoto", "mv": "photo"},
                    {"object_class": "EXOUser", "cs": "EXOPhotoChecksum", "mv": "exoPhotoChecksum"},
                ],
            },
            "hr": {
                "type": "photo-folder",
                "settings": {"path": str(tmp / "photos")},
                "join": [{"object_class": "photoFile", "match": [{"cs": "accountName", "mv": "accountName"}]}],
                "import_flow": [
                    {"object_class": "photoFile", "cs": "photo", "mv": "photo"},
                    {"object_class": "photoFile", "cs": "photoChecksum", "mv": "folderPhotoChecksum"},
                ],
            },
            "ad": {
                "type": MEMORY,
                "settings": {"directory": ad_directory},
                "join": [{"object_class": "user", "match": [{"cs": "accountName", "mv": "accountName"}]}],
                "import_flow": [
                    {"object_class": "user", "cs": "thumbnail", "mv": "adThumbnailChecksum", "transform": "sha256"}
                ],
                "export_flow": [
                    {
                        "object_class": "user",
                        "mv": "photo",
                        "cs": "thumbnail",
                        "transform": "thumbnail",
                        "allow_null": True,
                    }
                ],
            },
        },
        "run_profiles": {
            "Full Import": {"steps": [{"type": "full-import", "agent": a} for a in ("exo", "hr", "ad")]},
            "Full Sync": {"steps": [{"type": "full-sync", "agent": a} for a in ("exo", "hr", "ad")]},
            "Export AD": {
                "steps": [
                    {"type": "export", "agent": "ad", "deletion_threshold": {"count": 50, "attributes": ["thumbnail"]}}
                ]
            },
        },
    }


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("browser")
    monkey = pytest.MonkeyPatch()
    monkey.setenv("MVSYNC_TOKEN_CACHE_KEY", Fernet.generate_key().decode())
    ad_name = f"browser-ad-{uuid.uuid4().hex[:8]}"
    emu = GraphEmulator(EmulatorConfig(users=16, photo_ratio=0.6, seed=11)).start()
    served = None
    engine = None
    try:
        monkey.setenv("MVSYNC_TEST_EXO_REFRESH_TOKEN", emu.info["refresh_token"])
        users = [u for u in emu.admin.users() if u.get("mail") and u.get("mailbox") == "cloud"]
        # the HR folder has real JPEGs for a third of the people, AD a thumbnail for a few
        photos = tmp / "photos"
        photos.mkdir()
        folder_accounts = [u["mailNickname"] for u in users[::3]]
        for i, account in enumerate(folder_accounts):
            (photos / f"{account}.jpg").write_bytes(image_bytes(300 + i, 320))
        ad = directory(ad_name)
        for i, user in enumerate(users):
            ad["objects"][f"guid-{i:03d}"] = {
                "accountName": user["mailNickname"],
                **({"thumbnail": image_bytes(700 + i, 96)} if i % 4 == 0 else {}),
            }
        failing = next(i for i, u in enumerate(users) if u["hasPhoto"] and i % 4)
        ad["fail"][f"guid-{failing:03d}"] = (ExportStatus.FAILED, "constraint-violation")
        config = config_from_dict(_config(emu, tmp, ad_name), base_dir=tmp)
        engine = Engine(config)
        for profile in ("Full Import", "Full Sync", "Export AD", "Full Import", "Full Sync"):
            result = engine.run_profile(profile)
            assert not result.status.startswith("stopped"), result.as_dict()
        # a new photo in Exchange Online after the export: an AD export is pending again
        with_photo = next(u for u in users if u["hasPhoto"])
        emu.admin.set_photo(with_photo["id"], image_bytes(999, 400))
        for profile in ("Full Import", "Full Sync"):
            engine.run_profile(profile)
        served = serve_in_background(create_app(config, store=engine.store))
        # everybody with a mailbox is a person, those on Exchange Server too (exo imports them with
        # EXOMailboxLocation = on-premises, not as errors)
        people = [u for u in emu.admin.users() if u.get("mail") and u["mailbox"] != "none"]  # guests have mail
        yield Console(served.url, engine, people, folder_accounts)
    finally:
        if served is not None:
            served.stop()
        if engine is not None:
            engine.close()
        emu.stop()
        DIRECTORIES.pop(ad_name, None)
        monkey.undo()


def _images(driver: Any) -> list[dict[str, Any]]:
    return list(
        driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.currentSrc, complete: i.complete, "
            "w: i.naturalWidth, h: i.naturalHeight}));"
        )
    )


#: How long a page may take to load under load (a generous bound for a wait, not a timing assertion).
PAGE_WAIT_S = 60


def _open(driver: Any, url: str) -> None:
    driver.get(url)
    _load_images(driver)


def _load_images(driver: Any) -> None:
    # lazy images below the fold load when scrolled to; bring every one into view
    driver.execute_script("document.querySelectorAll('img').forEach(i => { i.loading = 'eager'; });")
    deadline = time.monotonic() + PAGE_WAIT_S
    while not all(i["complete"] for i in _images(driver)):
        assert time.monotonic() < deadline, "images did not finish loading"
        time.sleep(0.05)


def _follow(driver: Any, action: Callable[[], None]) -> None:
    """Do ``action`` (a click on a link, a form's submit) and wait until the page it leads to has loaded.

    Why: a submit is JavaScript (``form.submit()``), which WebDriver does not wait for; reading the page
    at once found the page before it, and the test failed when the machine was busy.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    before = driver.find_element(By.TAG_NAME, "html")
    action()
    wait = WebDriverWait(driver, PAGE_WAIT_S)
    wait.until(expected_conditions.staleness_of(before))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
    _load_images(driver)


def _assert_images_render(driver: Any, minimum: int) -> None:
    images = _images(driver)
    assert len(images) >= minimum, images
    broken = [i["src"] for i in images if i["w"] == 0]
    assert not broken, f"images that did not decode: {broken}"


def _assert_no_policy_errors(driver: Any) -> None:
    """The page's own CSP must not block anything it uses (inline styles, scripts, foreign images)."""
    problems = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems


def _shot(driver: Any, artifact_dir: Path, name: str) -> None:
    driver.set_window_size(1280, max(1000, min(6000, int(driver.execute_script("return document.body.scrollHeight")))))
    driver.save_screenshot(str(artifact_dir / f"{name}.png"))
    driver.set_window_size(1280, 1000)


def test_search_finds_people_and_opens_their_photos(chromium: Any, console: Console, artifact_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = chromium
    _open(driver, console.url + "/search")
    rows = driver.find_elements(By.CSS_SELECTOR, "ul.hits li a")
    assert len(rows) == len(console.users)
    _assert_images_render(driver, 1)
    _shot(driver, artifact_dir, "search-all")

    # a person with photos in Exchange Online and the folder, looked up by part of their mail
    person = next(u for u in console.users if u["hasPhoto"] and u["mailNickname"] in console.folder_accounts)
    box = driver.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
    box.clear()
    box.send_keys(person["mail"].split("@")[0].upper())
    _follow(driver, box.submit)
    hits = driver.find_elements(By.CSS_SELECTOR, "ul.hits li a")
    assert len(hits) == 1 and person["displayName"] in hits[0].text
    _shot(driver, artifact_dir, "search-one")
    _follow(driver, hits[0].click)
    assert driver.find_element(By.TAG_NAME, "h1").text.strip().endswith(person["displayName"])
    sources = [c.find_element(By.TAG_NAME, "b").text for c in driver.find_elements(By.CSS_SELECTOR, "figure.card")]
    assert sources[:3] == ["Metaverse", "Exchange Online", "Folder"], sources
    card_images = driver.find_elements(By.CSS_SELECTOR, "figure.card img.photo")
    widths = [driver.execute_script("return arguments[0].naturalWidth", i) for i in card_images]
    assert widths[:3] == [240, 240, 320], widths  # metaverse = EXO's 240x240, the folder's 320x320 original
    page = driver.find_element(By.TAG_NAME, "main").text
    assert "240\u00d7240 " in page and "320\u00d7320 jpeg" in page and "last checked" in page, page[:1200]
    assert "exo" in page and "EXOPhoto" in page  # lineage of the photo
    _assert_images_render(driver, 4)
    _assert_no_policy_errors(driver)
    _shot(driver, artifact_dir, "person")


def test_operations_run_and_step_links(chromium: Any, console: Console, artifact_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = chromium
    _open(driver, console.url + "/")
    _follow(driver, driver.find_element(By.LINK_TEXT, "Operations").click)
    statuses = [s.text for s in driver.find_elements(By.CSS_SELECTOR, "table.ops .status")]
    assert "completed-export-errors" in statuses and "success" in statuses
    _shot(driver, artifact_dir, "operations")
    step_link = driver.find_element(By.PARTIAL_LINK_TEXT, "ad export (1 errors)")
    _follow(driver, step_link.click)
    assert "constraint-violation" in driver.find_element(By.CSS_SELECTOR, "table.errors").text
    assert "guid-0" in driver.find_element(By.CSS_SELECTOR, "table.errors").text
    _shot(driver, artifact_dir, "step-errors")
    _follow(driver, driver.find_element(By.PARTIAL_LINK_TEXT, "← run").click)
    assert "Export AD" in driver.find_element(By.TAG_NAME, "h1").text
    _assert_no_policy_errors(driver)
    _shot(driver, artifact_dir, "run")


def test_pending_exports_grid_and_coverage(chromium: Any, console: Console, artifact_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = chromium
    _open(driver, console.url + "/pending")
    _follow(driver, driver.find_element(By.LINK_TEXT, "ad").click)
    tiles = driver.find_elements(By.CSS_SELECTOR, "figure.pending")
    assert tiles, "nothing pending for AD"
    assert "within limits" in driver.find_element(By.CSS_SELECTOR, ".threshold").text
    # the thumbnail transform's output renders: AD's photos are 96x96 JPEG thumbnails
    _assert_images_render(driver, 1)
    after = [i for i in _images(driver) if "/photo/" in i["src"]]
    assert any(i["w"] == 96 for i in after), after
    _shot(driver, artifact_dir, "pending-ad")
    person_link = tiles[0].find_element(By.CSS_SELECTOR, "figcaption a")
    _follow(driver, person_link.click)
    assert driver.find_elements(By.CSS_SELECTOR, "figure.card")

    _follow(driver, driver.find_element(By.LINK_TEXT, "Coverage").click)
    bars = driver.find_elements(By.CSS_SELECTOR, "table.bars .fill")
    assert bars and any(b.size["width"] > 0 for b in bars)
    text = driver.find_element(By.TAG_NAME, "main").text
    assert "Exchange Online" in text and "Folder" in text and "constraint-violation" in text
    _assert_no_policy_errors(driver)
    _shot(driver, artifact_dir, "coverage")

    _follow(driver, driver.find_element(By.LINK_TEXT, "Agents").click)
    assert "(hidden)" in driver.find_element(By.TAG_NAME, "main").text  # the refresh token setting
    _shot(driver, artifact_dir, "agents")


def test_a_very_long_value_from_the_directory_wraps_instead_of_widening_the_page(
    chromium: Any, photo_world: PhotoWorld, artifact_dir: Path
) -> None:
    # found by hand: a 5,000-character displayName without spaces made the person page 93,000 px wide
    # (the attribute table's other columns scrolled out of sight) and the search page 54,000 px
    from selenium.webdriver.common.by import By

    long_name = "Unbroken" + "x" * 3000
    person = photo_world.directories["exo"]["objects"]["exo-002"]
    person["displayName"] = long_name
    for profile in ("full-import", "full-sync"):
        photo_world.engine.run_profile(profile)
    console = serve_in_background(create_app(photo_world.config, store=photo_world.engine.store))
    driver = chromium
    try:
        _open(driver, console.url + "/search?q=unbrokenxxx")
        hits = driver.find_elements(By.CSS_SELECTOR, "ul.hits li a")
        assert len(hits) == 1, [h.text[:80] for h in hits]
        _assert_fits_the_window(driver, "search")
        _follow(driver, hits[0].click)
        assert long_name in driver.find_element(By.TAG_NAME, "h1").text.replace("\n", "")
        _assert_fits_the_window(driver, "person")
        _shot(driver, artifact_dir, "person-long-value")
    finally:
        console.stop()
        person["displayName"] = "Person 02 Example"
        for profile in ("full-import", "full-sync"):
            photo_world.engine.run_profile(profile)


def _assert_fits_the_window(driver: Any, page: str) -> None:
    scroll, client = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert scroll <= client, f"the {page} page is {scroll} px wide in a {client} px window"


@contextlib.contextmanager
def _page_of_another_site(links: list[str]) -> Iterator[str]:
    """A page on ``localhost`` (another site than the console's 127.0.0.1: a wiki, a monitoring alert)
    holding ``links`` (ids ``link0``, ``link1`` ...); yields its URL."""
    body = "".join(f'<p><a id="link{i}" href="{html.escape(url)}">console</a></p>' for i, url in enumerate(links))

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = f"<!doctype html><html><body>{body}</body></html>".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_link_from_another_site_opens_the_console_signed_in_with_a_token(
    chromium: Any, photo_world: PhotoWorld
) -> None:
    # found in the console pass: the sign-in cookie was SameSite=Strict, which a browser does not send on
    # a navigation that began on another site, redirects included: opening the console from a link with
    # ?token= (a runbook, a wiki, a monitoring alert) traded the token and then said "authentication
    # required: open the console with ?token=...", and once signed in every such link to a page said so
    from selenium.webdriver.common.by import By

    token = "a-console-token-of-this-test"
    policy = AccessPolicy(token=token)
    console = serve_in_background(create_app(photo_world.config, store=photo_world.engine.store, policy=policy))
    driver = chromium
    links = [f"{console.url}/coverage?token={token}", f"{console.url}/agents"]
    try:
        with _page_of_another_site(links) as other_site:
            for i, path in enumerate(("/coverage", "/agents")):
                driver.get(other_site)
                _follow(driver, driver.find_element(By.ID, f"link{i}").click)
                assert driver.current_url == console.url + path  # the token left the address bar
                headings = [h.text for h in driver.find_elements(By.TAG_NAME, "h1")]
                assert headings == [path.strip("/").title()], driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.get(console.url + "/favicon.ico")
        driver.delete_all_cookies()  # the next test's console is on 127.0.0.1 too
        console.stop()
