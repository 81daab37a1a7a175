"""Download known dataset files into the data directory, checksum-verified.

``SOURCES`` maps a dataset name to the files to fetch. A file's ``filename`` is
relative to the data directory and is where the loader looks for it; archives
(``.tar.gz``) are extracted next to themselves with ``tarfile``'s "data" filter
(no absolute paths, links out of the tree or device files).

Each connection attempt and each read waits at most ``TIMEOUT_S`` seconds
(``fetch(..., timeout=...)`` overrides it). A failed download is one DataError
line naming the URL and the path where the file can be put by hand instead;
``fetch`` then verifies (and extracts) it without downloading.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from workbench.errors import DataError

_CHUNK = 1 << 20
TIMEOUT_S = 60.0  # seconds without progress (connect or read) before giving up


class FileSource(NamedTuple):
    """One downloadable file.

    Attributes:
      url: where to get it (``https://``, ``http://`` or ``file://``).
      filename: destination relative to the data directory.
      md5: expected hex MD5 digest, or None.
      sha256: expected hex SHA-256 digest, or None (checked when given).
    """

    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None


def _idx_sources(subdir: str, base: str, md5s: dict[str, str]) -> list[FileSource]:
    return [FileSource(base + f, f"{subdir}/{f}", md5=h) for f, h in md5s.items()]


_MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# Official checksums (the ones torchvision verifies).
SOURCES: dict[str, list[FileSource]] = {
    "cifar10": [
        FileSource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            md5="c58f30108f718f92721af3b95e74349a",
        )
    ],
    "mnist": _idx_sources(
        "mnist",
        _MNIST_BASE,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": _idx_sources(
        "fashion_mnist",
        _FASHION_BASE,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_mismatch(path: Path, source: FileSource) -> str | None:
    """Returns a description of the first failing checksum, or None if all match."""
    for algorithm, expected in (("sha256", source.sha256), ("md5", source.md5)):
        if expected is None:
            continue
        got = file_digest(path, algorithm)
        if got != expected.lower():
            return f"{algorithm} {got}, expected {expected}"
    return None


def _download(source: FileSource, dest: Path, name: str, timeout: float) -> None:
    """Streams ``source.url`` to ``dest`` (via a ``.part`` file).

    Raises:
      DataError: timeout, network or HTTP failure; names the URL and ``dest``.
    """
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {dest.parent}: {e.strerror}") from None
    try:
        with (
            urllib.request.urlopen(source.url, timeout=timeout) as response,
            part.open("wb") as out,
        ):
            shutil.copyfileobj(response, out, _CHUNK)
    except (OSError, http.client.HTTPException, ValueError) as e:
        part.unlink(missing_ok=True)
        raise DataError(
            f"could not download {source.url}: {_reason(e, timeout)}; download it "
            f"by hand to {dest} and run `workbench data fetch {name}` again (it "
            "checks the file and does not download it twice)"
        ) from None
    part.replace(dest)


def _reason(error: Exception, timeout: float) -> str:
    """A short, one-line cause of a download failure."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    cause = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(cause, TimeoutError):  # socket.timeout is TimeoutError
        return f"no response for {timeout:g} s (timed out)"
    text = " ".join(str(cause).split()) or type(cause).__name__
    return text[:200]


def _extract(archive: Path) -> None:
    """Extracts a tar archive into its own directory (safe "data" filter)."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(archive.parent, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"could not extract {archive}: {e}") from None


def _is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def fetch(
    name: str,
    data_dir: str,
    urls: Sequence[FileSource] | None = None,
    timeout: float | None = None,
) -> list[Path]:
    """Downloads, verifies and (for archives) extracts a dataset's files.

    Files already present with the right checksum are not downloaded again.

    Args:
      name: dataset name, a key of ``SOURCES`` unless ``urls`` is given.
      data_dir: data directory (see ``resolve_data_dir``).
      urls: sources to use instead of ``SOURCES[name]`` (mirrors, tests).
      timeout: seconds to wait for a connection or for data; default
        ``TIMEOUT_S``.

    Returns:
      Paths of the fetched files, in source order.

    Raises:
      DataError: unknown name, download failure (timeout, network, HTTP) or
        checksum mismatch (the bad file is removed).
    """
    timeout = TIMEOUT_S if timeout is None else timeout
    if urls is None:
        if name not in SOURCES:
            raise DataError(
                f"no download known for dataset '{name}'; fetchable: {sorted(SOURCES)}"
            )
        urls = SOURCES[name]
    paths = []
    for source in urls:
        dest = Path(data_dir) / source.filename
        if not (dest.is_file() and checksum_mismatch(dest, source) is None):
            _download(source, dest, name, timeout)
            bad = checksum_mismatch(dest, source)
            if bad is not None:
                dest.unlink()
                raise DataError(
                    f"dataset '{name}': checksum mismatch for {source.url} "
                    f"({bad}); the file was removed"
                )
        if _is_archive(dest):
            _extract(dest)
        paths.append(dest)
    return paths
