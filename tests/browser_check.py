"""Open the built book in headless Chromium, offline, and check what a reader sees.

    python tests/browser_check.py [--html _build/html] [--http] [PAGE ...]

For each page (default: every chapter page under ``book/``, plus the index) it asserts that

* every equation was typeset by MathJax: each ``.math`` element holds an ``mjx-container``, none
  still shows raw TeX (``\\(``, ``\\[``, ``$$``) and there is no ``mjx-merror``;
* MathJax itself came from the book (``window.MathJax.version`` is set and the script's URL is
  local), its web fonts loaded, and no request of the page left the book (file:// or the local
  server);
* every ``<img>`` loaded (``complete`` and ``naturalWidth > 0``);

and that the pages checked hold, together, at least one equation and one figure (so the check cannot
pass by finding nothing). ``--require-status`` and ``--strict-tables`` also fail a chapter page
without a ``report.status_banner`` admonition, or a page showing a plain pandas table (off until
the chapters call ``report``). The browser runs with every host name but the local one unresolvable, so
a CDN cannot rescue a missing local copy even on a machine with network.

Chromium is Debian's ``chromium`` package, installed with apt-get when missing and running as root
(CI); it is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so the check
needs nothing beyond the standard library. Exit status 0 when every check holds, 1 otherwise.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
         "--window-size=1280,2000",
         # offline: no host name resolves except the local server's
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]

# what the page reports once its load event fired and MathJax finished typesetting
PROBE = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const start = Date.now(), until = start + %(wait_ms)d;
  // MathJax (when it loaded) exposes startup.promise, resolved after the first typeset. Its script is
  // deferred, so it ran before the load event: a page without it after a short grace has none.
  while (Date.now() < until && !(window.MathJax && window.MathJax.startup && window.MathJax.startup.promise)) {
    if (document.readyState === "complete" && !(window.MathJax && window.MathJax.version)
        && (!document.querySelector(".math") || Date.now() - start > 1000)) break;
    await sleep(50);
  }
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    await Promise.race([window.MathJax.startup.promise, sleep(Math.max(0, until - Date.now()))]);
  }
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.race([Promise.all(imgs.map(i => i.complete ? null :
      new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); }))),
      sleep(Math.max(0, until - Date.now()))]);
  await Promise.race([document.fonts.ready, sleep(Math.max(0, until - Date.now()))]);
  const fonts = [...document.fonts].filter(f => /MJX/.test(f.family));
  const maths = [...document.querySelectorAll(".math")];
  const raw = /\\\(|\\\[|\$\$/;
  const unrendered = maths.filter(m => !m.querySelector("mjx-container") || raw.test(
      [...m.childNodes].filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.textContent).join("")));
  const scripts = [...document.scripts].map(s => s.src).filter(s => /mathjax/i.test(s));
  return JSON.stringify({
    title: document.title,
    math: maths.length,
    rendered: document.querySelectorAll("mjx-container").length,
    unrendered: unrendered.slice(0, 5).map(m => m.textContent.slice(0, 80)),
    n_unrendered: unrendered.length,
    merror: document.querySelectorAll("mjx-merror").length,
    mathjax_version: (window.MathJax && window.MathJax.version) || null,
    mathjax_scripts: scripts,
    status: document.querySelectorAll(".admonition.rc-status").length,
    tables: document.querySelectorAll(".rc-table").length,
    raw_tables: document.querySelectorAll("table.dataframe").length,
    fonts_loaded: fonts.filter(f => f.status === "loaded").length,
    fonts_failed: fonts.filter(f => f.status === "error").map(f => f.family),
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
  });
})()
"""


