"""ISBI 2012 loading, verification, folds, and download against a real local HTTP server."""

from __future__ import annotations

import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from paper_unet import data


def test_loads_the_real_stacks(isbi_dir):
    isbi = data.load_isbi2012(isbi_dir)
    for stack in (isbi.train_images, isbi.train_labels, isbi.test_images):
        assert stack.shape == (30, 512, 512) and stack.dtype == np.uint8
    assert set(np.unique(isbi.train_labels).tolist()) == {0, 255}
    assert isbi.test_labels is None
    assert (isbi.train_labels == 0).mean() == pytest.approx(0.2196, abs=1e-4)


def test_data_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PAPER_UNET_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir("given") == Path("given")
    assert data.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("PAPER_UNET_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.resolve_data_dir(None) == tmp_path / "cache" / "paper_unet" / "isbi2012"


def copy_stacks(isbi_dir: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in data.REQUIRED:  # the contents only: shared/ is read-only, and the tests rewrite the copies
        shutil.copyfile(isbi_dir / name, dest / name)
    return dest


def test_missing_directory_and_files_say_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="paper-unet download"):
        data.load_isbi2012(tmp_path / "nowhere")
    (tmp_path / "train-volume.tif").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="train-labels.tif, test-volume.tif"):
        data.load_isbi2012(tmp_path)


def test_truncated_file(isbi_dir, tmp_path):
    root = copy_stacks(isbi_dir, tmp_path / "d")
    blob = (root / "train-labels.tif").read_bytes()
    (root / "train-labels.tif").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt|shape"):
        data.load_isbi2012(root)


def test_wrong_shape_non_binary_labels_and_modified_pixels(isbi_dir, tmp_path):
    root = copy_stacks(isbi_dir, tmp_path / "d")
    labels = tifffile.imread(root / "train-labels.tif")
    tifffile.imwrite(root / "train-labels.tif", labels[:5])
    with pytest.raises(ValueError, match=r"shape \(5, 512, 512\)"):
        data.load_isbi2012(root)
    grey = labels.copy()
    grey[0, 0, 0] = 128
    tifffile.imwrite(root / "train-labels.tif", grey)
    with pytest.raises(ValueError, match="not a binary label stack"):
        data.load_isbi2012(root)
    modified = labels.copy()
    modified[0, 0, 0] = 255 - modified[0, 0, 0]
    tifffile.imwrite(root / "train-labels.tif", modified)
    with pytest.raises(ValueError, match="SHA-256"):
        data.load_isbi2012(root)
    assert data.load_isbi2012(root, verify=False).train_labels[0, 0, 0] == modified[0, 0, 0]


def test_cv_folds_are_contiguous_blocks():
    folds = data.cv_folds(30, 3)
    assert [v.tolist() for _, v in folds] == [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]
    for train, val in folds:
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(30))
    with pytest.raises(ValueError):
        data.cv_folds(30, 1)


# --- download against a real HTTP server on 127.0.0.1 ----------------------------------------

@pytest.fixture(scope="module")
def archives(isbi_dir, tmp_path_factory):
    """A real archive built from the real stacks, and damaged copies of it."""
    folder = tmp_path_factory.mktemp("archives")
    good = folder / "good.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in data.REQUIRED:
            zf.write(isbi_dir / name, f"ISBI-2012-challenge/{name}")
    blob = good.read_bytes()
    corrupt = bytearray(blob)
    for i in range(len(blob) // 3, len(blob) // 3 + 4096):
        corrupt[i] ^= 0xFF
    wrong = folder / "wrong.zip"
    labels = tifffile.imread(isbi_dir / "train-labels.tif")
    labels[3, 100, 100] = 255 - labels[3, 100, 100]
    tifffile.imwrite(folder / "train-labels.tif", labels)
    with zipfile.ZipFile(wrong, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name in data.REQUIRED:
            zf.write(folder / name if name == "train-labels.tif" else isbi_dir / name, name)
    return {"good": blob, "corrupt": bytes(corrupt), "short": blob[: len(blob) // 2],
            "wrong": wrong.read_bytes()}


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def server(archives):
    requests: list[tuple[str, str | None]] = []
    served_flaky = {"count": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):  # noqa: N802 - http.server's naming
            kind = self.path.strip("/").split(".")[0]
            requests.append((kind, self.headers.get("Range")))
            if kind == "missing":
                self.send_error(404, "Not Found")
                return
            blob = archives["good" if kind in ("flaky", "cut") else kind]
            start = 0
            if self.headers.get("Range") and kind != "cut":
                start = int(self.headers["Range"].split("=")[1].split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(blob) - start))
            self.end_headers()
            body = blob[start:]
            truncate = kind == "cut" or (kind == "flaky" and served_flaky["count"] == 0)
            if kind == "flaky":
                served_flaky["count"] += 1
            self.wfile.write(body[: len(body) // 2] if truncate else body)
            if truncate:
                self.close_connection = True

    httpd = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()


def test_download_good_archive_verifies_and_records_checksum(server, tmp_path, capsys):
    base, _ = server
    isbi = data.download_isbi2012(tmp_path / "d", url=f"{base}/good.zip", progress=False)
    assert isbi.train_labels.shape == (30, 512, 512)
    assert (tmp_path / "d" / "checksums.json").is_file()
    assert not list((tmp_path / "d").glob("*.part"))
    assert "Cardona" in capsys.readouterr().err
    again = data.download_isbi2012(tmp_path / "d", url=f"{base}/missing.zip", progress=False)
    assert again.train_images.shape == (30, 512, 512)  # already present: no request needed


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    base, requests = server
    data.download_isbi2012(tmp_path / "d", url=f"{base}/flaky.zip", progress=False)
    flaky = [r for k, r in requests if k == "flaky"]
    assert flaky[0] is None and flaky[1] is not None and flaky[1].startswith("bytes=")


def test_download_that_always_breaks_fails_clearly(server, tmp_path):
    base, _ = server
    with pytest.raises(ConnectionError, match="after 2 attempts"):
        data.download_isbi2012(tmp_path / "d", url=f"{base}/cut.zip", retries=2, progress=False)


@pytest.mark.parametrize("kind, match", [("short", "not a valid zip"), ("corrupt", "corrupt|zip"),
                                         ("wrong", "SHA-256")])
def test_download_of_a_bad_archive_fails_and_starts_clean(server, tmp_path, kind, match):
    base, _ = server
    dest = tmp_path / "d"
    with pytest.raises(ValueError, match=match):
        data.download_isbi2012(dest, url=f"{base}/{kind}.zip", progress=False)
    assert not list(dest.glob("*.part")) and not (dest / "train-volume.tif").exists()
    data.download_isbi2012(dest, url=f"{base}/good.zip", progress=False)  # the next try works


def test_download_http_error_is_reported(server, tmp_path):
    base, _ = server
    with pytest.raises(ConnectionError, match="HTTP 404"):
        data.download_isbi2012(tmp_path / "d", url=f"{base}/missing.zip", progress=False)


def test_archive_changed_since_first_download_is_detected(server, tmp_path, archives):
    base, _ = server
    dest = tmp_path / "d"
    data.download_isbi2012(dest, url=f"{base}/good.zip", progress=False)
    (dest / "train-volume.tif").unlink()
    local = tmp_path / "other.zip"
    local.write_bytes(archives["wrong"])
    with pytest.raises(ValueError, match="differs from the one recorded"):
        data.download_isbi2012(dest, archive=local, progress=False)
