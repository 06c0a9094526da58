"""func-e, Tetrate's Envoy launcher, for the tests and `make run`: where it is, and a FUNC_E_HOME in
which an Envoy binary is func-e's copy of `.envoy-version`'s version, so that `func-e run` starts it
without a download (these machines reach no Envoy archive).

func-e is `$FUNC_E`, else `../shared/func-e/func-e` beside the repository (the project's offline
build of func-e 1.1.4, with its `install-envoy.sh`), else `func-e` on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared/func-e"
VERSION = (ROOT / ".envoy-version").read_text().strip()
MISSING = "no func-e: set FUNC_E, put func-e on PATH, or keep ../shared/func-e beside the repository"


def binary() -> str | None:
    for candidate in (os.environ.get("FUNC_E"), str(SHARED / "func-e"), shutil.which("func-e")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def register(home: Path, envoy: str) -> None:
    """Makes `envoy` func-e's copy of VERSION in `home` (`versions/<VERSION>/bin/envoy`, a link), and
    VERSION func-e's default there, with `../shared/func-e/install-envoy.sh` when it is present,
    else by laying out the same files."""
    script = SHARED / "install-envoy.sh"
    if script.exists():
        subprocess.run(["bash", str(script), envoy, VERSION], check=True, capture_output=True,
                       env={**os.environ, "FUNC_E_HOME": str(home), "LINK": "1"})
        return
    bin_dir = home / "versions" / VERSION / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "envoy").symlink_to(envoy)
    (home / "version").write_text(VERSION)
