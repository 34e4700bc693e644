"""The try-it page at GET /, in a real headless browser against the served app.

Debian's chromium, driven by Playwright's Python client (no browser download): the page
lists the registry's adapters, sends what is filled in, shows the image the service made,
its timings, and the API's error text for a bad value. Screenshots are saved and printed.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from browser import chromium, save_screenshot

pytestmark = pytest.mark.integration

SIZE, STEPS = 64, 4  # the tiny models' scale; refine needs >= 3 steps at high_noise_frac 0.8


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, served_app):
    context = browser.new_context(viewport={"width": 1180, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)  # a cold replica may load its models on the first call
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.goto(f"{served_app.url.rstrip('/')}/?width={SIZE}&height={SIZE}&steps={STEPS}")
    if served_app.api_key:
        page.locator("summary", has_text="More settings").click()
        page.get_by_label("API key").fill(served_app.api_key)
        page.get_by_label("API key").blur()  # change -> the adapter list is fetched with the key
    yield page
    context.close()
    assert not problems, problems


def api_messages(value: Any) -> list[str]:
    """The message strings of an API error body (whatever its nesting)."""
    if isinstance(value, list):
        return [m for item in value for m in api_messages(item)]
    if not isinstance(value, dict):
        return []
    found = []
    for key, inner in value.items():
        if key in ("detail", "msg", "message", "error") and isinstance(inner, str):
            found.append(inner)
        else:
            found += api_messages(inner)
    return found


def test_page_generates_an_image_and_shows_errors(page, served_app, tmp_path, capsys):
    from playwright.sync_api import expect

    name = served_app.adapter_name
    versions = served_app.registry.versions(name)
    version = versions[-1]
    adapter = page.get_by_label("Adapter", exact=True)
    # The picker is filled from GET /v1/adapters: every stored version of the adapter is
    # there, and its champion (preselected: what a request naming no adapter would get).
    for v in versions:
        expect(adapter.locator(f"option[value='{name}@{v}']")).to_have_count(1)
    champion = served_app.registry.champion(name)
    if champion:
        expect(adapter.locator(f"option[value='{name}@champion']")).to_contain_text(champion)
        expect(adapter).to_have_value(f"{name}@champion")

    page.get_by_label("Prompt (text encoder 1)").fill("a blueprint of a lighthouse, floor plan")
    page.get_by_label("Prompt 2 (text encoder 2").fill("white line work on blue paper")
    adapter.select_option(f"{name}@{version}")
    page.get_by_label("Seed", exact=True).fill("1234")
    button = page.locator("#generate")
    with page.expect_response("**/v1/generate") as answer:
        page.get_by_role("button", name="Generate").click()
        expect(button).to_be_disabled()  # disabled from the click until the answer is shown
    response = answer.value
    sent = response.request.post_data_json
    assert response.ok, response.text()
    assert sent["prompt"] == "a blueprint of a lighthouse, floor plan"
    assert sent["prompt_2"] == "white line work on blue paper"
    assert sent["adapter"] == f"{name}@{version}"
    assert (sent["width"], sent["height"], sent["steps"], sent["seed"]) == (SIZE, SIZE, STEPS, 1234)
    assert sent["response_format"] == "json"
    if served_app.api_key:
        assert response.request.headers["authorization"] == f"Bearer {served_app.api_key}"

    expect(page.locator("#output")).to_have_attribute("data-state", "done")
    expect(button).to_be_enabled()
    image = page.locator("#result img").first
    expect(image).to_be_visible()
    natural = image.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
    assert natural == [True, SIZE, SIZE]
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert png.size == (SIZE, SIZE)
    pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1, "the displayed image is blank (one colour)"

    headers = response.headers
    assert version in headers["x-bluepri-adapter"]
    expect(page.locator("#t-adapter")).to_have_text(headers["x-bluepri-adapter"])
    expect(page.locator("#t-sha")).to_have_text(headers["x-bluepri-adapter-sha256"])
    seconds = float(headers["x-bluepri-seconds-total"])
    expect(page.locator("#t-total")).to_have_text(f"{seconds:.3f} s")
    expect(page.locator("#t-base")).to_contain_text(" s")
    with capsys.disabled():
        save_screenshot(tmp_path, "serve-page.png", page)

    # A bad value: the page shows the API's own 4xx answer, which names the field.
    page.get_by_label("Width (px)").fill(str(SIZE + 1))
    with page.expect_response("**/v1/generate") as answer:
        page.get_by_role("button", name="Generate").click()
    bad = answer.value
    assert 400 <= bad.status < 500
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text(str(bad.status))
    expect(alert).to_contain_text("width")
    messages = api_messages(bad.json())
    assert any(message in alert.inner_text() for message in messages), (
        messages,
        alert.inner_text(),
    )
    expect(button).to_be_enabled()
    with capsys.disabled():
        save_screenshot(tmp_path, "serve-page-error.png", page)
