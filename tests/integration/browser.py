"""A headless Chromium for the status page's tests (Debian's `chromium` + `chromium-driver`, driven by selenium).

The browser may only talk to 127.0.0.1 (`../shared/testing-here.md`): every host name resolves to nothing but
127.0.0.1, everything else goes to a proxy on a closed local port, and Chromium's own background traffic
(updates, safe browsing, sync, metrics) is switched off.

Helpers read what a user would see: the page's console errors (`console_errors`), horizontal overflow at a
viewport width (`overflow`), form controls without a label (`unlabelled`), and text whose contrast with its
background is below WCAG AA (`low_contrast`: 4.5:1, 3:1 for large text), computed in the page from the
rendered colours.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LAPTOP = (1366, 900)
PHONE = (390, 844)


def available() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed"
    return None


@contextmanager
def chromium(width: int = LAPTOP[0], height: int = LAPTOP[1]) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--disable-features=Translate,OptimizationHints",
                "--metrics-recording-only", "--safebrowsing-disable-auto-update",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.accept_insecure_certs = True  # the nodes' certificates come from the local cluster's own CA
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The console's errors since the last call (network failures of the page's own requests included)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def set_viewport(driver: Any, width: int, height: int, mobile: bool = False) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})


def overflow(driver: Any) -> dict[str, Any]:
    """How far the page is wider than its viewport, and the widest elements that stick out (tables inside a
    scrolling wrapper do not count: that is their design)."""
    return dict(driver.execute_script("""
        const doc = document.documentElement, width = doc.clientWidth;
        const out = [];
        for (const e of document.body.querySelectorAll("*")) {
          if (e.closest(".table-wrap")) continue;
          const r = e.getBoundingClientRect();
          if (r.width && r.right > width + 1) {
            out.push(`${e.tagName.toLowerCase()}#${e.id}.${e.className} ${Math.round(r.right)}`);
          }
        }
        return {scroll: doc.scrollWidth - width, width, sticking_out: out.slice(0, 8)};
    """))


def unlabelled(driver: Any) -> list[str]:
    """Form controls and buttons a screen reader could not name."""
    return list(driver.execute_script("""
        const out = [];
        for (const e of document.querySelectorAll("input, select, textarea, button, progress")) {
          if (e.type === "hidden") continue;
          const named = e.getAttribute("aria-label") || e.getAttribute("aria-labelledby") ||
            (e.id && document.querySelector(`label[for="${e.id}"]`)) || e.closest("label") ||
            (e.tagName === "BUTTON" && e.textContent.trim());
          if (!named) out.push(e.outerHTML.slice(0, 120));
        }
        return out;
    """))


def low_contrast(driver: Any) -> list[str]:
    """Visible text below WCAG AA contrast with the background it is drawn on."""
    return list(driver.execute_script("""
        function rgba(s) {
          const m = s.match(/[\\d.]+/g).map(Number);
          return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1];
        }
        function lum([r, g, b]) {
          const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
          return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
        }
        function background(e) {
          const layers = [];
          for (let n = e; n && n.nodeType === 1; n = n.parentElement) {
            const c = rgba(getComputedStyle(n).backgroundColor);
            if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
          }
          let out = [255, 255, 255];
          for (const c of layers.reverse()) out = out.map((v, i) => c[i] * c[3] + v * (1 - c[3]));
          return out;
        }
        const out = [];
        for (const e of document.body.querySelectorAll("*")) {
          const text = [...e.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join("").trim();
          if (!text) continue;
          const style = getComputedStyle(e), r = e.getBoundingClientRect();
          if (style.visibility === "hidden" || style.display === "none" || r.width < 2 || r.height < 2) continue;
          if (e.closest("svg")) continue;  // drawn in the ring's own colours, checked with the palette
          const fg = rgba(style.color), bg = background(e);
          const blended = fg.slice(0, 3).map((v, i) => v * fg[3] + bg[i] * (1 - fg[3]));
          const [a, b] = [lum(blended), lum(bg)].sort((x, y) => y - x);
          const ratio = (a + 0.05) / (b + 0.05);
          const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
          const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
          const what = `${e.tagName.toLowerCase()}.${e.className} "${text.slice(0, 30)}"`;
          if (ratio < need) out.push(`${what} ${ratio.toFixed(2)} < ${need}`);
        }
        return out;
    """))
