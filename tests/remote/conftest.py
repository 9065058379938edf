"""A product on the loopback: served by an S3-compatible server and by an HTTP server with Range
requests, both started and stopped here, both counting the bytes they send."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import factories
from tests.servers import RangeHTTPServer, S3Server, upload


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """(local product, {'s3': its s3:// URL, 'http': its http:// URL}, {'s3': server, 'http': server}).

    4,000 chips in 8 data files (strips west to east) of 5 row groups each, with an int8 index asset; remote caches go to a
    temporary user cache folder (XDG_CACHE_HOME)."""
    import eoembed

    root = tmp_path_factory.mktemp("served")
    local = factories.write_strips(root / "p", n=4000, dim=256, files=8, row_group_size=100)
    eoembed.open(local).build_index(kind="int8")
    s3 = S3Server().start()
    http = RangeHTTPServer(root).start()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3.environment().items():
            patch.setenv(key, value)
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        patch.delenv("EOEMBED_CACHE_DIR", raising=False)
        upload(local, "s3://products/p")
        __import__("s3fs").S3FileSystem().mkdir("copies")  # where tests copy to
        yield local, {"s3": "s3://products/p", "http": f"{http.url}/p"}, {"s3": s3, "http": http}
    s3.stop()
    http.stop()


@pytest.fixture(params=["s3", "http"])
def remote(request, served) -> tuple[Path, str, object]:
    """(local product, the same product's URL, the server of that URL) for each kind of server."""
    local, urls, servers = served
    return local, urls[request.param], servers[request.param]
