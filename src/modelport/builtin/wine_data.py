"""Find the UCI wine CSV: the configured folder, the shared folder, a verified download."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from modelport.builtin.wine import WINE_FILE_NAME, WINE_SHA256
from modelport.settings import Settings
from modelport.storage.files import write_atomically

SHARED_DATASETS_DIR = Path("../shared/datasets")


class WineDataUnavailableError(RuntimeError):
    """No wine data anywhere; the message tells the user what to do."""


def locate_wine_csv(settings: Settings, download_timeout: float = 30.0) -> Path:
    """``MODELPORT_DATASETS_DIR``, then ``../shared/datasets``, then a cached or fresh download."""
    candidates = []
    if settings.datasets_dir is not None:
        candidates.append(settings.datasets_dir / WINE_FILE_NAME)
    candidates.append(SHARED_DATASETS_DIR / WINE_FILE_NAME)
    cached = settings.var_dir / "datasets" / WINE_FILE_NAME
    candidates.append(cached)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    try:
        return download_wine_csv(settings.wine_download_url, cached, download_timeout)
    except (OSError, ValueError) as exc:
        looked = ", ".join(str(c) for c in candidates[:-1])
        raise WineDataUnavailableError(
            f"The wine data ({WINE_FILE_NAME}) was not found in {looked} and could not be "
            f"downloaded from {settings.wine_download_url} ({exc}).\n"
            f"Fix: put {WINE_FILE_NAME} from the UCI Wine Quality dataset in a folder and run "
            f"again with MODELPORT_DATASETS_DIR=/that/folder, or run "
            f"`.venv/bin/modelport train-wine --data /path/to/{WINE_FILE_NAME}`."
        ) from None


def download_wine_csv(url: str, destination: Path, timeout: float) -> Path:
    """Download to ``destination`` only if the sha256 matches the canonical UCI file."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"refusing to download from a non-HTTP URL {url!r}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked
        data = response.read(10_000_000)
    digest = hashlib.sha256(data).hexdigest()
    if digest != WINE_SHA256:
        raise ValueError(f"downloaded file has sha256 {digest}, expected {WINE_SHA256}")
    # Whole or not at all: a half-written file here would be picked up as the data next time.
    write_atomically(destination, data)
    return destination
