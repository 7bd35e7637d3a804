"""The run view: one HTML page with its JavaScript inlined, served by the app at ``GET /api/view``.

No build step and no third-party script: ``run-view.js`` is plain browser JavaScript kept next to the
page, so the view works offline and behind any firewall. The Content-Security-Policy allows exactly
that one inline script (by hash) and requests to this app only.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib import resources

_PLACEHOLDER = "/*RUN_VIEW_JS*/"


@cache
def page() -> tuple[bytes, dict[str, str]]:
    """The page's bytes and its security headers (built once per process)."""
    folder = resources.files(__package__)
    script = folder.joinpath("run-view.js").read_text(encoding="utf-8")
    html = folder.joinpath("index.html").read_text(encoding="utf-8")
    # The hash covers the script element's exact text, newlines around the code included.
    block = html[html.index("<script>") + len("<script>"):html.index("</script>")]
    inline = block.replace(_PLACEHOLDER, script)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    headers = {
        "Content-Security-Policy": (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
                                    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                    "base-uri 'none'; form-action 'none'"),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return html.replace(block, inline).encode(), headers