def find_chromium(install: bool) -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print("chromium is missing: installing Debian's chromium package with apt-get", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                       check=True, env=env)
        path = shutil.which("chromium")
        if path:
            return path
    sys.exit("browser check: no chromium found; install Debian's package: apt-get install chromium")


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4 of the child)."""

    def __init__(self, exe: str, timeout: float):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="recollect-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():  # in the child: its fd 3 reads our commands, its fd 4 writes the replies
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"],
            # our pipe ends are not inheritable; only the copies wire() makes at 3 and 4 are
            preexec_fn=wire, close_fds=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.time() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.stderr else ""
                raise RuntimeError(f"chromium closed the DevTools pipe\n{err}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict:
        """The next event ``method`` of ``session`` (events are kept in order; the one returned is removed)."""
        deadline = time.time() + self.timeout
        seen = 0
        while True:
            for i in range(seen, len(self.events)):
                ev = self.events[i]
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return self.events.pop(i)
            seen = len(self.events)
            self.events.append(self._read_message(deadline))

    def check_page(self, url: str, wait_ms: int, screenshot: pathlib.Path | None = None) -> dict:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=session)
        self.send("Network.enable", session=session)
        self.events.clear()
        self.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session=session)
        loader = self.send("Page.navigate", {"url": url}, session=session).get("loaderId")
        while True:  # the load event of this navigation (not of the initial about:blank)
            ev = self.wait_event("Page.lifecycleEvent", session)
            if ev["params"]["name"] == "load" and ev["params"].get("loaderId") == loader:
                break
        for attempt in range(3):
            try:
                res = self.send("Runtime.evaluate", {"expression": PROBE % {"wait_ms": wait_ms},
                                                     "awaitPromise": True, "returnByValue": True},
                                session=session)
                break
            except RuntimeError as e:
                # the page navigated while the probe ran (the book's index.html is a meta-refresh
                # redirect to its first chapter): probe the page it went to, once that has loaded
                if "navigated or closed" not in str(e) or attempt == 2:
                    raise
                while True:
                    ev = self.wait_event("Page.lifecycleEvent", session)
                    if ev["params"]["name"] == "load" and ev["params"].get("loaderId") != loader:
                        loader = ev["params"].get("loaderId")
                        break
        if "exceptionDetails" in res:
            raise RuntimeError(f"probe failed on {url}: {res['exceptionDetails']}")
        out = json.loads(res["result"]["value"])
        out["requests"] = sorted({ev["params"]["request"]["url"] for ev in self.events
                                  if ev.get("method") == "Network.requestWillBeSent"
                                  and ev.get("sessionId") == session})
        if screenshot is not None:
            import base64
            size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}
            png = self.send("Page.captureScreenshot", {"format": "png", "clip": clip,
                                                       "captureBeyondViewport": True}, session=session)["data"]
            screenshot.write_bytes(base64.b64decode(png))
        self.send("Target.closeTarget", {"targetId": target})
        return out

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


def serve(root: pathlib.Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):  # the browser closing early (favicon) is no error
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                super().handle_error(request, client_address)

    httpd = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


CHAPTER = re.compile(r"(^|/)book/\d\d-[^/]*\.html$")


def problems_of(page: str, r: dict, base: str, require_status: bool = False,
                strict_tables: bool = False) -> list[str]:
    out = []
    if require_status and CHAPTER.search(page) and not r["status"]:
        out.append("no status admonition (report.status_banner) on this chapter page")
    if strict_tables and r["raw_tables"]:
        out.append(f"{r['raw_tables']} plain pandas tables (show every table with report.table)")
    if r["n_unrendered"]:
        out.append(f"{r['n_unrendered']} of {r['math']} equations not typeset, e.g. {r['unrendered'][:3]}")
    if r["merror"]:
        out.append(f"{r['merror']} MathJax errors (mjx-merror)")
    if r["math"] and not r["mathjax_version"]:
        out.append("MathJax did not load (window.MathJax.version unset)")
    if r["fonts_failed"]:
        out.append(f"MathJax fonts did not load: {r['fonts_failed'][:5]}")
    remote = [s for s in r["mathjax_scripts"] if not s.startswith(base)]
    if remote:
        out.append(f"MathJax is loaded from outside the book: {remote}")
    if r["broken"]:
        out.append(f"{len(r['broken'])} of {r['images']} images did not load: {r['broken'][:3]}")
    outside = [u for u in r["requests"] if not (u.startswith(base) or u.startswith("data:"))]
    if outside:
        out.append(f"requests outside the book: {outside[:5]}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="*", help="pages relative to the html folder "
                    "(default: index.html and every page under book/)")
    ap.add_argument("--html", default="_build/html", help="the built book (default: _build/html)")
    ap.add_argument("--http", action="store_true",
                    help="serve the book on 127.0.0.1 instead of opening file:// URLs")
    ap.add_argument("--require-status", action="store_true",
                    help="fail a chapter page (book/NN-*.html) without a report.status_banner admonition")
    ap.add_argument("--strict-tables", action="store_true",
                    help="fail a page that shows a plain pandas table (not report.table)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install chromium")
    ap.add_argument("--screenshot", metavar="DIR", help="also save a full-page PNG of each page in DIR")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one page")
    args = ap.parse_args(argv)

    t0 = time.time()
    root = pathlib.Path(args.html).resolve()
    if not (root / "index.html").is_file():
        sys.exit(f"browser check: no built book at {root} (run: make book)")
    pages = args.pages or ["index.html"] + sorted(str(p.relative_to(root)) for p in (root / "book").glob("*.html"))
    exe = find_chromium(install=not args.no_install)
    httpd = None
    if args.http:
        httpd, base = serve(root)
    else:
        base = root.as_uri() + "/"

    browser = Browser(exe, timeout=args.timeout)
    failed, n_math, n_img, n_fonts = 0, 0, 0, 0
    try:
        for page in pages:
            shot = None
            if args.screenshot:
                pathlib.Path(args.screenshot).mkdir(parents=True, exist_ok=True)
                shot = pathlib.Path(args.screenshot) / (page.replace("/", "_").removesuffix(".html") + ".png")
            r = browser.check_page(base + page, wait_ms=int(args.timeout * 1000), screenshot=shot)
            n_math += r["math"]
            n_img += r["images"]
            n_fonts += r["fonts_loaded"]
            probs = problems_of(page, r, base, args.require_status, args.strict_tables)
            status = "FAIL" if probs else "ok"
            print(f"{status:4} {page}: {r['rendered']}/{r['math']} equations typeset, "
                  f"{r['images'] - len(r['broken'])}/{r['images']} images, MathJax {r['mathjax_version'] or '-'}"
                  f" ({r['fonts_loaded']} fonts); status banners {r['status']}, "
                  f"report tables {r['tables']}, plain tables {r['raw_tables']}")
            for p in probs:
                print(f"     - {p}")
            failed += bool(probs)
    finally:
        browser.close()
        if httpd:
            httpd.shutdown()
    vacuous = n_math == 0 or n_img == 0
    if vacuous:
        print(f"FAIL the pages checked hold {n_math} equations and {n_img} images: nothing to check")
    print(f"browser check ({'http' if args.http else 'file'}, {exe}): {len(pages) - failed} "
          f"of {len(pages)} pages ok, {time.time() - t0:.1f} s")
    return 1 if failed or vacuous else 0


if __name__ == "__main__":
    sys.exit(main())
