"""A small shop, as a browser sees it: what tests/test_reports.py and tests/test_browser.py put
behind Envoy to show what Matomo reports for a real browsing session.

- `/` and `/products/<n>` (n = 1, 2, 3): HTML pages that load a stylesheet (which loads a web
  font), a script, a logo and product images, all cacheable; the script fetches the cart from
  the JSON API on every page, as shops show a cart badge, and the product pages' "Add to cart"
  button POSTs to it.
- `/api/cart`: JSON, GET and POST.
- `/old/red-boots`: an old link, 301 to `/products/1`.
- `/checkout`: a server error, 500, a bare HTML page (no layout, no script).
- any other path, `/products/7` too: 404, an HTML page in the shop's layout.
- `/catalogue.pdf`: a PDF; `/orders/42/invoice`: a PDF sent as an attachment (no extension).
- `/favicon.ico`, `/robots.txt`.

With `tracker=(matomo_url, idsite)` every HTML page also runs Matomo's JavaScript tracker
(`matomo.js` from that Matomo) with link tracking, as Matomo's install screen gives it; error
pages set the title Matomo's FAQ gives them (`404/URL = …/From = …`), and "Add to cart" tracks
an event. The tracker tells the page when Matomo has its request (`window.matomoSent`, a count),
so a browser driver can wait for it before moving on.

`python -m tests.support.shop PORT [MATOMO_URL IDSITE]` serves it alone.
"""

from __future__ import annotations

import html
import json
import struct
import sys
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PRODUCTS = {1: "Red boots", 2: "Blue boots", 3: "Rain coat"}
CART_API = "/api/cart"
# The shop's script: fetches the cart (CART_API) on every page that runs it.
SCRIPT_PATH = "/static/shop.js"
OLD_LINKS = {"/old/red-boots": "/products/1"}


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Small valid files of each type: a 1x1 PNG, an icon holding it, one blank PDF page.
PNG = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">2I5B", 1, 1, 8, 6, 0, 0, 0))
       + png_chunk(b"IDAT", zlib.compress(bytes(5))) + png_chunk(b"IEND", b""))
ICO = struct.pack("<3H4B2H2I", 0, 1, 1, 1, 1, 0, 0, 1, 32, len(PNG), 22) + PNG  # one PNG image
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
       b"3 0 obj<</Type/Page/MediaBox[0 0 200 200]/Parent 2 0 R>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")
WOFF2 = b"wOF2" + bytes(44)  # a header only: the browser asks for it, then finds it empty
LOGO = b'<svg xmlns="http://www.w3.org/2000/svg" width="80" height="20"><text y="15">Shop</text></svg>'
CSS = (b"@font-face{font-family:Shop;src:url(/static/shop.woff2) format('woff2')}"
       b"body{font-family:Shop,sans-serif}img{width:40px}")
SCRIPT = b"""
function showCart(cart) { document.getElementById('cart').textContent = cart.items; }
fetch('/api/cart').then(function (r) { return r.json(); }).then(showCart);
var add = document.getElementById('add');
if (add) {
  add.addEventListener('click', function () {
    fetch('/api/cart', {method: 'POST', headers: {'content-type': 'application/json'},
                        body: JSON.stringify({sku: add.dataset.sku})})
      .then(function (r) { return r.json(); })
      .then(function (cart) { showCart(cart); window.cartUpdated = true; });
    if (window._paq) {
      _paq.push(['trackEvent', 'Cart', 'add', add.dataset.sku, undefined, undefined, sent]);
    }
  });
}
"""
ASSETS = {
    "/static/shop.css": ("text/css", CSS),
    SCRIPT_PATH: ("application/javascript", SCRIPT),
    "/static/logo.svg": ("image/svg+xml", LOGO),
    "/static/shop.woff2": ("font/woff2", WOFF2),
    "/favicon.ico": ("image/x-icon", ICO),
    **{f"/static/products/{n}.png": ("image/png", PNG) for n in PRODUCTS},
}
ROBOTS = b"User-agent: *\nAllow: /\n"

# Matomo's FAQ "How do I track 404 pages?": the title that groups error pages by status.
ERROR_TITLE = ("'{status}/URL = ' + encodeURIComponent(document.location.pathname + document.location.search)"
               " + '/From = ' + encodeURIComponent(document.referrer)")


def tracker_snippet(matomo_url: str, idsite: int, status: int) -> str:
    """Matomo's tracking code (as its install screen gives it), with a callback that counts the
    requests Matomo has answered, and the error-page title for a 4xx/5xx page. The tracker sends
    with XMLHttpRequest, not sendBeacon (whose callback comes before Matomo has the hit), so a
    driver that waits for the callback never has two pages' first hits reach Matomo at once,
    which would make it create two visits."""
    title = f"_paq.push(['setDocumentTitle', {ERROR_TITLE.format(status=status)}]);" if status >= 400 else ""
    return f"""<script>
window.matomoSent = 0;
function sent() {{ window.matomoSent += 1; }}
var _paq = window._paq = window._paq || [];
{title}
_paq.push(['disableAlwaysUseSendBeacon']);
_paq.push(['enableLinkTracking']);
_paq.push(['setTrackerUrl', {json.dumps(matomo_url + '/matomo.php')}]);
_paq.push(['setSiteId', {json.dumps(str(idsite))}]);
_paq.push(['trackPageView', undefined, undefined, sent]);
</script>
<script async src={json.dumps(matomo_url + '/matomo.js')}></script>"""


class Shop:
    """The shop on 127.0.0.1, in a thread. `tracker=(matomo_url, idsite)` embeds Matomo's
    JavaScript tracker in its pages."""

    def __init__(self, port: int = 0, tracker: tuple[str, int] | None = None):
        shop = self
        self.tracker = tracker
        self.cart_items = 0
        self.lock = threading.Lock()

        class Handler(ShopHandler):
            pass

        Handler.shop = shop
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self) -> Shop:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def page(self, title: str, body: str, status: int = 200, layout: bool = True) -> bytes:
        """An HTML page; in the shop's layout (stylesheet, logo, script, cart badge), or bare."""
        head = f"<title>{html.escape(title)}</title>"
        if layout:
            head += '<link rel="stylesheet" href="/static/shop.css">'
            body = ('<header><a href="/"><img src="/static/logo.svg" alt="Shop"></a> '
                    'Cart: <span id="cart">0</span></header>' + body +
                    f'<script src="{SCRIPT_PATH}"></script>')
        if self.tracker:
            head += tracker_snippet(*self.tracker, status)
        return f"<!doctype html><html><head><meta charset=utf-8>{head}</head><body>{body}</body></html>".encode()

    def home(self) -> bytes:
        items = "".join(f'<li><a href="/products/{n}"><img src="/static/products/{n}.png" alt="">{name}</a></li>'
                        for n, name in PRODUCTS.items())
        return self.page("Shop", f'<h1>Shop</h1><ul>{items}</ul>'
                                 '<p><a id="catalogue" href="/catalogue.pdf">Catalogue (PDF)</a> '
                                 '<a id="invoice" class="matomo_download" href="/orders/42/invoice">Last invoice</a></p>')

    def product(self, n: int) -> bytes:
        name = PRODUCTS[n]
        return self.page(name, f'<h1>{name}</h1><img src="/static/products/{n}.png" alt="">'
                               f'<button id="add" data-sku="sku-{n}">Add to cart</button>'
                               f'<p>Also: <a href="/products/{n % len(PRODUCTS) + 1}">{PRODUCTS[n % len(PRODUCTS) + 1]}</a></p>'
                               '<p><a id="older" href="/old/red-boots">Last year\'s red boots</a> '
                               '<a id="catalogue" href="/catalogue.pdf">Catalogue (PDF)</a></p>')

    def not_found(self) -> bytes:
        return self.page("Not found", '<h1>Not found</h1><a id="back" href="/">Back to the shop</a>', status=404)

    def server_error(self) -> bytes:
        return self.page("Error", "<h1>Something went wrong</h1>", status=500, layout=False)

    def cart(self, method: str, body: bytes) -> bytes:
        with self.lock:
            if method == "POST":
                json.loads(body or b"{}")
                self.cart_items += 1
            return json.dumps({"items": self.cart_items}).encode()


class ShopHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = -1
    disable_nagle_algorithm = True
    shop: Shop

    def log_message(self, *args):
        pass

    def answer(self, status: int, content_type: str | None, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urllib.parse.urlsplit(self.path).path
        shop, page = self.shop, "text/html; charset=utf-8"
        if path in ASSETS:
            content_type, data = ASSETS[path]
            self.answer(200, content_type, data, cache_control="max-age=3600")
        elif path == CART_API and self.command in ("GET", "POST"):
            self.answer(200, "application/json", shop.cart(self.command, body), cache_control="no-store")
        elif path in OLD_LINKS:
            self.answer(301, None, location=OLD_LINKS[path])
        elif path == "/":
            self.answer(200, page, shop.home())
        elif path.startswith("/products/") and path[10:].isdigit() and int(path[10:]) in PRODUCTS:
            self.answer(200, page, shop.product(int(path[10:])))
        elif path == "/checkout":
            self.answer(500, page, shop.server_error())
        elif path == "/catalogue.pdf":
            self.answer(200, "application/pdf", PDF)
        elif path == "/orders/42/invoice":
            self.answer(200, "application/pdf", PDF, content_disposition='attachment; filename="invoice-42.pdf"')
        elif path == "/robots.txt":
            self.answer(200, "text/plain", ROBOTS)
        else:
            self.answer(404, page, shop.not_found())

    do_POST = do_HEAD = do_GET


if __name__ == "__main__":
    args = sys.argv[1:]
    port = int(args[0]) if args else 8080
    tracker = (args[1].rstrip("/"), int(args[2])) if len(args) >= 3 else None
    Shop(port=port, tracker=tracker).start()
    print(f"shop on http://127.0.0.1:{port}/" + (f", tracking into {tracker[0]} site {tracker[1]}" if tracker else ""),
          flush=True)
    threading.Event().wait()
